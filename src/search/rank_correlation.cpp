#include "search/rank_correlation.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "core/error.hpp"

namespace linarch {

namespace {
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

struct Pairs {
    std::vector<double> x, y;
};

Pairs usable_pairs(std::span<const double> x, std::span<const double> y, const char* what) {
    LINARCH_CHECK(x.size() == y.size(), "{}: the samples differ in length ({} and {} values)", what, x.size(),
                  y.size());
    Pairs pairs;
    for (size_t i = 0; i < x.size(); ++i)
        if (!std::isnan(x[i]) && !std::isnan(y[i])) {
            pairs.x.push_back(x[i]);
            pairs.y.push_back(y[i]);
        }
    return pairs;
}

int sign(double value) { return (value > 0) - (value < 0); }

// Ranks 1..n, tied values sharing the mean of the ranks they span.
std::vector<double> average_ranks(const std::vector<double>& values) {
    std::vector<size_t> order(values.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return values[a] < values[b]; });
    std::vector<double> ranks(values.size());
    for (size_t begin = 0; begin < order.size();) {
        size_t end = begin + 1;
        while (end < order.size() && values[order[end]] == values[order[begin]]) ++end;
        const double rank = 0.5 * double(begin + 1 + end);  // mean of begin+1 .. end
        for (size_t i = begin; i < end; ++i) ranks[order[i]] = rank;
        begin = end;
    }
    return ranks;
}
}  // namespace

double kendall_tau(std::span<const double> x_in, std::span<const double> y_in) {
    const Pairs p = usable_pairs(x_in, y_in, "kendall_tau");
    const size_t n = p.x.size();
    if (n < 2) return kNaN;
    // concordant − discordant, and the pairs not tied in x (n0 − ties_x) and not tied in y.
    double score = 0, untied_x = 0, untied_y = 0;
    for (size_t i = 0; i < n; ++i)
        for (size_t j = i + 1; j < n; ++j) {
            const int dx = sign(p.x[i] - p.x[j]), dy = sign(p.y[i] - p.y[j]);
            score += dx * dy;
            untied_x += dx != 0;
            untied_y += dy != 0;
        }
    if (untied_x == 0 || untied_y == 0) return kNaN;
    return score / std::sqrt(untied_x * untied_y);
}

double spearman_rho(std::span<const double> x_in, std::span<const double> y_in) {
    const Pairs p = usable_pairs(x_in, y_in, "spearman_rho");
    const size_t n = p.x.size();
    if (n < 2) return kNaN;
    const std::vector<double> rx = average_ranks(p.x), ry = average_ranks(p.y);
    const double mean = 0.5 * double(n + 1);  // the mean of any average ranking of n values
    double sxy = 0, sxx = 0, syy = 0;
    for (size_t i = 0; i < n; ++i) {
        sxy += (rx[i] - mean) * (ry[i] - mean);
        sxx += (rx[i] - mean) * (rx[i] - mean);
        syy += (ry[i] - mean) * (ry[i] - mean);
    }
    if (sxx == 0 || syy == 0) return kNaN;
    return sxy / std::sqrt(sxx * syy);
}

}  // namespace linarch
