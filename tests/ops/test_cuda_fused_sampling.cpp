// The CUDA LM head + sampler (backend/cuda/lm_head_sample.hpp) against the CPU op on the same bf16-rounded
// inputs: the same tokens row for row (pathwise: same noise, same streams), except where the CPU's two best
// scores, from float64 logits of the same values, are closer than the GPU's fp32 accumulation can tell
// apart (counted, and bounded); greedy = argmax; logprobs = the CPU's; a chi-square test of 10⁵ draws on a
// small vocabulary, with and without top-k / top-p / min-p; the filters' draws equal the CPU op's on
// logits both devices form exactly (integer products, many ties); streams advanced; bad inputs refused by
// name. Skipped (not passed) where no GPU is usable.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "backend/cuda/device.hpp"
#include "core/rng.hpp"
#include "core/tensor.hpp"
#include "infer/sampling.hpp"
#include "ops/fused_sampling.hpp"
#include "support/gpu.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using testkit::expect_error;

namespace {

std::vector<RngStream> streams(int64_t rows, uint64_t seed) {
    std::vector<RngStream> rngs;
    for (int64_t r = 0; r < rows; ++r) rngs.emplace_back(seed, uint64_t(r) * 7 + 3, uint64_t(r) * 1000);
    return rngs;
}

// logits[b, v] in float64 from the (bf16-rounded) values of hidden [B, D] and weight [V, D].
std::vector<double> exact_logits(const Tensor& hidden, const Tensor& weight) {
    const int64_t B = hidden.size(0), D = hidden.size(1), V = weight.size(0);
    const std::vector<double> h = hidden.to_vector(), w = weight.to_vector();
    std::vector<double> logits(size_t(B * V));
    for (int64_t b = 0; b < B; ++b)
        for (int64_t v = 0; v < V; ++v) {
            double acc = 0;
            for (int64_t d = 0; d < D; ++d) acc += h[size_t(b * D + d)] * w[size_t(v * D + d)];
            logits[size_t(b * V + v)] = acc;
        }
    return logits;
}

// One row of hidden [D] (N(0,1), fixed seed) repeated `rows` times, a head [V,D] (N(0, 0.5²)), and the
// row's exact logits: many draws of one distribution per call.
struct RepeatedRow {
    Tensor hidden, weight;
    std::vector<double> logits;
};
RepeatedRow repeated_row(uint64_t seed, int64_t rows, int64_t V, int64_t D) {
    RngStream data(seed, 1);
    std::vector<double> h(static_cast<size_t>(D)), w(static_cast<size_t>(V * D));
    for (double& x : h) x = data.normal();
    for (double& x : w) x = 0.5 * data.normal();
    std::vector<double> repeated(size_t(rows * D));
    for (int64_t r = 0; r < rows; ++r) std::copy(h.begin(), h.end(), repeated.begin() + r * D);
    RepeatedRow out{Tensor::from_vector({rows, D}, repeated, DType::f32), Tensor::from_vector({V, D}, w, DType::f32), {}};
    out.logits = exact_logits(out.hidden.narrow(0, 0, 1), out.weight);
    return out;
}

// Pearson's statistic's p-value at `dof` degrees of freedom, by the Wilson–Hilferty cube-root normal
// approximation (ample from a few dof).
double chi_square_p_value(double chi2, double dof) {
    const double z = (std::cbrt(chi2 / dof) - (1 - 2 / (9 * dof))) / std::sqrt(2 / (9 * dof));
    return 0.5 * std::erfc(z / std::sqrt(2.0));
}

// Largest difference between the GPU's fp32 logits and the exact ones for which a different token is
// forgiven: a near tie of the two draws' scores (documented in backend/cuda/lm_head_sample.hpp).
constexpr double kNearTie = 1e-4;

struct Comparison {
    int rows = 0, mismatches = 0, near_ties = 0;
};

// Draws on the GPU (bf16 or f32 inputs) and the CPU (the same values in f64) from the same streams and
// compares them row for row; the logprobs too when temperature > 0.
Comparison compare_with_cpu(int64_t B, int64_t D, int64_t V, double temperature, uint64_t seed, DType dtype,
                            double logit_std = 3.0) {
    const Tensor hidden = testkit::random_normal({B, D}, dtype, seed);
    const Tensor weight = testkit::random_normal({V, D}, dtype, seed + 1, logit_std / std::sqrt(double(D)));
    const SamplingOptions options{.temperature = temperature};
    std::vector<RngStream> gpu_rngs = streams(B, seed + 2), cpu_rngs = gpu_rngs;
    const std::vector<RngStream> before = gpu_rngs;
    std::vector<int32_t> gpu_tokens(size_t(B), -1), cpu_tokens(size_t(B), -1);
    Tensor gpu_logprobs = Tensor::empty({B}, DType::f32, Device::cuda), cpu_logprobs = Tensor::empty({B}, DType::f64);
    ops::lm_head_sample(gpu_tokens, &gpu_logprobs, hidden.to(Device::cuda), weight.to(Device::cuda), options, gpu_rngs);
    ops::lm_head_sample(cpu_tokens, &cpu_logprobs, hidden.to(DType::f64), weight.to(DType::f64), options, cpu_rngs);
    const std::vector<double> gpu_lp = gpu_logprobs.to(Device::cpu).to_vector(), cpu_lp = cpu_logprobs.to_vector();
    const std::vector<double> logits = exact_logits(hidden, weight);
    Comparison result;
    for (int64_t b = 0; b < B; ++b) {
        ++result.rows;
        EXPECT_EQ(gpu_rngs[size_t(b)].counter(), cpu_rngs[size_t(b)].counter()) << "row " << b;
        const int32_t g = gpu_tokens[size_t(b)], c = cpu_tokens[size_t(b)];
        if (g < 0 || g >= V) {
            ADD_FAILURE() << "row " << b << ": token " << g << " outside [0, " << V << ")";
            continue;
        }
        if (g == c) {
            EXPECT_NEAR(gpu_lp[size_t(b)], cpu_lp[size_t(b)], 2e-3) << "row " << b;
            continue;
        }
        ++result.mismatches;
        const auto score = [&](int32_t v) {
            const double l = logits[size_t(b * V + v)];
            return temperature == 0 ? l : l / temperature + ops::sampling_gumbel_noise(before[size_t(b)], v);
        };
        const double margin = score(c) - score(g);
        if (margin >= 0 && margin < kNearTie / (temperature == 0 ? 1 : temperature)) ++result.near_ties;
        else ADD_FAILURE() << "row " << b << ": GPU token " << g << ", CPU token " << c << ", CPU margin " << margin;
    }
    return result;
}

}  // namespace

// Many rows and seeds, several chunks (V > 32768, the CUDA chunk), V not a multiple of 4, both thread
// shapes of the reduction (B < 32 and B ≥ 32).
TEST(CudaFusedSampling, SameTokensAsTheCpuOp) {
    SKIP_WITHOUT_GPU();
    struct Case {
        int64_t B, D, V;
        double temperature;
        DType dtype;
    };
    const Case cases[] = {{64, 128, 40003, 1.0, DType::bf16}, {5, 96, 70001, 0.7, DType::bf16},
                          {40, 64, 5000, 1.5, DType::bf16},   {33, 32, 257, 1.0, DType::bf16},
                          {1, 256, 32768, 1.0, DType::bf16},  {48, 64, 33000, 0.8, DType::f32}};
    int rows = 0, mismatches = 0, near_ties = 0;
    for (const Case& c : cases)
        for (uint64_t seed : {11u, 23u, 37u}) {
            const Comparison r = compare_with_cpu(c.B, c.D, c.V, c.temperature, seed * 100, c.dtype);
            rows += r.rows, mismatches += r.mismatches, near_ties += r.near_ties;
        }
    std::printf("  %d rows: %d differ from the CPU, %d of them near ties\n", rows, mismatches, near_ties);
    EXPECT_EQ(mismatches, near_ties);
    EXPECT_LE(near_ties, rows / 100);
}

TEST(CudaFusedSampling, GreedyIsTheCpuArgmaxAndLeavesStreams) {
    SKIP_WITHOUT_GPU();
    for (uint64_t seed : {5u, 6u}) {
        const Comparison r = compare_with_cpu(50, 64, 40000, 0.0, seed * 1000, DType::bf16);
        EXPECT_EQ(r.mismatches, r.near_ties);
    }
    const Tensor hidden = testkit::random_normal({3, 16}, DType::bf16, 1).to(Device::cuda);
    const Tensor weight = testkit::random_normal({100, 16}, DType::bf16, 2).to(Device::cuda);
    std::vector<int32_t> tokens(3);
    std::vector<RngStream> rngs = streams(3, 4);
    ops::lm_head_sample(tokens, nullptr, hidden, weight, {.temperature = 0}, rngs);
    for (int64_t b = 0; b < 3; ++b) EXPECT_EQ(rngs[size_t(b)].counter(), streams(3, 4)[size_t(b)].counter());
}

TEST(CudaFusedSampling, DrawAdvancesEachStream) {
    SKIP_WITHOUT_GPU();
    const Tensor hidden = testkit::random_normal({3, 16}, DType::bf16, 3).to(Device::cuda);
    const Tensor weight = testkit::random_normal({17, 16}, DType::bf16, 4).to(Device::cuda);
    std::vector<int32_t> tokens(3);
    std::vector<RngStream> rngs = streams(3, 5);
    ops::lm_head_sample(tokens, nullptr, hidden, weight, {.temperature = 1.0}, rngs);
    for (int64_t b = 0; b < 3; ++b) EXPECT_EQ(rngs[size_t(b)].counter(), uint64_t(b) * 1000 + 5);  // ⌈17/4⌉ = 5
}

// 10⁵ draws of one small row (V = 17, D = 8, fixed seeds: a deterministic verdict) against softmax(l/T)
// of its exact logits, chi-square at p = 1e-4 (tests/ops/test_fused_sampling.cpp's test, on the GPU).
TEST(CudaFusedSampling, TemperatureDrawsFollowSoftmax) {
    SKIP_WITHOUT_GPU();
    constexpr int64_t kRows = 1000, kCalls = 100, V = 17, D = 8;
    const RepeatedRow row = repeated_row(20260515, kRows, V, D);
    const Tensor &hidden = row.hidden, &weight = row.weight;
    const std::vector<double>& logits = row.logits;
    for (double temperature : {1.0, 0.6}) {
        std::vector<int64_t> counts(V, 0);
        std::vector<RngStream> rngs = streams(kRows, 7);
        std::vector<int32_t> tokens(static_cast<size_t>(kRows));
        const Tensor h_gpu = hidden.to(Device::cuda), w_gpu = weight.to(Device::cuda);
        for (int64_t call = 0; call < kCalls; ++call) {
            ops::lm_head_sample(tokens, nullptr, h_gpu, w_gpu, {.temperature = temperature}, rngs);
            for (int32_t t : tokens) ++counts[size_t(t)];
        }
        const double max = *std::max_element(logits.begin(), logits.end());
        std::vector<double> p(V);
        for (int64_t v = 0; v < V; ++v) p[size_t(v)] = std::exp((logits[size_t(v)] - max) / temperature);
        const double total = std::accumulate(p.begin(), p.end(), 0.0);
        // Every bin expects ≥ 5 draws here (a few percent of 10⁵), so Pearson's statistic has V − 1 dof.
        double chi2 = 0;
        for (int64_t v = 0; v < V; ++v) {
            const double expected = double(kRows * kCalls) * p[size_t(v)] / total;
            ASSERT_GE(expected, 5.0);
            chi2 += (double(counts[size_t(v)]) - expected) * (double(counts[size_t(v)]) - expected) / expected;
        }
        const double k = double(V - 1), p_value = chi_square_p_value(chi2, k);
        std::printf("  T = %.1f: chi2 = %.2f, dof = %.0f, p = %.3g\n", temperature, chi2, k, p_value);
        EXPECT_GT(p_value, 1e-4) << "T = " << temperature << ": chi2 " << chi2;
    }
}

TEST(CudaFusedSampling, BadInputsGiveClearErrors) {
    SKIP_WITHOUT_GPU();
    const Tensor hidden = testkit::random_normal({2, 8}, DType::bf16, 11).to(Device::cuda);
    const Tensor weight = testkit::random_normal({17, 8}, DType::bf16, 12).to(Device::cuda);
    std::vector<int32_t> tokens(2);
    std::vector<RngStream> rngs = streams(2, 1);
    const auto sample = [&](const Tensor& h, const Tensor& w, const SamplingOptions& o, Tensor* logprobs = nullptr) {
        ops::lm_head_sample(tokens, logprobs, h, w, o, rngs);
    };
    expect_error([&] { sample(hidden, weight, {.top_p = 0}); }, {"top_p must be in (0, 1]"});
    expect_error([&] { sample(hidden, weight, {.min_p = 2}); }, {"min_p must be in [0, 1]"});
    expect_error([&] { sample(hidden, weight, {.repetition_penalty = 1.2}); }, {"penalties need the generated tokens"});
    expect_error([&] { sample(hidden, weight, {.temperature = -1}); }, {"temperature must be ≥ 0"});
    expect_error([&] { sample(hidden, weight.to(Device::cpu), {}); }, {"lm_head_sample: weight: tensor is on cpu"});
    expect_error([&] { sample(hidden, weight.to(Device::cpu).to(DType::f32).to(Device::cuda), {}); },
                 {"lm_head_sample: weight: expected dtype BF16"});
    expect_error([&] { sample(hidden.to(Device::cpu).to(DType::f64).to(Device::cuda), weight, {}); },
                 {"the CUDA path takes bf16 (or f32) hidden and weight"});
    expect_error([&] { sample(hidden, testkit::random_normal({17, 9}, DType::bf16, 13).to(Device::cuda), {}); },
                 {"lm_head_sample: weight: expected shape [V, 8]"});
    Tensor wrong_logprobs = Tensor::empty({3}, DType::f32, Device::cuda);
    expect_error([&] { sample(hidden, weight, {}, &wrong_logprobs); },
                 {"lm_head_sample: logprobs: expected shape [2]"});
    Tensor host_logprobs = Tensor::empty({2}, DType::f32);
    expect_error([&] { sample(hidden, weight, {}, &host_logprobs); }, {"lm_head_sample: logprobs: tensor is on cpu"});
    std::vector<int32_t> short_tokens(1);
    expect_error([&] { ops::lm_head_sample(short_tokens, nullptr, hidden, weight, {}, rngs); },
                 {"lm_head_sample: tokens: expected 2 entries"});
    // Greedy ignores the truncations, as on the CPU.
    sample(hidden, weight, {.temperature = 0, .top_k = 3});
}

namespace {

// A [rows, cols] tensor of integers in [−2, 2] (exact in bf16): logits of such rows are integers that
// fp32 accumulation forms exactly, so the GPU's logits are the CPU's bit for bit, and equal logits (ties,
// broken by the lower index) are common.
Tensor small_integers(int64_t rows, int64_t cols, uint64_t stream) {
    RngStream rng(testkit::test_seed(), stream);
    std::vector<double> values(size_t(rows * cols));
    for (double& x : values) x = double(int64_t(rng.next_u32() % 5) - 2);
    return Tensor::from_vector({rows, cols}, values, DType::bf16);
}

std::string describe(const SamplingOptions& o) {
    return fmt::format("T={} top_k={} top_p={} min_p={}", o.temperature, o.top_k, o.top_p, o.min_p);
}

}  // namespace

// Top-k, top-p and min-p, alone and together, on exactly formed logits: the GPU draws the CPU op's token in
// every row, with its log-probability. Several chunks (V > 32768), V odd, both thread shapes, groups of
// materialised rows (and the default, all at once), k = 1 and k = V − 1.
TEST(CudaFusedSampling, FilteredDrawsAreTheCpuOpsOnExactLogits) {
    SKIP_WITHOUT_GPU();
    struct Case {
        int64_t B, D, V;
        SamplingOptions options;
        int64_t materialised_rows = 0;
    };
    const std::vector<Case> cases = {
        {5, 48, 1000, {.temperature = 2.0, .top_k = 1}},
        {5, 48, 1000, {.temperature = 2.0, .top_k = 7}},
        {40, 48, 1000, {.temperature = 3.0, .top_k = 999}},
        {5, 48, 40001, {.temperature = 2.0, .top_k = 50}},
        {5, 48, 40001, {.temperature = 2.0, .top_p = 0.5}},
        {70, 32, 5003, {.temperature = 5.0, .top_p = 0.95}, 16},
        {70, 32, 5003, {.temperature = 5.0, .top_k = 9, .min_p = 0.01}, 64},
        {5, 48, 70001, {.temperature = 2.0, .min_p = 0.1}},
        {40, 48, 40001, {.temperature = 3.0, .top_k = 20, .top_p = 0.8, .min_p = 0.02}},
        {3, 16, 33, {.temperature = 1.0, .top_p = 0.3, .min_p = 0.5}},
    };
    uint64_t stream = 700;
    for (const Case& c : cases) {
        SCOPED_TRACE(fmt::format("B={} D={} V={} {} rows at once {}", c.B, c.D, c.V, describe(c.options),
                                 c.materialised_rows));
        const Tensor hidden = small_integers(c.B, c.D, stream++), weight = small_integers(c.V, c.D, stream++);
        std::vector<RngStream> gpu_rngs = streams(c.B, stream++), cpu_rngs = gpu_rngs;
        std::vector<int32_t> gpu_tokens(size_t(c.B), -1), cpu_tokens(size_t(c.B), -2);
        Tensor gpu_logprobs = Tensor::empty({c.B}, DType::f32, Device::cuda);
        Tensor cpu_logprobs = Tensor::empty({c.B}, DType::f64);
        ops::lm_head_sample(gpu_tokens, &gpu_logprobs, hidden.to(Device::cuda), weight.to(Device::cuda), c.options,
                            gpu_rngs, {.materialised_rows = c.materialised_rows});
        ops::lm_head_sample(cpu_tokens, &cpu_logprobs, hidden.to(DType::f64), weight.to(DType::f64), c.options,
                            cpu_rngs);
        EXPECT_EQ(gpu_tokens, cpu_tokens);
        const std::vector<double> gpu_lp = gpu_logprobs.to(Device::cpu).to_vector(), cpu_lp = cpu_logprobs.to_vector();
        for (int64_t b = 0; b < c.B; ++b) {
            EXPECT_NEAR(gpu_lp[size_t(b)], cpu_lp[size_t(b)], 2e-3) << "row " << b;
            EXPECT_EQ(gpu_rngs[size_t(b)].counter(), cpu_rngs[size_t(b)].counter()) << "row " << b;
        }
    }
}

// 10⁵ draws of one small row (V = 17) under each filter against softmax(l/T) restricted to the plain
// sampler's kept set and renormalised (chi-square at p = 1e-4, fixed seeds); nothing outside the set.
TEST(CudaFusedSampling, FilteredDrawsFollowTheRestrictedSoftmax) {
    SKIP_WITHOUT_GPU();
    constexpr int64_t kRows = 1000, kCalls = 100, V = 17, D = 8;
    const RepeatedRow row = repeated_row(20261125, kRows, V, D);
    const Tensor &hidden = row.hidden, &weight = row.weight;
    const std::vector<double>& logits = row.logits;
    const Tensor h_gpu = hidden.to(Device::cuda), w_gpu = weight.to(Device::cuda);
    for (const SamplingOptions& options : {SamplingOptions{.temperature = 1.0, .top_k = 5},
                                           SamplingOptions{.temperature = 0.8, .top_p = 0.7},
                                           SamplingOptions{.temperature = 1.0, .min_p = 0.2}}) {
        SCOPED_TRACE(describe(options));
        // The kept set: the plain sampler's prefix of the row sorted by descending logit.
        std::vector<int32_t> order(V);
        std::iota(order.begin(), order.end(), 0);
        std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[size_t(a)] > logits[size_t(b)]; });
        std::vector<double> weights(V);
        for (int64_t i = 0; i < V; ++i)
            weights[size_t(i)] = std::exp((logits[size_t(order[size_t(i)])] - logits[size_t(order[0])]) / options.temperature);
        size_t keep = options.top_k > 0 ? size_t(options.top_k) : size_t(V);
        const double total = std::accumulate(weights.begin(), weights.begin() + int64_t(keep), 0.0);
        if (options.top_p < 1) {
            double mass = 0;
            size_t cut = 0;
            while (cut < keep && mass < options.top_p * total) mass += weights[cut++];
            keep = cut;
        }
        if (options.min_p > 0)
            keep = size_t(std::count_if(weights.begin(), weights.begin() + int64_t(keep),
                                        [&](double x) { return x >= options.min_p; }));
        ASSERT_GE(keep, 2u);
        ASSERT_LT(keep, size_t(V));
        std::vector<int64_t> counts(V, 0);
        std::vector<RngStream> rngs = streams(kRows, 11);
        std::vector<int32_t> tokens(static_cast<size_t>(kRows));
        for (int64_t call = 0; call < kCalls; ++call) {
            ops::lm_head_sample(tokens, nullptr, h_gpu, w_gpu, options, rngs);
            for (int32_t t : tokens) ++counts[size_t(t)];
        }
        const double kept_total = std::accumulate(weights.begin(), weights.begin() + int64_t(keep), 0.0);
        double chi2 = 0;
        for (size_t i = 0; i < size_t(V); ++i) {
            const int64_t observed = counts[size_t(order[i])];
            if (i >= keep) {
                EXPECT_EQ(observed, 0) << "token " << order[i] << " is outside the kept set";
                continue;
            }
            const double expected = double(kRows * kCalls) * weights[i] / kept_total;
            ASSERT_GE(expected, 5.0);
            chi2 += (double(observed) - expected) * (double(observed) - expected) / expected;
        }
        const double k = double(keep - 1), p_value = chi_square_p_value(chi2, k);
        std::printf("  %s: kept %zu, chi2 = %.2f, dof = %.0f, p = %.3g\n", describe(options).c_str(), keep, chi2, k,
                    p_value);
        EXPECT_GT(p_value, 1e-4) << "chi2 " << chi2;
    }
}
