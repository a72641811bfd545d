// The CUDA LM head + sampler (backend/cuda/lm_head_sample.hpp) against the CPU op on the same bf16-rounded
// inputs: the same tokens row for row (pathwise: same noise, same streams), except where the CPU's two best
// scores, from float64 logits of the same values, are closer than the GPU's fp32 accumulation can tell
// apart (counted, and bounded); greedy = argmax; logprobs = the CPU's; a chi-square test of 10⁵ draws on a
// small vocabulary; streams advanced; options the GPU does not have refused by name. Skipped (not passed)
// where no GPU is usable.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

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
    RngStream data(20260515, 1);
    std::vector<double> h(D), w(size_t(V * D));
    for (double& x : h) x = data.normal();
    for (double& x : w) x = 0.5 * data.normal();
    std::vector<double> rows(size_t(kRows * D));
    for (int64_t r = 0; r < kRows; ++r) std::copy(h.begin(), h.end(), rows.begin() + r * D);
    const Tensor hidden = Tensor::from_vector({kRows, D}, rows, DType::f32);
    const Tensor weight = Tensor::from_vector({V, D}, w, DType::f32);
    const std::vector<double> logits = exact_logits(hidden.narrow(0, 0, 1), weight);
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
        // Every bin expects ≥ 5 draws here (a few percent of 10⁵), so Pearson's statistic has V − 1 dof;
        // its p-value from the Wilson–Hilferty cube-root normal approximation (ample at 16 dof).
        double chi2 = 0;
        for (int64_t v = 0; v < V; ++v) {
            const double expected = double(kRows * kCalls) * p[size_t(v)] / total;
            ASSERT_GE(expected, 5.0);
            chi2 += (double(counts[size_t(v)]) - expected) * (double(counts[size_t(v)]) - expected) / expected;
        }
        const double k = double(V - 1), z = (std::cbrt(chi2 / k) - (1 - 2 / (9 * k))) / std::sqrt(2 / (9 * k));
        const double p_value = 0.5 * std::erfc(z / std::sqrt(2.0));
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
    expect_error([&] { sample(hidden, weight, {.top_k = 5}); }, {"top_k = 5: top-k has no CUDA implementation"});
    expect_error([&] { sample(hidden, weight, {.top_p = 0.9}); }, {"top_p = 0.9: top-p has no CUDA implementation"});
    expect_error([&] { sample(hidden, weight, {.min_p = 0.1}); }, {"min_p = 0.1: min-p has no CUDA implementation"});
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
