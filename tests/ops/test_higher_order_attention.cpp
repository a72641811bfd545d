// Second-order HLA (recurrent and chunkwise forms, the chunkwise backward), masked and unmasked, without
// decay, with a fixed per-head decay and with a per-token log gate (the product decay of
// ops/higher_order_attention.hpp), checked against the float64 explicit sums in
// backend/cpu/reference_higher_order_attention, against the segment operator and against central finite
// differences. Inputs are fresh random draws each run (seed printed by testkit): q and k L2-normalised
// (mixers.md §13), v and the initial moments N(0,1)-scaled, decays α uniform in [0.6, 0.99].
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "backend/cpu/reference_higher_order_attention.hpp"
#include "core/tensor.hpp"
#include "ops/higher_order_attention.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using testkit::count_non_finite;
using testkit::expect_error;

namespace {

struct Problem {
    int64_t batch, seq_len, heads, key_dim, value_dim, chunk_size;
};

// The decay sources of HigherOrderAttentionArgs: none, log_decay [H], log_gate [B,T,H].
enum class Decay { none, fixed, gate };
constexpr Decay kDecays[] = {Decay::none, Decay::fixed, Decay::gate};
const char* decay_name(Decay decay) {
    return decay == Decay::none ? "none" : decay == Decay::fixed ? "fixed" : "gate";
}

std::string describe(const Problem& p, bool masked, bool with_initial_state, Decay decay = Decay::none) {
    return fmt::format("B={} T={} H={} Dk={} Dv={} chunk={} masked={} initial_state={} decay={}", p.batch,
                       p.seq_len, p.heads, p.key_dim, p.value_dim, p.chunk_size, masked, with_initial_state,
                       decay_name(decay));
}

// log of every entry of an f64 tensor (decays drawn as α, passed as log α).
Tensor log_of(Tensor alpha) {
    for (int64_t i = 0; i < alpha.numel(); ++i) alpha.data<double>()[i] = std::log(alpha.data<double>()[i]);
    return alpha;
}


// The moments of a state, by name, with their shapes.
using Moment = Tensor ops::HigherOrderState::*;
std::vector<std::pair<const char*, Moment>> moments(bool masked) {
    std::vector<std::pair<const char*, Moment>> out = {{"key_moment", &ops::HigherOrderState::key_moment},
                                                       {"query_value_moment",
                                                        &ops::HigherOrderState::query_value_moment}};
    if (masked) out.emplace_back("correction", &ops::HigherOrderState::correction);
    return out;
}

struct Inputs {
    Tensor q, k, v;
    ops::HigherOrderState initial_state;  // moments undefined when not used
    ops::HigherOrderAttentionArgs args;
    Problem p;
    int64_t sequences;  // N, the states' leading dim

    Inputs(const Problem& problem, DType dtype, uint64_t stream, bool masked, bool with_initial_state,
           std::vector<int64_t> cu_seqlens = {}, Decay decay = Decay::none)
        : p(problem) {
        sequences = cu_seqlens.empty() ? p.batch : int64_t(cu_seqlens.size()) - 1;
        q = testkit::random_unit_rows({p.batch, p.seq_len, p.heads, p.key_dim}, dtype, stream);
        k = testkit::random_unit_rows({p.batch, p.seq_len, p.heads, p.key_dim}, dtype, stream + 1);
        v = testkit::random_normal({p.batch, p.seq_len, p.heads, p.value_dim}, dtype, stream + 2);
        args.masked = masked;
        args.scale = 1.0 / std::sqrt(double(p.key_dim));
        args.chunk_size = p.chunk_size;
        args.cu_seqlens = std::move(cu_seqlens);
        if (with_initial_state) {
            uint64_t s = stream + 3;
            for (auto [name, m] : moments(masked))
                initial_state.*m = testkit::random_normal(moment_shape(m), dtype, ++s, 0.5);
        }
        // α ≤ 0.99 keeps log α ≤ −0.01, out of reach of the finite-difference steps (the op rejects a
        // positive log gate); α ≥ 0.6 keeps a few chunks of history in play.
        if (decay == Decay::fixed)
            args.log_decay = log_of(testkit::random_uniform({p.heads}, DType::f64, stream + 9, 0.6, 0.99)).to(dtype);
        if (decay == Decay::gate)
            args.log_gate =
                log_of(testkit::random_uniform({p.batch, p.seq_len, p.heads}, DType::f64, stream + 9, 0.6, 0.99))
                    .to(dtype);
    }
    Shape moment_shape(Moment m) const {
        return {sequences, p.heads, p.key_dim, m == &ops::HigherOrderState::key_moment ? p.key_dim : p.value_dim};
    }
    // An undefined-moment state of the right kind, or one of the given tensors.
    ops::HigherOrderState empty_state(DType dtype) const {
        ops::HigherOrderState out;
        for (auto [name, m] : moments(args.masked)) out.*m = Tensor::empty(moment_shape(m), dtype);
        return out;
    }
    ops::HigherOrderState zero_state(DType dtype) const {
        ops::HigherOrderState out;
        for (auto [name, m] : moments(args.masked)) out.*m = Tensor::zeros(moment_shape(m), dtype);
        return out;
    }
    ops::HigherOrderState random_state(DType dtype, uint64_t stream) const {
        ops::HigherOrderState out;
        for (auto [name, m] : moments(args.masked))
            out.*m = testkit::random_normal(moment_shape(m), dtype, ++stream);
        return out;
    }
    const ops::HigherOrderState* initial() const {
        return initial_state.key_moment.defined() ? &initial_state : nullptr;
    }
    // The same inputs in another dtype (f32 inputs widened exactly to f64).
    Inputs to(DType dtype) const {
        Inputs out = *this;
        for (auto [dst, src] : {std::pair{&out.q, &q}, std::pair{&out.k, &k}, std::pair{&out.v, &v},
                                std::pair{&out.initial_state.key_moment, &initial_state.key_moment},
                                std::pair{&out.initial_state.query_value_moment, &initial_state.query_value_moment},
                                std::pair{&out.initial_state.correction, &initial_state.correction},
                                std::pair{&out.args.log_decay, &args.log_decay},
                                std::pair{&out.args.log_gate, &args.log_gate}})
            if (src->defined()) *dst = src->to(dtype);
        return out;
    }
    // Tokens [start, start + length) of every input (initial state left as is).
    Inputs narrow(int64_t start, int64_t length) const {
        Inputs out = *this;
        out.p.seq_len = length;
        out.q = q.narrow(1, start, length).contiguous();
        out.k = k.narrow(1, start, length).contiguous();
        out.v = v.narrow(1, start, length).contiguous();
        if (args.log_gate.defined()) out.args.log_gate = args.log_gate.narrow(1, start, length).contiguous();
        return out;
    }
};

ops::HigherOrderState to(const ops::HigherOrderState& s, DType dtype) {
    ops::HigherOrderState out;
    for (auto [name, m] : moments(true))
        if ((s.*m).defined()) out.*m = (s.*m).to(dtype);
    return out;
}

struct Outputs {
    Tensor o;
    ops::HigherOrderState final_state;
};

using Forward = void (*)(Tensor&, ops::HigherOrderState*, const Tensor&, const Tensor&, const Tensor&,
                         const ops::HigherOrderState*, const ops::HigherOrderAttentionArgs&);

// The float64 explicit sums on the same (possibly f32-rounded) inputs.
void reference_forward(Tensor& o, ops::HigherOrderState* final_state, const Tensor& q, const Tensor& k,
                       const Tensor& v, const ops::HigherOrderState* initial_state,
                       const ops::HigherOrderAttentionArgs& args) {
    const auto ptr = [](const Tensor& t) { return t.defined() ? t.data<double>() : nullptr; };
    const auto mut = [](Tensor& t) { return t.defined() ? t.data<double>() : nullptr; };
    const ops::HigherOrderState none;
    const ops::HigherOrderState& s0 = initial_state ? *initial_state : none;
    ops::HigherOrderState unused;
    ops::HigherOrderState& fin = final_state ? *final_state : unused;
    reference::higher_order_attention(mut(o), mut(fin.key_moment), mut(fin.query_value_moment), mut(fin.correction),
                                      ptr(q), ptr(k), ptr(v), ptr(s0.key_moment), ptr(s0.query_value_moment),
                                      ptr(s0.correction), ptr(args.log_decay), ptr(args.log_gate), args.masked,
                                      args.scale, q.size(0), q.size(1), q.size(2), q.size(3), v.size(3),
                                      args.cu_seqlens);
}

const std::vector<std::pair<const char*, Forward>> kForms = {
    {"recurrent", &ops::higher_order_attention_recurrent_forward},
    {"chunkwise", &ops::higher_order_attention_chunkwise_forward},
};

Outputs run_forward(Forward forward, const Inputs& in) {
    const DType dtype = in.q.dtype();
    Outputs out{Tensor::empty(in.v.shape(), dtype), in.empty_state(dtype)};
    forward(out.o, &out.final_state, in.q, in.k, in.v, in.initial(), in.args);
    return out;
}

Outputs run_reference(const Inputs& in) {
    const Inputs in64 = in.to(DType::f64);
    Outputs out{Tensor::empty(in.v.shape(), DType::f64), in.empty_state(DType::f64)};
    reference_forward(out.o, &out.final_state, in64.q, in64.k, in64.v, in64.initial(), in64.args);
    return out;
}

// Relative error of o and of every final moment.
void expect_close(const Outputs& out, const Outputs& ref, bool masked, double bound, const std::string& what) {
    EXPECT_LT(testkit::relative_error(out.o, ref.o), bound) << what << " o";
    for (auto [name, m] : moments(masked)) {
        const Tensor &got = out.final_state.*m, &want = ref.final_state.*m;
        // G is exactly zero for one token without an initial state (it sums pairs i > j): expect zero.
        if (testkit::dot(want, want) == 0) EXPECT_EQ(testkit::dot(got, got), 0.0) << what << " " << name;
        else EXPECT_LT(testkit::relative_error(got, want), bound) << what << " " << name;
    }
}

struct Gradients {
    Tensor dq, dk, dv;
    ops::HigherOrderState dinitial_state;
    Tensor dlog_gate;  // defined with a log gate
};

Gradients zero_gradients(const Inputs& in) {
    const DType dtype = in.q.dtype();
    Gradients g{Tensor::zeros(in.q.shape(), dtype), Tensor::zeros(in.k.shape(), dtype),
                Tensor::zeros(in.v.shape(), dtype), in.zero_state(dtype), Tensor()};
    if (in.args.log_gate.defined()) g.dlog_gate = Tensor::zeros(in.args.log_gate.shape(), dtype);
    return g;
}

// Adds the chunkwise backward of loss = dot(o, dout) + Σ dot(final moment, dfinal moment) into g.
void add_backward(Gradients& g, const Inputs& in, const Tensor& dout, const ops::HigherOrderState* dfinal_state) {
    ops::higher_order_attention_chunkwise_backward(g.dq, g.dk, g.dv, &g.dinitial_state, dout, dfinal_state, in.q,
                                                   in.k, in.v, in.initial(), in.args,
                                                   g.dlog_gate.defined() ? &g.dlog_gate : nullptr);
}

Gradients run_backward(const Inputs& in, const Tensor& dout, const ops::HigherOrderState* dfinal_state) {
    Gradients g = zero_gradients(in);
    add_backward(g, in, dout, dfinal_state);
    return g;
}

// Every gradient by name, paired with the input it belongs to (initial moments only when present, the log
// gate when given).
std::vector<std::tuple<std::string, Tensor*, Tensor*>> pairs_of(Inputs& in, Gradients& g) {
    std::vector<std::tuple<std::string, Tensor*, Tensor*>> out = {
        {"dq", &in.q, &g.dq}, {"dk", &in.k, &g.dk}, {"dv", &in.v, &g.dv}};
    if (in.args.log_gate.defined()) out.emplace_back("dlog_gate", &in.args.log_gate, &g.dlog_gate);
    if (in.initial())
        for (auto [name, m] : moments(in.args.masked))
            out.emplace_back(std::string("dinitial_state.") + name, &(in.initial_state.*m), &(g.dinitial_state.*m));
    return out;
}

double dot_state(const ops::HigherOrderState& a, const ops::HigherOrderState& b, bool masked) {
    double sum = 0;
    for (auto [name, m] : moments(masked)) sum += testkit::dot(a.*m, b.*m);
    return sum;
}

const std::vector<Problem> kForwardProblems = {
    {2, 37, 3, 8, 12, 8},    // T not a multiple of the chunk, B > 1, Dk < Dv
    {1, 5, 2, 16, 6, 16},    // T < chunk, Dk > Dv
    {2, 9, 3, 8, 4, 1},      // one token per chunk
    {1, 64, 1, 12, 8, 16},   // T a multiple of the chunk
    {2, 130, 2, 16, 24, 64},  // the default chunk, a short last chunk
    {3, 1, 2, 8, 12, 64},    // T = 1
};

}  // namespace

// Recurrent and chunkwise forms against the f64 explicit sums (the parallel form): to rounding in f64,
// ≤ 1e-4 in f32, for every decay source.
TEST(HigherOrderForward, FormsMatchF64Reference) {
    uint64_t stream = 100;
    for (const Problem& p : kForwardProblems)
        for (bool masked : {true, false})
            for (bool with_initial_state : {false, true})
                for (Decay decay : kDecays)
                    for (DType dtype : {DType::f32, DType::f64}) {
                        SCOPED_TRACE(describe(p, masked, with_initial_state, decay) + " " +
                                     std::string(dtype_name(dtype)));
                        const Inputs in(p, dtype, stream += 10, masked, with_initial_state, {}, decay);
                        const Outputs ref = run_reference(in);
                        const double bound = dtype == DType::f64 ? 1e-10 : 1e-4;
                        for (auto [name, forward] : kForms)
                            expect_close(run_forward(forward, in), ref, masked, bound, name);
                    }
}

// The masked operator is the strictly causal one: a query never pairs with a key that comes after the
// value it reads (o_t changes only through tokens ≤ t, and the pair (q_j, k_i) only counts for i ≤ j),
// while the unmasked prefix form lets k_t reach v_j, j < t. Perturbing the last key changes the last
// output of both, but earlier values only reach it through k_t in the unmasked form: with v_t = 0 the
// masked o_t no longer depends on k_t at all.
TEST(HigherOrderForward, MaskedIgnoresLaterKeysForEarlierValues) {
    const Problem p{1, 6, 1, 4, 3, 4};
    for (bool masked : {true, false}) {
        SCOPED_TRACE(describe(p, masked, false));
        Inputs in(p, DType::f64, 500, masked, false);
        const int64_t last = p.seq_len - 1;
        for (int64_t c = 0; c < p.value_dim; ++c) in.v.data<double>()[last * p.value_dim + c] = 0;
        const Outputs before = run_forward(&ops::higher_order_attention_chunkwise_forward, in);
        Inputs changed = in;
        changed.k = in.k.clone();
        for (int64_t c = 0; c < p.key_dim; ++c) changed.k.data<double>()[last * p.key_dim + c] *= -2;
        const Outputs after = run_forward(&ops::higher_order_attention_chunkwise_forward, changed);
        EXPECT_EQ(testkit::relative_error(after.o.narrow(1, 0, last), before.o.narrow(1, 0, last)), 0.0);
        const double last_change = testkit::relative_error(after.o.narrow(1, last, 1), before.o.narrow(1, last, 1));
        if (masked) EXPECT_LT(last_change, 1e-14);
        else EXPECT_GT(last_change, 1e-3);
    }
}

// Every chunk size computes the same function (f64, to rounding).
TEST(HigherOrderForward, ChunkSizesAgree) {
    uint64_t stream = 1000;
    for (const Problem& p : kForwardProblems)
        for (bool masked : {true, false})
            for (Decay decay : kDecays) {
                SCOPED_TRACE(describe(p, masked, true, decay));
                const Inputs in(p, DType::f64, stream += 10, masked, true, {}, decay);
                const Outputs chunkwise = run_forward(&ops::higher_order_attention_chunkwise_forward, in);
                for (int64_t chunk : {int64_t(1), int64_t(3), p.chunk_size / 2 + 1, int64_t(128)}) {
                    Inputs other = in;
                    other.args.chunk_size = chunk;
                    expect_close(run_forward(&ops::higher_order_attention_chunkwise_forward, other), chunkwise, masked,
                                 1e-10, fmt::format("chunk {}", chunk));
                }
            }
}

// loss = dot(o, R1) + Σ dot(final moment, R_i); the chunkwise backward must match central differences for
// q, k, v, the log gate and every initial moment. Gradients start from random values to check that the
// backward adds.
TEST(HigherOrderBackward, GradientsMatchFiniteDifferences) {
    const std::vector<Problem> problems = {{2, 11, 2, 5, 6, 4}, {1, 7, 3, 4, 3, 16}, {1, 6, 1, 3, 4, 1}};
    uint64_t stream = 2000;
    for (const Problem& p : problems)
        for (bool masked : {true, false})
            for (Decay decay : kDecays) {
                SCOPED_TRACE(describe(p, masked, true, decay));
                Inputs in(p, DType::f64, stream += 20, masked, true, {}, decay);
                const Tensor r1 = testkit::random_normal(in.v.shape(), DType::f64, stream + 7);
                const ops::HigherOrderState r2 = in.random_state(DType::f64, stream + 8);
                auto loss = [&] {
                    const Outputs out = run_forward(&ops::higher_order_attention_chunkwise_forward, in);
                    return testkit::dot(out.o, r1) + dot_state(out.final_state, r2, masked);
                };
                Gradients g = zero_gradients(in);
                std::vector<Tensor> starts;
                uint64_t start_stream = stream + 12;
                for (auto [name, input, grad] : pairs_of(in, g)) {
                    grad->copy_from(testkit::random_normal(grad->shape(), DType::f64, ++start_stream));
                    starts.push_back(grad->clone());
                }
                add_backward(g, in, r1, &r2);
                const auto pairs = pairs_of(in, g);
                ASSERT_EQ(pairs.size(), (masked ? 6u : 5u) + (decay == Decay::gate ? 1u : 0u));
                for (size_t i = 0; i < pairs.size(); ++i) {
                    auto [name, input, grad] = pairs[i];
                    Tensor added = grad->clone();  // what the backward added
                    for (int64_t j = 0; j < added.numel(); ++j) added.data<double>()[j] -= starts[i].flat(j);
                    EXPECT_LT(testkit::gradient_check(loss, *input, added, 200), 1e-6) << name;
                }
            }
}

// Without an initial state or an incoming state gradient (the common training call), the gradient with
// respect to the implicit zero initial state is still reported; null dinitial_state changes nothing else.
TEST(HigherOrderBackward, GradientsWithoutStatesMatchFiniteDifferences) {
    const Problem p{2, 13, 2, 4, 5, 4};
    for (bool masked : {true, false})
        for (Decay decay : kDecays) {
            SCOPED_TRACE(describe(p, masked, false, decay));
            Inputs in(p, DType::f64, 2500, masked, false, {}, decay);
            const Tensor r1 = testkit::random_normal(in.v.shape(), DType::f64, 2505);
            auto loss = [&] {
                return testkit::dot(run_forward(&ops::higher_order_attention_chunkwise_forward, in).o, r1);
            };
            Gradients g = run_backward(in, r1, nullptr);
            for (auto [name, input, grad] : pairs_of(in, g))
                EXPECT_LT(testkit::gradient_check(loss, *input, *grad), 1e-6) << name;
            Gradients partial = zero_gradients(in);  // no dinitial_state, no dlog_gate
            ops::higher_order_attention_chunkwise_backward(partial.dq, partial.dk, partial.dv, nullptr, r1, nullptr,
                                                           in.q, in.k, in.v, nullptr, in.args);
            for (auto [name, full, part] : {std::tuple{"dq", &g.dq, &partial.dq}, std::tuple{"dk", &g.dk, &partial.dk},
                                            std::tuple{"dv", &g.dv, &partial.dv}})
                EXPECT_EQ(testkit::relative_error(*part, *full), 0.0) << name;
            in.initial_state = in.zero_state(DType::f64);
            for (auto [name, m] : moments(masked)) {
                const Tensor& grad = g.dinitial_state.*m;
                if (masked && m == &ops::HigherOrderState::query_value_moment) {
                    // Masked, the carried C_0 pairs only with keys before the sequence (S_0): at S_0 = 0 and
                    // no final-state gradient, its gradient vanishes (finite differences would be all noise).
                    EXPECT_LT(std::sqrt(testkit::dot(grad, grad)), 1e-12 * std::sqrt(testkit::dot(g.dv, g.dv))) << name;
                    continue;
                }
                EXPECT_LT(testkit::gradient_check(loss, in.initial_state.*m, grad), 1e-6) << name;
            }
        }
}

TEST(HigherOrderBackward, F32MatchesF64) {
    const std::vector<Problem> problems = {{2, 70, 3, 16, 24, 16}, {1, 45, 2, 24, 16, 64}, {1, 10, 3, 16, 8, 1}};
    uint64_t stream = 3000;
    for (const Problem& p : problems)
        for (bool masked : {true, false})
            for (Decay decay : kDecays) {
                SCOPED_TRACE(describe(p, masked, true, decay));
                const Inputs in32(p, DType::f32, stream += 10, masked, true, {}, decay);
                const Inputs in64 = in32.to(DType::f64);
                const Tensor r1 = testkit::random_normal(in32.v.shape(), DType::f32, stream + 5);
                const ops::HigherOrderState r2 = in32.random_state(DType::f32, stream + 6);
                const ops::HigherOrderState r2_64 = to(r2, DType::f64);
                Gradients g32 = run_backward(in32, r1, &r2);
                Gradients g64 = run_backward(in64, r1.to(DType::f64), &r2_64);
                Inputs a = in32, b = in64;
                const auto p32 = pairs_of(a, g32), p64 = pairs_of(b, g64);
                ASSERT_EQ(p32.size(), (masked ? 6u : 5u) + (decay == Decay::gate ? 1u : 0u));
                for (size_t i = 0; i < p32.size(); ++i)
                    EXPECT_LT(testkit::relative_error(*std::get<2>(p32[i]), *std::get<2>(p64[i])), 1e-4)
                        << std::get<0>(p32[i]);
            }
}

// Two segments chained through the state compute what one pass over the whole sequence does, in the
// forward pass and in every gradient (dinitial_state of the second segment is the first's dfinal_state).
TEST(HigherOrderAttention, StateCarriesAcrossSegments) {
    const Problem whole{2, 29, 3, 6, 5, 8};
    const int64_t split = 13;  // not a chunk boundary
    for (bool masked : {true, false})
        for (Decay decay : kDecays) {
            SCOPED_TRACE(describe(whole, masked, true, decay));
            const Inputs in(whole, DType::f64, 4000, masked, true, {}, decay);
            const Outputs full = run_forward(&ops::higher_order_attention_chunkwise_forward, in);
            for (auto [name, forward] : kForms) {
                const Inputs in1 = in.narrow(0, split);
                const Outputs out1 = run_forward(forward, in1);
                Inputs in2 = in.narrow(split, whole.seq_len - split);
                in2.initial_state = out1.final_state;
                const Outputs out2 = run_forward(forward, in2);
                EXPECT_LT(testkit::relative_error(out1.o, full.o.narrow(1, 0, split)), 1e-12) << name;
                EXPECT_LT(testkit::relative_error(out2.o, full.o.narrow(1, split, in2.p.seq_len)), 1e-12) << name;
                for (auto [moment, m] : moments(masked))
                    EXPECT_LT(testkit::relative_error(out2.final_state.*m, full.final_state.*m), 1e-12)
                        << name << " " << moment;
            }

            const Inputs in1 = in.narrow(0, split);
            Inputs in2 = in.narrow(split, whole.seq_len - split);
            in2.initial_state = run_forward(&ops::higher_order_attention_chunkwise_forward, in1).final_state;
            const Tensor dout = testkit::random_normal(full.o.shape(), DType::f64, 4010);
            const ops::HigherOrderState dfinal = in.random_state(DType::f64, 4011);
            Gradients g = run_backward(in, dout, &dfinal);
            Gradients g2 = run_backward(in2, dout.narrow(1, split, in2.p.seq_len).contiguous(), &dfinal);
            Gradients g1 = run_backward(in1, dout.narrow(1, 0, split).contiguous(), &g2.dinitial_state);
            for (auto [moment, m] : moments(masked))
                EXPECT_LT(testkit::relative_error(g1.dinitial_state.*m, g.dinitial_state.*m), 1e-12) << moment;
            std::vector<std::tuple<const char*, Tensor*, Tensor*, Tensor*>> grads = {
                {"dq", &g.dq, &g1.dq, &g2.dq}, {"dk", &g.dk, &g1.dk, &g2.dk}, {"dv", &g.dv, &g1.dv, &g2.dv}};
            if (decay == Decay::gate) grads.emplace_back("dlog_gate", &g.dlog_gate, &g1.dlog_gate, &g2.dlog_gate);
            for (auto [name, whole_grad, first_grad, second_grad] : grads) {
                EXPECT_LT(testkit::relative_error(*first_grad, whole_grad->narrow(1, 0, split)), 1e-12) << name;
                EXPECT_LT(testkit::relative_error(*second_grad, whole_grad->narrow(1, split, in2.p.seq_len)), 1e-12)
                    << name;
            }
        }
}

// Packed sequences (B = 1, cu_seqlens) compute what separate runs do, in every form and gradient, and
// nothing leaks across a boundary: perturbing one sequence leaves the others' outputs bit for bit.
TEST(HigherOrderAttention, VarlenMatchesSeparateRuns) {
    const std::vector<int64_t> cu = {0, 5, 22, 23, 40};  // lengths 5, 17, 1, 17 with chunk 8
    const Problem packed{1, 40, 2, 6, 7, 8};
    for (bool masked : {true, false})
        for (Decay decay : kDecays) {
            SCOPED_TRACE(describe(packed, masked, true, decay));
            const Inputs in(packed, DType::f64, 4500, masked, true, cu, decay);
            const Tensor dout = testkit::random_normal(in.v.shape(), DType::f64, 4510);
            const ops::HigherOrderState dfinal = in.random_state(DType::f64, 4511);
            const Outputs ref = run_reference(in);
            std::vector<Outputs> outs;
            for (auto [name, forward] : kForms) {
                outs.push_back(run_forward(forward, in));
                expect_close(outs.back(), ref, masked, 1e-10, name);
            }
            Gradients g = run_backward(in, dout, &dfinal);
            const auto sequence_of = [&](const ops::HigherOrderState& s, size_t n) {
                ops::HigherOrderState out;
                for (auto [name, m] : moments(masked)) out.*m = (s.*m).narrow(0, int64_t(n), 1).contiguous();
                return out;
            };
            for (size_t n = 0; n + 1 < cu.size(); ++n) {
                const int64_t start = cu[n], length = cu[n + 1] - cu[n];
                SCOPED_TRACE(fmt::format("sequence {} [{}, {})", n, start, cu[n + 1]));
                Inputs one = in.narrow(start, length);
                one.args.cu_seqlens = {};
                one.sequences = 1;
                one.initial_state = sequence_of(in.initial_state, n);
                for (size_t f = 0; f < kForms.size(); ++f) {
                    const Outputs out = run_forward(kForms[f].second, one);
                    EXPECT_LT(testkit::relative_error(out.o, outs[f].o.narrow(1, start, length)), 1e-12)
                        << kForms[f].first;
                    const ops::HigherOrderState packed_final = sequence_of(outs[f].final_state, n);
                    for (auto [name, m] : moments(masked))
                        EXPECT_LT(testkit::relative_error(out.final_state.*m, packed_final.*m), 1e-12)
                            << kForms[f].first << " " << name;
                }
                const ops::HigherOrderState dfinal_one = sequence_of(dfinal, n);
                Gradients g1 = run_backward(one, dout.narrow(1, start, length).contiguous(), &dfinal_one);
                const ops::HigherOrderState packed_dinitial = sequence_of(g.dinitial_state, n);
                for (auto [name, m] : moments(masked))
                    EXPECT_LT(testkit::relative_error(g1.dinitial_state.*m, packed_dinitial.*m), 1e-12) << name;
                std::vector<std::tuple<const char*, Tensor*, Tensor*>> grads = {
                    {"dq", &g.dq, &g1.dq}, {"dk", &g.dk, &g1.dk}, {"dv", &g.dv, &g1.dv}};
                if (decay == Decay::gate) grads.emplace_back("dlog_gate", &g.dlog_gate, &g1.dlog_gate);
                for (auto [name, packed_grad, single_grad] : grads)
                    EXPECT_LT(testkit::relative_error(*single_grad, packed_grad->narrow(1, start, length)), 1e-12)
                        << name;
            }

            // Perturb every input of sequence 1 (tokens [5, 22)) and its initial moments.
            Inputs perturbed = in;
            std::vector<Tensor*> token_inputs = {&perturbed.q, &perturbed.k, &perturbed.v};
            if (decay == Decay::gate) token_inputs.push_back(&perturbed.args.log_gate);
            for (Tensor* t : token_inputs) {
                *t = t->clone();
                const int64_t row = t->numel() / packed.seq_len;
                for (int64_t i = cu[1] * row; i < cu[2] * row; ++i) t->data<double>()[i] *= 0.5;
            }
            for (auto [name, m] : moments(masked)) {
                Tensor& t = perturbed.initial_state.*m;
                t = t.clone();
                const int64_t per_sequence = t.numel() / in.sequences;
                for (int64_t i = per_sequence; i < 2 * per_sequence; ++i) t.data<double>()[i] += 1;
            }
            for (size_t f = 0; f < kForms.size(); ++f) {
                const Outputs out = run_forward(kForms[f].second, perturbed);
                for (size_t n : {0u, 2u, 3u}) {
                    const int64_t start = cu[n], length = cu[n + 1] - cu[n];
                    EXPECT_EQ(testkit::relative_error(out.o.narrow(1, start, length),
                                                      outs[f].o.narrow(1, start, length)),
                              0.0)
                        << kForms[f].first << " sequence " << n;
                    for (auto [name, m] : moments(masked))
                        EXPECT_EQ(testkit::relative_error((out.final_state.*m).narrow(0, int64_t(n), 1),
                                                          (outs[f].final_state.*m).narrow(0, int64_t(n), 1)),
                                  0.0)
                            << kForms[f].first << " sequence " << n << " " << name;
                }
                EXPECT_GT(testkit::relative_error(out.o.narrow(1, cu[1], cu[2] - cu[1]),
                                                  outs[f].o.narrow(1, cu[1], cu[2] - cu[1])),
                          1e-3)
                    << kForms[f].first;
            }
        }
}

// T = 2048: the moments grow without bound (mixers.md §13: fp32 state mandatory, no decay here), yet the
// f32 forms stay within 1e-4 of the f64 recurrence (itself checked against the explicit sums above at
// short T), f64 chunkwise matches it to rounding, and the f32 backward matches the f64 one.
TEST(HigherOrderNumerics, LongSequenceF32MatchesF64) {
    const Problem p{1, 2048, 2, 32, 32, 64};
    uint64_t stream = 6000;
    for (bool masked : {true, false}) {
        SCOPED_TRACE(describe(p, masked, true));
        const Inputs in32(p, DType::f32, stream += 10, masked, true);
        const Inputs in64 = in32.to(DType::f64);
        const Outputs ref = run_forward(&ops::higher_order_attention_recurrent_forward, in64);
        expect_close(run_forward(&ops::higher_order_attention_chunkwise_forward, in64), ref, masked, 1e-10,
                     "chunkwise F64");
        for (auto [name, forward] : kForms) expect_close(run_forward(forward, in32), ref, masked, 1e-4, name);
        const Tensor r1 = testkit::random_normal(in32.v.shape(), DType::f32, stream + 5);
        const ops::HigherOrderState r2 = in32.random_state(DType::f32, stream + 6);
        const ops::HigherOrderState r2_64 = to(r2, DType::f64);
        Gradients g32 = run_backward(in32, r1, &r2);
        Gradients g64 = run_backward(in64, r1.to(DType::f64), &r2_64);
        Inputs a = in32, b = in64;
        const auto p32 = pairs_of(a, g32), p64 = pairs_of(b, g64);
        for (size_t i = 0; i < p32.size(); ++i) {
            const double err = testkit::relative_error(*std::get<2>(p32[i]), *std::get<2>(p64[i]));
            EXPECT_TRUE(std::isfinite(err)) << std::get<0>(p32[i]);
            EXPECT_LT(err, 1e-4) << std::get<0>(p32[i]);
        }
    }
}

namespace {

// A segment summary of one head in f64: S [Dk,Dk], C and G [Dk,Dv] row-major, and ρ, its total decay.
struct Segment {
    std::vector<double> S, C, G;
    double rho;
};

// out [m,n] += alpha · a [m,depth] · b [depth,n]
void add_product(std::vector<double>& out, double alpha, const std::vector<double>& a, const std::vector<double>& b,
                 int64_t m, int64_t depth, int64_t n) {
    for (int64_t i = 0; i < m; ++i)
        for (int64_t l = 0; l < depth; ++l)
            for (int64_t j = 0; j < n; ++j)
                out[size_t(i * n + j)] += alpha * a[size_t(i * depth + l)] * b[size_t(l * n + j)];
}

// A ⊕ B, the product-decay segment operator of ops/higher_order_attention.hpp; with `decay_g_once`, the
// decayed rule of mixers.md §8.3 instead (G_A decayed by ρ_B, not ρ_B²).
Segment combine(const Segment& a, const Segment& b, int64_t Dk, int64_t Dv, bool decay_g_once = false) {
    Segment out{b.S, b.C, b.G, a.rho * b.rho};
    for (size_t i = 0; i < out.S.size(); ++i) out.S[i] += b.rho * a.S[i];
    for (size_t i = 0; i < out.C.size(); ++i) {
        out.C[i] += b.rho * a.C[i];
        out.G[i] += (decay_g_once ? b.rho : b.rho * b.rho) * a.G[i];
    }
    add_product(out.G, b.rho, b.S, a.C, Dk, Dk, Dv);
    return out;
}

double relative_difference(const std::vector<double>& got, const std::vector<double>& want) {
    double diff = 0, norm = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        diff += (got[i] - want[i]) * (got[i] - want[i]);
        norm += want[i] * want[i];
    }
    return std::sqrt(diff / norm);
}

std::vector<double> values_of(const Tensor& t) { return t.to_vector(); }

// Moment m of (sequence n, head h) of a state.
std::vector<double> moment_of(const Tensor& m, int64_t n, int64_t h) {
    return values_of(m.narrow(0, n, 1).narrow(1, h, 1).contiguous());
}

// The tokens of (batch row b, head h) folded by ⊕ in a balanced tree: a bracketing the recurrence never uses.
Segment fold(const std::vector<Segment>& tokens, size_t begin, size_t end, int64_t Dk, int64_t Dv) {
    if (end - begin == 1) return tokens[begin];
    const size_t middle = begin + (end - begin) / 2;
    return combine(fold(tokens, begin, middle, Dk, Dv), fold(tokens, middle, end, Dk, Dv), Dk, Dv);
}

}  // namespace

// (A ⊕ B) ⊕ C = A ⊕ (B ⊕ C) on random segments, to rounding; the §8.3 rule, which decays G by ρ_B once, is
// not associative (its bracketings differ by ρ_C on the S_B C_A term), which is why the op does not use it.
TEST(HigherOrderDecay, SegmentOperatorIsAssociative) {
    const int64_t Dk = 5, Dv = 4;
    uint64_t stream = 7000;
    for (int trial = 0; trial < 20; ++trial) {
        Segment abc[3];
        for (Segment& x : abc) {
            x.S = values_of(testkit::random_normal({Dk, Dk}, DType::f64, ++stream));
            x.C = values_of(testkit::random_normal({Dk, Dv}, DType::f64, ++stream));
            x.G = values_of(testkit::random_normal({Dk, Dv}, DType::f64, ++stream));
            x.rho = testkit::random_uniform({1}, DType::f64, ++stream, 0.2, 0.9).flat(0);
        }
        const auto& [a, b, c] = abc;
        const Segment left = combine(combine(a, b, Dk, Dv), c, Dk, Dv);
        const Segment right = combine(a, combine(b, c, Dk, Dv), Dk, Dv);
        EXPECT_LT(relative_difference(left.S, right.S), 1e-13);
        EXPECT_LT(relative_difference(left.C, right.C), 1e-13);
        EXPECT_LT(relative_difference(left.G, right.G), 1e-13);
        EXPECT_NEAR(left.rho, right.rho, 1e-15);
        const Segment once_left = combine(combine(a, b, Dk, Dv, true), c, Dk, Dv, true);
        const Segment once_right = combine(a, combine(b, c, Dk, Dv, true), Dk, Dv, true);
        EXPECT_GT(relative_difference(once_left.G, once_right.G), 1e-3);
    }
}

// The op's final state is the initial state ⊕ the sequence's tokens (k kᵀ, q vᵀ, 0, α) folded in any
// bracketing (here a balanced tree), for both forms and both decay sources.
TEST(HigherOrderDecay, FinalStateIsTheSegmentFold) {
    const Problem p{2, 23, 2, 5, 4, 4};
    const int64_t Dk = p.key_dim, Dv = p.value_dim;
    uint64_t stream = 7500;
    for (Decay decay : {Decay::fixed, Decay::gate}) {
        SCOPED_TRACE(describe(p, true, true, decay));
        const Inputs in(p, DType::f64, stream += 20, true, true, {}, decay);
        const Tensor q = in.q, k = in.k, v = in.v;
        for (auto [name, forward] : kForms) {
            const Outputs out = run_forward(forward, in);
            for (int64_t b = 0; b < p.batch; ++b)
                for (int64_t h = 0; h < p.heads; ++h) {
                    std::vector<Segment> tokens;
                    for (int64_t t = 0; t < p.seq_len; ++t) {
                        const auto row = [&](const Tensor& x) {
                            return values_of(x.narrow(0, b, 1).narrow(1, t, 1).narrow(2, h, 1).contiguous());
                        };
                        const std::vector<double> qt = row(q), kt = row(k), vt = row(v);
                        Segment token{std::vector<double>(size_t(Dk * Dk)), std::vector<double>(size_t(Dk * Dv)),
                                      std::vector<double>(size_t(Dk * Dv)), 0.0};
                        add_product(token.S, 1, kt, kt, Dk, 1, Dk);
                        add_product(token.C, 1, qt, vt, Dk, 1, Dv);
                        const double g = decay == Decay::fixed
                                             ? in.args.log_decay.flat(h)
                                             : in.args.log_gate.flat((b * p.seq_len + t) * p.heads + h);
                        token.rho = std::exp(g);
                        tokens.push_back(std::move(token));
                    }
                    const ops::HigherOrderState& s0 = in.initial_state;
                    const Segment initial{moment_of(s0.key_moment, b, h), moment_of(s0.query_value_moment, b, h),
                                          moment_of(s0.correction, b, h), 1.0};
                    const Segment want = combine(initial, fold(tokens, 0, tokens.size(), Dk, Dv), Dk, Dv);
                    const ops::HigherOrderState& got = out.final_state;
                    EXPECT_LT(relative_difference(moment_of(got.key_moment, b, h), want.S), 1e-12) << name;
                    EXPECT_LT(relative_difference(moment_of(got.query_value_moment, b, h), want.C), 1e-12) << name;
                    EXPECT_LT(relative_difference(moment_of(got.correction, b, h), want.G), 1e-12) << name;
                }
        }
    }
}

// T = 4096 under a strong decay (α ≈ 1e-6: every factor past a few tokens underflows to 0) and a weak one
// (α ≈ 1 − 1e-7: nearly no decay, so the moments grow over the whole sequence), fixed and per token: every
// form stays finite, the f64 forms match the explicit sums on a prefix (the outputs are causal) and each
// other over the whole sequence, the f32 forms match f64, and the f32 backward (dlog_gate included)
// matches the f64 one.
TEST(HigherOrderNumerics, LongSequenceStrongAndWeakDecay) {
    const Problem p{1, 4096, 2, 8, 8, 64};
    const int64_t prefix = 200;
    uint64_t stream = 8000;
    for (bool strong : {true, false})
        for (Decay decay : {Decay::fixed, Decay::gate})
            for (bool masked : {true, false}) {
                SCOPED_TRACE(describe(p, masked, true, decay) + (strong ? " strong" : " weak"));
                Inputs in32(p, DType::f32, stream += 20, masked, true);
                const Shape shape = decay == Decay::fixed ? Shape{p.heads} : Shape{p.batch, p.seq_len, p.heads};
                Tensor spread = testkit::random_uniform(shape, DType::f64, stream + 9, 0.5, 2.0);
                for (int64_t i = 0; i < spread.numel(); ++i) {
                    double& x = spread.data<double>()[i];
                    x = strong ? std::log(1e-6 * x) : std::log1p(-1e-7 * x);
                }
                (decay == Decay::fixed ? in32.args.log_decay : in32.args.log_gate) = spread.to(DType::f32);
                const Inputs in64 = in32.to(DType::f64);

                const Outputs ref = run_forward(&ops::higher_order_attention_recurrent_forward, in64);
                EXPECT_EQ(count_non_finite(ref.o), 0);
                const Outputs explicit_sums = run_reference(in64.narrow(0, prefix));
                EXPECT_LT(testkit::relative_error(ref.o.narrow(1, 0, prefix), explicit_sums.o), 1e-10);
                expect_close(run_forward(&ops::higher_order_attention_chunkwise_forward, in64), ref, masked, 1e-10,
                             "chunkwise F64");
                for (auto [name, forward] : kForms) {
                    const Outputs out = run_forward(forward, in32);
                    EXPECT_EQ(count_non_finite(out.o), 0) << name;
                    expect_close(out, ref, masked, 1e-4, name);
                }

                const Tensor r1 = testkit::random_normal(in32.v.shape(), DType::f32, stream + 5);
                const ops::HigherOrderState r2 = in32.random_state(DType::f32, stream + 6);
                const ops::HigherOrderState r2_64 = to(r2, DType::f64);
                Gradients g32 = run_backward(in32, r1, &r2);
                Gradients g64 = run_backward(in64, r1.to(DType::f64), &r2_64);
                Inputs a = in32, b = in64;
                const auto p32 = pairs_of(a, g32), p64 = pairs_of(b, g64);
                for (size_t i = 0; i < p32.size(); ++i) {
                    EXPECT_EQ(count_non_finite(*std::get<2>(p32[i])), 0) << std::get<0>(p32[i]);
                    EXPECT_LT(testkit::relative_error(*std::get<2>(p32[i]), *std::get<2>(p64[i])), 1e-4)
                        << std::get<0>(p32[i]);
                }
            }
}

TEST(HigherOrderAttention, BadInputsAreErrors) {
    const Problem p{2, 6, 2, 4, 3, 4};
    const Inputs in(p, DType::f64, 5000, true, true);
    const char* chunkwise = "higher_order_attention_chunkwise_forward";
    const char* recurrent = "higher_order_attention_recurrent_forward";
    const char* backward = "higher_order_attention_chunkwise_backward";
    Tensor o = Tensor::empty(in.v.shape(), DType::f64);
    ops::HigherOrderState fin = in.empty_state(DType::f64);
    const auto run = [&](Forward forward, const Inputs& x, Tensor& out, ops::HigherOrderState* f) {
        return [=, &x, &out] { forward(out, f, x.q, x.k, x.v, x.initial(), x.args); };
    };
    const Forward chunk_fn = &ops::higher_order_attention_chunkwise_forward;
    const Forward rec_fn = &ops::higher_order_attention_recurrent_forward;

    Inputs bad = in;
    bad.k = testkit::random_normal({2, 6, 2, 5}, DType::f64, 1);
    expect_error(run(chunk_fn, bad, o, &fin), {std::string(chunkwise) + ": k: expected shape"});
    bad = in;
    bad.v = in.v.to(DType::f32);
    expect_error(run(rec_fn, bad, o, &fin), {std::string(recurrent) + ": v: expected dtype"});
    bad = in;
    bad.q = in.q.to(DType::bf16);
    expect_error(run(chunk_fn, bad, o, &fin), {std::string(chunkwise) + ": q: expected dtype F32 or F64"});
    bad = in;
    bad.v = testkit::random_normal({2, 6, 3, 2}, DType::f64, 2).narrow(2, 0, 2);
    expect_error(run(chunk_fn, bad, o, &fin), {std::string(chunkwise) + ": v: expected a contiguous tensor"});
    bad = in;
    bad.initial_state.query_value_moment = testkit::random_normal({2, 2, 4, 4}, DType::f64, 3);
    expect_error(run(chunk_fn, bad, o, &fin), {std::string(chunkwise) + ": initial_state.query_value_moment"});
    bad = in;
    bad.initial_state.correction = Tensor();
    expect_error(run(rec_fn, bad, o, &fin), {std::string(recurrent) + ": initial_state.correction: tensor is not"});
    bad = in;
    bad.args.masked = false;  // a correction moment given to the unmasked form
    expect_error(run(chunk_fn, bad, o, &fin), {std::string(chunkwise) + ": initial_state.correction: the unmasked"});
    bad = in;
    bad.args.log_decay = Tensor::zeros({2}, DType::f64);
    bad.args.log_gate = Tensor::zeros({2, 6, 2}, DType::f64);
    expect_error(run(chunk_fn, bad, o, &fin), {std::string(chunkwise) + ": log_gate: expected at most one"});
    bad = in;
    bad.args.log_decay = Tensor::zeros({3}, DType::f64);
    expect_error(run(rec_fn, bad, o, &fin), {std::string(recurrent) + ": log_decay: expected shape"});
    bad = in;
    bad.args.log_gate = Tensor::zeros({2, 6, 2}, DType::f32);
    expect_error(run(chunk_fn, bad, o, &fin), {std::string(chunkwise) + ": log_gate: expected dtype"});
    bad = in;
    bad.args.log_gate = Tensor::zeros({2, 6, 2}, DType::f64);
    bad.args.log_gate.data<double>()[7] = 1e-3;  // α > 1
    expect_error(run(chunk_fn, bad, o, &fin), {std::string(chunkwise) + ": log_gate: expected every value ≤ 0"});
    bad = in;
    bad.args.chunk_size = 0;
    expect_error(run(chunk_fn, bad, o, &fin), {std::string(chunkwise) + ": chunk_size"});
    bad = in;
    bad.args.cu_seqlens = {0, 3, 6};  // B = 2
    expect_error(run(chunk_fn, bad, o, &fin), {std::string(chunkwise) + ": cu_seqlens: packed sequences need"});
    Tensor bad_o = Tensor::empty({2, 6, 2, 4}, DType::f64);
    expect_error(run(chunk_fn, in, bad_o, &fin), {std::string(chunkwise) + ": o: expected shape"});
    ops::HigherOrderState bad_fin = fin;
    bad_fin.key_moment = Tensor::empty({2, 2, 4, 3}, DType::f64);
    expect_error(run(rec_fn, in, o, &bad_fin), {std::string(recurrent) + ": final_state.key_moment: expected shape"});

    const Tensor dout = testkit::random_normal(in.v.shape(), DType::f64, 4);
    Gradients g = zero_gradients(in);
    Tensor bad_dv = Tensor::zeros({2, 6, 2, 4}, DType::f64);
    expect_error([&] { ops::higher_order_attention_chunkwise_backward(g.dq, g.dk, bad_dv, &g.dinitial_state, dout,
                                                                      nullptr, in.q, in.k, in.v, in.initial(),
                                                                      in.args); },
                 {std::string(backward) + ": dv: expected shape"});
    ops::HigherOrderState bad_dfinal = in.random_state(DType::f64, 5);
    bad_dfinal.correction = bad_dfinal.correction.to(DType::f32);
    expect_error([&] { ops::higher_order_attention_chunkwise_backward(g.dq, g.dk, g.dv, &g.dinitial_state, dout,
                                                                      &bad_dfinal, in.q, in.k, in.v, in.initial(),
                                                                      in.args); },
                 {std::string(backward) + ": dfinal_state.correction: expected dtype"});
    Tensor bad_dout = testkit::random_normal({2, 5, 2, 3}, DType::f64, 6);
    expect_error([&] { ops::higher_order_attention_chunkwise_backward(g.dq, g.dk, g.dv, &g.dinitial_state, bad_dout,
                                                                      nullptr, in.q, in.k, in.v, in.initial(),
                                                                      in.args); },
                 {std::string(backward) + ": dout: expected shape"});
    Tensor dlog_gate = Tensor::zeros({2, 6, 2}, DType::f64);
    expect_error([&] { ops::higher_order_attention_chunkwise_backward(g.dq, g.dk, g.dv, &g.dinitial_state, dout,
                                                                      nullptr, in.q, in.k, in.v, in.initial(),
                                                                      in.args, &dlog_gate); },
                 {std::string(backward) + ": dlog_gate: given, but args.log_gate is not defined"});
    Inputs gated = in;
    gated.args.log_gate = Tensor::zeros({2, 6, 2}, DType::f64);
    Tensor bad_dlog_gate = Tensor::zeros({2, 6, 3}, DType::f64);
    expect_error([&] { ops::higher_order_attention_chunkwise_backward(g.dq, g.dk, g.dv, &g.dinitial_state, dout,
                                                                      nullptr, gated.q, gated.k, gated.v,
                                                                      gated.initial(), gated.args, &bad_dlog_gate); },
                 {std::string(backward) + ": dlog_gate: expected shape"});
}
