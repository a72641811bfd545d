// Sampling: greedy picks the argmax; temperature sampling follows softmax(logits / T); top-k and top-p
// restrict the support and renormalise; the same seed gives the same draws.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/error.hpp"
#include "infer/sampling.hpp"
#include "support/testkit.hpp"

using namespace linarch;

namespace {
std::vector<float> random_logits(int n, uint64_t stream) {
    RngStream rng(testkit::test_seed(), stream);
    std::vector<float> logits(static_cast<size_t>(n));
    for (float& x : logits) x = float(2.0 * rng.normal());
    return logits;
}

// Empirical frequencies of `draws` samples.
std::vector<double> frequencies(const std::vector<float>& logits, const SamplingOptions& options, int draws) {
    RngStream rng(testkit::test_seed(), 99);
    std::vector<double> counts(logits.size(), 0.0);
    for (int i = 0; i < draws; ++i) counts[size_t(sample_token(logits, options, rng))] += 1;
    for (double& c : counts) c /= draws;
    return counts;
}

std::vector<double> softmax(const std::vector<float>& logits, double temperature, const std::vector<bool>& keep) {
    double max_logit = -1e300, total = 0;
    for (size_t i = 0; i < logits.size(); ++i)
        if (keep[i]) max_logit = std::max(max_logit, double(logits[i]));
    std::vector<double> p(logits.size(), 0.0);
    for (size_t i = 0; i < logits.size(); ++i)
        if (keep[i]) total += p[i] = std::exp((logits[i] - max_logit) / temperature);
    for (double& x : p) x /= total;
    return p;
}

// Largest |empirical − expected| over the vocabulary.
double max_gap(const std::vector<double>& a, const std::vector<double>& b) {
    double gap = 0;
    for (size_t i = 0; i < a.size(); ++i) gap = std::max(gap, std::abs(a[i] - b[i]));
    return gap;
}
}  // namespace

TEST(Sampling, GreedyAndDegenerateFiltersPickTheArgmax) {
    const auto logits = random_logits(50, 1);
    const int32_t argmax = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    RngStream rng(1, 2);
    EXPECT_EQ(sample_token(logits, {0.0, 0, 1.0}, rng), argmax);
    for (int i = 0; i < 20; ++i) {
        EXPECT_EQ(sample_token(logits, {1.0, 1, 1.0}, rng), argmax);     // top-k 1
        EXPECT_EQ(sample_token(logits, {1.0, 0, 1e-9}, rng), argmax);    // tiny nucleus
    }
}

TEST(Sampling, TemperatureSamplingFollowsTheSoftmax) {
    const auto logits = random_logits(8, 3);
    const std::vector<bool> all(8, true);
    for (double temperature : {0.5, 1.0, 2.0}) {
        const auto expected = softmax(logits, temperature, all);
        // 40k draws: the standard error of a frequency is ≤ 0.0025, so 0.015 is six of them.
        EXPECT_LT(max_gap(frequencies(logits, {temperature, 0, 1.0}, 40000), expected), 0.015) << temperature;
    }
}

TEST(Sampling, TopKAndTopPRestrictAndRenormalise) {
    const auto logits = random_logits(10, 4);
    std::vector<int> order(10);
    for (int i = 0; i < 10; ++i) order[size_t(i)] = i;
    std::sort(order.begin(), order.end(), [&](int a, int b) { return logits[size_t(a)] > logits[size_t(b)]; });
    std::vector<bool> top3(10, false);
    for (int i = 0; i < 3; ++i) top3[size_t(order[size_t(i)])] = true;
    EXPECT_LT(max_gap(frequencies(logits, {1.0, 3, 1.0}, 40000), softmax(logits, 1.0, top3)), 0.015);
    // top-p: the smallest prefix (by probability) whose mass reaches p.
    const auto full = softmax(logits, 1.0, std::vector<bool>(10, true));
    std::vector<bool> nucleus(10, false);
    double mass = 0;
    for (int i = 0; i < 10 && mass < 0.7; ++i) {
        nucleus[size_t(order[size_t(i)])] = true;
        mass += full[size_t(order[size_t(i)])];
    }
    EXPECT_LT(max_gap(frequencies(logits, {1.0, 0, 0.7}, 40000), softmax(logits, 1.0, nucleus)), 0.015);
}

TEST(Sampling, SameSeedSameDrawsAndBadOptionsAreErrors) {
    const auto logits = random_logits(30, 5);
    RngStream a(7, 1), b(7, 1), c(8, 1);
    std::vector<int32_t> da, db, dc;
    for (int i = 0; i < 50; ++i) {
        da.push_back(sample_token(logits, {1.0, 0, 1.0}, a));
        db.push_back(sample_token(logits, {1.0, 0, 1.0}, b));
        dc.push_back(sample_token(logits, {1.0, 0, 1.0}, c));
    }
    EXPECT_EQ(da, db);
    EXPECT_NE(da, dc);
    RngStream rng(1, 1);
    EXPECT_THROW(sample_token(logits, {-1.0, 0, 1.0}, rng), Error);
    EXPECT_THROW(sample_token(logits, {1.0, 0, 0.0}, rng), Error);
    EXPECT_THROW(sample_token(logits, {1.0, -2, 1.0}, rng), Error);
}

TEST(Sampling, MinPKeepsTokensNearTheMostLikely) {
    // p ∝ exp(logit): with min_p = 0.2 only tokens with p ≥ 0.2·p_max remain, renormalised.
    const std::vector<float> logits = {0.0f, -1.0f, -1.5f, -3.0f, 0.5f};
    SamplingOptions options;
    options.min_p = 0.2;
    std::vector<bool> keep(logits.size());
    for (size_t i = 0; i < logits.size(); ++i) keep[i] = std::exp(logits[i] - 0.5) >= 0.2;
    const auto expected = softmax(logits, 1.0, keep);
    const auto got = frequencies(logits, options, 200000);
    for (size_t i = 0; i < logits.size(); ++i) EXPECT_NEAR(got[i], expected[i], 0.005) << i;
    EXPECT_EQ(got[3], 0.0);
}

TEST(Sampling, PenaltiesFollowOpenAIAndCtrl) {
    std::vector<float> logits = {2.0f, -1.0f, 0.5f, 3.0f};
    SamplingOptions options;
    options.repetition_penalty = 2.0;
    options.presence_penalty = 0.25;
    options.frequency_penalty = 0.5;
    const std::vector<int32_t> history = {1, 3, 1, 1};  // token 1 three times, token 3 once
    penalize_logits(logits, history, options);
    EXPECT_FLOAT_EQ(logits[0], 2.0f);                     // unseen: unchanged
    EXPECT_FLOAT_EQ(logits[1], -1.0f * 2 - 0.25f - 1.5f);  // negative: multiplied, then 0.25 + 3·0.5
    EXPECT_FLOAT_EQ(logits[2], 0.5f);
    EXPECT_FLOAT_EQ(logits[3], 3.0f / 2 - 0.25f - 0.5f);  // positive: divided
    SamplingOptions bad;
    bad.presence_penalty = 3;
    EXPECT_THROW(check_sampling_options(bad), Error);
    bad = {};
    bad.repetition_penalty = 0;
    EXPECT_THROW(check_sampling_options(bad), Error);
}

TEST(Sampling, LogitBiasIsAddedAfterThePenalties) {
    std::vector<float> logits = {2.0f, -1.0f, 0.5f, 3.0f};
    SamplingOptions options;
    options.presence_penalty = 0.25;
    options.logit_bias = {{3, -100.0}, {1, 4.5}};
    const std::vector<int32_t> history = {1};
    penalize_logits(logits, history, options);
    EXPECT_FLOAT_EQ(logits[0], 2.0f);
    EXPECT_FLOAT_EQ(logits[1], -1.0f - 0.25f + 4.5f);
    EXPECT_FLOAT_EQ(logits[2], 0.5f);
    EXPECT_FLOAT_EQ(logits[3], 3.0f - 100.0f);
    RngStream rng(3, 1);
    options.temperature = 0;
    EXPECT_EQ(sample_token(logits, options, rng), 1);  // the biased token is now the argmax
    EXPECT_TRUE(options.penalized());                   // a bias takes the plain (not fused) path
    std::vector<float> short_row = {0.0f, 1.0f};
    testkit::expect_error([&] { penalize_logits(short_row, {}, options); }, {"logit_bias: token 3 outside the vocabulary [0, 2)"});
    SamplingOptions bad;
    bad.logit_bias = {{0, 100.5}};
    testkit::expect_error([&] { check_sampling_options(bad); }, {"logit_bias: biases must be in [-100, 100]"});
    bad.logit_bias = {{-1, 1.0}};
    testkit::expect_error([&] { check_sampling_options(bad); }, {"logit_bias: token ids must be ≥ 0, got -1"});
    bad.logit_bias = {{2, 1.0}, {2, -1.0}};
    testkit::expect_error([&] { check_sampling_options(bad); }, {"logit_bias: token 2 is given more than once"});
}

TEST(Sampling, LogprobsAreTheModelsLogSoftmax) {
    const auto logits = random_logits(40, 5);
    const auto all = softmax(logits, 1.0, std::vector<bool>(logits.size(), true));
    const TokenLogprobs lp = token_logprobs(logits, 7, 5);
    EXPECT_NEAR(lp.logprob, std::log(all[7]), 1e-6);
    ASSERT_EQ(lp.top.size(), 5u);
    for (size_t i = 0; i < lp.top.size(); ++i) {
        EXPECT_NEAR(lp.top[i].second, std::log(all[size_t(lp.top[i].first)]), 1e-6);
        if (i > 0) {
            EXPECT_GE(lp.top[i - 1].second, lp.top[i].second);
        }
    }
    EXPECT_EQ(size_t(std::max_element(all.begin(), all.end()) - all.begin()), size_t(lp.top[0].first));
}
