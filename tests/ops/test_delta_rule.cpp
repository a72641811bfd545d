// Delta rule and gated delta rule (recurrent, chunkwise, parallel forms and the chunkwise backward),
// checked against the float64 recurrence in backend/cpu/reference_delta_rule and against central
// finite differences. Inputs are fresh random draws each run (seed printed by testkit), of realistic
// scale (mixers.md §13): q and k L2-normalised, β uniform in (0,1), log gates ≤ 0.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "backend/cpu/reference_delta_rule.hpp"
#include "backend/cuda/device.hpp"
#include "core/tensor.hpp"
#include "ops/delta_rule.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using testkit::expect_error;

namespace {

struct Problem {
    int64_t batch, seq_len, heads, key_dim, value_dim, chunk_size;
};

// How the log gates are drawn: none (plain delta rule) or uniform in [low, high] ⊂ (−∞, 0].
struct Gate {
    bool on;
    double low, high;
};
constexpr Gate kNoGate{false, 0, 0};
constexpr Gate kGate{true, -0.5, -0.01};
constexpr Gate kStrongGate{true, -8.0, -2.0};  // state forgotten within a few tokens
constexpr Gate kWeakGate{true, -1e-3, -1e-5};  // nearly the plain delta rule over thousands of tokens

std::string describe(const Problem& p, const Gate& gate, bool with_initial_state) {
    return fmt::format("B={} T={} H={} Dk={} Dv={} chunk={} gate={} [{}, {}] initial_state={}", p.batch, p.seq_len,
                       p.heads, p.key_dim, p.value_dim, p.chunk_size, gate.on, gate.low, gate.high,
                       with_initial_state);
}


struct Inputs {
    Tensor q, k, v, beta, initial_state;  // initial_state undefined when not used
    ops::DeltaRuleArgs args;
    int64_t sequences;                    // N, the states' leading dim

    Inputs(const Problem& p, DType dtype, uint64_t stream, const Gate& gate, bool with_initial_state,
           std::vector<int64_t> cu_seqlens = {}) {
        const int64_t B = p.batch, T = p.seq_len, H = p.heads;
        sequences = cu_seqlens.empty() ? B : int64_t(cu_seqlens.size()) - 1;
        q = testkit::random_unit_rows({B, T, H, p.key_dim}, dtype, stream);
        k = testkit::random_unit_rows({B, T, H, p.key_dim}, dtype, stream + 1);
        v = testkit::random_normal({B, T, H, p.value_dim}, dtype, stream + 2);
        beta = testkit::random_uniform({B, T, H}, dtype, stream + 3, 0.01, 0.99);
        if (with_initial_state) initial_state = testkit::random_normal(state_shape(p), dtype, stream + 4, 0.5);
        if (gate.on) args.log_gate = testkit::random_uniform({B, T, H}, dtype, stream + 5, gate.low, gate.high);
        args.scale = 1.0 / std::sqrt(double(p.key_dim));
        args.chunk_size = p.chunk_size;
        args.cu_seqlens = std::move(cu_seqlens);
    }
    Shape state_shape(const Problem& p) const { return {sequences, p.heads, p.key_dim, p.value_dim}; }
    const Tensor* initial() const { return initial_state.defined() ? &initial_state : nullptr; }
    // The same inputs in another dtype (f32 inputs widened exactly to f64).
    Inputs to(DType dtype) const {
        Inputs out = *this;
        for (auto [dst, src] : {std::pair{&out.q, &q}, std::pair{&out.k, &k}, std::pair{&out.v, &v},
                                std::pair{&out.beta, &beta}, std::pair{&out.initial_state, &initial_state},
                                std::pair{&out.args.log_gate, &args.log_gate}})
            if (src->defined()) *dst = src->to(dtype);
        return out;
    }
};

struct Outputs {
    Tensor o, final_state;
};

using Forward = void (*)(Tensor&, Tensor*, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                         const Tensor*, const ops::DeltaRuleArgs&);
const std::vector<std::pair<const char*, Forward>> kForms = {
    {"recurrent", &ops::delta_rule_recurrent_forward},
    {"chunkwise", &ops::delta_rule_chunkwise_forward},
    {"parallel", &ops::delta_rule_parallel_forward},
};

Outputs run_forward(Forward forward, const Problem& p, const Inputs& in) {
    Outputs out{Tensor::empty({p.batch, p.seq_len, p.heads, p.value_dim}, in.q.dtype()),
                Tensor::empty(in.state_shape(p), in.q.dtype())};
    forward(out.o, &out.final_state, in.q, in.k, in.v, in.beta, in.initial(), in.args);
    return out;
}

// The float64 recurrence on the same (possibly f32-rounded) inputs.
Outputs run_reference(const Problem& p, const Inputs& in) {
    const Inputs in64 = in.to(DType::f64);
    Outputs out{Tensor::empty({p.batch, p.seq_len, p.heads, p.value_dim}, DType::f64),
                Tensor::empty(in.state_shape(p), DType::f64)};
    const Tensor& gate = in64.args.log_gate;
    reference::delta_rule_recurrent(out.o.data<double>(), out.final_state.data<double>(), in64.q.data<double>(),
                                    in64.k.data<double>(), in64.v.data<double>(), in64.beta.data<double>(),
                                    gate.defined() ? gate.data<double>() : nullptr,
                                    in64.initial_state.defined() ? in64.initial_state.data<double>() : nullptr,
                                    in.args.scale, p.batch, p.seq_len, p.heads, p.key_dim, p.value_dim,
                                    in.args.cu_seqlens);
    return out;
}

struct Gradients {
    Tensor dq, dk, dv, dbeta, dlog_gate, dinitial_state;  // dlog_gate undefined without a gate
};

Gradients zero_gradients(const Problem& p, const Inputs& in) {
    const DType dtype = in.q.dtype();
    return {Tensor::zeros(in.q.shape(), dtype),
            Tensor::zeros(in.k.shape(), dtype),
            Tensor::zeros(in.v.shape(), dtype),
            Tensor::zeros(in.beta.shape(), dtype),
            in.args.log_gate.defined() ? Tensor::zeros(in.beta.shape(), dtype) : Tensor(),
            Tensor::zeros(in.state_shape(p), dtype)};
}

// Adds the chunkwise backward of loss = dot(o, dout) + dot(final_state, dfinal_state) into g.
void add_backward(Gradients& g, const Inputs& in, const Tensor& dout, const Tensor* dfinal_state) {
    ops::delta_rule_chunkwise_backward(g.dq, g.dk, g.dv, g.dbeta, g.dlog_gate.defined() ? &g.dlog_gate : nullptr,
                                       &g.dinitial_state, dout, dfinal_state, in.q, in.k, in.v, in.beta,
                                       in.initial(), in.args);
}

Gradients run_backward(const Problem& p, const Inputs& in, const Tensor& dout, const Tensor* dfinal_state) {
    Gradients g = zero_gradients(p, in);
    add_backward(g, in, dout, dfinal_state);
    return g;
}

// Each gradient by name (dlog_gate only with a gate).
std::vector<std::pair<const char*, const Tensor*>> named(const Gradients& g) {
    std::vector<std::pair<const char*, const Tensor*>> out = {
        {"dq", &g.dq}, {"dk", &g.dk}, {"dv", &g.dv}, {"dbeta", &g.dbeta}, {"dinitial_state", &g.dinitial_state}};
    if (g.dlog_gate.defined()) out.emplace_back("dlog_gate", &g.dlog_gate);
    return out;
}

// Each named gradient with the input it belongs to.
std::vector<std::tuple<const char*, Tensor*, Tensor*>> pairs_of(Inputs& in, Gradients& g) {
    std::vector<std::tuple<const char*, Tensor*, Tensor*>> out = {
        {"dq", &in.q, &g.dq}, {"dk", &in.k, &g.dk}, {"dv", &in.v, &g.dv}, {"dbeta", &in.beta, &g.dbeta}};
    if (g.dlog_gate.defined()) out.emplace_back("dlog_gate", &in.args.log_gate, &g.dlog_gate);
    if (in.initial_state.defined()) out.emplace_back("dinitial_state", &in.initial_state, &g.dinitial_state);
    return out;
}

const std::vector<Problem> kForwardProblems = {
    {2, 37, 3, 16, 24, 8},    // T not a multiple of the chunk, B > 1, Dk < Dv
    {1, 5, 2, 16, 24, 16},    // T < chunk
    {2, 9, 3, 8, 4, 1},       // one token per chunk
    {1, 64, 1, 24, 16, 16},   // T a multiple of the chunk, Dk > Dv
    {2, 130, 3, 16, 24, 64},  // the default chunk, a short last chunk
    {3, 1, 2, 8, 12, 64},     // T = 1
};

}  // namespace

// All three forms against the f64 recurrence: to rounding in f64 (mixers.md §13: ~1e-10), ≤ 1e-4 in f32.
TEST(DeltaRuleForward, FormsMatchF64Reference) {
    uint64_t stream = 100;
    for (const Problem& p : kForwardProblems)
        for (const Gate& gate : {kNoGate, kGate})
            for (bool with_initial_state : {false, true})
                for (DType dtype : {DType::f32, DType::f64}) {
                    SCOPED_TRACE(describe(p, gate, with_initial_state) + " " + std::string(dtype_name(dtype)));
                    const Inputs in(p, dtype, stream += 10, gate, with_initial_state);
                    const Outputs ref = run_reference(p, in);
                    const double bound = dtype == DType::f64 ? 1e-10 : 1e-4;
                    for (auto [name, forward] : kForms) {
                        const Outputs out = run_forward(forward, p, in);
                        EXPECT_LT(testkit::relative_error(out.o, ref.o), bound) << name;
                        EXPECT_LT(testkit::relative_error(out.final_state, ref.final_state), bound) << name;
                    }
                }
}

// Every chunk size computes the same function (f64, to rounding).
TEST(DeltaRuleForward, ChunkSizesAgree) {
    uint64_t stream = 1000;
    for (const Problem& p : kForwardProblems)
        for (const Gate& gate : {kNoGate, kGate}) {
            SCOPED_TRACE(describe(p, gate, true));
            const Inputs in(p, DType::f64, stream += 10, gate, true);
            const Outputs chunkwise = run_forward(&ops::delta_rule_chunkwise_forward, p, in);
            for (int64_t chunk : {int64_t(1), int64_t(3), p.chunk_size / 2 + 1, int64_t(128)}) {
                Inputs other = in;
                other.args.chunk_size = chunk;
                const Outputs rechunked = run_forward(&ops::delta_rule_chunkwise_forward, p, other);
                EXPECT_LT(testkit::relative_error(rechunked.o, chunkwise.o), 1e-10) << "chunk " << chunk;
                EXPECT_LT(testkit::relative_error(rechunked.final_state, chunkwise.final_state), 1e-10)
                    << "chunk " << chunk;
            }
        }
}

// loss = dot(o, R1) + dot(final_state, R2); the chunkwise backward must match central differences for
// q, k, v, beta, log_gate and the initial state. Gradients start from random values to check that the
// backward adds into them.
TEST(DeltaRuleBackward, GradientsMatchFiniteDifferences) {
    const std::vector<Problem> problems = {{2, 11, 2, 5, 6, 4}, {1, 7, 3, 4, 3, 16}, {1, 6, 1, 3, 4, 1}};
    uint64_t stream = 2000;
    for (const Problem& p : problems)
        for (const Gate& gate : {kNoGate, kGate}) {
            SCOPED_TRACE(describe(p, gate, true));
            Inputs in(p, DType::f64, stream += 20, gate, true);
            const Tensor r1 = testkit::random_normal(in.v.shape(), DType::f64, stream + 7);
            const Tensor r2 = testkit::random_normal(in.state_shape(p), DType::f64, stream + 8);
            auto loss = [&] {
                const Outputs out = run_forward(&ops::delta_rule_chunkwise_forward, p, in);
                return testkit::dot(out.o, r1) + testkit::dot(out.final_state, r2);
            };
            Gradients g = zero_gradients(p, in);
            std::vector<Tensor> starts;
            uint64_t start_stream = stream + 9;
            for (auto [name, input, grad] : pairs_of(in, g)) {
                grad->copy_from(testkit::random_normal(grad->shape(), DType::f64, ++start_stream));
                starts.push_back(grad->clone());
            }
            add_backward(g, in, r1, &r2);
            const auto pairs = pairs_of(in, g);
            ASSERT_EQ(pairs.size(), gate.on ? 6u : 5u);
            for (size_t i = 0; i < pairs.size(); ++i) {
                auto [name, input, grad] = pairs[i];
                Tensor added = grad->clone();  // what the backward added
                for (int64_t j = 0; j < added.numel(); ++j) added.data<double>()[j] -= starts[i].flat(j);
                EXPECT_LT(testkit::gradient_check(loss, *input, added), 1e-6) << name;
            }
        }
}

// Without an initial state or an incoming state gradient (the common training call), the gradient
// with respect to the implicit zero initial state is still reported.
TEST(DeltaRuleBackward, GradientsWithoutStatesMatchFiniteDifferences) {
    const Problem p{2, 13, 2, 4, 5, 4};
    Inputs in(p, DType::f64, 2500, kGate, false);
    const Tensor r1 = testkit::random_normal(in.v.shape(), DType::f64, 2505);
    auto loss = [&] { return testkit::dot(run_forward(&ops::delta_rule_chunkwise_forward, p, in).o, r1); };
    Gradients g = run_backward(p, in, r1, nullptr);
    for (auto [name, input, grad] : pairs_of(in, g))
        EXPECT_LT(testkit::gradient_check(loss, *input, *grad), 1e-6) << name;
    // Null gradient pointers skip that work and change nothing else.
    Gradients partial = zero_gradients(p, in);
    ops::delta_rule_chunkwise_backward(partial.dq, partial.dk, partial.dv, partial.dbeta, nullptr, nullptr, r1,
                                       nullptr, in.q, in.k, in.v, in.beta, nullptr, in.args);
    for (auto [name, full, part] : {std::tuple{"dq", &g.dq, &partial.dq}, std::tuple{"dk", &g.dk, &partial.dk},
                                    std::tuple{"dv", &g.dv, &partial.dv}, std::tuple{"dbeta", &g.dbeta, &partial.dbeta}})
        EXPECT_EQ(testkit::relative_error(*part, *full), 0.0) << name;
    in.initial_state = Tensor::zeros(in.state_shape(p), DType::f64);
    EXPECT_LT(testkit::gradient_check(loss, in.initial_state, g.dinitial_state), 1e-6);
}

TEST(DeltaRuleBackward, F32MatchesF64) {
    const std::vector<Problem> problems = {{2, 70, 3, 16, 24, 16}, {1, 45, 2, 24, 16, 64}, {1, 10, 3, 16, 8, 1}};
    uint64_t stream = 3000;
    for (const Problem& p : problems)
        for (const Gate& gate : {kNoGate, kGate}) {
            SCOPED_TRACE(describe(p, gate, true));
            const Inputs in32(p, DType::f32, stream += 10, gate, true);
            const Inputs in64 = in32.to(DType::f64);
            const Tensor r1 = testkit::random_normal(in32.v.shape(), DType::f32, stream + 5);
            const Tensor r2 = testkit::random_normal(in32.state_shape(p), DType::f32, stream + 6);
            const Tensor r2_64 = r2.to(DType::f64);
            const Gradients grads32 = run_backward(p, in32, r1, &r2);
            const Gradients grads64 = run_backward(p, in64, r1.to(DType::f64), &r2_64);
            const auto g32 = named(grads32), g64 = named(grads64);
            for (size_t i = 0; i < g32.size(); ++i)
                EXPECT_LT(testkit::relative_error(*g32[i].second, *g64[i].second), 1e-4) << g32[i].first;
        }
}

// Two segments chained through the state compute what one pass over the whole sequence does, in the
// forward pass and in every gradient (dinitial_state of the second segment is the first's dfinal_state).
TEST(DeltaRule, StateCarriesAcrossSegments) {
    const Problem whole{2, 29, 3, 6, 5, 8};
    const int64_t split = 13;  // not a chunk boundary
    Problem first = whole, second = whole;
    first.seq_len = split;
    second.seq_len = whole.seq_len - split;
    for (const Gate& gate : {kNoGate, kGate}) {
        SCOPED_TRACE(describe(whole, gate, true));
        const Inputs in(whole, DType::f64, 4000, gate, true);
        auto part = [&](int64_t start, int64_t length, const Tensor& initial_state) {
            Inputs out = in;
            out.q = in.q.narrow(1, start, length).contiguous();
            out.k = in.k.narrow(1, start, length).contiguous();
            out.v = in.v.narrow(1, start, length).contiguous();
            out.beta = in.beta.narrow(1, start, length).contiguous();
            if (gate.on) out.args.log_gate = in.args.log_gate.narrow(1, start, length).contiguous();
            out.initial_state = initial_state;
            return out;
        };
        const Outputs full = run_forward(&ops::delta_rule_chunkwise_forward, whole, in);
        const Inputs in1 = part(0, split, in.initial_state);
        const Outputs out1 = run_forward(&ops::delta_rule_chunkwise_forward, first, in1);
        const Inputs in2 = part(split, second.seq_len, out1.final_state);
        const Outputs out2 = run_forward(&ops::delta_rule_chunkwise_forward, second, in2);
        EXPECT_LT(testkit::relative_error(out1.o, full.o.narrow(1, 0, split)), 1e-12);
        EXPECT_LT(testkit::relative_error(out2.o, full.o.narrow(1, split, second.seq_len)), 1e-12);
        EXPECT_LT(testkit::relative_error(out2.final_state, full.final_state), 1e-12);

        const Tensor dout = testkit::random_normal(full.o.shape(), DType::f64, 4010);
        const Tensor dfinal = testkit::random_normal(full.final_state.shape(), DType::f64, 4011);
        Gradients g = run_backward(whole, in, dout, &dfinal);
        Gradients g2 = run_backward(second, in2, dout.narrow(1, split, second.seq_len).contiguous(), &dfinal);
        Gradients g1 = run_backward(first, in1, dout.narrow(1, 0, split).contiguous(), &g2.dinitial_state);
        EXPECT_LT(testkit::relative_error(g1.dinitial_state, g.dinitial_state), 1e-12);
        std::vector<std::tuple<const char*, Tensor*, Tensor*, Tensor*>> token_grads = {
            {"dq", &g.dq, &g1.dq, &g2.dq},
            {"dk", &g.dk, &g1.dk, &g2.dk},
            {"dv", &g.dv, &g1.dv, &g2.dv},
            {"dbeta", &g.dbeta, &g1.dbeta, &g2.dbeta}};
        if (gate.on) token_grads.emplace_back("dlog_gate", &g.dlog_gate, &g1.dlog_gate, &g2.dlog_gate);
        for (auto [name, whole_grad, first_grad, second_grad] : token_grads) {
            EXPECT_LT(testkit::relative_error(*first_grad, whole_grad->narrow(1, 0, split)), 1e-12) << name;
            EXPECT_LT(testkit::relative_error(*second_grad, whole_grad->narrow(1, split, second.seq_len)), 1e-12)
                << name;
        }
    }
}

// Packed sequences (B = 1, cu_seqlens) compute what separate runs do, in every form and gradient, and
// nothing leaks across a boundary: perturbing one sequence leaves the others' outputs bit for bit.
TEST(DeltaRule, VarlenMatchesSeparateRuns) {
    const std::vector<int64_t> cu = {0, 5, 22, 23, 40};  // lengths 5, 17, 1, 17 with chunk 8
    const Problem packed{1, 40, 2, 6, 7, 8};
    for (const Gate& gate : {kNoGate, kGate}) {
        SCOPED_TRACE(describe(packed, gate, true));
        const Inputs in(packed, DType::f64, 4500, gate, true, cu);
        const Tensor dout = testkit::random_normal(in.v.shape(), DType::f64, 4510);
        const Tensor dfinal = testkit::random_normal(in.state_shape(packed), DType::f64, 4511);
        const Outputs ref = run_reference(packed, in);
        std::vector<Outputs> outs;
        for (auto [name, forward] : kForms) {
            outs.push_back(run_forward(forward, packed, in));
            EXPECT_LT(testkit::relative_error(outs.back().o, ref.o), 1e-10) << name;
            EXPECT_LT(testkit::relative_error(outs.back().final_state, ref.final_state), 1e-10) << name;
        }
        Gradients g = run_backward(packed, in, dout, &dfinal);
        for (size_t n = 0; n + 1 < cu.size(); ++n) {
            const int64_t start = cu[n], length = cu[n + 1] - cu[n];
            SCOPED_TRACE(fmt::format("sequence {} [{}, {})", n, start, cu[n + 1]));
            Problem single = packed;
            single.seq_len = length;
            Inputs one = in;
            one.args.cu_seqlens = {};
            one.sequences = 1;
            one.q = in.q.narrow(1, start, length).contiguous();
            one.k = in.k.narrow(1, start, length).contiguous();
            one.v = in.v.narrow(1, start, length).contiguous();
            one.beta = in.beta.narrow(1, start, length).contiguous();
            if (gate.on) one.args.log_gate = in.args.log_gate.narrow(1, start, length).contiguous();
            one.initial_state = in.initial_state.narrow(0, int64_t(n), 1).contiguous();
            for (size_t f = 0; f < kForms.size(); ++f) {
                const Outputs out = run_forward(kForms[f].second, single, one);
                EXPECT_LT(testkit::relative_error(out.o, outs[f].o.narrow(1, start, length)), 1e-12) << kForms[f].first;
                EXPECT_LT(testkit::relative_error(out.final_state, outs[f].final_state.narrow(0, int64_t(n), 1)), 1e-12)
                    << kForms[f].first;
            }
            const Tensor dfinal_one = dfinal.narrow(0, int64_t(n), 1).contiguous();
            Gradients g1 = run_backward(single, one, dout.narrow(1, start, length).contiguous(), &dfinal_one);
            EXPECT_LT(testkit::relative_error(g1.dinitial_state, g.dinitial_state.narrow(0, int64_t(n), 1)), 1e-12);
            std::vector<std::tuple<const char*, Tensor*, Tensor*>> token_grads = {
                {"dq", &g.dq, &g1.dq}, {"dk", &g.dk, &g1.dk}, {"dv", &g.dv, &g1.dv}, {"dbeta", &g.dbeta, &g1.dbeta}};
            if (gate.on) token_grads.emplace_back("dlog_gate", &g.dlog_gate, &g1.dlog_gate);
            for (auto [name, packed_grad, single_grad] : token_grads)
                EXPECT_LT(testkit::relative_error(*single_grad, packed_grad->narrow(1, start, length)), 1e-12) << name;
        }

        // Perturb every input of sequence 1 (tokens [5, 22)) and its initial state.
        Inputs perturbed = in;
        for (Tensor* t : {&perturbed.q, &perturbed.k, &perturbed.v}) *t = t->clone();
        perturbed.beta = in.beta.clone();
        perturbed.initial_state = in.initial_state.clone();
        for (Tensor* t : {&perturbed.q, &perturbed.k, &perturbed.v, &perturbed.beta}) {
            const int64_t row = t->numel() / packed.seq_len;
            for (int64_t i = cu[1] * row; i < cu[2] * row; ++i) t->data<double>()[i] *= 0.5;
        }
        if (gate.on) {
            perturbed.args.log_gate = in.args.log_gate.clone();
            for (int64_t i = cu[1] * packed.heads; i < cu[2] * packed.heads; ++i)
                perturbed.args.log_gate.data<double>()[i] *= 3;
        }
        const int64_t state_size = packed.heads * packed.key_dim * packed.value_dim;
        for (int64_t i = state_size; i < 2 * state_size; ++i) perturbed.initial_state.data<double>()[i] += 1;
        for (size_t f = 0; f < kForms.size(); ++f) {
            const Outputs out = run_forward(kForms[f].second, packed, perturbed);
            for (size_t n : {0u, 2u, 3u}) {
                const int64_t start = cu[n], length = cu[n + 1] - cu[n];
                EXPECT_EQ(testkit::relative_error(out.o.narrow(1, start, length), outs[f].o.narrow(1, start, length)),
                          0.0)
                    << kForms[f].first << " sequence " << n;
                EXPECT_EQ(testkit::relative_error(out.final_state.narrow(0, int64_t(n), 1),
                                                  outs[f].final_state.narrow(0, int64_t(n), 1)),
                          0.0)
                    << kForms[f].first << " sequence " << n;
            }
            EXPECT_GT(testkit::relative_error(out.o.narrow(1, cu[1], cu[2] - cu[1]),
                                              outs[f].o.narrow(1, cu[1], cu[2] - cu[1])),
                      1e-3)
                << kForms[f].first;
        }
    }
}

// T = 4096 with strong gates (every exp(Γ) underflows far from the diagonal), weak gates and none: all
// forms stay finite and match the reference; the f32 backward matches the f64 one.
TEST(DeltaRuleNumerics, T4096StaysFiniteAndMatchesReference) {
    const Problem p{1, 4096, 2, 32, 32, 64};
    uint64_t stream = 6000;
    for (const Gate& gate : {kStrongGate, kWeakGate, kNoGate}) {
        SCOPED_TRACE(describe(p, gate, true));
        const Inputs in32(p, DType::f32, stream += 10, gate, true);
        const Inputs in64 = in32.to(DType::f64);
        const Outputs ref = run_reference(p, in64);
        for (auto [name, forward] : kForms) {
            for (const Inputs* in : {&in32, &in64}) {
                if (forward == &ops::delta_rule_parallel_forward && in == &in32) continue;  // O(T²): f64 only
                const Outputs out = run_forward(forward, p, *in);
                const double bound = in == &in64 ? 1e-10 : 1e-4;
                const double err_o = testkit::relative_error(out.o, ref.o);
                const double err_state = testkit::relative_error(out.final_state, ref.final_state);
                EXPECT_TRUE(std::isfinite(err_o) && std::isfinite(err_state)) << name;
                EXPECT_LT(err_o, bound) << name << " " << dtype_name(in->q.dtype());
                EXPECT_LT(err_state, bound) << name << " " << dtype_name(in->q.dtype());
            }
        }
        const Tensor r1 = testkit::random_normal(in32.v.shape(), DType::f32, stream + 5);
        const Tensor r2 = testkit::random_normal(in32.state_shape(p), DType::f32, stream + 6);
        const Tensor r2_64 = r2.to(DType::f64);
        const Gradients grads32 = run_backward(p, in32, r1, &r2);
        const Gradients grads64 = run_backward(p, in64, r1.to(DType::f64), &r2_64);
        const auto g32 = named(grads32), g64 = named(grads64);
        for (size_t i = 0; i < g32.size(); ++i) {
            const double err = testkit::relative_error(*g32[i].second, *g64[i].second);
            EXPECT_TRUE(std::isfinite(err)) << g32[i].first;
            EXPECT_LT(err, 1e-4) << g32[i].first;
        }
    }
}

TEST(DeltaRule, BadInputsAreErrors) {
    const Problem p{2, 5, 3, 4, 6, 4};
    const Inputs in(p, DType::f32, 5000, kGate, true);
    Tensor o = Tensor::empty({2, 5, 3, 6});
    Tensor state = Tensor::empty({2, 3, 4, 6});
    const char* fwd = "delta_rule_chunkwise_forward";
    auto forward = [&](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, const Tensor* s0,
                       const ops::DeltaRuleArgs& args) {
        ops::delta_rule_chunkwise_forward(o, &state, q, k, v, beta, s0, args);
    };
    const Tensor bad_v = testkit::random_normal({2, 5, 4, 6}, DType::f32, 5010);
    expect_error([&] { forward(in.q, in.k, bad_v, in.beta, in.initial(), in.args); },
                 {fmt::format("{}: v: expected shape [2, 5, 3, Dv], got [2, 5, 4, 6]", fwd)});
    const Tensor bad_k = testkit::random_normal({2, 5, 3, 5}, DType::f32, 5011);
    expect_error([&] { forward(in.q, bad_k, in.v, in.beta, in.initial(), in.args); },
                 {fmt::format("{}: k: expected shape [2, 5, 3, 4], got [2, 5, 3, 5]", fwd)});
    const Tensor bad_beta_shape = testkit::random_uniform({2, 5, 2}, DType::f32, 5012, 0, 1);
    expect_error([&] { forward(in.q, in.k, in.v, bad_beta_shape, in.initial(), in.args); },
                 {fmt::format("{}: beta: expected shape [2, 5, 3], got [2, 5, 2]", fwd)});
    Tensor bad_beta = in.beta.clone();
    bad_beta.data<float>()[7] = 1.5f;
    expect_error([&] { forward(in.q, in.k, in.v, bad_beta, in.initial(), in.args); },
                 {fmt::format("{}: beta: expected every value in [0, 1], got 1.5 at index 7", fwd)});
    bad_beta.data<float>()[7] = std::nanf("");
    expect_error([&] { forward(in.q, in.k, in.v, bad_beta, in.initial(), in.args); },
                 {fmt::format("{}: beta: expected every value in [0, 1]", fwd)});
    const Tensor bad_state = testkit::random_normal({2, 3, 6, 4}, DType::f32, 5013);
    expect_error([&] { forward(in.q, in.k, in.v, in.beta, &bad_state, in.args); },
                 {fmt::format("{}: initial_state: expected shape [2, 3, 4, 6], got [2, 3, 6, 4]", fwd)});
    expect_error([&] { forward(in.q, in.k.to(DType::f64), in.v, in.beta, in.initial(), in.args); },
                 {fmt::format("{}: k: expected dtype F32", fwd)});
    expect_error([&] { forward(in.q, in.k, in.v, in.beta.to(DType::f64), in.initial(), in.args); },
                 {fmt::format("{}: beta: expected dtype F32", fwd)});
    expect_error([&] { forward(in.q.to(DType::bf16), in.k, in.v, in.beta, in.initial(), in.args); },
                 {fmt::format("{}: q: expected dtype F32 or F64, got BF16", fwd)});
    const Tensor strided_q = testkit::random_normal({2, 3, 5, 4}, DType::f32, 5014).transpose(1, 2);
    expect_error([&] { forward(strided_q, in.k, in.v, in.beta, in.initial(), in.args); },
                 {fmt::format("{}: q: expected a contiguous tensor", fwd)});

    ops::DeltaRuleArgs args = in.args;
    args.log_gate = in.args.log_gate.clone();
    args.log_gate.data<float>()[4] = 0.25f;
    expect_error([&] { forward(in.q, in.k, in.v, in.beta, in.initial(), args); },
                 {fmt::format("{}: log_gate: expected every value ≤ 0, got 0.25 at index 4", fwd)});
    expect_error([&] { ops::delta_rule_recurrent_forward(o, &state, in.q, in.k, in.v, in.beta, in.initial(), args); },
                 {"delta_rule_recurrent_forward: log_gate: expected every value ≤ 0"});
    expect_error([&] { ops::delta_rule_parallel_forward(o, &state, in.q, in.k, in.v, in.beta, in.initial(), args); },
                 {"delta_rule_parallel_forward: log_gate: expected every value ≤ 0"});
    args.log_gate = testkit::random_uniform({2, 5}, DType::f32, 5015, -1, 0);
    expect_error([&] { forward(in.q, in.k, in.v, in.beta, in.initial(), args); },
                 {fmt::format("{}: log_gate: expected shape [2, 5, 3], got [2, 5]", fwd)});
    args = in.args;
    args.chunk_size = 0;
    expect_error([&] { forward(in.q, in.k, in.v, in.beta, in.initial(), args); },
                 {fmt::format("{}: chunk_size: expected ≥ 1, got 0", fwd)});
    Tensor bad_o = Tensor::empty({2, 5, 3, 4});
    expect_error([&] { ops::delta_rule_chunkwise_forward(bad_o, &state, in.q, in.k, in.v, in.beta, nullptr, in.args); },
                 {fmt::format("{}: o: expected shape [2, 5, 3, 6], got [2, 5, 3, 4]", fwd)});

    // cu_seqlens: batch 1, offsets from 0 to T, strictly increasing; states have one row per sequence.
    args = in.args;
    args.cu_seqlens = {0, 2, 5};
    expect_error([&] { forward(in.q, in.k, in.v, in.beta, in.initial(), args); },
                 {fmt::format("{}: cu_seqlens: packed sequences need batch size 1, got q of shape [2, 5, 3, 4]", fwd)});
    const Problem p1{1, 5, 3, 4, 6, 4};
    const Inputs one(p1, DType::f32, 5020, kNoGate, false);
    Tensor o1 = Tensor::empty({1, 5, 3, 6});
    auto packed = [&](std::vector<int64_t> cu, const Tensor* s0, Tensor* final_state) {
        ops::DeltaRuleArgs a = one.args;
        a.cu_seqlens = std::move(cu);
        ops::delta_rule_chunkwise_forward(o1, final_state, one.q, one.k, one.v, one.beta, s0, a);
    };
    expect_error([&] { packed({1, 3, 5}, nullptr, nullptr); },
                 {fmt::format("{}: cu_seqlens: expected offsets from 0 to T = 5", fwd)});
    expect_error([&] { packed({0, 3, 4}, nullptr, nullptr); },
                 {fmt::format("{}: cu_seqlens: expected offsets from 0 to T = 5", fwd)});
    expect_error([&] { packed({0}, nullptr, nullptr); },
                 {fmt::format("{}: cu_seqlens: expected offsets from 0 to T = 5 (at least two)", fwd)});
    expect_error([&] { packed({0, 3, 3, 5}, nullptr, nullptr); },
                 {fmt::format("{}: cu_seqlens: expected strictly increasing offsets, got 3 then 3", fwd)});
    const Tensor s0_batch = Tensor::zeros({1, 3, 4, 6});
    expect_error([&] { packed({0, 2, 5}, &s0_batch, nullptr); },
                 {fmt::format("{}: initial_state: expected shape [2, 3, 4, 6], got [1, 3, 4, 6]", fwd)});
    Tensor final_batch = Tensor::empty({1, 3, 4, 6});
    expect_error([&] { packed({0, 2, 5}, nullptr, &final_batch); },
                 {fmt::format("{}: final_state: expected shape [2, 3, 4, 6], got [1, 3, 4, 6]", fwd)});

    const char* bwd = "delta_rule_chunkwise_backward";
    Tensor dq = Tensor::zeros(in.q.shape()), dk = Tensor::zeros(in.k.shape()), dv = Tensor::zeros(in.v.shape());
    Tensor dbeta = Tensor::zeros(in.beta.shape()), dgate = Tensor::zeros(in.beta.shape());
    Tensor bad_dq = Tensor::zeros({2, 5, 3, 6});
    const Tensor dout = testkit::random_normal(in.v.shape(), DType::f32, 5030);
    expect_error(
        [&] {
            ops::delta_rule_chunkwise_backward(bad_dq, dk, dv, dbeta, &dgate, nullptr, dout, nullptr, in.q, in.k,
                                               in.v, in.beta, nullptr, in.args);
        },
        {fmt::format("{}: dq: expected shape [2, 5, 3, 4], got [2, 5, 3, 6]", bwd)});
    Tensor bad_dbeta = Tensor::zeros({2, 5});
    expect_error(
        [&] {
            ops::delta_rule_chunkwise_backward(dq, dk, dv, bad_dbeta, &dgate, nullptr, dout, nullptr, in.q, in.k,
                                               in.v, in.beta, nullptr, in.args);
        },
        {fmt::format("{}: dbeta: expected shape [2, 5, 3], got [2, 5]", bwd)});
    const Tensor dout64 = dout.to(DType::f64);
    expect_error(
        [&] {
            ops::delta_rule_chunkwise_backward(dq, dk, dv, dbeta, &dgate, nullptr, dout64, nullptr, in.q, in.k,
                                               in.v, in.beta, nullptr, in.args);
        },
        {fmt::format("{}: dout: expected dtype F32", bwd)});
    ops::DeltaRuleArgs no_gate = in.args;
    no_gate.log_gate = Tensor();
    expect_error(
        [&] {
            ops::delta_rule_chunkwise_backward(dq, dk, dv, dbeta, &dgate, nullptr, dout, nullptr, in.q, in.k, in.v,
                                               in.beta, nullptr, no_gate);
        },
        {fmt::format("{}: dlog_gate: given, but there is no log_gate", bwd)});
}

// A GPU tensor among CPU ones is an error naming it, not a crash.
TEST(DeltaRule, MixedDevicesAreRefused) {
    if (cuda::device_count() == 0) GTEST_SKIP() << cuda::describe_device();
    const Problem p{1, 4, 2, 3, 5, 4};
    const Inputs in(p, DType::f32, 5100, kNoGate, false);
    Tensor o = Tensor::empty({1, 4, 2, 5});
    const Tensor k_gpu = in.k.to(Device::cuda);
    expect_error([&] { ops::delta_rule_chunkwise_forward(o, nullptr, in.q, k_gpu, in.v, in.beta, nullptr, in.args); },
                 {"delta_rule_chunkwise_forward: k: tensor is on cuda, expected cpu"});
    const Tensor beta_gpu = in.beta.to(Device::cuda);
    expect_error([&] { ops::delta_rule_recurrent_forward(o, nullptr, in.q, in.k, in.v, beta_gpu, nullptr, in.args); },
                 {"delta_rule_recurrent_forward: beta: tensor is on cuda, expected cpu"});
}
