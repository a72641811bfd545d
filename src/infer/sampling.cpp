#include "infer/sampling.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.hpp"

namespace linarch {

int32_t sample_token(std::span<const float> logits, const SamplingOptions& options, RngStream& rng) {
    LINARCH_CHECK(!logits.empty(), "sample_token: empty logits");
    LINARCH_CHECK(options.temperature >= 0, "temperature must be ≥ 0, got {}", options.temperature);
    LINARCH_CHECK(options.top_p > 0 && options.top_p <= 1, "top_p must be in (0, 1], got {}", options.top_p);
    LINARCH_CHECK(options.top_k >= 0, "top_k must be ≥ 0, got {}", options.top_k);
    if (options.temperature == 0)
        return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    // Candidates by descending logit; top-k keeps a prefix, top-p the smallest prefix whose
    // probability mass reaches p (always at least one token).
    std::vector<int32_t> order(logits.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[size_t(a)] > logits[size_t(b)]; });
    size_t keep = order.size();
    if (options.top_k > 0) keep = std::min(keep, size_t(options.top_k));
    const double max_logit = logits[size_t(order[0])];
    std::vector<double> weights(keep);
    double total = 0;
    for (size_t i = 0; i < keep; ++i) {
        weights[i] = std::exp((logits[size_t(order[i])] - max_logit) / options.temperature);
        total += weights[i];
    }
    if (options.top_p < 1) {
        double mass = 0;
        size_t cut = 0;
        while (cut < keep && mass < options.top_p * total) mass += weights[cut++];
        keep = std::max<size_t>(cut, 1);
        total = 0;
        for (size_t i = 0; i < keep; ++i) total += weights[i];
    }
    double draw = rng.uniform() * total;
    for (size_t i = 0; i < keep; ++i) {
        draw -= weights[i];
        if (draw < 0) return order[i];
    }
    return order[keep - 1];
}

}  // namespace linarch
