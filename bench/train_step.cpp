// One training step (forward + backward + AdamW) of a spec'd model on the CPU or the GPU, next to the
// device's fp32 GEMM rate on the model's own largest matmul shape (OpenBLAS sgemm, or cuBLASLt through
// ops::matmul_forward), measured in the same run.
//   build/bin/train_step [--config configs/demo.toml] [--device cpu|cuda]
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

// fp32 GEMM on the GPU through the op the model uses (cuBLASLt, no TF32).
double gpu_gemm_gflops(int64_t m, int64_t n, int64_t k) {
    const Tensor a = Tensor::zeros({m, k}, DType::f32, Device::cuda), b = Tensor::zeros({n, k}, DType::f32, Device::cuda);
    Tensor c = Tensor::empty({m, n}, DType::f32, Device::cuda);
    const double seconds = median_seconds(5, [&] {
        ops::matmul_forward(c, a, b);
        cuda::synchronize();
    });
    return 2.0 * double(m * n * k) / seconds / 1e9;
}

void bench(const std::string& label, const Spec& spec, Device device) {
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
    const double peak = gpu ? gpu_gemm_gflops(tokens, model.mlp_hidden(), spec.model.d_model)
                            : sgemm_gflops(tokens, model.mlp_hidden(), spec.model.d_model);
    fmt::print("{:<28} {} params {:>6.2f}M  B×T {}×{}  step {:7.1f} ms (fwd {:.1f}, bwd {:.1f})  {:8.0f} tok/s  "
               "{:6.1f} GFLOP/s = {:4.1f}% of {} {:.1f} GFLOP/s [{}×{}×{}], {} threads\n",
               label, device_name(device), double(model.parameters().count()) / 1e6, batch, seq_len, step_s * 1e3,
               forward_s * 1e3, backward_s * 1e3, double(tokens) / step_s, achieved, 100 * achieved / peak,
               gpu ? "cuBLASLt fp32 GEMM" : "sgemm", peak, tokens, model.mlp_hidden(), spec.model.d_model,
               omp_get_max_threads());
    const nlohmann::json record = {{"model", label},          {"device", device_name(device)},
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
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--config" && i + 1 < argc) {
            config = argv[++i];
        } else if (arg == "--device" && i + 1 < argc && (std::string(argv[i + 1]) == "cpu" ||
                                                          std::string(argv[i + 1]) == "cuda")) {
            device = std::string(argv[++i]) == "cuda" ? Device::cuda : Device::cpu;
        } else {
            fmt::print(stderr, "usage: train_step [--config FILE] [--device cpu|cuda]\n");
            return 2;
        }
    }
    try {
        if (device == Device::cuda) cuda::require_device("train_step --device cuda");
        bench(config, load_spec(config), device);
        // The second shape: 4 layers, d=512, T=512.
        bench("4-layer d512 T512", load_spec(config, {"model.d_model=512", "model.n_layers=4", "model.n_heads=8",
                                                      "model.head_dim=64", "model.mlp_hidden=1408",
                                                      "data.seq_len=512", "data.batch_size=8"}), device);
    } catch (const std::exception& e) {
        fmt::print(stderr, "error: {}\n", e.what());
        return 1;
    }
}
