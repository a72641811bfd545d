// The CUDA chunkwise forward and backward of gated linear attention with a gate per key dimension (GLA;
// bf16 tensor cores, backend/cuda/gla_chunkwise.cu) against the CPU float64 forms on fresh random inputs,
// and their use under mixed precision. Skipped (not passed) where no GPU is usable.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include <fmt/format.h>

#include "core/error.hpp"
#include "core/tensor.hpp"
#include "ops/linear_attention.hpp"
#include "ops/precision.hpp"
#include "support/gpu.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using testkit::minus;

namespace {

struct Problem {
    int64_t batch, seq_len, heads, key_dim, value_dim;
};

// q, k, v ~ N(0,1) rounded to bf16 (the kernel's operands; the reference sees the same values); log gates
// per key dimension −a·softplus(x − 1) with a in [1/16, 1] times gate_scale (20 makes a chunk's cumulative
// gate reach −100s, where exp underflows in fp32, and a single step's reach −10s); an initial state
// ~ N(0, 0.5²). Everything on the CPU.
struct Inputs {
    Tensor q, k, v, log_gate, initial_state;

    Inputs(const Problem& p, uint64_t stream, bool with_initial_state, double gate_scale = 1) {
        const int64_t B = p.batch, T = p.seq_len, H = p.heads, Dk = p.key_dim;
        q = testkit::random_normal({B, T, H, Dk}, DType::bf16, stream);
        k = testkit::random_normal({B, T, H, Dk}, DType::bf16, stream + 1);
        v = testkit::random_normal({B, T, H, p.value_dim}, DType::bf16, stream + 2);
        const Tensor x = testkit::random_normal({B, T, H, Dk}, DType::f64, stream + 3);
        const Tensor a = testkit::random_uniform({B, T, H, Dk}, DType::f64, stream + 4, 1.0 / 16, 1.0);
        std::vector<double> g(size_t(B * T * H * Dk));
        for (size_t i = 0; i < g.size(); ++i)
            g[i] = -gate_scale * a.flat(int64_t(i)) * std::log1p(std::exp(x.flat(int64_t(i)) - 1.0));
        log_gate = Tensor::from_vector({B, T, H, Dk}, g, DType::f32);
        if (with_initial_state)
            initial_state = testkit::random_normal({B, H, Dk, p.value_dim}, DType::f32, stream + 5, 0.5);
    }

    Inputs segment(int64_t start, int64_t length) const {
        Inputs part = *this;
        for (auto [dst, src] : {std::pair{&part.q, &q}, std::pair{&part.k, &k}, std::pair{&part.v, &v},
                                std::pair{&part.log_gate, &log_gate}})
            *dst = src->narrow(1, start, length).contiguous();
        return part;
    }
};

struct Result {
    Tensor o, final_state;  // on the CPU
};

Tensor nan_filled(const Shape& shape, DType dtype) {
    return Tensor::from_vector(shape, std::vector<double>(size_t(shape_numel(shape)), NAN), dtype).to(Device::cuda);
}

// The chunkwise op on CUDA tensors of `dtype` for q, k, v, o (bf16: the kernels; f32 under mixed
// precision: the kernels through bf16 copies), the fp32 gates and states.
Result run_cuda(const Problem& p, const Inputs& in, double scale, DType dtype = DType::bf16) {
    ops::LinearAttentionArgs args;
    args.scale = scale;
    args.log_gate = in.log_gate.to(Device::cuda);
    const Tensor q = in.q.to(dtype).to(Device::cuda), k = in.k.to(dtype).to(Device::cuda),
                 v = in.v.to(dtype).to(Device::cuda);
    const Tensor s0 = in.initial_state.defined() ? in.initial_state.to(Device::cuda) : Tensor();
    // NaN-filled outputs: every element must be written.
    Tensor o = nan_filled({p.batch, p.seq_len, p.heads, p.value_dim}, dtype);
    Tensor s1 = nan_filled({p.batch, p.heads, p.key_dim, p.value_dim}, DType::f32);
    ops::linear_attention_chunkwise_forward(o, &s1, q, k, v, s0.defined() ? &s0 : nullptr, args);
    return {o.to(Device::cpu), s1.to(Device::cpu)};
}

// The CPU float64 recurrence on the same (bf16-rounded) inputs.
Result run_reference(const Problem& p, const Inputs& in, double scale) {
    ops::LinearAttentionArgs args;
    args.scale = scale;
    args.log_gate = in.log_gate.to(DType::f64);
    const Tensor s0 = in.initial_state.defined() ? in.initial_state.to(DType::f64) : Tensor();
    Result out{Tensor::empty({p.batch, p.seq_len, p.heads, p.value_dim}, DType::f64),
               Tensor::empty({p.batch, p.heads, p.key_dim, p.value_dim}, DType::f64)};
    ops::linear_attention_recurrent_forward(out.o, &out.final_state, in.q.to(DType::f64), in.k.to(DType::f64),
                                            in.v.to(DType::f64), s0.defined() ? &s0 : nullptr, args);
    return out;
}

// bf16 operands, q̂, k̂ and the intra-chunk matrices rounded to bf16 as the tensor cores' operands, fp32
// accumulation and state: a few 1e-3 relative; a wrong index, sign or exponent is O(1).
constexpr double kTolerance = 2e-2;

}  // namespace

TEST(CudaGla, ChunkwiseForwardMatchesF64Recurrence) {
    SKIP_WITHOUT_GPU();
    const std::vector<Problem> problems = {
        {1, 1, 2, 64, 64},     // one token
        {2, 63, 3, 64, 64},    // one short chunk
        {1, 64, 2, 128, 128},  // exactly one chunk
        {3, 65, 2, 128, 64},   // one token into the second chunk, Dk > Dv
        {2, 301, 3, 64, 128},  // odd T, several chunks, Dv > Dk
        {2, 700, 2, 128, 128},
        // The cases above walk few sequence-heads (value tiles of 16 or 32 columns); this one enough for
        // tiles of 64 and one stage (≥ 132 blocks, an H100's multiprocessors).
        {8, 200, 16, 128, 128},
    };
    uint64_t stream = 12000;
    for (const Problem& p : problems)
        for (bool with_initial_state : {false, true}) {
            SCOPED_TRACE(fmt::format("B={} T={} H={} Dk={} Dv={} initial_state={}", p.batch, p.seq_len, p.heads,
                                     p.key_dim, p.value_dim, with_initial_state));
            const Inputs in(p, stream += 10, with_initial_state);
            const double scale = 1.0 / std::sqrt(double(p.key_dim));
            const Result out = run_cuda(p, in, scale);
            const Result ref = run_reference(p, in, scale);
            EXPECT_EQ(testkit::count_non_finite(out.o), 0);
            EXPECT_EQ(testkit::count_non_finite(out.final_state), 0);
            const double err_o = testkit::relative_error(out.o, ref.o);
            const double err_s = testkit::relative_error(out.final_state, ref.final_state);
            EXPECT_LT(err_o, kTolerance);
            EXPECT_LT(err_s, kTolerance);
            fmt::print("T={} Dk={} Dv={} initial_state={}: o {:.2e}, final state {:.2e}\n", p.seq_len, p.key_dim,
                       p.value_dim, with_initial_state, err_o, err_s);
        }
}

TEST(CudaGla, StrongGatesStayFinite) {
    SKIP_WITHOUT_GPU();
    // Gates ~20× the usual: cumulative log gates of −100s within a chunk, where e^{G} underflows in fp32;
    // only differences with the later token first may be exponentiated.
    const Problem p{2, 257, 2, 128, 128};
    const Inputs in(p, 12500, true, 20.0);
    const Result out = run_cuda(p, in, 0.125);
    const Result ref = run_reference(p, in, 0.125);
    EXPECT_EQ(testkit::count_non_finite(out.o), 0);
    EXPECT_LT(testkit::relative_error(out.o, ref.o), kTolerance);
    EXPECT_LT(testkit::relative_error(out.final_state, ref.final_state), kTolerance);
}

TEST(CudaGla, StateCarriesAcrossSegments) {
    SKIP_WITHOUT_GPU();
    // Running [0, 150) then [150, 333) from its final state equals running [0, 333) in one call.
    const Problem whole{2, 333, 2, 128, 128};
    const Inputs in(whole, 12600, true);
    const double scale = 1.0 / std::sqrt(128.0);
    const Result ref = run_reference(whole, in, scale);
    const int64_t split = 150, rest = whole.seq_len - split;
    const Result r1 = run_cuda({2, split, 2, 128, 128}, in.segment(0, split), scale);
    Inputs second = in.segment(split, rest);
    second.initial_state = r1.final_state;
    const Result r2 = run_cuda({2, rest, 2, 128, 128}, second, scale);
    EXPECT_LT(testkit::relative_error(r1.o, ref.o.narrow(1, 0, split)), kTolerance);
    EXPECT_LT(testkit::relative_error(r2.o, ref.o.narrow(1, split, rest)), kTolerance);
    EXPECT_LT(testkit::relative_error(r2.final_state, ref.final_state), kTolerance);
}

namespace {

// The gradients of ⟨dout, o⟩ (+ ⟨dfinal_state, final_state⟩) on the GPU (bf16 q, k, v, dout; fp32 gates
// and states) and from the CPU float64 chunkwise backward on the same rounded values. dlog_gate and
// dinitial_state start from random values (the backward adds into them), which are taken off again
// before the comparison.
struct Grads {
    Tensor dq, dk, dv, dlog_gate, dinitial_state;  // on the CPU, f64
};

Grads run_cuda_backward(const Problem& p, const Inputs& in, const Tensor& dout, const Tensor& dfinal, double scale) {
    ops::LinearAttentionArgs args;
    args.scale = scale;
    args.log_gate = in.log_gate.to(Device::cuda);
    const Tensor q = in.q.to(Device::cuda), k = in.k.to(Device::cuda), v = in.v.to(Device::cuda),
                 dout_gpu = dout.to(Device::cuda);
    const Tensor s0 = in.initial_state.defined() ? in.initial_state.to(Device::cuda) : Tensor();
    const Tensor ds1 = dfinal.defined() ? dfinal.to(Device::cuda) : Tensor();
    // dq, dk, dv start from small random bf16 values too (the kernels add into them; small, so that
    // rounding the sums to bf16 costs the comparison little).
    const Tensor start_q = testkit::random_normal(q.shape(), DType::bf16, 4, 0.05);
    const Tensor start_v = testkit::random_normal(v.shape(), DType::bf16, 5, 0.05);
    Tensor dq = start_q.to(Device::cuda), dk = start_q.to(Device::cuda), dv = start_v.to(Device::cuda);
    const Tensor start_gate = testkit::random_normal(in.log_gate.shape(), DType::f32, 2);
    const Tensor start_state = testkit::random_normal({p.batch, p.heads, p.key_dim, p.value_dim}, DType::f32, 3);
    Tensor dg = start_gate.to(Device::cuda), ds0 = start_state.to(Device::cuda);
    ops::linear_attention_chunkwise_backward(dq, dk, dv, s0.defined() ? &ds0 : nullptr, dout_gpu,
                                             ds1.defined() ? &ds1 : nullptr, q, k, v, s0.defined() ? &s0 : nullptr,
                                             args, &dg);
    Grads out{minus(dq.to(Device::cpu), start_q), minus(dk.to(Device::cpu), start_q),
              minus(dv.to(Device::cpu), start_v), minus(dg.to(Device::cpu), start_gate), Tensor()};
    if (s0.defined()) out.dinitial_state = minus(ds0.to(Device::cpu), start_state);
    return out;
}

Grads run_reference_backward(const Inputs& in, const Tensor& dout, const Tensor& dfinal, double scale) {
    ops::LinearAttentionArgs args;
    args.scale = scale;
    args.log_gate = in.log_gate.to(DType::f64);
    const Tensor q = in.q.to(DType::f64), k = in.k.to(DType::f64), v = in.v.to(DType::f64),
                 dout64 = dout.to(DType::f64);
    const Tensor s0 = in.initial_state.defined() ? in.initial_state.to(DType::f64) : Tensor();
    const Tensor ds1 = dfinal.defined() ? dfinal.to(DType::f64) : Tensor();
    Grads g{Tensor::zeros(q.shape(), DType::f64), Tensor::zeros(q.shape(), DType::f64),
            Tensor::zeros(v.shape(), DType::f64), Tensor::zeros(q.shape(), DType::f64), Tensor()};
    if (s0.defined()) g.dinitial_state = Tensor::zeros(s0.shape(), DType::f64);
    ops::linear_attention_chunkwise_backward(g.dq, g.dk, g.dv, s0.defined() ? &g.dinitial_state : nullptr, dout64,
                                             ds1.defined() ? &ds1 : nullptr, q, k, v, s0.defined() ? &s0 : nullptr,
                                             args, &g.dlog_gate);
    return g;
}

// bf16 operands and intermediates (q̂, k̂, A, the chunk states, dq̂, dk̂, dA, dS), fp32 sums, and the
// accumulated outputs rounded to bf16 on top of random starting values: a few 1e-3; a wrong term or
// sign is O(1e-1) or more.
constexpr double kGradientTolerance = 2e-2;

}  // namespace

TEST(CudaGla, ChunkwiseBackwardMatchesF64) {
    SKIP_WITHOUT_GPU();
    const std::vector<Problem> problems = {
        {1, 2, 2, 64, 64},     // two tokens
        {2, 63, 3, 64, 64},    // one short chunk
        {3, 65, 2, 128, 64},   // one token into the second chunk, Dk > Dv
        {2, 301, 3, 64, 128},  // odd T, several chunks, Dv > Dk
        {2, 200, 2, 128, 128},
        {8, 130, 16, 64, 128},  // enough sequence-heads for the walk's 64-column tiles (as above)
    };
    uint64_t stream = 12300;
    for (const Problem& p : problems)
        for (double gate_scale : {1.0, 20.0})
            for (bool with_states : {false, true}) {
                SCOPED_TRACE(fmt::format("B={} T={} H={} Dk={} Dv={} gate scale={} states={}", p.batch, p.seq_len,
                                         p.heads, p.key_dim, p.value_dim, gate_scale, with_states));
                const Inputs in(p, stream += 10, with_states, gate_scale);
                const Tensor dout = testkit::random_normal({p.batch, p.seq_len, p.heads, p.value_dim}, DType::bf16,
                                                           stream + 7);
                const Tensor dfinal = with_states ? testkit::random_normal({p.batch, p.heads, p.key_dim, p.value_dim},
                                                                           DType::f32, stream + 8)
                                                  : Tensor();
                const double scale = 1.0 / std::sqrt(double(p.key_dim));
                const Grads out = run_cuda_backward(p, in, dout, dfinal, scale);
                const Grads ref = run_reference_backward(in, dout, dfinal, scale);
                std::string line = fmt::format("T={} Dk={} Dv={} gate scale={} states={}:", p.seq_len, p.key_dim,
                                               p.value_dim, gate_scale, with_states);
                for (auto [name, a, b] : {std::tuple{"dq", &out.dq, &ref.dq}, std::tuple{"dk", &out.dk, &ref.dk},
                                          std::tuple{"dv", &out.dv, &ref.dv},
                                          std::tuple{"dlog_gate", &out.dlog_gate, &ref.dlog_gate},
                                          std::tuple{"dinitial_state", &out.dinitial_state, &ref.dinitial_state}}) {
                    if (!b->defined()) continue;
                    EXPECT_EQ(testkit::count_non_finite(*a), 0) << name;
                    const double err = testkit::relative_error(*a, *b);
                    EXPECT_LT(err, kGradientTolerance) << name;
                    line += fmt::format(" {} {:.2e}", name, err);
                }
                fmt::print("{}\n", line);
            }
}

TEST(CudaGla, MixedPrecisionTakesTheKernelsInBothDirections) {
    SKIP_WITHOUT_GPU();
    const Problem p{2, 200, 2, 64, 128};
    const Inputs in(p, 12700, true);
    const Result ref = run_reference(p, in, 0.125);
    const Result fp32 = run_cuda(p, in, 0.125, DType::f32);
    Result mixed;
    {
        ops::ScopedPrecision bf16(ops::Precision::bf16);
        mixed = run_cuda(p, in, 0.125, DType::f32);
    }
    // fp32 mode is the exact scan (~1e-6); bf16 mode rounds the operands (≳1e-4, within the tolerance).
    EXPECT_LT(testkit::relative_error(fp32.o, ref.o), 1e-5);
    const double err = testkit::relative_error(mixed.o, ref.o);
    EXPECT_GT(err, 1e-5);
    EXPECT_LT(err, kTolerance);
    EXPECT_LT(testkit::relative_error(mixed.final_state, ref.final_state), kTolerance);

    // The backward: the kernels under bf16 (close to, but not, the exact scan's gradients).
    ops::LinearAttentionArgs args;
    args.scale = 0.125;
    args.log_gate = in.log_gate.to(Device::cuda);
    const Tensor q = in.q.to(DType::f32).to(Device::cuda), k = in.k.to(DType::f32).to(Device::cuda),
                 v = in.v.to(DType::f32).to(Device::cuda);
    const Tensor dout = testkit::random_normal({2, 200, 2, 128}, DType::f32, 12702).to(Device::cuda);
    auto grads = [&](ops::Precision precision) {
        ops::ScopedPrecision scope(precision);
        Tensor dq = Tensor::zeros(q.shape(), DType::f32, Device::cuda), dk = dq.clone(), dg = dq.clone();
        Tensor dv = Tensor::zeros(v.shape(), DType::f32, Device::cuda);
        ops::linear_attention_chunkwise_backward(dq, dk, dv, nullptr, dout, nullptr, q, k, v, nullptr, args, &dg);
        return std::vector<Tensor>{dq.to(Device::cpu), dk.to(Device::cpu), dv.to(Device::cpu), dg.to(Device::cpu)};
    };
    const std::vector<Tensor> exact = grads(ops::Precision::fp32), under_bf16 = grads(ops::Precision::bf16);
    for (size_t i = 0; i < exact.size(); ++i) {
        const double gradient_error = testkit::relative_error(under_bf16[i], exact[i]);
        EXPECT_GT(gradient_error, 1e-6) << i;
        EXPECT_LT(gradient_error, kGradientTolerance) << i;
    }
}

TEST(CudaGla, UnsupportedShapesAreRefused) {
    SKIP_WITHOUT_GPU();
    const Problem p{1, 8, 2, 64, 192};
    const Inputs in(p, 12800, false);
    ops::LinearAttentionArgs args;
    args.log_gate = in.log_gate.to(Device::cuda);
    const Tensor q = in.q.to(Device::cuda), k = in.k.to(Device::cuda), v = in.v.to(Device::cuda);
    Tensor o = Tensor::empty({1, 8, 2, 192}, DType::bf16, Device::cuda);
    testkit::expect_error([&] { ops::linear_attention_chunkwise_forward(o, nullptr, q, k, v, nullptr, args); },
                          {"linear_attention_chunkwise_forward: the CUDA kernels for a gate per key dimension are "
                           "built for Dk and Dv of 64 or 128, got Dk=64, Dv=192"});
    ops::LinearAttentionArgs short_gate;
    short_gate.log_gate = Tensor::zeros({1, 8, 2, 32}, DType::f32).to(Device::cuda);
    testkit::expect_error([&] { ops::linear_attention_chunkwise_forward(o, nullptr, q, k, v, nullptr, short_gate); },
                          {"linear_attention_chunkwise_forward: log_gate"});
}
