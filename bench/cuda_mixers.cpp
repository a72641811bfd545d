// The mixer ops on the GPU at issue 6's shapes, through the same op calls the models make (bf16
// tensors: the tensor-core chunkwise kernels; f32 tensors: the exact fp32 scan; softmax attention in
// fp32), next to the machine's own bf16 GEMM rate (cuBLASLt, 8192³) and device-to-device copy bandwidth
// (1 GiB) measured in the same run, and flash-linear-attention's (and torch SDPA's) times on this GPU kind
// (../shared/anchors.md, H100, bf16).
//   build/bin/cuda_mixers [--batch 8] [--seq-len 2048] [--heads 16] [--head-dim 128] [--long 32768]
//                         [--repeats 20]
// Prints a table and one JSON line per row (for bench/NOTES.md). Times include each op call's host work
// and one synchronisation (~10 µs), so they are upper bounds on the kernels' own.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "backend/cuda/device.hpp"
#include "core/rng.hpp"
#include "core/tensor.hpp"
#include "ops/delta_rule.hpp"
#include "ops/linear_attention.hpp"
#include "ops/softmax_attention.hpp"
#if LINARCH_HAS_CUDA
#include "backend/cuda/gemm.hpp"
#endif

using namespace linarch;
using Clock = std::chrono::steady_clock;

#if LINARCH_HAS_CUDA
namespace {

// Median milliseconds of `repeats` synchronised calls after two warm-up calls.
double median_ms(int repeats, const std::function<void()>& body) {
    body();
    body();
    cuda::synchronize();
    std::vector<double> times;
    for (int i = 0; i < repeats; ++i) {
        const auto start = Clock::now();
        body();
        cuda::synchronize();
        times.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
}

Tensor gpu_normal(const Shape& shape, DType dtype, uint64_t seed, double std = 1.0) {
    RngStream rng(seed, 1);
    std::vector<double> values(size_t(shape_numel(shape)));
    for (double& x : values) x = std * rng.normal();
    return Tensor::from_vector(shape, values, dtype).to(Device::cuda);
}

// Rows of unit norm (the layers L2-normalise q and k).
Tensor gpu_unit_rows(const Shape& shape, DType dtype, uint64_t seed) {
    RngStream rng(seed, 1);
    const int64_t d = shape.back(), rows = shape_numel(shape) / d;
    std::vector<double> values(size_t(rows * d));
    for (int64_t r = 0; r < rows; ++r) {
        double norm = 0;
        for (int64_t c = 0; c < d; ++c) norm += std::pow(values[size_t(r * d + c)] = rng.normal(), 2);
        for (int64_t c = 0; c < d; ++c) values[size_t(r * d + c)] /= std::sqrt(norm);
    }
    return Tensor::from_vector(shape, values, dtype).to(Device::cuda);
}

Tensor gpu_uniform(const Shape& shape, uint64_t seed, double low, double high) {
    RngStream rng(seed, 1);
    std::vector<double> values(size_t(shape_numel(shape)));
    for (double& x : values) x = low + (high - low) * rng.uniform();
    return Tensor::from_vector(shape, values, DType::f32).to(Device::cuda);
}

struct Shape5 {
    int64_t B, T, H, D;
};

// One problem's tensors in one dtype: q, k unit rows, v ~ N(0,1), β ~ U(0,1), scalar log gates in
// [−0.2, −0.001] and vector ones in [−0.1, −0.001] (fp32), gradients of the output ~ N(0,1).
struct Problem {
    Tensor q, k, v, o, dout, dq, dk, dv, beta, dbeta, scalar_gate, dscalar_gate, vector_gate, dvector_gate;
    Problem(const Shape5& s, DType dtype) {
        const Shape qk{s.B, s.T, s.H, s.D}, tokens{s.B, s.T, s.H};
        q = gpu_unit_rows(qk, dtype, 1);
        k = gpu_unit_rows(qk, dtype, 2);
        v = gpu_normal(qk, dtype, 3);
        dout = gpu_normal(qk, dtype, 4);
        o = Tensor::empty(qk, dtype, Device::cuda);
        dq = Tensor::zeros(qk, dtype, Device::cuda);
        dk = dq.clone();
        dv = dq.clone();
        beta = gpu_uniform(tokens, 5, 0.0, 1.0);
        dbeta = Tensor::zeros(tokens, DType::f32, Device::cuda);
        scalar_gate = gpu_uniform(tokens, 6, -0.2, -0.001);
        dscalar_gate = Tensor::zeros(tokens, DType::f32, Device::cuda);
        vector_gate = gpu_uniform(qk, 7, -0.1, -0.001);
        dvector_gate = Tensor::zeros(qk, DType::f32, Device::cuda);
    }
};

struct Row {
    std::string what, shape;
    double ms;
    std::optional<double> fla_ms;  // anchors.md
    double bytes;                  // the op's unavoidable traffic (inputs read, outputs written once)
};

}  // namespace
#endif

int main(int argc, char** argv) {
    CLI::App app{"The mixer ops on the GPU next to the machine's GEMM rate and copy bandwidth"};
    int64_t batch = 8, seq_len = 2048, heads = 16, head_dim = 128, long_len = 32768;
    int repeats = 20;
    app.add_option("--batch", batch, "batch size")->check(CLI::PositiveNumber);
    app.add_option("--seq-len", seq_len, "sequence length")->check(CLI::PositiveNumber);
    app.add_option("--heads", heads, "heads")->check(CLI::PositiveNumber);
    app.add_option("--head-dim", head_dim, "Dk = Dv (the bf16 kernels take 64 or 128)")->check(CLI::IsMember({64, 128}));
    app.add_option("--long", long_len, "T of the single long sequence (0: skip)")->check(CLI::NonNegativeNumber);
    app.add_option("--repeats", repeats, "timed calls per figure (median)")->check(CLI::PositiveNumber);
    CLI11_PARSE(app, argc, argv);
#if !LINARCH_HAS_CUDA
    fmt::print("cuda_mixers: this build has no CUDA backend (configure with -DLINARCH_CUDA=ON)\n");
    return 1;
#else
    if (cuda::device_count() == 0) {
        fmt::print("cuda_mixers: no usable GPU: {}\n", cuda::describe_device());
        return 1;
    }
    fmt::print("device: {}\n", cuda::describe_device());

    // The machine's own floors, this run.
    const int64_t n = 8192;
    const Tensor a = gpu_normal({n, n}, DType::bf16, 11), b = gpu_normal({n, n}, DType::bf16, 12);
    Tensor c = Tensor::empty({n, n}, DType::bf16, Device::cuda);
    const double gemm_ms = median_ms(repeats, [&] {
        cuda::gemm({a.raw_data(), b.raw_data(), c.raw_data(), n, n, n, false, false, 1.f, 0.f, cuda::GemmType::bf16});
    });
    const double gemm_rate = 2.0 * double(n) * n * n / (gemm_ms * 1e-3);
    const size_t copy_bytes = size_t(1) << 30;
    cuda::DeviceBuffer src(copy_bytes), dst(copy_bytes);
    cuda::fill_zero(src.as<void>(), copy_bytes);
    const double copy_ms = median_ms(repeats, [&] { cuda::copy_on_device(dst.as<void>(), src.as<void>(), copy_bytes); });
    const double copy_rate = 2.0 * double(copy_bytes) / (copy_ms * 1e-3);  // read + write
    fmt::print("bf16 GEMM 8192³ {:.3f} ms = {:.0f} TFLOP/s;  D2D copy 1 GiB {:.3f} ms = {:.2f} TB/s (read + write)\n\n",
               gemm_ms, gemm_rate / 1e12, copy_ms, copy_rate / 1e12);

    std::vector<Row> rows;
    auto measure = [&](const Shape5& s, bool with_anchors) {
        const std::string shape = fmt::format("B={} T={} H={} D={}", s.B, s.T, s.H, s.D);
        const double scale = 1.0 / std::sqrt(double(s.D));
        const double tokens = double(s.B) * s.T * s.H;
        const double io_bf16 = tokens * s.D * 2 * 4;  // q, k, v read, o written
        auto anchor = [&](double ms) { return with_anchors ? std::optional<double>(ms) : std::nullopt; };
        Problem p16(s, DType::bf16);
        ops::LinearAttentionArgs la;
        la.scale = scale;
        if (s.T <= 8192) {
            rows.push_back({"linear attention, no decay: forward (bf16 kernel)", shape,
                            median_ms(repeats, [&] { ops::linear_attention_chunkwise_forward(p16.o, nullptr, p16.q, p16.k, p16.v, nullptr, la); }),
                            anchor(0.361), io_bf16});
            rows.push_back({"linear attention, no decay: forward + backward (bf16 kernels)", shape, median_ms(repeats, [&] {
                                ops::linear_attention_chunkwise_forward(p16.o, nullptr, p16.q, p16.k, p16.v, nullptr, la);
                                ops::linear_attention_chunkwise_backward(p16.dq, p16.dk, p16.dv, nullptr, p16.dout, nullptr,
                                                                         p16.q, p16.k, p16.v, nullptr, la, nullptr);
                            }),
                            anchor(1.451), io_bf16 * 2});
        }
        ops::DeltaRuleArgs gdn;
        gdn.scale = scale;
        gdn.log_gate = p16.scalar_gate;
        rows.push_back({"gated delta rule: forward (bf16 kernels)", shape,
                        median_ms(repeats, [&] { ops::delta_rule_chunkwise_forward(p16.o, nullptr, p16.q, p16.k, p16.v, p16.beta, nullptr, gdn); }),
                        anchor(s.T > 8192 ? 1.607 : 1.165), io_bf16});
        rows.push_back({"gated delta rule: forward + backward (bf16 kernels)", shape, median_ms(repeats, [&] {
                            ops::delta_rule_chunkwise_forward(p16.o, nullptr, p16.q, p16.k, p16.v, p16.beta, nullptr, gdn);
                            ops::delta_rule_chunkwise_backward(p16.dq, p16.dk, p16.dv, p16.dbeta, &p16.dscalar_gate,
                                                               nullptr, p16.dout, nullptr, p16.q, p16.k, p16.v,
                                                               p16.beta, nullptr, gdn);
                        }),
                        std::nullopt, io_bf16 * 2});
        ops::DeltaRuleArgs plain;
        plain.scale = scale;
        rows.push_back({"delta rule (no gate): forward (bf16 kernels)", shape,
                        median_ms(repeats, [&] { ops::delta_rule_chunkwise_forward(p16.o, nullptr, p16.q, p16.k, p16.v, p16.beta, nullptr, plain); }),
                        std::nullopt, io_bf16});
        ops::LinearAttentionArgs gla16;
        gla16.scale = scale;
        gla16.log_gate = p16.vector_gate;
        const double io_gate = tokens * s.D * 4;  // the fp32 gate read
        rows.push_back({"GLA (vector gate): forward (bf16 kernels)", shape,
                        median_ms(repeats, [&] { ops::linear_attention_chunkwise_forward(p16.o, nullptr, p16.q, p16.k, p16.v, nullptr, gla16); }),
                        s.T > 8192 ? std::nullopt : anchor(0.826), io_bf16 + io_gate});
        rows.push_back({"GLA (vector gate): forward + backward (bf16 kernels)", shape, median_ms(repeats, [&] {
                            ops::linear_attention_chunkwise_forward(p16.o, nullptr, p16.q, p16.k, p16.v, nullptr, gla16);
                            ops::linear_attention_chunkwise_backward(p16.dq, p16.dk, p16.dv, nullptr, p16.dout, nullptr,
                                                                     p16.q, p16.k, p16.v, nullptr, gla16, &p16.dvector_gate);
                        }),
                        s.T > 8192 ? std::nullopt : anchor(3.492), (io_bf16 + io_gate) * 2});
        if (s.T > 8192) return;
        // Packed sequences: the same tokens as B sequences of T/2 and 3T/2 tokens in one row (cu_seqlens),
        // which the bf16 kernels run as a padded batch of B × 3T/2.
        if (s.B % 2 == 0) {
            std::vector<int64_t> cu = {0};
            for (int64_t b = 0; b < s.B; ++b) cu.push_back(cu.back() + (b % 2 == 0 ? s.T / 2 : s.T - s.T / 2 + s.T));
            const Shape packed_qk{1, s.B * s.T, s.H, s.D};
            Tensor q = p16.q.view(packed_qk), k = p16.k.view(packed_qk), v = p16.v.view(packed_qk);
            Tensor o = p16.o.view(packed_qk), dout = p16.dout.view(packed_qk), dq = p16.dq.view(packed_qk);
            Tensor dk = p16.dk.view(packed_qk), dv = p16.dv.view(packed_qk);
            Tensor beta = p16.beta.view({1, s.B * s.T, s.H}), dbeta = p16.dbeta.view({1, s.B * s.T, s.H});
            Tensor dgate = p16.dscalar_gate.view({1, s.B * s.T, s.H});
            ops::DeltaRuleArgs packed = gdn;
            packed.log_gate = p16.scalar_gate.view({1, s.B * s.T, s.H});
            packed.cu_seqlens = cu;
            rows.push_back({"gated delta rule, packed sequences of T/2 and 3T/2: forward + backward (bf16, padded)",
                            shape, median_ms(repeats, [&] {
                                ops::delta_rule_chunkwise_forward(o, nullptr, q, k, v, beta, nullptr, packed);
                                ops::delta_rule_chunkwise_backward(dq, dk, dv, dbeta, &dgate, nullptr, dout, nullptr, q,
                                                                   k, v, beta, nullptr, packed);
                            }),
                            std::nullopt, io_bf16 * 2});
        }
        // The exact fp32 scan: what f32 tensors take (fp32 training mode), for every member.
        Problem p32(s, DType::f32);
        ops::DeltaRuleArgs gdn32 = gdn;
        gdn32.log_gate = p32.scalar_gate;
        rows.push_back({"gated delta rule: forward + backward (exact fp32 scan)", shape, median_ms(std::max(3, repeats / 4), [&] {
                            ops::delta_rule_chunkwise_forward(p32.o, nullptr, p32.q, p32.k, p32.v, p32.beta, nullptr, gdn32);
                            ops::delta_rule_chunkwise_backward(p32.dq, p32.dk, p32.dv, p32.dbeta, &p32.dscalar_gate, nullptr,
                                                               p32.dout, nullptr, p32.q, p32.k, p32.v, p32.beta, nullptr, gdn32);
                        }),
                        std::nullopt, io_bf16 * 4});
        // Softmax attention, fp32 kernels (the anchors' figure is torch's SDPA: FlashAttention, bf16 tensor cores).
        ops::SoftmaxAttentionArgs sdpa;
        sdpa.scale = scale;
        Tensor logsumexp = Tensor::empty({s.B, s.T, s.H}, DType::f32, Device::cuda);
        rows.push_back({"softmax attention: forward (fp32 kernels)", shape, median_ms(std::max(3, repeats / 4), [&] {
                            ops::softmax_attention_forward(p32.o, logsumexp, p32.q, p32.k, p32.v, sdpa);
                        }),
                        anchor(0.269), io_bf16 * 2});
        rows.push_back({"softmax attention: forward + backward (fp32 kernels)", shape, median_ms(std::max(3, repeats / 4), [&] {
                            ops::softmax_attention_forward(p32.o, logsumexp, p32.q, p32.k, p32.v, sdpa);
                            ops::softmax_attention_backward(p32.dq, p32.dk, p32.dv, nullptr, p32.dout, p32.q, p32.k,
                                                            p32.v, p32.o, logsumexp, sdpa);
                        }),
                        anchor(1.137), io_bf16 * 4});
        ops::LinearAttentionArgs gla;
        gla.scale = scale;
        gla.log_gate = p32.vector_gate;
        rows.push_back({"GLA (vector gate): forward + backward (exact fp32 scan)", shape, median_ms(std::max(3, repeats / 4), [&] {
                            ops::linear_attention_chunkwise_forward(p32.o, nullptr, p32.q, p32.k, p32.v, nullptr, gla);
                            ops::linear_attention_chunkwise_backward(p32.dq, p32.dk, p32.dv, nullptr, p32.dout, nullptr,
                                                                     p32.q, p32.k, p32.v, nullptr, gla, &p32.dvector_gate);
                        }),
                        std::nullopt, io_bf16 * 4});
    };
    const bool anchors_apply = heads == 16 && head_dim == 128;
    measure({batch, seq_len, heads, head_dim}, anchors_apply && batch == 8 && seq_len == 2048);
    if (long_len > 0) measure({1, long_len, heads, head_dim}, anchors_apply && long_len == 32768);

    fmt::print("| op | shape | ms | fla (anchors) | vs fla | of copy floor |\n|---|---|---|---|---|---|\n");
    for (const Row& r : rows) {
        const double floor_ms = r.bytes / copy_rate * 1e3;
        fmt::print("| {} | {} | {:.3f} | {} | {} | {:.0f}% |\n", r.what, r.shape, r.ms,
                   r.fla_ms ? fmt::format("{:.3f}", *r.fla_ms) : "–",
                   r.fla_ms ? fmt::format("{:.2f}× {}", std::max(*r.fla_ms / r.ms, r.ms / *r.fla_ms),
                                          *r.fla_ms >= r.ms ? "faster" : "slower")
                            : "–",
                   100.0 * floor_ms / r.ms);
    }
    for (const Row& r : rows) {
        nlohmann::json j{{"op", r.what},       {"shape", r.shape},       {"ms", r.ms},
                         {"gemm_tflops", gemm_rate / 1e12}, {"copy_tbps", copy_rate / 1e12},
                         {"copy_floor_ms", r.bytes / copy_rate * 1e3}};
        if (r.fla_ms) j["fla_ms"] = *r.fla_ms;
        fmt::print("{}\n", j.dump());
    }
    return 0;
#endif
}
