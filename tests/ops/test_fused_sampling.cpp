// The LM head fused with sampling (ops/fused_sampling.hpp). Distribution: 10⁵ draws on a small
// vocabulary (V = 17, D = 8, fixed seeds, so every chi-square below is deterministic) against the
// exact probabilities, by a chi-square test at p = 1e-4 — and deliberately biased samplers fail the
// same test. Top-k, top-p and min-p: fused and plain sampler (sample_token on full logits) both against
// the exact renormalised probabilities. Pathwise: the token is the full-row Gumbel-max of
// lm_head_logits with the documented noise, and the same for every vocabulary tile and thread count.
// Greedy = argmax, log-probabilities = log_softmax, and bad inputs.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "core/rng.hpp"
#include "core/tensor.hpp"
#include "infer/sampling.hpp"
#include "ops/dense.hpp"
#include "ops/fused_sampling.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using testkit::expect_error;

namespace {

// Draws per histogram, and the chi-square p-value below which a sampler is declared biased: with
// fixed seeds the verdicts are deterministic, and a correct sampler fails at a given seed set with
// probability 1e-4.
constexpr int64_t kDraws = 100000;
constexpr double kSignificance = 1e-4;
// Fixed seeds of the chi-square tests: the data, the fused draws, the plain draws.
constexpr uint64_t kDataSeed = 20260515, kFusedSeed = 7, kPlainSeed = 8;

// ---------------------------------------------------------------------------------------------
// Chi-square test

// Q(a, x) = Γ(a, x)/Γ(a), the regularised upper incomplete gamma function (Numerical Recipes §6.2):
// the series for P = 1 − Q below x = a + 1, Lentz's continued fraction above.
double upper_incomplete_gamma(double a, double x) {
    if (x <= 0) return 1;
    const double log_prefactor = -x + a * std::log(x) - std::lgamma(a);
    if (x < a + 1) {
        double term = 1 / a, sum = term;
        for (int n = 1; n < 10000 && term > sum * 1e-16; ++n) {
            term *= x / (a + n);
            sum += term;
        }
        return 1 - sum * std::exp(log_prefactor);
    }
    constexpr double kTiny = 1e-300;
    double b = x + 1 - a, c = 1 / kTiny, d = 1 / b, h = d;
    for (int i = 1; i < 10000; ++i) {
        const double an = -i * (i - a);
        b += 2;
        d = an * d + b;
        if (std::abs(d) < kTiny) d = kTiny;
        c = b + an / c;
        if (std::abs(c) < kTiny) c = kTiny;
        d = 1 / d;
        const double step = d * c;
        h *= step;
        if (std::abs(step - 1) < 1e-16) break;
    }
    return std::exp(log_prefactor) * h;
}

struct ChiSquare {
    double statistic = 0;
    int64_t dof = 0;
    double p_value = 1;
};

// Pearson's chi-square of observed counts against probabilities (normalised here). Bins expecting
// fewer than 5 draws are pooled into one; a draw in a bin of probability 0 gives p = 0.
ChiSquare chi_square(const std::vector<int64_t>& counts, const std::vector<double>& probabilities) {
    const double total_probability = std::accumulate(probabilities.begin(), probabilities.end(), 0.0);
    const double draws = double(std::accumulate(counts.begin(), counts.end(), int64_t(0)));
    ChiSquare result;
    double pooled_expected = 0, pooled_observed = 0;
    int64_t bins = 0;
    for (size_t v = 0; v < counts.size(); ++v) {
        const double expected = draws * probabilities[v] / total_probability;
        if (probabilities[v] == 0) {
            if (counts[v] > 0) return {std::numeric_limits<double>::infinity(), 0, 0};
            continue;
        }
        if (expected < 5) {
            pooled_expected += expected;
            pooled_observed += double(counts[v]);
            continue;
        }
        result.statistic += (double(counts[v]) - expected) * (double(counts[v]) - expected) / expected;
        ++bins;
    }
    if (pooled_expected > 0) {
        result.statistic += (pooled_observed - pooled_expected) * (pooled_observed - pooled_expected) / pooled_expected;
        ++bins;
    }
    result.dof = bins - 1;
    result.p_value = result.dof > 0 ? upper_incomplete_gamma(double(result.dof) / 2, result.statistic / 2) : 1;
    return result;
}

void expect_matches(const std::vector<int64_t>& counts, const std::vector<double>& probabilities,
                    const std::string& what) {
    const ChiSquare test = chi_square(counts, probabilities);
    std::printf("  %-48s chi2 = %8.2f  dof = %2ld  p = %.3g\n", what.c_str(), test.statistic, long(test.dof),
                test.p_value);
    EXPECT_GT(test.p_value, kSignificance) << what << ": chi2 " << test.statistic << " with " << test.dof << " dof";
}

// ---------------------------------------------------------------------------------------------
// Data and samplers

// N(0, std²) entries from a fixed seed (the chi-square tests must not vary from run to run).
Tensor fixed_normal(const Shape& shape, uint64_t stream, double std, DType dtype = DType::f32) {
    std::vector<double> values(static_cast<size_t>(shape_numel(shape)));
    RngStream rng(kDataSeed, stream);
    for (double& x : values) x = std * rng.normal();
    return Tensor::from_vector(shape, values, dtype);
}

// The small problem of the chi-square tests: one hidden row [1, 8], a tied head [17, 8]; logits of
// standard deviation ≈ 1.4, so every token has a probability of a few percent or more.
struct SmallHead {
    Tensor hidden = fixed_normal({1, 8}, 1, 1.0);
    Tensor weight = fixed_normal({17, 8}, 2, 0.5);
    std::vector<float> logits() const {
        Tensor out = Tensor::empty({1, weight.size(0)}, DType::f32);
        ops::lm_head_logits(out, hidden, weight);
        return {out.data<float>(), out.data<float>() + out.numel()};
    }
};

// The plain sampler's distribution in float64 (infer/sampling.cpp's rule on exact arithmetic): sorted
// by logit, top-k prefix, top-p prefix, min-p prefix, softmax(l/T) renormalised on what is kept.
std::vector<double> exact_probabilities(const std::vector<double>& logits, const SamplingOptions& o) {
    const size_t V = logits.size();
    std::vector<size_t> order(V);
    std::iota(order.begin(), order.end(), size_t(0));
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return logits[a] > logits[b]; });
    std::vector<double> weights(V);
    for (size_t i = 0; i < V; ++i) weights[i] = std::exp((logits[order[i]] - logits[order[0]]) / o.temperature);
    size_t keep = o.top_k > 0 ? std::min(V, size_t(o.top_k)) : V;
    const double total = std::accumulate(weights.begin(), weights.begin() + std::ptrdiff_t(keep), 0.0);
    if (o.top_p < 1) {
        double mass = 0;
        size_t cut = 0;
        while (cut < keep && mass < o.top_p * total) mass += weights[cut++];
        keep = std::max<size_t>(cut, 1);
    }
    if (o.min_p > 0) {
        size_t cut = 1;
        while (cut < keep && weights[cut] >= o.min_p) ++cut;
        keep = cut;
    }
    std::vector<double> probabilities(V, 0.0);
    for (size_t i = 0; i < keep; ++i) probabilities[order[i]] = weights[i];
    return probabilities;
}

// kDraws fused draws from the small head's row, 1000 rows per call (four row blocks of ≤ 256), each
// row its own stream.
std::vector<int64_t> fused_histogram(const SmallHead& head, const SamplingOptions& options,
                                     const ops::FusedSamplingTiling& tiling) {
    constexpr int64_t kRows = 1000;
    Tensor hidden = Tensor::empty({kRows, head.hidden.size(1)}, DType::f32);
    for (int64_t r = 0; r < kRows; ++r)
        std::copy(head.hidden.data<float>(), head.hidden.data<float>() + head.hidden.numel(),
                  hidden.data<float>() + r * head.hidden.numel());
    std::vector<int64_t> counts(static_cast<size_t>(head.weight.size(0)), 0);
    std::vector<int32_t> tokens(static_cast<size_t>(kRows));
    for (int64_t call = 0; call < kDraws / kRows; ++call) {
        std::vector<RngStream> rngs;
        for (int64_t r = 0; r < kRows; ++r) rngs.emplace_back(kFusedSeed, uint64_t(call * kRows + r));
        ops::lm_head_sample(tokens, nullptr, hidden, head.weight, options, rngs, tiling);
        for (int32_t t : tokens) ++counts[size_t(t)];
    }
    return counts;
}

// kDraws draws of the plain sampler (sample_token) on the full logits.
std::vector<int64_t> plain_histogram(const std::vector<float>& logits, const SamplingOptions& options) {
    std::vector<int64_t> counts(logits.size(), 0);
    for (int64_t i = 0; i < kDraws; ++i) {
        RngStream rng(kPlainSeed, uint64_t(i));
        ++counts[size_t(sample_token(logits, options, rng))];
    }
    return counts;
}

// Deliberately broken versions of the tile pass, for the negative control: each is a Gumbel-max
// over tiles of width 5 of the full logits, with one thing wrong.
enum class Bias { uniform_noise, exponential_noise, tile_off_by_one };

std::vector<int64_t> biased_histogram(const std::vector<float>& logits, double temperature, Bias bias) {
    const int64_t V = int64_t(logits.size()), tile = 5;
    std::vector<int64_t> counts(logits.size(), 0);
    for (int64_t i = 0; i < kDraws; ++i) {
        RngStream rng(kFusedSeed, uint64_t(i));
        double best_score = -std::numeric_limits<double>::infinity();
        int64_t best = -1;
        for (int64_t v0 = 0; v0 < V; v0 += tile) {
            int64_t end = std::min(V, v0 + tile);
            if (bias == Bias::tile_off_by_one) end -= 1;  // `<` where `<=` was meant: last entry of each tile dropped
            for (int64_t v = v0; v < end; ++v) {
                const double g = ops::sampling_gumbel_noise(rng, v);
                const double u = std::exp(-std::exp(-g));  // the uniform behind g
                const double noise = bias == Bias::uniform_noise       ? u            // not Gumbel
                                     : bias == Bias::exponential_noise ? -std::log(u)  // −log u: Exp(1), not Gumbel
                                                                       : g;
                const double score = double(logits[size_t(v)]) / temperature + noise;
                if (score > best_score) best_score = score, best = v;
            }
        }
        ++counts[size_t(best)];
    }
    return counts;
}

std::vector<double> widened(const std::vector<float>& logits) { return {logits.begin(), logits.end()}; }

std::vector<double> softmax(const std::vector<float>& logits, double temperature) {
    return exact_probabilities(widened(logits), {.temperature = temperature});
}

// ---------------------------------------------------------------------------------------------
// Pathwise references on lm_head_logits

Tensor full_logits(const Tensor& hidden, const Tensor& weight) {
    Tensor logits = Tensor::empty({hidden.size(0), weight.size(0)}, hidden.dtype());
    ops::lm_head_logits(logits, hidden, weight);
    return logits;
}

std::vector<RngStream> streams(int64_t rows, uint64_t seed) {
    std::vector<RngStream> rngs;
    for (int64_t r = 0; r < rows; ++r) rngs.emplace_back(seed, uint64_t(r), uint64_t(r) * 1000);
    return rngs;
}

// The fused path's definition on one full row: the plain rule's kept set (exact_probabilities > 0),
// then argmax of l·(1/T) + g over it, ties to the lower index.
int32_t full_row_draw(const Tensor& logits, int64_t row, const SamplingOptions& options, const RngStream& rng) {
    const int64_t V = logits.size(1);
    std::vector<double> values(static_cast<size_t>(V));
    for (int64_t v = 0; v < V; ++v) values[size_t(v)] = logits.item({row, v});
    const std::vector<double> kept = exact_probabilities(values, options);
    const double inv_temperature = 1.0 / options.temperature;
    double best_score = -std::numeric_limits<double>::infinity();
    int32_t best = -1;
    for (int64_t v = 0; v < V; ++v) {
        if (kept[size_t(v)] == 0) continue;
        const double score = logits.item({row, v}) * inv_temperature + ops::sampling_gumbel_noise(rng, v);
        if (score > best_score) best_score = score, best = int32_t(v);
    }
    return best;
}

std::vector<int32_t> fused_tokens(const Tensor& hidden, const Tensor& weight, const SamplingOptions& options,
                                  const ops::FusedSamplingTiling& tiling, uint64_t seed, Tensor* logprobs = nullptr) {
    std::vector<int32_t> tokens(static_cast<size_t>(hidden.size(0)), -1);
    std::vector<RngStream> rngs = streams(hidden.size(0), seed);
    ops::lm_head_sample(tokens, logprobs, hidden, weight, options, rngs, tiling);
    return tokens;
}

}  // namespace

// The chi-square machinery itself: Q(k/2, x/2) against closed forms and a tabulated quantile.
TEST(FusedSampling, ChiSquarePValueIsRight) {
    for (double x : {0.5, 3.0, 20.0}) EXPECT_NEAR(upper_incomplete_gamma(1.0, x / 2), std::exp(-x / 2), 1e-14);
    // k = 4: Q = e^(−x/2)(1 + x/2).
    for (double x : {1.0, 6.0, 40.0})
        EXPECT_NEAR(upper_incomplete_gamma(2.0, x / 2), std::exp(-x / 2) * (1 + x / 2), 1e-14);
    // Tabulated 0.999 quantiles (NIST/SEMATECH e-Handbook, table 1.3.6.7.4): 39.252 for 16 degrees of
    // freedom, 29.588 for 10.
    EXPECT_NEAR(upper_incomplete_gamma(8.0, 39.252 / 2), 1e-3, 1e-6);
    EXPECT_NEAR(upper_incomplete_gamma(5.0, 29.588 / 2), 1e-3, 1e-6);
}

// Temperature sampling, several tiles (17 = 5+5+5+2, Philox blocks straddling tiles): the 10⁵ draws
// follow softmax(logits/T).
TEST(FusedSampling, TemperatureDrawsFollowSoftmax) {
    const SmallHead head;
    const std::vector<float> logits = head.logits();
    for (double temperature : {1.0, 0.6, 1.7}) {
        const SamplingOptions options{.temperature = temperature};
        expect_matches(fused_histogram(head, options, {.vocab_tile = 5}), softmax(logits, temperature),
                       fmt::format("fused, T = {}, tile 5", temperature));
    }
    expect_matches(fused_histogram(head, {.temperature = 1.0}, {}), softmax(logits, 1.0), "fused, T = 1, one tile");
}

// The negative control: the same check catches samplers that are wrong in the ways a fused kernel
// can be (wrong noise distribution, a dropped entry per tile).
TEST(FusedSampling, BiasedSamplersFailTheSameCheck) {
    const SmallHead head;
    const std::vector<float> logits = head.logits();
    const std::vector<double> expected = softmax(logits, 1.0);
    const std::pair<Bias, const char*> variants[] = {{Bias::uniform_noise, "uniform noise instead of Gumbel"},
                                                     {Bias::exponential_noise, "-log u noise instead of Gumbel"},
                                                     {Bias::tile_off_by_one, "last entry of each tile dropped"}};
    for (const auto& [bias, name] : variants) {
        const ChiSquare test = chi_square(biased_histogram(logits, 1.0, bias), expected);
        std::printf("  %-48s chi2 = %8.4g  dof = %2ld  p = %.3g\n", name, test.statistic, long(test.dof), test.p_value);
        EXPECT_LT(test.p_value, kSignificance) << name << " passed the chi-square test";
    }
}

// Top-k, top-p, min-p and their combinations: the fused path (candidates decided after the tile pass,
// or rows materialised when few candidates are kept) and the plain sampler both match the exact
// renormalised probabilities, and never draw a token outside the kept set.
TEST(FusedSampling, TruncatedSamplingMatchesThePlainSampler) {
    const SmallHead head;
    const std::vector<float> logits = head.logits();
    const SamplingOptions cases[] = {
        {.temperature = 0.8, .top_k = 5},
        {.temperature = 1.0, .top_p = 0.7},
        {.temperature = 1.3, .top_k = 9, .top_p = 0.6},
        {.temperature = 1.0, .min_p = 0.2},
        {.temperature = 0.7, .top_p = 0.9, .min_p = 0.1},
    };
    for (const SamplingOptions& options : cases) {
        const std::vector<double> expected = exact_probabilities(widened(logits), options);
        const int64_t kept = std::count_if(expected.begin(), expected.end(), [](double p) { return p > 0; });
        const std::string name = fmt::format("T {} top_k {} top_p {} min_p {} ({} kept)", options.temperature,
                                             options.top_k, options.top_p, options.min_p, kept);
        ASSERT_GT(kept, 2) << name << ": too few kept tokens to exercise the candidates";
        expect_matches(plain_histogram(logits, options), expected, "plain,  " + name);
        // candidates 2 < kept: top-k > candidates and nuclei past the candidates materialise the rows.
        for (int64_t candidates : {int64_t(2), int64_t(1024)})
            expect_matches(fused_histogram(head, options, {.vocab_tile = 4, .candidates = candidates}), expected,
                           fmt::format("fused (candidates {}), {}", candidates, name));
    }
}

// Pathwise: every fused token is the full-row Gumbel-max over lm_head_logits with the documented
// noise (over the kept set for top-k/top-p/min-p): the tile decomposition changes no draw. 300 rows
// cross the 256-row block.
TEST(FusedSampling, DrawIsTheFullRowGumbelMax) {
    for (DType dtype : {DType::f32, DType::f64}) {
        const Tensor hidden = testkit::random_normal({300, 16}, dtype, 1);
        const Tensor weight = testkit::random_normal({500, 16}, dtype, 2, 0.5);
        const Tensor logits = full_logits(hidden, weight);
        const SamplingOptions cases[] = {{.temperature = 0.9},
                                         {.temperature = 1.2, .top_k = 10},
                                         {.temperature = 1.0, .top_p = 0.9},
                                         {.temperature = 0.8, .top_k = 100, .top_p = 0.8},
                                         {.temperature = 1.0, .min_p = 0.05}};
        for (const SamplingOptions& options : cases)
            for (int64_t candidates : {int64_t(16), int64_t(1024)}) {
                const uint64_t seed = testkit::test_seed();
                const std::vector<int32_t> tokens = fused_tokens(hidden, weight, options,
                                                                 {.vocab_tile = 64, .candidates = candidates}, seed);
                const std::vector<RngStream> rngs = streams(hidden.size(0), seed);
                int64_t mismatches = 0, plain_mismatches = 0;
                for (int64_t b = 0; b < hidden.size(0); ++b) {
                    mismatches += tokens[size_t(b)] != full_row_draw(logits, b, options, rngs[size_t(b)]);
                    if (dtype != DType::f32) continue;
                    // The plain sampler draws the same token from the same stream position.
                    RngStream rng = rngs[size_t(b)];
                    const std::span<const float> row(logits.data<float>() + b * logits.size(1), size_t(logits.size(1)));
                    plain_mismatches += tokens[size_t(b)] != sample_token(row, options, rng);
                }
                EXPECT_EQ(plain_mismatches, 0) << "sample_token, T " << options.temperature << " top_k "
                                               << options.top_k << " top_p " << options.top_p;
                EXPECT_EQ(mismatches, 0) << dtype_name(dtype) << " T " << options.temperature << " top_k "
                                         << options.top_k << " top_p " << options.top_p << " min_p " << options.min_p
                                         << " candidates " << candidates;
            }
    }
}

// The same streams give the same tokens for every vocabulary tile (1 entry to all of V and beyond, tiles
// not multiples of the 4-word Philox block) and 1 or 2 threads.
TEST(FusedSampling, SameTokensForEveryTilingAndThreadCount) {
    const Tensor hidden = testkit::random_normal({24, 48}, DType::f32, 3);
    const Tensor weight = testkit::random_normal({1000, 48}, DType::f32, 4, 0.3);
    const SamplingOptions cases[] = {{.temperature = 1.0},
                                     {.temperature = 0.7, .top_k = 20},
                                     {.temperature = 1.0, .top_p = 0.9},
                                     {.temperature = 1.0, .min_p = 0.05}};
    const int threads_before = omp_get_max_threads();
    const uint64_t seed = testkit::test_seed();
    for (const SamplingOptions& options : cases) {
        omp_set_num_threads(1);
        const std::vector<int32_t> reference = fused_tokens(hidden, weight, options, {.vocab_tile = 1000}, seed);
        for (int threads : {1, 2})
            for (int64_t tile : {1, 3, 4, 7, 64, 256, 999, 4096})
                for (int64_t candidates : {int64_t(8), int64_t(1024)}) {
                    omp_set_num_threads(threads);
                    const ops::FusedSamplingTiling tiling{.vocab_tile = tile, .candidates = candidates};
                    EXPECT_EQ(fused_tokens(hidden, weight, options, tiling, seed), reference)
                        << "tile " << tile << ", " << threads << " threads, candidates " << candidates << ", top_k "
                        << options.top_k << " top_p " << options.top_p << " min_p " << options.min_p;
                }
    }
    omp_set_num_threads(threads_before);
}

// T = 0 is the argmax of lm_head_logits (first index on ties; top-k/top-p ignored) and leaves the
// streams where they were.
TEST(FusedSampling, GreedyIsArgmaxOfLmHeadLogits) {
    for (DType dtype : {DType::f32, DType::f64}) {
        const Tensor hidden = testkit::random_normal({50, 24}, dtype, 5);
        const Tensor weight = testkit::random_normal({777, 24}, dtype, 6);
        const Tensor logits = full_logits(hidden, weight);
        for (const SamplingOptions& options :
             {SamplingOptions{.temperature = 0}, SamplingOptions{.temperature = 0, .top_k = 3, .top_p = 0.5}}) {
            std::vector<int32_t> tokens(50);
            std::vector<RngStream> rngs = streams(50, 1);
            ops::lm_head_sample(tokens, nullptr, hidden, weight, options, rngs, {.vocab_tile = 100});
            for (int64_t b = 0; b < 50; ++b) {
                int64_t argmax = 0;
                for (int64_t v = 1; v < 777; ++v)
                    if (logits.item({b, v}) > logits.item({b, argmax})) argmax = v;
                EXPECT_EQ(tokens[size_t(b)], argmax) << dtype_name(dtype) << " row " << b;
                EXPECT_EQ(rngs[size_t(b)].counter(), uint64_t(b) * 1000);
            }
        }
    }
}

// The returned log-probability is log_softmax(logits)[token] (T = 1, before truncation) in every mode,
// to 1e-5 in f32 (1e-12 in f64) relative to the larger of its size and 1, from the tile-wise online
// logsumexp: a likely token's logprob is near 0, while its error follows the logits' rounding (logits of
// a few units: ~1e-6 in f32, with the summation order of the thread count).
TEST(FusedSampling, LogprobIsLogSoftmaxOfTheChosenToken) {
    for (DType dtype : {DType::f32, DType::f64}) {
        const double bound = dtype == DType::f32 ? 1e-5 : 1e-12;
        const Tensor hidden = testkit::random_normal({40, 32}, dtype, 7);
        const Tensor weight = testkit::random_normal({3000, 32}, dtype, 8, 0.4);
        const Tensor logits = full_logits(hidden, weight);
        const SamplingOptions cases[] = {{.temperature = 0},
                                         {.temperature = 0.8},
                                         {.temperature = 1.0, .top_k = 40},
                                         {.temperature = 1.0, .top_p = 0.95},
                                         {.temperature = 1.5, .min_p = 0.1}};
        for (const SamplingOptions& options : cases)
            for (int64_t candidates : {int64_t(16), int64_t(1024)}) {
                Tensor logprobs = Tensor::empty({40}, dtype);
                logprobs.fill(NAN);
                const std::vector<int32_t> tokens =
                    fused_tokens(hidden, weight, options, {.vocab_tile = 128, .candidates = candidates}, 3, &logprobs);
                for (int64_t b = 0; b < 40; ++b) {
                    double max = -std::numeric_limits<double>::infinity(), sum = 0;
                    for (int64_t v = 0; v < 3000; ++v) max = std::max(max, logits.item({b, v}));
                    for (int64_t v = 0; v < 3000; ++v) sum += std::exp(logits.item({b, v}) - max);
                    const double expected = logits.item({b, tokens[size_t(b)]}) - max - std::log(sum);
                    EXPECT_LE(std::abs(logprobs.flat(b) - expected), bound * std::max(1.0, std::abs(expected)))
                        << dtype_name(dtype) << " row " << b << " T " << options.temperature << " top_k "
                        << options.top_k << " top_p " << options.top_p << " candidates " << candidates;
                }
            }
    }
}

// A draw moves each stream past the ⌈V/4⌉ Philox blocks it read, so the next draw has fresh noise.
TEST(FusedSampling, DrawAdvancesEachStream) {
    const Tensor hidden = testkit::random_normal({3, 8}, DType::f32, 9);
    const Tensor weight = testkit::random_normal({17, 8}, DType::f32, 10);
    std::vector<int32_t> tokens(3);
    std::vector<RngStream> rngs = streams(3, 5);
    ops::lm_head_sample(tokens, nullptr, hidden, weight, {.temperature = 1.0}, rngs);
    for (int64_t b = 0; b < 3; ++b) {
        EXPECT_EQ(rngs[size_t(b)].counter(), uint64_t(b) * 1000 + 5);  // ⌈17/4⌉ = 5
        const RngStream before = streams(3, 5)[size_t(b)];
        EXPECT_NE(ops::sampling_gumbel_noise(rngs[size_t(b)], 0), ops::sampling_gumbel_noise(before, 0));
    }
}

TEST(FusedSampling, BadInputsGiveClearErrors) {
    const Tensor hidden = testkit::random_normal({2, 8}, DType::f32, 11);
    const Tensor weight = testkit::random_normal({17, 8}, DType::f32, 12);
    std::vector<int32_t> tokens(2);
    std::vector<RngStream> rngs = streams(2, 1);
    const auto sample = [&](const Tensor& h, const Tensor& w, const SamplingOptions& o, Tensor* logprobs = nullptr) {
        ops::lm_head_sample(tokens, logprobs, h, w, o, rngs);
    };
    expect_error([&] { sample(hidden, testkit::random_normal({17, 9}, DType::f32, 13), {}); },
                 {"lm_head_sample: weight: expected shape [V, 8]"});
    expect_error([&] { sample(hidden, weight.to(DType::f64), {}); }, {"lm_head_sample: weight: expected dtype F32"});
    expect_error([&] { sample(testkit::random_normal({2, 2, 8}, DType::f32, 14), weight, {}); },
                 {"lm_head_sample: hidden: expected a [B, D] tensor"});
    expect_error([&] { sample(hidden, weight, {.temperature = -0.5}); }, {"temperature must be ≥ 0, got -0.5"});
    expect_error([&] { sample(hidden, weight, {.temperature = NAN}); }, {"temperature must be ≥ 0"});
    expect_error([&] { sample(hidden, weight, {.top_p = 0}); }, {"top_p must be in (0, 1], got 0"});
    expect_error([&] { sample(hidden, weight, {.top_p = 1.5}); }, {"top_p must be in (0, 1], got 1.5"});
    expect_error([&] { sample(hidden, weight, {.top_k = -1}); }, {"top_k must be ≥ 0"});
    expect_error([&] { sample(hidden, weight, {.repetition_penalty = 1.2}); }, {"penalties need the generated tokens"});
    Tensor wrong_logprobs = Tensor::empty({3}, DType::f32);
    expect_error([&] { sample(hidden, weight, {}, &wrong_logprobs); },
                 {"lm_head_sample: logprobs: expected shape [2]"});
    std::vector<int32_t> short_tokens(1);
    expect_error([&] { ops::lm_head_sample(short_tokens, nullptr, hidden, weight, {}, rngs); },
                 {"lm_head_sample: tokens: expected 2 entries"});
    std::vector<RngStream> short_rngs = streams(1, 1);
    expect_error([&] { ops::lm_head_sample(tokens, nullptr, hidden, weight, {}, short_rngs); },
                 {"lm_head_sample: rngs: expected 2 streams"});
    expect_error([&] { ops::lm_head_sample(tokens, nullptr, hidden, weight, {}, rngs, {.vocab_tile = 0}); },
                 {"tiling.vocab_tile must be > 0"});
}
