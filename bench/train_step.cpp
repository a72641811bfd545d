// One training step (forward + backward + AdamW) of a spec'd model on the CPU or the GPU, next to the
// device's fp32 GEMM rate on the model's own largest matmul shape (OpenBLAS sgemm, or cuBLASLt through
// ops::matmul_forward), measured in the same run.
// With --precision bf16 (GPU), mixed precision (ops/precision.hpp) against cuBLASLt's bf16 GEMM rate.
//   build/bin/train_step [--config configs/demo.toml] [--device cpu|cuda] [--precision fp32|bf16]
//                        [--set key=value ...]   (with --set: only the config, so overridden)
// Prints a human-readable table and one JSON line per model (for bench/NOTES.md).
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "backend/cuda/device.hpp"
#include "core/rng.hpp"
#include "core/spec.hpp"
#include "model/language_model.hpp"
#include "ops/dense.hpp"
#include "ops/precision.hpp"
#if LINARCH_HAS_CUDA
#include "backend/cuda/gemm.hpp"
#endif
#include "train/optimizer.hpp"

using namespace linarch;
using Clock = std::chrono::steady_clock;

namespace {
double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

// Median of `repeats` timings of body() after one warm-up call.
template <typename F> double median_seconds(int repeats, F&& body) {
    body();
    std::vector<double> times;
    for (int i = 0; i < repeats; ++i) {
        const auto start = Clock::now();
        body();
        times.push_back(seconds_since(start));
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
}

double sgemm_gflops(int64_t m, int64_t n, int64_t k) {
    std::vector<float> a(size_t(m * k)), b(size_t(n * k)), c(size_t(m * n));
    RngStream rng(1, 2);
    for (auto& x : a) x = float(rng.normal());
    for (auto& x : b) x = float(rng.normal());
    const double seconds = median_seconds(5, [&] {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(m), int(n), int(k), 1.0f, a.data(), int(k), b.data(),
                    int(k), 0.0f, c.data(), int(n));
    });
    return 2.0 * double(m * n * k) / seconds / 1e9;
}

// The GPU's GEMM at the model's shape: fp32 (no TF32) as the fp32 model's matmuls, or bf16 operands with
// an fp32 result as mixed precision's (cuBLASLt alone, without the model's casts to bf16).
double gpu_gemm_gflops(int64_t m, int64_t n, int64_t k, ops::Precision precision) {
#if LINARCH_HAS_CUDA
    const bool bf16 = precision == ops::Precision::bf16;
    const DType operands = bf16 ? DType::bf16 : DType::f32;
    const Tensor a = Tensor::zeros({m, k}, operands, Device::cuda), b = Tensor::zeros({n, k}, operands, Device::cuda);
    Tensor c = Tensor::empty({m, n}, DType::f32, Device::cuda);
    const double seconds = median_seconds(5, [&] {
        cuda::gemm({.a = a.raw_data(), .b = b.raw_data(), .c = c.raw_data(), .m = m, .n = n, .k = k, .trans_b = true,
                    .type = bf16 ? cuda::GemmType::bf16_to_fp32 : cuda::GemmType::fp32});
        cuda::synchronize();
    });
    return 2.0 * double(m * n * k) / seconds / 1e9;
#else
    (void)m, (void)n, (void)k, (void)precision;
    cuda::require_device("train_step --device cuda");
    return 0;
#endif
}

void bench(const std::string& label, const Spec& spec, Device device, ops::Precision precision) {
    const ops::ScopedPrecision scoped(precision);
    LanguageModel model(spec.model, DType::f32, device);
    model.initialize(1);
    AdamW adam(spec.optim, model.parameters());
    const int64_t batch = spec.data.batch_size, seq_len = spec.data.seq_len, tokens = batch * seq_len;
    std::vector<int32_t> inputs(static_cast<size_t>(tokens)), targets(static_cast<size_t>(tokens));
    RngStream rng(3, 4);
    for (auto& t : inputs) t = int32_t(rng.below(uint64_t(spec.model.vocab_size)));
    for (auto& t : targets) t = int32_t(rng.below(uint64_t(spec.model.vocab_size)));
    double forward_s = 0, backward_s = 0;
    const double step_s = median_seconds(5, [&] {
        model.parameters().zero_grad();
        auto start = Clock::now();
        model.forward(inputs, targets, batch, seq_len);
        forward_s = seconds_since(start);
        start = Clock::now();
        model.backward(1.0 / double(tokens));
        backward_s = seconds_since(start);
        clip_grad_norm(model.parameters(), 1.0);
        adam.step(model.parameters(), 1e-3);
        cuda::synchronize();
    });
    const double flops = model.train_flops_per_token() * double(tokens);
    const double achieved = flops / step_s / 1e9;
    const bool gpu = device == Device::cuda;
    const double peak = gpu ? gpu_gemm_gflops(tokens, model.mlp_hidden(), spec.model.d_model, precision)
                            : sgemm_gflops(tokens, model.mlp_hidden(), spec.model.d_model);
    const std::string peer = !gpu                                 ? "sgemm"
                             : precision == ops::Precision::bf16 ? "cuBLASLt bf16 GEMM"
                                                                 : "cuBLASLt fp32 GEMM";
    fmt::print("{:<28} {} {} params {:>6.2f}M  B×T {}×{}  step {:7.1f} ms (fwd {:.1f}, bwd {:.1f})  {:8.0f} tok/s  "
               "{:6.1f} GFLOP/s = {:4.1f}% of {} {:.1f} GFLOP/s [{}×{}×{}], {} threads\n",
               label, device_name(device), ops::precision_name(precision), double(model.parameters().count()) / 1e6,
               batch, seq_len, step_s * 1e3,
               forward_s * 1e3, backward_s * 1e3, double(tokens) / step_s, achieved, 100 * achieved / peak,
               peer, peak, tokens, model.mlp_hidden(), spec.model.d_model,
               omp_get_max_threads());
    const nlohmann::json record = {{"model", label},          {"device", device_name(device)},
                                   {"precision", ops::precision_name(precision)},
                                   {"params", model.parameters().count()},
                                   {"batch", batch},          {"seq_len", seq_len},
                                   {"step_ms", step_s * 1e3}, {"tokens_per_s", double(tokens) / step_s},
                                   {"gflops", achieved},      {"gemm_gflops", peak},
                                   {"threads", omp_get_max_threads()}};
    fmt::print("{}\n", record.dump());
}
}  // namespace

int main(int argc, char** argv) {
    std::string config = "configs/demo.toml";
    Device device = Device::cpu;
    ops::Precision precision = ops::Precision::fp32;
    std::vector<std::string> overrides;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--config" && i + 1 < argc) {
            config = argv[++i];
        } else if (arg == "--device" && i + 1 < argc && (std::string(argv[i + 1]) == "cpu" ||
                                                          std::string(argv[i + 1]) == "cuda")) {
            device = std::string(argv[++i]) == "cuda" ? Device::cuda : Device::cpu;
        } else if (arg == "--precision" && i + 1 < argc && (std::string(argv[i + 1]) == "fp32" ||
                                                             std::string(argv[i + 1]) == "bf16")) {
            precision = ops::precision_from_name(argv[++i]);
        } else if (arg == "--set" && i + 1 < argc) {
            overrides.push_back(argv[++i]);
        } else {
            fmt::print(stderr, "usage: train_step [--config FILE] [--device cpu|cuda] [--precision fp32|bf16] "
                                "[--set key=value ...]\n");
            return 2;
        }
    }
    try {
        if (device == Device::cuda) cuda::require_device("train_step --device cuda");
        if (precision == ops::Precision::bf16 && device != Device::cuda) {
            fmt::print(stderr, "error: --precision bf16 needs --device cuda\n");
            return 2;
        }
        if (!overrides.empty()) {
            std::string label = config;
            for (const std::string& o : overrides) label += " " + o;
            bench(label, load_spec(config, overrides), device, precision);
            return 0;
        }
        bench(config, load_spec(config), device, precision);
        // The second shape: 4 layers, d=512, T=512.
        bench("4-layer d512 T512", load_spec(config, {"model.d_model=512", "model.n_layers=4", "model.n_heads=8",
                                                      "model.head_dim=64", "model.mlp_hidden=1408",
                                                      "data.seq_len=512", "data.batch_size=8"}), device, precision);
    } catch (const std::exception& e) {
        fmt::print(stderr, "error: {}\n", e.what());
        return 1;
    }
}
