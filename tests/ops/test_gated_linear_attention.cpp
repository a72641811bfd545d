// Linear attention with every kind of decay (none, fixed per head, scalar gate [B,T,H], vector gate
// [B,T,H,Dk]) and packed variable-length sequences: the recurrent, parallel and chunkwise forms against
// each other and the float64 reference, the chunkwise backward (gate gradient included) against central
// finite differences, state carry, sequence isolation, extreme decays and bad inputs; the CPU kernels'
// vectorisable exp against libm.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include "backend/cpu/reference_linear_attention.hpp"
#include "backend/cpu/vector_math.hpp"
#include "core/tensor.hpp"
#include "ops/linear_attention.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using testkit::count_non_finite;
using testkit::expect_error;

namespace {

enum class Decay { none, fixed, scalar_gate, vector_gate };
const char* decay_name(Decay d) {
    switch (d) {
    case Decay::none: return "none";
    case Decay::fixed: return "fixed";
    case Decay::scalar_gate: return "scalar_gate";
    case Decay::vector_gate: return "vector_gate";
    }
    return "?";
}
constexpr Decay kAllDecays[] = {Decay::none, Decay::fixed, Decay::scalar_gate, Decay::vector_gate};
constexpr Decay kGates[] = {Decay::scalar_gate, Decay::vector_gate};

struct Problem {
    int64_t batch, seq_len, heads, key_dim, value_dim, chunk_size;
};

std::string describe(const Problem& p, Decay decay, bool with_initial_state) {
    return fmt::format("B={} T={} H={} Dk={} Dv={} chunk={} decay={} initial_state={}", p.batch, p.seq_len, p.heads,
                       p.key_dim, p.value_dim, p.chunk_size, decay_name(decay), with_initial_state);
}

// Random inputs. q,k,v, initial state ~ N(0,1), scale 1/sqrt(Dk); log decays in [−0.7, −0.01] (fixed:
// [−0.5, −0.001]): away from 0 so a finite-difference step keeps them ≤ 0.
struct Inputs {
    Tensor q, k, v, initial_state;  // initial_state undefined when not used
    ops::LinearAttentionArgs args;

    Inputs(const Problem& p, DType dtype, uint64_t stream, Decay decay, bool with_initial_state,
           std::vector<int64_t> cu_seqlens = {}) {
        const int64_t B = p.batch, T = p.seq_len, H = p.heads;
        args.cu_seqlens = std::move(cu_seqlens);
        q = testkit::random_normal({B, T, H, p.key_dim}, dtype, stream);
        k = testkit::random_normal({B, T, H, p.key_dim}, dtype, stream + 1);
        v = testkit::random_normal({B, T, H, p.value_dim}, dtype, stream + 2);
        if (with_initial_state) initial_state = testkit::random_normal(state_shape(p), dtype, stream + 3);
        if (decay == Decay::fixed) args.log_decay = testkit::random_uniform({H}, dtype, stream + 4, -0.5, -0.001);
        if (decay == Decay::scalar_gate)
            args.log_gate = testkit::random_uniform({B, T, H}, dtype, stream + 4, -0.7, -0.01);
        if (decay == Decay::vector_gate)
            args.log_gate = testkit::random_uniform({B, T, H, p.key_dim}, dtype, stream + 4, -0.7, -0.01);
        args.scale = 1.0 / std::sqrt(double(p.key_dim));
        args.chunk_size = p.chunk_size;
    }
    int64_t num_states(const Problem& p) const {
        return args.cu_seqlens.empty() ? p.batch : int64_t(args.cu_seqlens.size()) - 1;
    }
    Shape state_shape(const Problem& p) const { return {num_states(p), p.heads, p.key_dim, p.value_dim}; }
    const Tensor* initial() const { return initial_state.defined() ? &initial_state : nullptr; }
    Inputs to(DType dtype) const {
        Inputs out = *this;
        out.q = q.to(dtype);
        out.k = k.to(dtype);
        out.v = v.to(dtype);
        if (initial_state.defined()) out.initial_state = initial_state.to(dtype);
        if (args.log_decay.defined()) out.args.log_decay = args.log_decay.to(dtype);
        if (args.log_gate.defined()) out.args.log_gate = args.log_gate.to(dtype);
        return out;
    }
};

struct Outputs {
    Tensor o, final_state;
};

using Forward = void (*)(Tensor&, Tensor*, const Tensor&, const Tensor&, const Tensor&, const Tensor*,
                         const ops::LinearAttentionArgs&);
constexpr Forward kForms[] = {&ops::linear_attention_recurrent_forward, &ops::linear_attention_parallel_forward,
                              &ops::linear_attention_chunkwise_forward};
constexpr const char* kFormNames[] = {"recurrent", "parallel", "chunkwise"};

// Outputs start as NaN: the allocator hands back freed blocks, so an element a form failed to write
// would otherwise still hold the previous form's (correct) result.
Outputs run_forward(Forward forward, const Problem& p, const Inputs& in) {
    Outputs out{Tensor::empty({p.batch, p.seq_len, p.heads, p.value_dim}, in.q.dtype()),
                Tensor::empty(in.state_shape(p), in.q.dtype())};
    out.o.fill(std::numeric_limits<double>::quiet_NaN());
    out.final_state.fill(std::numeric_limits<double>::quiet_NaN());
    forward(out.o, &out.final_state, in.q, in.k, in.v, in.initial(), in.args);
    return out;
}
Outputs run_chunkwise(const Problem& p, const Inputs& in) {
    return run_forward(&ops::linear_attention_chunkwise_forward, p, in);
}

// The float64 reference on the same (possibly f32-rounded) inputs.
Outputs run_reference(const Problem& p, const Inputs& in32) {
    const Inputs in = in32.to(DType::f64);
    auto ptr = [](const Tensor& t) { return t.defined() ? t.data<double>() : nullptr; };
    Outputs out{Tensor::empty({p.batch, p.seq_len, p.heads, p.value_dim}, DType::f64),
                Tensor::empty(in.state_shape(p), DType::f64)};
    const auto& cu = in.args.cu_seqlens;
    const int64_t gate_width = in.args.log_gate.defined() && in.args.log_gate.dim() == 4 ? p.key_dim : 1;
    reference::linear_attention(out.o.data<double>(), out.final_state.data<double>(), ptr(in.q), ptr(in.k),
                                ptr(in.v), ptr(in.initial_state),
                                {p.batch, p.seq_len, p.heads, p.key_dim, p.value_dim, ptr(in.args.log_decay),
                                 ptr(in.args.log_gate), gate_width, cu.empty() ? nullptr : cu.data(),
                                 in.num_states(p), in.args.scale});
    return out;
}

struct Gradients {
    Tensor dq, dk, dv, dinitial_state, dlog_gate;  // dlog_gate undefined without a gate
};

// Chunkwise backward of loss = dot(o, dout) + dot(final_state, dfinal_state), into zeroed gradients.
Gradients run_backward(const Problem& p, const Inputs& in, const Tensor& dout, const Tensor* dfinal_state) {
    const DType dtype = in.q.dtype();
    Gradients g{Tensor::zeros(in.q.shape(), dtype), Tensor::zeros(in.k.shape(), dtype),
                Tensor::zeros(in.v.shape(), dtype), Tensor::zeros(in.state_shape(p), dtype), Tensor()};
    if (in.args.log_gate.defined()) g.dlog_gate = Tensor::zeros(in.args.log_gate.shape(), dtype);
    ops::linear_attention_chunkwise_backward(g.dq, g.dk, g.dv, &g.dinitial_state, dout, dfinal_state, in.q, in.k,
                                             in.v, in.initial(), in.args,
                                             g.dlog_gate.defined() ? &g.dlog_gate : nullptr);
    return g;
}

const std::vector<Problem> kForwardProblems = {
    {2, 37, 3, 16, 24, 8},    // T not a multiple of the chunk, Dk ≠ Dv
    {1, 1, 2, 8, 4, 64},      // T = 1
    {2, 9, 3, 8, 4, 1},       // one token per chunk
    {1, 64, 1, 24, 16, 16},   // T a multiple of the chunk, Dk > Dv
    {2, 130, 3, 16, 24, 64},  // the default chunk: four 16-row sub-chunks, a short last chunk
    {1, 45, 2, 5, 7, 20},     // a chunk of 16 + 4 sub-chunk rows
    {1, 70, 4, 8, 8, 16},     // B = 1, 4 heads: the vector-gate kernel walks them in 2 groups of 2 in lockstep
};

// ‖a − b‖ / ‖b‖ for the parts of two outputs.
void expect_close(const Outputs& out, const Outputs& ref, double bound) {
    EXPECT_LT(testkit::relative_error(out.o, ref.o), bound);
    EXPECT_LT(testkit::relative_error(out.final_state, ref.final_state), bound);
}

}  // namespace

// In f64 the forms are the same algebra, so they agree to rounding (mixers.md §13: ~1e-10).
TEST(GatedLinearAttentionForward, FormsAgreeInF64) {
    uint64_t stream = 10000;
    for (const Problem& p : kForwardProblems)
        for (Decay decay : kAllDecays)
            for (bool with_initial_state : {false, true}) {
                SCOPED_TRACE(describe(p, decay, with_initial_state));
                const Inputs in(p, DType::f64, stream += 10, decay, with_initial_state);
                const Outputs ref = run_reference(p, in);
                for (size_t f = 0; f < std::size(kForms); ++f) {
                    SCOPED_TRACE(kFormNames[f]);
                    expect_close(run_forward(kForms[f], p, in), ref, 1e-10);
                }
                // Every chunk size computes the same function.
                Inputs other = in;
                other.args.chunk_size = p.chunk_size == 1 ? 3 : p.chunk_size / 2 + 1;
                expect_close(run_chunkwise(p, other), ref, 1e-10);
            }
}

TEST(GatedLinearAttentionForward, F32FormsMatchF64Reference) {
    uint64_t stream = 11000;
    for (const Problem& p : kForwardProblems)
        for (Decay decay : kAllDecays)
            for (bool with_initial_state : {false, true}) {
                SCOPED_TRACE(describe(p, decay, with_initial_state));
                const Inputs in(p, DType::f32, stream += 10, decay, with_initial_state);
                const Outputs ref = run_reference(p, in);
                for (size_t f = 0; f < std::size(kForms); ++f) {
                    SCOPED_TRACE(kFormNames[f]);
                    expect_close(run_forward(kForms[f], p, in), ref, 1e-4);
                }
            }
}

namespace {

// A vector gate [1,T,H,Dk] (T = 200, chunk 64) whose decay sends each chunk down a different path of
// the CPU kernel's intra-chunk product (linear_attention_gated.cpp: a block of P is split through a
// reference row when every factor's exponent stays within ±16, sub-chunks of 16 rows):
//   rows   0– 63  g ∈ [−0.4, −0.01]  the whole chunk is one split block (exponents ≤ 32·0.4)
//   rows  64–127  g ∈ [−1.5, −0.8]   not the chunk (≥ 32·0.8), each 16-row diagonal block (≤ 8·1.5)
//   rows 128–191  as 64–127, but in rows 128–143 channel 0 has g ∈ [−5, −4]: that diagonal block is
//                 element by element (≥ 7·4), the others are split
//   rows 192–199  g ∈ [−0.7, −0.01]  a short last chunk, one split block
Tensor gate_for_every_path(const Problem& p, uint64_t stream) {
    const Tensor unit = testkit::random_uniform({p.batch, p.seq_len, p.heads, p.key_dim}, DType::f64, stream, 0, 1);
    std::vector<double> values(size_t(unit.numel()));
    for (int64_t t = 0; t < p.seq_len; ++t)
        for (int64_t h = 0; h < p.heads; ++h)
            for (int64_t c = 0; c < p.key_dim; ++c) {
                const int64_t at = (t * p.heads + h) * p.key_dim + c;
                double low = -0.4, high = -0.01;
                if (t >= 64 && t < 192) low = -1.5, high = -0.8;
                if (t >= 128 && t < 144 && c == 0) low = -5.0, high = -4.0;
                if (t >= 192) low = -0.7;
                values[size_t(at)] = low + (high - low) * unit.flat(at);
            }
    return Tensor::from_vector({p.batch, p.seq_len, p.heads, p.key_dim}, values);
}

}  // namespace

TEST(GatedLinearAttentionForward, EveryIntraChunkPathMatchesReference) {
    const Problem p{1, 200, 2, 8, 6, 64};
    uint64_t stream = 11500;
    for (bool with_initial_state : {false, true}) {
        SCOPED_TRACE(describe(p, Decay::vector_gate, with_initial_state));
        Inputs in(p, DType::f64, stream += 10, Decay::vector_gate, with_initial_state);
        in.args.log_gate = gate_for_every_path(p, stream + 5).to(DType::f64);
        const Outputs ref = run_reference(p, in);
        expect_close(run_chunkwise(p, in), ref, 1e-10);
        const Inputs in32 = in.to(DType::f32);
        const Outputs out32 = run_chunkwise(p, in32);
        EXPECT_EQ(count_non_finite(out32.o), 0);
        EXPECT_EQ(count_non_finite(out32.final_state), 0);
        expect_close(out32, run_reference(p, in32), 1e-5);
    }
}

TEST(GatedLinearAttentionBackward, EveryIntraChunkPathMatchesFiniteDifferencesAndF64) {
    const Problem p{1, 200, 1, 3, 2, 64};
    const uint64_t stream = 12300;
    Inputs in(p, DType::f64, stream, Decay::vector_gate, true);
    in.args.log_gate = gate_for_every_path(p, stream + 4).to(DType::f64);
    const Tensor r1 = testkit::random_normal({p.batch, p.seq_len, p.heads, p.value_dim}, DType::f64, stream + 5);
    const Tensor r2 = testkit::random_normal(in.state_shape(p), DType::f64, stream + 6);
    auto loss = [&] {
        const Outputs out = run_chunkwise(p, in);
        return testkit::dot(out.o, r1) + testkit::dot(out.final_state, r2);
    };
    const Gradients g = run_backward(p, in, r1, &r2);
    EXPECT_LT(testkit::gradient_check(loss, in.q, g.dq, 128), 1e-6) << "dq";
    EXPECT_LT(testkit::gradient_check(loss, in.k, g.dk, 128), 1e-6) << "dk";
    EXPECT_LT(testkit::gradient_check(loss, in.v, g.dv), 1e-6) << "dv";
    EXPECT_LT(testkit::gradient_check(loss, in.args.log_gate, g.dlog_gate, 128), 1e-6) << "dlog_gate";

    // f32 against f64 on the same (f32-rounded) inputs.
    const Inputs in32 = in.to(DType::f32), in64 = in32.to(DType::f64);
    const Tensor r1_32 = r1.to(DType::f32), r2_32 = r2.to(DType::f32);
    const Tensor r1_64 = r1_32.to(DType::f64), r2_64 = r2_32.to(DType::f64);
    const Gradients g32 = run_backward(p, in32, r1_32, &r2_32), g64 = run_backward(p, in64, r1_64, &r2_64);
    EXPECT_LT(testkit::relative_error(g32.dq, g64.dq), 1e-4);
    EXPECT_LT(testkit::relative_error(g32.dk, g64.dk), 1e-4);
    EXPECT_LT(testkit::relative_error(g32.dv, g64.dv), 1e-4);
    EXPECT_LT(testkit::relative_error(g32.dinitial_state, g64.dinitial_state), 1e-4);
    EXPECT_LT(testkit::relative_error(g32.dlog_gate, g64.dlog_gate), 1e-3);
}

// loss = dot(o, R1) + dot(final_state, R2); the backward must match central differences for q, k, v,
// the initial state and the log gate. Gradients start from random values: the backward adds into them.
TEST(GatedLinearAttentionBackward, GradientsMatchFiniteDifferences) {
    const std::vector<Problem> problems = {
        {2, 11, 2, 5, 6, 4}, {1, 7, 3, 4, 3, 16}, {1, 6, 1, 3, 4, 1}, {1, 41, 1, 3, 2, 32}};  // last: 2 sub-chunks
    uint64_t stream = 12000;
    for (const Problem& p : problems)
        for (Decay decay : kGates) {
            SCOPED_TRACE(describe(p, decay, true));
            Inputs in(p, DType::f64, stream += 20, decay, true);
            const Tensor r1 =
                testkit::random_normal({p.batch, p.seq_len, p.heads, p.value_dim}, DType::f64, stream + 5);
            const Tensor r2 = testkit::random_normal(in.state_shape(p), DType::f64, stream + 6);
            auto loss = [&] {
                const Outputs out = run_chunkwise(p, in);
                return testkit::dot(out.o, r1) + testkit::dot(out.final_state, r2);
            };
            Gradients g{testkit::random_normal(in.q.shape(), DType::f64, stream + 7),
                        testkit::random_normal(in.k.shape(), DType::f64, stream + 8),
                        testkit::random_normal(in.v.shape(), DType::f64, stream + 9),
                        testkit::random_normal(in.state_shape(p), DType::f64, stream + 10),
                        testkit::random_normal(in.args.log_gate.shape(), DType::f64, stream + 11)};
            const Gradients before{g.dq.clone(), g.dk.clone(), g.dv.clone(), g.dinitial_state.clone(),
                                   g.dlog_gate.clone()};
            ops::linear_attention_chunkwise_backward(g.dq, g.dk, g.dv, &g.dinitial_state, r1, &r2, in.q, in.k, in.v,
                                                     in.initial(), in.args, &g.dlog_gate);
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
            EXPECT_LT(testkit::gradient_check(loss, in.args.log_gate, added(g.dlog_gate, before.dlog_gate), 128),
                      1e-6)
                << "dlog_gate";
        }
}

// Without an initial state or a final-state gradient (the common training call).
TEST(GatedLinearAttentionBackward, GradientsWithoutStatesMatchFiniteDifferences) {
    const Problem p{2, 21, 2, 4, 5, 8};
    uint64_t stream = 12500;
    for (Decay decay : kGates) {
        SCOPED_TRACE(describe(p, decay, false));
        Inputs in(p, DType::f64, stream += 10, decay, false);
        const Tensor r1 = testkit::random_normal({p.batch, p.seq_len, p.heads, p.value_dim}, DType::f64, stream + 5);
        auto loss = [&] { return testkit::dot(run_chunkwise(p, in).o, r1); };
        const Gradients g = run_backward(p, in, r1, nullptr);
        EXPECT_LT(testkit::gradient_check(loss, in.q, g.dq), 1e-6);
        EXPECT_LT(testkit::gradient_check(loss, in.k, g.dk), 1e-6);
        EXPECT_LT(testkit::gradient_check(loss, in.v, g.dv), 1e-6);
        EXPECT_LT(testkit::gradient_check(loss, in.args.log_gate, g.dlog_gate), 1e-6);
        in.initial_state = Tensor::zeros(in.state_shape(p), DType::f64);
        EXPECT_LT(testkit::gradient_check(loss, in.initial_state, g.dinitial_state), 1e-6);
    }
}

TEST(GatedLinearAttentionBackward, F32MatchesF64) {
    const std::vector<Problem> problems = {{2, 70, 3, 16, 24, 16}, {1, 45, 2, 24, 16, 64}, {1, 10, 3, 16, 8, 1}};
    uint64_t stream = 13000;
    for (const Problem& p : problems)
        for (Decay decay : kGates) {
            SCOPED_TRACE(describe(p, decay, true));
            const Inputs in32(p, DType::f32, stream += 10, decay, true);
            const Inputs in64 = in32.to(DType::f64);
            const Tensor r1 =
                testkit::random_normal({p.batch, p.seq_len, p.heads, p.value_dim}, DType::f32, stream + 5);
            const Tensor r2 = testkit::random_normal(in32.state_shape(p), DType::f32, stream + 6);
            const Tensor r2_64 = r2.to(DType::f64);
            const Gradients g32 = run_backward(p, in32, r1, &r2);
            const Gradients g64 = run_backward(p, in64, r1.to(DType::f64), &r2_64);
            EXPECT_LT(testkit::relative_error(g32.dq, g64.dq), 1e-4);
            EXPECT_LT(testkit::relative_error(g32.dk, g64.dk), 1e-4);
            EXPECT_LT(testkit::relative_error(g32.dv, g64.dv), 1e-4);
            EXPECT_LT(testkit::relative_error(g32.dinitial_state, g64.dinitial_state), 1e-4);
            // dg is a reverse cumsum of per-token terms (mixers.md §13: the least accurate gradient).
            EXPECT_LT(testkit::relative_error(g32.dlog_gate, g64.dlog_gate), 1e-3);
        }
}

// Two segments chained through the state compute what one pass does, forward and gradients
// (dinitial_state of the second segment is the first's dfinal_state), with gates.
TEST(GatedLinearAttention, StateCarriesAcrossSegments) {
    const Problem whole{2, 45, 3, 6, 5, 16};
    const int64_t split = 21;  // neither a chunk nor a sub-chunk boundary
    Problem first = whole, second = whole;
    first.seq_len = split;
    second.seq_len = whole.seq_len - split;
    uint64_t stream = 14000;
    for (Decay decay : kGates) {
        SCOPED_TRACE(decay_name(decay));
        const Inputs in(whole, DType::f64, stream += 20, decay, true);
        auto part = [](const Inputs& src, const Problem& p, int64_t start, const Tensor& initial_state) {
            Inputs out = src;
            out.q = src.q.narrow(1, start, p.seq_len).contiguous();
            out.k = src.k.narrow(1, start, p.seq_len).contiguous();
            out.v = src.v.narrow(1, start, p.seq_len).contiguous();
            out.args.log_gate = src.args.log_gate.narrow(1, start, p.seq_len).contiguous();
            out.initial_state = initial_state;
            return out;
        };
        const Outputs full = run_chunkwise(whole, in);
        const Inputs in1 = part(in, first, 0, in.initial_state);
        const Outputs out1 = run_chunkwise(first, in1);
        const Inputs in2 = part(in, second, split, out1.final_state);
        const Outputs out2 = run_chunkwise(second, in2);
        EXPECT_LT(testkit::relative_error(out1.o, full.o.narrow(1, 0, split)), 1e-12);
        EXPECT_LT(testkit::relative_error(out2.o, full.o.narrow(1, split, second.seq_len)), 1e-12);
        EXPECT_LT(testkit::relative_error(out2.final_state, full.final_state), 1e-12);

        const Tensor dout = testkit::random_normal(full.o.shape(), DType::f64, stream + 10);
        const Tensor dfinal = testkit::random_normal(full.final_state.shape(), DType::f64, stream + 11);
        const Gradients g = run_backward(whole, in, dout, &dfinal);
        const Gradients g2 = run_backward(second, in2, dout.narrow(1, split, second.seq_len).contiguous(), &dfinal);
        const Gradients g1 = run_backward(first, in1, dout.narrow(1, 0, split).contiguous(), &g2.dinitial_state);
        EXPECT_LT(testkit::relative_error(g1.dinitial_state, g.dinitial_state), 1e-12);
        for (auto [whole_grad, first_grad, second_grad] :
             {std::tuple{&g.dq, &g1.dq, &g2.dq}, std::tuple{&g.dk, &g1.dk, &g2.dk}, std::tuple{&g.dv, &g1.dv, &g2.dv},
              std::tuple{&g.dlog_gate, &g1.dlog_gate, &g2.dlog_gate}}) {
            EXPECT_LT(testkit::relative_error(*first_grad, whole_grad->narrow(1, 0, split)), 1e-12);
            EXPECT_LT(testkit::relative_error(*second_grad, whole_grad->narrow(1, split, second.seq_len)), 1e-12);
        }
    }
}

namespace {

// Packed sequences of lengths 5, 1, 37, 20 (T = 63; chunk 16: a sequence shorter than a chunk, one
// of a single token, chunks that start mid-stream in the packed axis).
const std::vector<int64_t> kLengths = {5, 1, 37, 20};
std::vector<int64_t> offsets_of(const std::vector<int64_t>& lengths) {
    std::vector<int64_t> cu{0};
    for (int64_t n : lengths) cu.push_back(cu.back() + n);
    return cu;
}

// Sequence n of packed inputs as a batch-1 problem of its own.
Inputs sequence_of(const Inputs& packed, const std::vector<int64_t>& cu, size_t n) {
    const int64_t start = cu[n], length = cu[n + 1] - cu[n];
    Inputs out = packed;
    out.args.cu_seqlens.clear();
    out.q = packed.q.narrow(1, start, length).contiguous();
    out.k = packed.k.narrow(1, start, length).contiguous();
    out.v = packed.v.narrow(1, start, length).contiguous();
    if (packed.args.log_gate.defined()) out.args.log_gate = packed.args.log_gate.narrow(1, start, length).contiguous();
    if (packed.initial_state.defined())
        out.initial_state = packed.initial_state.narrow(0, int64_t(n), 1).contiguous();
    return out;
}

}  // namespace

TEST(GatedLinearAttentionVarlen, PackedSequencesEqualSeparateRuns) {
    const std::vector<int64_t> cu = offsets_of(kLengths);
    const Problem packed_problem{1, cu.back(), 2, 6, 5, 16};
    uint64_t stream = 15000;
    for (Decay decay : kAllDecays)
        for (bool with_initial_state : {false, true}) {
            SCOPED_TRACE(describe(packed_problem, decay, with_initial_state));
            const Inputs in(packed_problem, DType::f64, stream += 20, decay, with_initial_state, cu);
            const Outputs ref = run_reference(packed_problem, in);
            std::vector<Outputs> packed;
            for (size_t f = 0; f < std::size(kForms); ++f) {
                SCOPED_TRACE(kFormNames[f]);
                packed.push_back(run_forward(kForms[f], packed_problem, in));
                expect_close(packed.back(), ref, 1e-10);
            }
            const Tensor dout = testkit::random_normal(ref.o.shape(), DType::f64, stream + 10);
            const Tensor dfinal = testkit::random_normal(ref.final_state.shape(), DType::f64, stream + 11);
            const Gradients g = run_backward(packed_problem, in, dout, &dfinal);
            // Each sequence alone, its results placed where the packed run puts them. Compared whole: a
            // single-token sequence without initial state has an exactly-zero gate gradient (its output
            // does not depend on its decay), so per-sequence relative errors could divide by zero.
            Outputs separate{Tensor::zeros(ref.o.shape(), DType::f64),
                             Tensor::zeros(ref.final_state.shape(), DType::f64)};
            Gradients separate_grads{Tensor::zeros(g.dq.shape(), DType::f64), Tensor::zeros(g.dk.shape(), DType::f64),
                                     Tensor::zeros(g.dv.shape(), DType::f64),
                                     Tensor::zeros(g.dinitial_state.shape(), DType::f64),
                                     g.dlog_gate.defined() ? Tensor::zeros(g.dlog_gate.shape(), DType::f64) : Tensor()};
            for (size_t n = 0; n + 1 < cu.size(); ++n) {
                const int64_t start = cu[n], length = cu[n + 1] - cu[n], state = int64_t(n);
                Problem p = packed_problem;
                p.seq_len = length;
                const Inputs one = sequence_of(in, cu, n);
                const Outputs alone = run_chunkwise(p, one);
                separate.o.narrow(1, start, length).copy_from(alone.o);
                separate.final_state.narrow(0, state, 1).copy_from(alone.final_state);
                const Tensor dfinal_n = dfinal.narrow(0, state, 1).contiguous();
                const Gradients gn = run_backward(p, one, dout.narrow(1, start, length).contiguous(), &dfinal_n);
                separate_grads.dq.narrow(1, start, length).copy_from(gn.dq);
                separate_grads.dk.narrow(1, start, length).copy_from(gn.dk);
                separate_grads.dv.narrow(1, start, length).copy_from(gn.dv);
                separate_grads.dinitial_state.narrow(0, state, 1).copy_from(gn.dinitial_state);
                if (gn.dlog_gate.defined()) separate_grads.dlog_gate.narrow(1, start, length).copy_from(gn.dlog_gate);
            }
            for (size_t f = 0; f < std::size(kForms); ++f) {
                SCOPED_TRACE(kFormNames[f]);
                expect_close(packed[f], separate, 1e-12);
            }
            EXPECT_LT(testkit::relative_error(g.dq, separate_grads.dq), 1e-12);
            EXPECT_LT(testkit::relative_error(g.dk, separate_grads.dk), 1e-12);
            EXPECT_LT(testkit::relative_error(g.dv, separate_grads.dv), 1e-12);
            EXPECT_LT(testkit::relative_error(g.dinitial_state, separate_grads.dinitial_state), 1e-12);
            if (g.dlog_gate.defined()) {
                EXPECT_LT(testkit::relative_error(g.dlog_gate, separate_grads.dlog_gate), 1e-12);
            }
        }
}

// Changing one sequence's inputs (q, k, v, gate, initial state) leaves every other sequence's outputs
// and final state bit for bit unchanged, in every form.
TEST(GatedLinearAttentionVarlen, SequencesDoNotLeak) {
    const std::vector<int64_t> cu = offsets_of(kLengths);
    const Problem p{1, cu.back(), 2, 6, 5, 16};
    const size_t changed = 2;
    uint64_t stream = 16000;
    for (Decay decay : kGates) {
        SCOPED_TRACE(decay_name(decay));
        const Inputs in(p, DType::f32, stream += 20, decay, true, cu);
        Inputs other = in;
        other.q = in.q.clone();
        other.k = in.k.clone();
        other.v = in.v.clone();
        other.initial_state = in.initial_state.clone();
        other.args.log_gate = in.args.log_gate.clone();
        const int64_t start = cu[changed], length = cu[changed + 1] - cu[changed];
        for (Tensor* t : {&other.q, &other.k, &other.v, &other.args.log_gate}) {
            Tensor piece = t->narrow(1, start, length);
            piece.copy_from(testkit::random_uniform(piece.shape(), DType::f32, stream + 5, -2.0, -0.5));
        }
        Tensor state = other.initial_state.narrow(0, int64_t(changed), 1);
        state.copy_from(testkit::random_normal(state.shape(), DType::f32, stream + 6));
        for (size_t f = 0; f < std::size(kForms); ++f) {
            SCOPED_TRACE(kFormNames[f]);
            const Outputs a = run_forward(kForms[f], p, in), b = run_forward(kForms[f], p, other);
            for (size_t n = 0; n + 1 < cu.size(); ++n) {
                const Tensor oa = a.o.narrow(1, cu[n], cu[n + 1] - cu[n]), ob = b.o.narrow(1, cu[n], cu[n + 1] - cu[n]);
                const Tensor sa = a.final_state.narrow(0, int64_t(n), 1), sb = b.final_state.narrow(0, int64_t(n), 1);
                if (n == changed) {
                    EXPECT_GT(testkit::relative_error(oa, ob), 1e-3);
                    continue;
                }
                EXPECT_EQ(oa.to_vector(), ob.to_vector()) << "sequence " << n;
                EXPECT_EQ(sa.to_vector(), sb.to_vector()) << "sequence " << n;
            }
        }
    }
}

// mixers.md §13: very strong decay (α = 1e−6 per step, g ≈ −13.8: everything older than a few tokens
// underflows) and very weak decay (α = 1 − 1e−7: the state sums all 4096 tokens) in float32 stay
// finite and match the float64 reference, forward and (against the f64 chunkwise) backward.
TEST(GatedLinearAttentionNumerics, StrongAndWeakDecayOverLongSequences) {
    const Problem p{1, 4096, 1, 16, 8, 64};
    uint64_t stream = 17000;
    for (Decay decay : kGates)
        for (double alpha : {1e-6, 1.0 - 1e-7}) {
            SCOPED_TRACE(fmt::format("{} alpha={}", decay_name(decay), alpha));
            Inputs in(p, DType::f32, stream += 20, decay, true);
            in.args.log_gate.fill(std::log(alpha));
            const Outputs ref = run_reference(p, in);
            for (Forward forward :
                 {&ops::linear_attention_recurrent_forward, &ops::linear_attention_chunkwise_forward}) {
                const Outputs out = run_forward(forward, p, in);
                EXPECT_EQ(count_non_finite(out.o), 0);
                EXPECT_EQ(count_non_finite(out.final_state), 0);
                expect_close(out, ref, 1e-4);
            }
            const Tensor dout = testkit::random_normal(ref.o.shape(), DType::f32, stream + 10);
            const Tensor dfinal = testkit::random_normal(ref.final_state.shape(), DType::f32, stream + 11);
            const Tensor dfinal64 = dfinal.to(DType::f64);
            const Gradients g32 = run_backward(p, in, dout, &dfinal);
            const Gradients g64 = run_backward(p, in.to(DType::f64), dout.to(DType::f64), &dfinal64);
            for (auto [a, b] : {std::pair{&g32.dq, &g64.dq}, std::pair{&g32.dk, &g64.dk}, std::pair{&g32.dv, &g64.dv},
                                std::pair{&g32.dinitial_state, &g64.dinitial_state}}) {
                EXPECT_EQ(count_non_finite(*a), 0);
                EXPECT_LT(testkit::relative_error(*a, *b), 1e-4);
            }
            EXPECT_EQ(count_non_finite(g32.dlog_gate), 0);
        }
}

TEST(GatedLinearAttention, BadInputsAreErrors) {
    const Problem p{2, 5, 3, 4, 6, 4};
    const Inputs in(p, DType::f32, 18000, Decay::vector_gate, true);
    Tensor o = Tensor::empty({2, 5, 3, 6});
    Tensor state = Tensor::empty({2, 3, 4, 6});
    const char* fwd = "linear_attention_chunkwise_forward";
    auto forward = [&](const ops::LinearAttentionArgs& args, const Tensor* s0) {
        ops::linear_attention_chunkwise_forward(o, &state, in.q, in.k, in.v, s0, args);
    };
    ops::LinearAttentionArgs args = in.args;
    args.log_gate = Tensor::from_vector({2, 5, 3, 5}, std::vector<double>(150, -0.1));
    expect_error([&] { forward(args, in.initial()); },
                 {fmt::format("{}: log_gate: expected shape [2, 5, 3] or [2, 5, 3, 4], got [2, 5, 3, 5]", fwd)});
    args.log_gate = Tensor::from_vector({2, 5, 3}, std::vector<double>(30, -0.1));
    args.log_gate.data<float>()[7] = 0.5f;
    expect_error([&] { forward(args, in.initial()); },
                 {fmt::format("{}: log_gate: expected every value ≤ 0, got 0.5 at index 7", fwd)});
    expect_error([&] { ops::linear_attention_parallel_forward(o, &state, in.q, in.k, in.v, in.initial(), args); },
                 {"linear_attention_parallel_forward: log_gate: expected every value ≤ 0"});
    args = in.args;
    args.log_decay = Tensor::from_vector({3}, {-0.1, -0.2, -0.3});
    expect_error([&] { forward(args, in.initial()); },
                 {fmt::format("{}: log_gate: expected at most one of log_decay and log_gate, got both", fwd)});
    args = in.args;
    args.log_gate = in.args.log_gate.to(DType::f64);
    expect_error([&] { forward(args, in.initial()); }, {fmt::format("{}: log_gate: expected dtype F32", fwd)});

    // Varlen: B must be 1, offsets 0 = c_0 < ... < c_N = T, states [N, H, Dk, Dv].
    args = in.args;
    args.cu_seqlens = {0, 2, 5};
    expect_error([&] { forward(args, in.initial()); },
                 {fmt::format("{}: cu_seqlens: expected batch 1 with packed sequences, got q batch 2", fwd)});
    const Problem p1{1, 5, 3, 4, 6, 4};
    const Inputs one(p1, DType::f32, 18100, Decay::scalar_gate, false);
    Tensor o1 = Tensor::empty({1, 5, 3, 6});
    Tensor state1 = Tensor::empty({2, 3, 4, 6});
    auto forward1 = [&](const std::vector<int64_t>& cu, const Tensor* s0, Tensor* final_state) {
        ops::LinearAttentionArgs a = one.args;
        a.cu_seqlens = cu;
        ops::linear_attention_recurrent_forward(o1, final_state, one.q, one.k, one.v, s0, a);
    };
    const char* rec = "linear_attention_recurrent_forward";
    expect_error([&] { forward1({1, 2, 5}, nullptr, &state1); },
                 {fmt::format("{}: cu_seqlens: expected to start at 0, got 1", rec)});
    expect_error([&] { forward1({0, 3, 3, 5}, nullptr, &state1); },
                 {fmt::format("{}: cu_seqlens: expected strictly increasing offsets, got 3 after 3 at index 2", rec)});
    expect_error([&] { forward1({0, 2, 4}, nullptr, &state1); },
                 {fmt::format("{}: cu_seqlens: expected to end at T = 5, got 4", rec)});
    expect_error([&] { forward1({0}, nullptr, &state1); },
                 {fmt::format("{}: cu_seqlens: expected at least 2 offsets", rec)});
    const Tensor wrong_initial = Tensor::zeros({1, 3, 4, 6});
    expect_error([&] { forward1({0, 2, 5}, &wrong_initial, &state1); },
                 {fmt::format("{}: initial_state: expected shape [2, 3, 4, 6], got [1, 3, 4, 6]", rec)});
    Tensor wrong_final = Tensor::zeros({3, 3, 4, 6});
    expect_error([&] { forward1({0, 2, 5}, nullptr, &wrong_final); },
                 {fmt::format("{}: final_state: expected shape [2, 3, 4, 6], got [3, 3, 4, 6]", rec)});
    forward1({0, 2, 5}, nullptr, &state1);  // the right shapes pass

    // Backward: the gate gradient has the gate's shape.
    Tensor dq = Tensor::zeros(in.q.shape()), dk = Tensor::zeros(in.k.shape()), dv = Tensor::zeros(in.v.shape());
    Tensor bad_dg = Tensor::zeros({2, 5, 3});
    const Tensor dout = testkit::random_normal(in.v.shape(), DType::f32, 18200);
    expect_error(
        [&] {
            ops::linear_attention_chunkwise_backward(dq, dk, dv, nullptr, dout, nullptr, in.q, in.k, in.v, nullptr,
                                                     in.args, &bad_dg);
        },
        {"linear_attention_chunkwise_backward: dlog_gate: expected shape [2, 5, 3, 4], got [2, 5, 3]"});
    ops::LinearAttentionArgs no_gate = in.args;
    no_gate.log_gate = Tensor();
    expect_error(
        [&] {
            ops::linear_attention_chunkwise_backward(dq, dk, dv, nullptr, dout, nullptr, in.q, in.k, in.v, nullptr,
                                                     no_gate, &bad_dg);
        },
        {"linear_attention_chunkwise_backward: dlog_gate: given, but args.log_gate is not defined"});
}

// The kernels' vectorisable float exp (backend/cpu/vector_math.hpp) against libm's double exp rounded
// to float: within 2 ulp wherever the result is a normal float; a denormal result (x < −87.3) within
// 2 of the least denormal 2⁻¹⁴⁹; exactly 0 from −104 down (strong decays underflow cleanly); +∞
// from 88.73 up; NaN stays NaN. Every 61st float of [−110, 90] (≈ 3.7·10⁷ inputs, all exponents).
TEST(VectorMath, ExpApproxMatchesLibmOverTheWholeRange) {
    const uint32_t least_denormal_bits = 1;
    const double least_denormal = double(std::bit_cast<float>(least_denormal_bits));
    double worst_ulp = 0, worst_denormal = 0;
    float worst_ulp_at = 0;
    int64_t checked = 0;
    auto check = [&](float x) {
        const float got = cpu::exp_approx(x);
        const double want = std::exp(double(x));
        ++checked;
        if (x <= -104.0f) {
            EXPECT_EQ(got, 0.0f) << "x = " << x;
        } else if (want > double(std::numeric_limits<float>::max())) {
            EXPECT_TRUE(std::isinf(got) && got > 0) << "x = " << x;
        } else if (want < double(std::numeric_limits<float>::min())) {
            worst_denormal = std::max(worst_denormal, std::abs(double(got) - want) / least_denormal);
        } else {
            const float rounded = float(want), above = std::nextafter(rounded, std::numeric_limits<float>::infinity());
            const double ulp = double(above) - double(rounded);
            const double error = std::abs(double(got) - want) / ulp;
            if (error > worst_ulp) worst_ulp = error, worst_ulp_at = x;
        }
    };
    for (float x = -110.0f; x < 0; x = std::bit_cast<float>(std::bit_cast<uint32_t>(x) - 61)) check(x);
    for (float x = 0; x < 90.0f; x = std::bit_cast<float>(std::bit_cast<uint32_t>(x) + 61)) check(x);
    EXPECT_GT(checked, int64_t(30'000'000));
    EXPECT_LE(worst_ulp, 2.0) << "at x = " << worst_ulp_at;
    EXPECT_LE(worst_denormal, 2.0);

    EXPECT_EQ(cpu::exp_approx(0.0f), 1.0f);
    EXPECT_EQ(cpu::exp_approx(-0.0f), 1.0f);
    EXPECT_EQ(cpu::exp_approx(-std::numeric_limits<float>::infinity()), 0.0f);
    EXPECT_EQ(cpu::exp_approx(-1e30f), 0.0f);
    EXPECT_EQ(cpu::exp_approx(std::numeric_limits<float>::infinity()), std::numeric_limits<float>::infinity());
    EXPECT_EQ(cpu::exp_approx(1e30f), std::numeric_limits<float>::infinity());
    EXPECT_GT(cpu::exp_approx(-103.0f), 0.0f);  // e^−103 ≈ 1.9·10⁻⁴⁵: the least denormal, not 0
    EXPECT_TRUE(std::isnan(cpu::exp_approx(std::numeric_limits<float>::quiet_NaN())));
}
