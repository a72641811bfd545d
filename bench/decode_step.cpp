// What one decode step of a layer costs the host at B=1 on the GPU (the launch-bound case of issue 6:
// target ≤ 20 µs, fla's fused_recurrent gated delta rule 134 µs in ../shared/anchors.md): the op call
// (checks + one launch) and the call followed by a synchronisation, next to the floor measured in the
// same run — the smallest GPU round trip, a 4-byte cudaMemsetAsync then a synchronisation.
// The kernel's own figures at B = 1…256 against copy bandwidth: dev/cuda/recurrent_step.cu.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#if LINARCH_HAS_CUDA
#include <cuda_runtime.h>
#endif

#include "backend/cuda/device.hpp"
#include "core/rng.hpp"
#include "core/tensor.hpp"
#include "ops/recurrent_step.hpp"

using namespace linarch;

#if LINARCH_HAS_CUDA
namespace {
Tensor random_tensor(const Shape& shape, DType dtype, uint64_t stream, double low, double high) {
    RngStream rng(1, stream);
    std::vector<double> values(static_cast<size_t>(shape_numel(shape)));
    for (double& x : values) x = low + (high - low) * rng.uniform();
    return Tensor::from_vector(shape, values, DType::f32).to(dtype).to(Device::cuda);
}

double median(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    return values[values.size() / 2];
}
}  // namespace
#endif

int main(int argc, char** argv) {
    CLI::App app("One decode step (gated delta rule) at B=1 through ops::delta_rule_step on the GPU: host cost");
    int64_t heads = 16, head_dim = 128, repeats = 2000;
    app.add_option("--heads", heads, "Heads")->capture_default_str();
    app.add_option("--head-dim", head_dim, "Dk = Dv (64 or 128)")->capture_default_str();
    app.add_option("--repeats", repeats, "Timed steps (medians reported)")->capture_default_str();
    CLI11_PARSE(app, argc, argv);
    if (cuda::device_count() == 0) {
        fmt::print("decode_step: no usable GPU ({}); nothing to measure\n", cuda::describe_device());
        return 0;
    }
#if LINARCH_HAS_CUDA
    const int64_t N = 1, H = heads, D = head_dim;
    const Tensor q = random_tensor({N, H, D}, DType::bf16, 1, -0.1, 0.1), k = random_tensor({N, H, D}, DType::bf16, 2, -0.1, 0.1);
    const Tensor v = random_tensor({N, H, D}, DType::bf16, 3, -1, 1), beta = random_tensor({N, H}, DType::f32, 4, 0, 1);
    const Tensor log_gate = random_tensor({N, H}, DType::f32, 5, -0.5, -0.01);
    Tensor state = random_tensor({N, H, D, D}, DType::f32, 6, -0.5, 0.5);
    Tensor o = Tensor::empty({N, H, D}, DType::bf16, Device::cuda);
    const double scale = 1.0 / std::sqrt(double(D));
    void* scratch = cuda::allocate(4);

    using Clock = std::chrono::steady_clock;
    const auto micros = [](Clock::time_point a, Clock::time_point b) {
        return std::chrono::duration<double, std::micro>(b - a).count();
    };
    std::vector<double> call_us, step_us, floor_us;
    for (int64_t i = 0; i < repeats + 100; ++i) {
        const auto t0 = Clock::now();
        ops::delta_rule_step(o, state, q, k, v, beta, log_gate, scale);
        const auto t1 = Clock::now();
        cudaStreamSynchronize(cudaStreamPerThread);
        const auto t2 = Clock::now();
        cudaMemsetAsync(scratch, 0, 4, cudaStreamPerThread);
        cudaStreamSynchronize(cudaStreamPerThread);
        const auto t3 = Clock::now();
        if (i < 100) continue;  // warm-up
        call_us.push_back(micros(t0, t1));
        step_us.push_back(micros(t0, t2));
        floor_us.push_back(micros(t2, t3));
    }
    cuda::release(scratch, 4);
    fmt::print("decode step, gated delta rule, B=1 H={} Dk=Dv={} bf16 on {} (medians of {}):\n", H, D,
               cuda::describe_device(), repeats);
    fmt::print("  op call (checks + launch)      {:7.1f} us\n", median(call_us));
    fmt::print("  op call + synchronisation      {:7.1f} us   (target <= 20 us; fla 134 us)\n", median(step_us));
    fmt::print("  floor: 4-byte memset + sync    {:7.1f} us   -> the step at {:.1f}x the smallest round trip\n",
               median(floor_us), median(step_us) / median(floor_us));
#endif
    return 0;
}
