// Linear attention (recurrent, chunkwise, chunkwise backward) and the short causal conv, checked
// against the float64 references in backend/cpu/reference_linear_attention and against central
// finite differences. Inputs are fresh random draws each run (seed printed by testkit).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "backend/cpu/reference_linear_attention.hpp"
#include "backend/cuda/device.hpp"
#include "core/tensor.hpp"
#include "ops/linear_attention.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using testkit::expect_error;

namespace {

struct Problem {
    int64_t batch, seq_len, heads, key_dim, value_dim, chunk_size;
};

std::string describe(const Problem& p, bool decay, bool with_initial_state) {
    return fmt::format("B={} T={} H={} Dk={} Dv={} chunk={} decay={} initial_state={}", p.batch, p.seq_len, p.heads,
                       p.key_dim, p.value_dim, p.chunk_size, decay, with_initial_state);
}

// Random inputs of one problem. q,k ~ N(0,1) with scale 1/sqrt(Dk) (fla's default), v and the
// initial state ~ N(0,1), log decays in [−0.5, −0.001] (γ from 0.61 to 0.999).
struct Inputs {
    Tensor q, k, v, initial_state;  // initial_state undefined when not used
    ops::LinearAttentionArgs args;

    Inputs(const Problem& p, DType dtype, uint64_t stream, bool decay, bool with_initial_state) {
        const int64_t B = p.batch, T = p.seq_len, H = p.heads;
        q = testkit::random_normal({B, T, H, p.key_dim}, dtype, stream);
        k = testkit::random_normal({B, T, H, p.key_dim}, dtype, stream + 1);
        v = testkit::random_normal({B, T, H, p.value_dim}, dtype, stream + 2);
        if (with_initial_state) initial_state = testkit::random_normal(state_shape(p), dtype, stream + 3);
        if (decay) args.log_decay = testkit::random_uniform({H}, dtype, stream + 4, -0.5, -0.001);
        args.scale = 1.0 / std::sqrt(double(p.key_dim));
        args.chunk_size = p.chunk_size;
    }
    static Shape state_shape(const Problem& p) { return {p.batch, p.heads, p.key_dim, p.value_dim}; }
    const Tensor* initial() const { return initial_state.defined() ? &initial_state : nullptr; }
};

struct Outputs {
    Tensor o, final_state;
};

using Forward = void (*)(Tensor&, Tensor*, const Tensor&, const Tensor&, const Tensor&, const Tensor*,
                         const ops::LinearAttentionArgs&);

Outputs run_forward(Forward forward, const Problem& p, const Inputs& in) {
    Outputs out{Tensor::empty({p.batch, p.seq_len, p.heads, p.value_dim}, in.q.dtype()),
                Tensor::empty(Inputs::state_shape(p), in.q.dtype())};
    forward(out.o, &out.final_state, in.q, in.k, in.v, in.initial(), in.args);
    return out;
}

// The float64 parallel-form reference on the same (possibly f32-rounded) inputs.
Outputs run_reference(const Problem& p, const Inputs& in) {
    const Tensor q = in.q.to(DType::f64), k = in.k.to(DType::f64), v = in.v.to(DType::f64);
    const Tensor s0 = in.initial_state.defined() ? in.initial_state.to(DType::f64) : Tensor();
    const Tensor log_decay = in.args.log_decay.defined() ? in.args.log_decay.to(DType::f64) : Tensor();
    Outputs out{Tensor::empty({p.batch, p.seq_len, p.heads, p.value_dim}, DType::f64),
                Tensor::empty(Inputs::state_shape(p), DType::f64)};
    reference::linear_attention_parallel(out.o.data<double>(), out.final_state.data<double>(), q.data<double>(),
                                         k.data<double>(), v.data<double>(),
                                         s0.defined() ? s0.data<double>() : nullptr,
                                         log_decay.defined() ? log_decay.data<double>() : nullptr, in.args.scale,
                                         p.batch, p.seq_len, p.heads, p.key_dim, p.value_dim);
    return out;
}

struct Gradients {
    Tensor dq, dk, dv, dinitial_state;
};

// Chunkwise backward of loss = dot(o, dout) + dot(final_state, dfinal_state), into zeroed gradients.
Gradients run_backward(const Problem& p, const Inputs& in, const Tensor& dout, const Tensor* dfinal_state) {
    const DType dtype = in.q.dtype();
    Gradients g{Tensor::zeros(in.q.shape(), dtype), Tensor::zeros(in.k.shape(), dtype),
                Tensor::zeros(in.v.shape(), dtype), Tensor::zeros(Inputs::state_shape(p), dtype)};
    ops::linear_attention_chunkwise_backward(g.dq, g.dk, g.dv, &g.dinitial_state, dout, dfinal_state, in.q, in.k,
                                             in.v, in.initial(), in.args);
    return g;
}

const std::vector<Problem> kForwardProblems = {
    {2, 37, 3, 16, 24, 8},    // T not a multiple of the chunk
    {1, 5, 2, 16, 24, 16},    // T < chunk
    {2, 9, 3, 8, 4, 1},       // one token per chunk
    {1, 64, 1, 24, 16, 16},   // T a multiple of the chunk, Dk > Dv
    {2, 130, 3, 16, 24, 64},  // the default chunk, a short last chunk
};

}  // namespace

TEST(LinearAttentionForward, F32FormsMatchF64ParallelReference) {
    uint64_t stream = 100;
    for (const Problem& p : kForwardProblems)
        for (bool decay : {false, true})
            for (bool with_initial_state : {false, true}) {
                SCOPED_TRACE(describe(p, decay, with_initial_state));
                const Inputs in(p, DType::f32, stream += 10, decay, with_initial_state);
                const Outputs ref = run_reference(p, in);
                for (Forward forward : {&ops::linear_attention_recurrent_forward,
                                        &ops::linear_attention_chunkwise_forward}) {
                    const Outputs out = run_forward(forward, p, in);
                    EXPECT_LT(testkit::relative_error(out.o, ref.o), 1e-5);
                    EXPECT_LT(testkit::relative_error(out.final_state, ref.final_state), 1e-5);
                }
            }
}

// In f64 the three forms are the same algebra, so they agree to rounding (mixers.md §13: ~1e-10).
TEST(LinearAttentionForward, RecurrentAndChunkwiseAgree) {
    uint64_t stream = 1000;
    for (const Problem& p : kForwardProblems)
        for (bool decay : {false, true}) {
            SCOPED_TRACE(describe(p, decay, true));
            const Inputs in(p, DType::f64, stream += 10, decay, true);
            const Outputs recurrent = run_forward(&ops::linear_attention_recurrent_forward, p, in);
            const Outputs chunkwise = run_forward(&ops::linear_attention_chunkwise_forward, p, in);
            const Outputs ref = run_reference(p, in);
            EXPECT_LT(testkit::relative_error(chunkwise.o, recurrent.o), 1e-12);
            EXPECT_LT(testkit::relative_error(chunkwise.final_state, recurrent.final_state), 1e-12);
            EXPECT_LT(testkit::relative_error(chunkwise.o, ref.o), 1e-12);
            EXPECT_LT(testkit::relative_error(recurrent.final_state, ref.final_state), 1e-12);
            // Every chunk size computes the same function.
            Inputs other = in;
            other.args.chunk_size = p.chunk_size == 1 ? 3 : p.chunk_size / 2 + 1;
            const Outputs rechunked = run_forward(&ops::linear_attention_chunkwise_forward, p, other);
            EXPECT_LT(testkit::relative_error(rechunked.o, chunkwise.o), 1e-12);
            EXPECT_LT(testkit::relative_error(rechunked.final_state, chunkwise.final_state), 1e-12);
        }
}

// loss = dot(o, R1) + dot(final_state, R2); the backward must match central differences for q, k,
// v and the initial state. The loss is linear in each single entry, so central differences are
// exact up to rounding. Gradients start from random values to check the backward adds into them.
TEST(LinearAttentionBackward, GradientsMatchFiniteDifferences) {
    const std::vector<Problem> problems = {{2, 11, 2, 5, 6, 4}, {1, 7, 3, 4, 3, 16}, {1, 6, 1, 3, 4, 1}};
    uint64_t stream = 2000;
    for (const Problem& p : problems)
        for (bool decay : {false, true}) {
            SCOPED_TRACE(describe(p, decay, true));
            Inputs in(p, DType::f64, stream += 10, decay, true);
            const Tensor r1 = testkit::random_normal({p.batch, p.seq_len, p.heads, p.value_dim}, DType::f64, stream + 5);
            const Tensor r2 = testkit::random_normal(Inputs::state_shape(p), DType::f64, stream + 6);
            auto loss = [&] {
                const Outputs out = run_forward(&ops::linear_attention_chunkwise_forward, p, in);
                return testkit::dot(out.o, r1) + testkit::dot(out.final_state, r2);
            };
            Gradients g{testkit::random_normal(in.q.shape(), DType::f64, stream + 7),
                        testkit::random_normal(in.k.shape(), DType::f64, stream + 8),
                        testkit::random_normal(in.v.shape(), DType::f64, stream + 9),
                        testkit::random_normal(Inputs::state_shape(p), DType::f64, stream + 10)};
            const Gradients before{g.dq.clone(), g.dk.clone(), g.dv.clone(), g.dinitial_state.clone()};
            ops::linear_attention_chunkwise_backward(g.dq, g.dk, g.dv, &g.dinitial_state, r1, &r2, in.q, in.k, in.v,
                                                     in.initial(), in.args);
            auto added = [](const Tensor& after, const Tensor& start) {
                Tensor diff = after.clone();
                for (int64_t i = 0; i < diff.numel(); ++i) diff.data<double>()[i] -= start.flat(i);
                return diff;
            };
            EXPECT_LT(testkit::gradient_check(loss, in.q, added(g.dq, before.dq)), 1e-6) << "dq";
            EXPECT_LT(testkit::gradient_check(loss, in.k, added(g.dk, before.dk)), 1e-6) << "dk";
            EXPECT_LT(testkit::gradient_check(loss, in.v, added(g.dv, before.dv)), 1e-6) << "dv";
            EXPECT_LT(testkit::gradient_check(loss, in.initial_state, added(g.dinitial_state, before.dinitial_state)),
                      1e-6)
                << "dinitial_state";
        }
}

// Without an initial state or an incoming state gradient (the common training call), the
// gradient with respect to the implicit zero initial state is still reported.
TEST(LinearAttentionBackward, GradientsWithoutStatesMatchFiniteDifferences) {
    const Problem p{2, 13, 2, 4, 5, 4};
    Inputs in(p, DType::f64, 2500, true, false);
    const Tensor r1 = testkit::random_normal({p.batch, p.seq_len, p.heads, p.value_dim}, DType::f64, 2505);
    auto loss = [&] { return testkit::dot(run_forward(&ops::linear_attention_chunkwise_forward, p, in).o, r1); };
    const Gradients g = run_backward(p, in, r1, nullptr);
    EXPECT_LT(testkit::gradient_check(loss, in.q, g.dq), 1e-6);
    EXPECT_LT(testkit::gradient_check(loss, in.k, g.dk), 1e-6);
    EXPECT_LT(testkit::gradient_check(loss, in.v, g.dv), 1e-6);
    in.initial_state = Tensor::zeros(Inputs::state_shape(p), DType::f64);
    EXPECT_LT(testkit::gradient_check(loss, in.initial_state, g.dinitial_state), 1e-6);
}

TEST(LinearAttentionBackward, F32MatchesF64) {
    const std::vector<Problem> problems = {{2, 70, 3, 16, 24, 16}, {1, 45, 2, 24, 16, 64}, {1, 10, 3, 16, 8, 1}};
    uint64_t stream = 3000;
    for (const Problem& p : problems)
        for (bool decay : {false, true}) {
            SCOPED_TRACE(describe(p, decay, true));
            const Inputs in32(p, DType::f32, stream += 10, decay, true);
            Inputs in64 = in32;
            in64.q = in32.q.to(DType::f64);
            in64.k = in32.k.to(DType::f64);
            in64.v = in32.v.to(DType::f64);
            in64.initial_state = in32.initial_state.to(DType::f64);
            if (decay) in64.args.log_decay = in32.args.log_decay.to(DType::f64);
            const Tensor r1 = testkit::random_normal({p.batch, p.seq_len, p.heads, p.value_dim}, DType::f32, stream + 5);
            const Tensor r2 = testkit::random_normal(Inputs::state_shape(p), DType::f32, stream + 6);
            const Tensor r2_64 = r2.to(DType::f64);
            const Gradients g32 = run_backward(p, in32, r1, &r2);
            const Gradients g64 = run_backward(p, in64, r1.to(DType::f64), &r2_64);
            EXPECT_LT(testkit::relative_error(g32.dq, g64.dq), 1e-4);
            EXPECT_LT(testkit::relative_error(g32.dk, g64.dk), 1e-4);
            EXPECT_LT(testkit::relative_error(g32.dv, g64.dv), 1e-4);
            EXPECT_LT(testkit::relative_error(g32.dinitial_state, g64.dinitial_state), 1e-4);
        }
}

// Two segments chained through the state compute what one pass over the whole sequence does, in
// the forward pass and in the gradients (dinitial_state of the second segment is the first's
// dfinal_state): what training with carried state across windows relies on.
TEST(LinearAttention, StateCarriesAcrossSegments) {
    const Problem whole{2, 29, 3, 6, 5, 8};
    const int64_t split = 13;  // not a chunk boundary
    Problem first = whole, second = whole;
    first.seq_len = split;
    second.seq_len = whole.seq_len - split;
    const Inputs in(whole, DType::f64, 4000, true, true);
    auto part = [](const Inputs& src, const Problem& p, int64_t start, const Tensor& initial_state) {
        Inputs out = src;
        out.q = src.q.narrow(1, start, p.seq_len).contiguous();
        out.k = src.k.narrow(1, start, p.seq_len).contiguous();
        out.v = src.v.narrow(1, start, p.seq_len).contiguous();
        out.initial_state = initial_state;
        return out;
    };
    const Outputs full = run_forward(&ops::linear_attention_chunkwise_forward, whole, in);
    const Inputs in1 = part(in, first, 0, in.initial_state);
    const Outputs out1 = run_forward(&ops::linear_attention_chunkwise_forward, first, in1);
    const Inputs in2 = part(in, second, split, out1.final_state);
    const Outputs out2 = run_forward(&ops::linear_attention_chunkwise_forward, second, in2);
    EXPECT_LT(testkit::relative_error(out1.o, full.o.narrow(1, 0, split)), 1e-12);
    EXPECT_LT(testkit::relative_error(out2.o, full.o.narrow(1, split, second.seq_len)), 1e-12);
    EXPECT_LT(testkit::relative_error(out2.final_state, full.final_state), 1e-12);

    const Tensor dout = testkit::random_normal(full.o.shape(), DType::f64, 4010);
    const Tensor dfinal = testkit::random_normal(full.final_state.shape(), DType::f64, 4011);
    const Gradients g = run_backward(whole, in, dout, &dfinal);
    const Gradients g2 = run_backward(second, in2, dout.narrow(1, split, second.seq_len).contiguous(), &dfinal);
    const Gradients g1 = run_backward(first, in1, dout.narrow(1, 0, split).contiguous(), &g2.dinitial_state);
    EXPECT_LT(testkit::relative_error(g1.dinitial_state, g.dinitial_state), 1e-12);
    for (auto [whole_grad, first_grad, second_grad] :
         {std::tuple{&g.dq, &g1.dq, &g2.dq}, std::tuple{&g.dk, &g1.dk, &g2.dk}, std::tuple{&g.dv, &g1.dv, &g2.dv}}) {
        EXPECT_LT(testkit::relative_error(*first_grad, whole_grad->narrow(1, 0, split)), 1e-12);
        EXPECT_LT(testkit::relative_error(*second_grad, whole_grad->narrow(1, split, second.seq_len)), 1e-12);
    }
}

TEST(LinearAttention, BadInputsAreErrors) {
    const Problem p{2, 5, 3, 4, 6, 4};
    const Inputs in(p, DType::f32, 5000, true, true);
    Tensor o = Tensor::empty({2, 5, 3, 6});
    Tensor state = Tensor::empty({2, 3, 4, 6});
    const char* fwd = "linear_attention_chunkwise_forward";
    auto forward = [&](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* s0,
                       const ops::LinearAttentionArgs& args) {
        ops::linear_attention_chunkwise_forward(o, &state, q, k, v, s0, args);
    };
    const Tensor bad_v = testkit::random_normal({2, 5, 4, 6}, DType::f32, 5010);
    expect_error([&] { forward(in.q, in.k, bad_v, in.initial(), in.args); },
                 {fmt::format("{}: v: expected shape [2, 5, 3, Dv], got [2, 5, 4, 6]", fwd)});
    const Tensor bad_k = testkit::random_normal({2, 5, 3, 5}, DType::f32, 5011);
    expect_error([&] { forward(in.q, bad_k, in.v, in.initial(), in.args); },
                 {fmt::format("{}: k: expected shape [2, 5, 3, 4], got [2, 5, 3, 5]", fwd)});
    const Tensor bad_state = testkit::random_normal({2, 3, 6, 4}, DType::f32, 5012);
    expect_error([&] { forward(in.q, in.k, in.v, &bad_state, in.args); },
                 {fmt::format("{}: initial_state: expected shape [2, 3, 4, 6], got [2, 3, 6, 4]", fwd)});
    expect_error([&] { forward(in.q, in.k.to(DType::f64), in.v, in.initial(), in.args); },
                 {fmt::format("{}: k: expected dtype F32", fwd)});
    expect_error([&] { forward(in.q.to(DType::bf16), in.k, in.v, in.initial(), in.args); },
                 {fmt::format("{}: q: expected dtype F32 or F64, got BF16", fwd)});
    const Tensor strided_q = testkit::random_normal({2, 3, 5, 4}, DType::f32, 5013).transpose(1, 2);
    expect_error([&] { forward(strided_q, in.k, in.v, in.initial(), in.args); },
                 {fmt::format("{}: q: expected a contiguous tensor", fwd)});
    ops::LinearAttentionArgs args = in.args;
    args.log_decay = Tensor::from_vector({3}, {-0.1, 0.25, -0.3});
    expect_error([&] { forward(in.q, in.k, in.v, in.initial(), args); },
                 {fmt::format("{}: log_decay: expected every value ≤ 0, got 0.25 at head 1", fwd)});
    expect_error([&] { ops::linear_attention_recurrent_forward(o, &state, in.q, in.k, in.v, in.initial(), args); },
                 {"linear_attention_recurrent_forward: log_decay: expected every value ≤ 0"});
    args.log_decay = Tensor::from_vector({2}, {-0.1, -0.2});
    expect_error([&] { forward(in.q, in.k, in.v, in.initial(), args); },
                 {fmt::format("{}: log_decay: expected shape [3], got [2]", fwd)});
    args = in.args;
    args.chunk_size = 0;
    expect_error([&] { forward(in.q, in.k, in.v, in.initial(), args); },
                 {fmt::format("{}: chunk_size: expected ≥ 1, got 0", fwd)});
    Tensor bad_o = Tensor::empty({2, 5, 3, 4});
    expect_error([&] { ops::linear_attention_chunkwise_forward(bad_o, &state, in.q, in.k, in.v, nullptr, in.args); },
                 {fmt::format("{}: o: expected shape [2, 5, 3, 6], got [2, 5, 3, 4]", fwd)});

    Tensor dq = Tensor::zeros(in.q.shape()), dk = Tensor::zeros(in.k.shape()), dv = Tensor::zeros(in.v.shape());
    Tensor bad_dq = Tensor::zeros({2, 5, 3, 6});
    const Tensor dout = testkit::random_normal(in.v.shape(), DType::f32, 5014);
    expect_error(
        [&] {
            ops::linear_attention_chunkwise_backward(bad_dq, dk, dv, nullptr, dout, nullptr, in.q, in.k, in.v,
                                                     nullptr, in.args);
        },
        {"linear_attention_chunkwise_backward: dq: expected shape [2, 5, 3, 4], got [2, 5, 3, 6]"});
    const Tensor dout64 = dout.to(DType::f64);
    expect_error(
        [&] {
            ops::linear_attention_chunkwise_backward(dq, dk, dv, nullptr, dout64, nullptr, in.q, in.k, in.v, nullptr,
                                                     in.args);
        },
        {"linear_attention_chunkwise_backward: dout: expected dtype F32"});
}

// A GPU tensor among CPU ones is an error naming it, not a crash.
TEST(LinearAttention, MixedDevicesAreRefused) {
    if (cuda::device_count() == 0) GTEST_SKIP() << cuda::describe_device();
    const Problem p{1, 4, 2, 3, 5, 4};
    const Inputs in(p, DType::f32, 5100, false, false);
    Tensor o = Tensor::empty({1, 4, 2, 5});
    const Tensor k_gpu = in.k.to(Device::cuda);
    expect_error([&] { ops::linear_attention_chunkwise_forward(o, nullptr, in.q, k_gpu, in.v, nullptr, in.args); },
                 {"linear_attention_chunkwise_forward: k: tensor is on cuda, expected cpu"});
    Tensor out = Tensor::empty({1, 4, 3});
    const Tensor x_gpu = testkit::random_normal({1, 4, 3}, DType::f32, 5101).to(Device::cuda);
    const Tensor w = testkit::random_normal({3, 4}, DType::f32, 5102);
    expect_error([&] { ops::short_conv_forward(out, x_gpu, w, true); },
                 {"short_conv_forward: weight: tensor is on cpu, expected cuda (one device per call)"});
}

TEST(ShortConv, ForwardMatchesReference) {
    for (int64_t K = 1; K <= 8; ++K)
        for (bool silu : {false, true})
            for (DType dtype : {DType::f32, DType::f64}) {
                SCOPED_TRACE(fmt::format("K={} silu={} dtype={}", K, silu, dtype_name(dtype)));
                const int64_t B = 2, T = 11, C = 19;  // C is not a multiple of the 16-channel blocks
                const Tensor x = testkit::random_normal({B, T, C}, dtype, 6000 + uint64_t(K));
                const Tensor w = testkit::random_normal({C, K}, dtype, 6100 + uint64_t(K), 0.5);
                Tensor out = Tensor::empty({B, T, C}, dtype);
                ops::short_conv_forward(out, x, w, silu);
                const Tensor x64 = x.to(DType::f64), w64 = w.to(DType::f64);
                Tensor ref = Tensor::empty({B, T, C}, DType::f64);
                reference::short_conv(ref.data<double>(), x64.data<double>(), w64.data<double>(), silu, B, T, C, K);
                EXPECT_LT(testkit::relative_error(out, ref), dtype == DType::f32 ? 1e-6 : 1e-14);
            }
}

TEST(ShortConv, BackwardMatchesFiniteDifferences) {
    for (int64_t K = 1; K <= 8; ++K)
        for (bool silu : {false, true}) {
            SCOPED_TRACE(fmt::format("K={} silu={}", K, silu));
            const int64_t B = 2, T = 6, C = 19;  // T < K for the widest kernels: taps before the start
            Tensor x = testkit::random_normal({B, T, C}, DType::f64, 7000 + uint64_t(K));
            Tensor w = testkit::random_normal({C, K}, DType::f64, 7100 + uint64_t(K), 0.5);
            const Tensor r = testkit::random_normal({B, T, C}, DType::f64, 7200 + uint64_t(K));
            auto loss = [&] {
                Tensor out = Tensor::empty({B, T, C}, DType::f64);
                ops::short_conv_forward(out, x, w, silu);
                return testkit::dot(out, r);
            };
            Tensor dx = Tensor::zeros({B, T, C}, DType::f64), dw = Tensor::zeros({C, K}, DType::f64);
            ops::short_conv_backward(dx, dw, r, x, w, silu);
            EXPECT_LT(testkit::gradient_check(loss, x, dx), 1e-6) << "dx";
            EXPECT_LT(testkit::gradient_check(loss, w, dw), 1e-6) << "dweight";
            // Backward adds into the gradients: a second call doubles them.
            const Tensor dx_once = dx.clone();
            ops::short_conv_backward(dx, dw, r, x, w, silu);
            EXPECT_NEAR(testkit::dot(dx, dx_once), 2 * testkit::dot(dx_once, dx_once),
                        1e-12 * testkit::dot(dx_once, dx_once));
        }
}

TEST(ShortConv, BadInputsAreErrors) {
    const Tensor x = testkit::random_normal({2, 5, 4}, DType::f32, 8000);
    Tensor out = Tensor::empty({2, 5, 4});
    const Tensor w9 = testkit::random_normal({4, 9}, DType::f32, 8001);
    expect_error([&] { ops::short_conv_forward(out, x, w9, true); },
                 {"short_conv_forward: weight: expected shape [4, K] with 1 ≤ K ≤ 8, got [4, 9]"});
    const Tensor w_channels = testkit::random_normal({5, 3}, DType::f32, 8002);
    expect_error([&] { ops::short_conv_forward(out, x, w_channels, true); },
                 {"short_conv_forward: weight: expected shape [4, K] with 1 ≤ K ≤ 8, got [5, 3]"});
    const Tensor w = testkit::random_normal({4, 3}, DType::f32, 8003);
    expect_error([&] { ops::short_conv_forward(out, x, w.to(DType::f64), true); },
                 {"short_conv_forward: weight: expected dtype F32"});
    Tensor bad_out = Tensor::empty({2, 4, 4});
    expect_error([&] { ops::short_conv_forward(bad_out, x, w, false); },
                 {"short_conv_forward: out: expected shape [2, 5, 4], got [2, 4, 4]"});
    Tensor dx = Tensor::zeros({2, 5, 4}), bad_dw = Tensor::zeros({4, 2});
    expect_error([&] { ops::short_conv_backward(dx, bad_dw, x, x, w, true); },
                 {"short_conv_backward: dweight: expected shape [4, 3], got [4, 2]"});
}
