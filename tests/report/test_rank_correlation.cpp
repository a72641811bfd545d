// Kendall's τ-b and Spearman's ρ against published and hand-computed values, and the properties any
// rank correlation has on random inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "core/rng.hpp"
#include "search/rank_correlation.hpp"
#include "support/testkit.hpp"

using namespace linarch;

namespace {
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::vector<double> random_values(RngStream& rng, size_t n) {
    std::vector<double> values(n);
    for (double& v : values) v = rng.normal();
    return values;
}
}  // namespace

TEST(RankCorrelation, MatchesScipysDocumentedExamples) {
    // scipy.stats.kendalltau's docstring: tau-b of these (with ties in both) is -0.47140452079103173.
    const std::vector<double> x = {12, 2, 1, 12, 2}, y = {1, 4, 7, 1, 0};
    EXPECT_NEAR(kendall_tau(x, y), -0.47140452079103173, 1e-15);
    // scipy.stats.spearmanr's docstring: [1,2,3,4,5] against [5,6,7,8,7] is 0.82078268166812329.
    const std::vector<double> a = {1, 2, 3, 4, 5}, b = {5, 6, 7, 8, 7};
    EXPECT_NEAR(spearman_rho(a, b), 0.82078268166812329, 1e-15);
}

TEST(RankCorrelation, MatchesHandComputedValues) {
    // 1,3,2,5,4,6 against 1..6: 13 of 15 pairs concordant, 2 discordant, so τ = (13 − 2)/15; Σd² = 4,
    // ρ = 1 − 6·4/(6·35).
    const std::vector<double> x = {1, 2, 3, 4, 5, 6}, y = {1, 3, 2, 5, 4, 6};
    EXPECT_NEAR(kendall_tau(x, y), 11.0 / 15.0, 1e-15);
    EXPECT_NEAR(spearman_rho(x, y), 1 - 24.0 / 210.0, 1e-15);
    // One tie in y, none in x: 9 concordant of the 9 pairs untied in y, τ-b = 9 / √(10·9).
    const std::vector<double> p = {10, 20, 30, 40, 50}, q = {0.5, 0.6, 0.6, 0.7, 0.8};
    EXPECT_NEAR(kendall_tau(p, q), 9 / std::sqrt(90.0), 1e-15);
    // Average ranks of q: 1, 2.5, 2.5, 4, 5; Pearson with 1..5: Σ(rx−3)(ry−3) = 9.5, Σ(rx−3)² = 10,
    // Σ(ry−3)² = 9.5.
    EXPECT_NEAR(spearman_rho(p, q), 9.5 / std::sqrt(10 * 9.5), 1e-15);
    // Two pairs: perfectly agreeing or disagreeing.
    EXPECT_EQ(kendall_tau(std::vector<double>{1, 2}, std::vector<double>{3, 4}), 1);
    EXPECT_EQ(spearman_rho(std::vector<double>{1, 2}, std::vector<double>{4, 3}), -1);
}

TEST(RankCorrelation, SkipsNaNPairsAndReturnsNaNWithoutEnoughData) {
    // The NaN pairs are left out: what remains is the 1,3,2,5,4,6 example.
    const std::vector<double> x = {1, kNaN, 2, 3, 4, 7, 5, 6}, y = {1, 9, 3, 2, 5, kNaN, 4, 6};
    EXPECT_NEAR(kendall_tau(x, y), 11.0 / 15.0, 1e-15);
    EXPECT_NEAR(spearman_rho(x, y), 1 - 24.0 / 210.0, 1e-15);

    const std::vector<double> empty;
    EXPECT_TRUE(std::isnan(kendall_tau(empty, empty)));
    EXPECT_TRUE(std::isnan(spearman_rho(empty, empty)));
    const std::vector<double> one = {1, kNaN, 3}, other = {2, 5, kNaN};  // one usable pair
    EXPECT_TRUE(std::isnan(kendall_tau(one, other)));
    EXPECT_TRUE(std::isnan(spearman_rho(one, other)));
    const std::vector<double> constant = {2, 2, 2, 2}, varied = {1, 2, 3, 4};  // no spread on one side
    EXPECT_TRUE(std::isnan(kendall_tau(constant, varied)));
    EXPECT_TRUE(std::isnan(spearman_rho(varied, constant)));
}

TEST(RankCorrelation, RejectsSamplesOfDifferentLengths) {
    const std::vector<double> three = {1, 2, 3}, two = {1, 2};
    EXPECT_THROW(kendall_tau(three, two), Error);
    EXPECT_THROW(spearman_rho(three, two), Error);
}

TEST(RankCorrelation, HasTheProperties) {
    RngStream rng(testkit::test_seed(), 21);
    for (int round = 0; round < 20; ++round) {
        const size_t n = 2 + rng.below(60);
        std::vector<double> x = random_values(rng, n), y = random_values(rng, n);
        if (round % 2) {  // rounding makes ties on both sides
            for (double& v : x) v = std::round(v * 2);
            for (double& v : y) v = std::round(v * 2);
        }
        std::vector<double> negated(n), transformed_x(n), transformed_y(n);
        for (size_t i = 0; i < n; ++i) {
            negated[i] = -x[i];
            transformed_x[i] = std::exp(x[i]);  // strictly increasing maps keep the ranks
            transformed_y[i] = 2 * y[i] * y[i] * y[i];
        }
        const double tau = kendall_tau(x, y), rho = spearman_rho(x, y);
        if (std::isnan(tau)) continue;  // all values tied after rounding: nothing to check
        EXPECT_NEAR(kendall_tau(x, x), 1, 1e-12);
        EXPECT_NEAR(kendall_tau(x, negated), -1, 1e-12);
        EXPECT_NEAR(spearman_rho(x, x), 1, 1e-12);
        EXPECT_NEAR(spearman_rho(x, negated), -1, 1e-12);
        EXPECT_NEAR(kendall_tau(y, x), tau, 1e-12);
        EXPECT_NEAR(spearman_rho(y, x), rho, 1e-12);
        EXPECT_NEAR(kendall_tau(transformed_x, transformed_y), tau, 1e-12);
        EXPECT_NEAR(spearman_rho(transformed_x, transformed_y), rho, 1e-12);
        EXPECT_LE(std::abs(tau), 1 + 1e-12);
        EXPECT_LE(std::abs(rho), 1 + 1e-12);
    }
}
