// The LM head fused with sampling (ops/fused_sampling.hpp) on the CPU, next to matmul-then-sample
// (lm_head_logits, then sample_token on each row: the plain path) and the LM-head matmul alone,
// measured in the same run on the same data.
//   build/bin/fused_sampling [--logit-std 1.0] [--repeats 7] [--device cpu|cuda]
// CPU shapes: V = 32000 and 32768, D = 512 and 1024, B = 1, 8, 64, temperature 1; then top-k, top-p and
// min-p at V = 32000, D = 512. Hidden rows are N(0, 1) and the head N(0, std²/D), so the logits are
// N(0, std²). Prints a table (median time, spread = (max − min)/median) and one JSON line per row.
// --device cuda: issue 7's shapes (B, D, V) = (1, 4096, 128256), (64, 4096, 128256), (256, 2048, 151936)
// in bf16, temperature 0.8 alone and with top-k 50, top-p 0.9, min-p 0.05; "matmul" is cuBLASLt's bf16
// LM head alone (bf16 logits, as torch's matmul), "matmul+sample" fp32 logits copied to the host and
// sampled there (what the engine did for the filters before the GPU had them; timed once, up to B = 64).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "core/rng.hpp"
#include "core/tensor.hpp"
#include "infer/sampling.hpp"
#include "ops/dense.hpp"
#include "ops/fused_sampling.hpp"
#if LINARCH_HAS_CUDA
#include "backend/cuda/device.hpp"
#include "backend/cuda/gemm.hpp"
#endif

using namespace linarch;
using Clock = std::chrono::steady_clock;

namespace {

struct Timing {
    double median_ms, spread;
};

// Median of `repeats` timings of body() after one warm-up call, and their relative spread.
template <typename F> Timing time_ms(int repeats, F&& body) {
    body();
    std::vector<double> times;
    for (int i = 0; i < repeats; ++i) {
        const auto start = Clock::now();
        body();
        times.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
    }
    std::sort(times.begin(), times.end());
    const double median = times[times.size() / 2];
    return {median, (times.back() - times.front()) / median};
}

Tensor normal(const Shape& shape, uint64_t stream, double std) {
    Tensor t = Tensor::empty(shape, DType::f32);
    RngStream rng(1, stream);
    float* p = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = float(std * rng.normal());
    return t;
}

std::string describe(const SamplingOptions& o) {
    std::string out = fmt::format("T={}", o.temperature);
    if (o.top_k > 0) out += fmt::format(" top_k={}", o.top_k);
    if (o.top_p < 1) out += fmt::format(" top_p={}", o.top_p);
    if (o.min_p > 0) out += fmt::format(" min_p={}", o.min_p);
    return out;
}

// One table row (median ms and spread of each path, fused's speed-up over matmul+sample and its ratio to
// the matmul) and its JSON line.
void report(const char* device, int64_t V, int64_t D, int64_t B, const SamplingOptions& options, double logit_std,
            const Timing& matmul, const Timing& plain, const Timing& fused) {
    fmt::print("{:>6} {:>5} {:>3}  {:<30} {:8.3f} ({:3.0f}%) {:8.3f} ({:3.0f}%) {:8.3f} ({:3.0f}%)   {:5.2f}×  {:5.2f}×\n",
               V, D, B, describe(options), matmul.median_ms, 100 * matmul.spread, plain.median_ms,
               100 * plain.spread, fused.median_ms, 100 * fused.spread, plain.median_ms / fused.median_ms,
               fused.median_ms / matmul.median_ms);
    const nlohmann::json record = {{"device", device},
                                   {"V", V},
                                   {"D", D},
                                   {"B", B},
                                   {"options", describe(options)},
                                   {"logit_std", logit_std},
                                   {"matmul_ms", matmul.median_ms},
                                   {"plain_ms", plain.median_ms},
                                   {"fused_ms", fused.median_ms},
                                   {"spread", {matmul.spread, plain.spread, fused.spread}},
                                   {"speedup_vs_plain", plain.median_ms / fused.median_ms},
                                   {"fused_over_matmul", fused.median_ms / matmul.median_ms},
                                   {"threads", omp_get_max_threads()}};
    fmt::print("{}\n", record.dump());
    std::fflush(stdout);
}

void bench(int64_t V, int64_t D, int64_t B, const SamplingOptions& options, double logit_std, int repeats) {
    const Tensor hidden = normal({B, D}, 1, 1.0);
    const Tensor weight = normal({V, D}, 2, logit_std / std::sqrt(double(D)));
    Tensor logits = Tensor::empty({B, V}, DType::f32);
    std::vector<int32_t> tokens(static_cast<size_t>(B));
    std::vector<RngStream> rngs;
    for (int64_t b = 0; b < B; ++b) rngs.emplace_back(3, uint64_t(b));

    const Timing matmul = time_ms(repeats, [&] { ops::lm_head_logits(logits, hidden, weight); });
    const Timing plain = time_ms(repeats, [&] {
        ops::lm_head_logits(logits, hidden, weight);
        for (int64_t b = 0; b < B; ++b)
            tokens[size_t(b)] = sample_token({logits.data<float>() + b * V, size_t(V)}, options, rngs[size_t(b)]);
    });
    const Timing fused = time_ms(repeats, [&] { ops::lm_head_sample(tokens, nullptr, hidden, weight, options, rngs); });

    report("cpu", V, D, B, options, logit_std, matmul, plain, fused);
}

#if LINARCH_HAS_CUDA
// Uniform with the given standard deviation: the GPU shapes need ~10⁹ values, and the logits (sums of
// thousands of products) come out normal all the same.
Tensor uniform(const Shape& shape, uint64_t stream, double std) {
    Tensor t = Tensor::empty(shape, DType::f32);
    RngStream rng(1, stream);
    float* p = t.data<float>();
    const double half_width = std * std::sqrt(3.0), scale = 2 * half_width / 4294967296.0;
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = float(double(rng.next_u32()) * scale - half_width);
    return t;
}

void bench_cuda(const Tensor& hidden, const Tensor& weight, const SamplingOptions& options, double logit_std,
                int repeats) {
    const int64_t B = hidden.size(0), D = hidden.size(1), V = weight.size(0);
    Tensor logits16 = Tensor::empty({B, V}, DType::bf16, Device::cuda);
    Tensor logits32 = Tensor::empty({B, V}, DType::f32, Device::cuda);
    std::vector<int32_t> tokens(static_cast<size_t>(B));
    std::vector<RngStream> rngs;
    for (int64_t b = 0; b < B; ++b) rngs.emplace_back(3, uint64_t(b));
    const auto head = [&](Tensor& out, cuda::GemmType type) {
        cuda::gemm({.a = hidden.raw_data(), .b = weight.raw_data(), .c = out.raw_data(), .m = B, .n = V, .k = D,
                    .trans_b = true, .type = type});
    };
    const Timing matmul = time_ms(repeats, [&] {
        head(logits16, cuda::GemmType::bf16);
        cuda::synchronize();
    });
    // The host path sorts every row (~60 ms each at V = 128k): timed once, and not at all beyond 64 rows.
    const bool time_plain = B <= 64;
    const Timing plain = !time_plain ? Timing{NAN, NAN} : time_ms(1, [&] {
        head(logits32, cuda::GemmType::bf16_to_fp32);
        const Tensor rows = logits32.to(Device::cpu);
        for (int64_t b = 0; b < B; ++b)
            tokens[size_t(b)] = sample_token({rows.data<float>() + b * V, size_t(V)}, options, rngs[size_t(b)]);
    });
    const Timing fused = time_ms(repeats, [&] { ops::lm_head_sample(tokens, nullptr, hidden, weight, options, rngs); });
    report("cuda", V, D, B, options, logit_std, matmul, plain, fused);
}

void run_cuda(double logit_std, int repeats) {
    cuda::require_device("fused_sampling --device cuda");
    fmt::print("LM head + sampling, bf16 on {}, logits N(0, {}²); wall ms per call (synchronised), median of {}\n",
               cuda::describe_device(), logit_std, repeats);
    fmt::print("{:>6} {:>5} {:>3}  {:<30} {:>15} {:>15} {:>15}   {:>6}  {:>6}\n", "V", "D", "B", "options", "matmul",
               "matmul+sample", "fused", "vs m+s", "/matmul");
    struct Shape3 {
        int64_t B, D, V;
    };
    for (const Shape3 s : {Shape3{1, 4096, 128256}, Shape3{64, 4096, 128256}, Shape3{256, 2048, 151936}}) {
        const Tensor hidden = uniform({s.B, s.D}, 1, 1.0).to(DType::bf16).to(Device::cuda);
        const Tensor weight = uniform({s.V, s.D}, 2, logit_std / std::sqrt(double(s.D))).to(DType::bf16).to(Device::cuda);
        for (const SamplingOptions& options :
             {SamplingOptions{.temperature = 0.8}, SamplingOptions{.temperature = 0.8, .top_k = 50},
              SamplingOptions{.temperature = 0.8, .top_p = 0.9}, SamplingOptions{.temperature = 0.8, .min_p = 0.05},
              SamplingOptions{.temperature = 0.8, .top_k = 50, .top_p = 0.9, .min_p = 0.05}})
            bench_cuda(hidden, weight, options, logit_std, repeats);
    }
}
#endif

}  // namespace

int main(int argc, char** argv) {
    double logit_std = 1.0;
    int repeats = 7;
    std::string device = "cpu";
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--logit-std" && i + 1 < argc) logit_std = std::stod(argv[++i]);
        else if (arg == "--repeats" && i + 1 < argc) repeats = std::stoi(argv[++i]);
        else if (arg == "--device" && i + 1 < argc) device = argv[++i];
        else {
            fmt::print(stderr, "usage: fused_sampling [--logit-std X] [--repeats N] [--device cpu|cuda]\n");
            return arg == "--help" || arg == "-h" ? 0 : 2;
        }
    }
    try {
        if (device == "cuda") {
#if LINARCH_HAS_CUDA
            run_cuda(logit_std, repeats);
            return 0;
#else
            fmt::print(stderr, "error: --device cuda: this build has no CUDA backend (configure with LINARCH_CUDA=ON)\n");
            return 1;
#endif
        }
        if (device != "cpu") {
            fmt::print(stderr, "error: --device: expected cpu or cuda, got {}\n", device);
            return 2;
        }
        fmt::print("LM head + sampling, f32, {} threads, logits N(0, {}²); times in ms, median of {} (spread)\n",
                   omp_get_max_threads(), logit_std, repeats);
        fmt::print("{:>6} {:>5} {:>3}  {:<30} {:>15} {:>15} {:>15}   {:>6}  {:>6}\n", "V", "D", "B", "options",
                   "matmul", "matmul+sample", "fused", "vs m+s", "/matmul");
        for (int64_t V : {32000, 32768})
            for (int64_t D : {512, 1024})
                for (int64_t B : {1, 8, 64}) bench(V, D, B, {.temperature = 1.0}, logit_std, repeats);
        for (const SamplingOptions& options : {SamplingOptions{.temperature = 1.0, .top_k = 50},
                                               SamplingOptions{.temperature = 1.0, .top_p = 0.9},
                                               SamplingOptions{.temperature = 1.0, .min_p = 0.05}})
            for (int64_t B : {1, 64}) bench(32000, 512, B, options, logit_std, repeats);
    } catch (const std::exception& e) {
        fmt::print(stderr, "error: {}\n", e.what());
        return 1;
    }
}
