// Softmax attention (flash-style forward and backward) checked against the float64 full-matrix
// reference in backend/cpu/reference_softmax_attention, against central finite differences, and
// for packed sequences against separate runs. Inputs are fresh random draws each run (seed printed
// by testkit).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "backend/cpu/reference_softmax_attention.hpp"
#include "core/tensor.hpp"
#include "ops/softmax_attention.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using testkit::expect_error;

namespace {

struct Problem {
    int64_t batch, seq_len, heads, key_dim, value_dim;
};

enum class Bias { none, alibi, forget, both };
const char* bias_name(Bias bias) {
    switch (bias) {
        case Bias::none: return "none";
        case Bias::alibi: return "alibi";
        case Bias::forget: return "forget";
        case Bias::both: return "alibi+forget";
    }
    return "?";
}
constexpr Bias kBiases[] = {Bias::none, Bias::alibi, Bias::forget, Bias::both};
bool has_forget(Bias bias) { return bias == Bias::forget || bias == Bias::both; }

std::string describe(const Problem& p, Bias bias, int64_t window) {
    return fmt::format("B={} T={} H={} Dk={} Dv={} bias={} window={}", p.batch, p.seq_len, p.heads, p.key_dim,
                       p.value_dim, bias_name(bias), window);
}

// Random inputs: q,k ~ N(0, qk_std²) with scale 1/sqrt(Dk) (so logits have std ≈ qk_std²),
// v ~ N(0,1), log forget gates in [−0.5, −0.001], the paper's ALiBi slopes.
struct Inputs {
    Tensor q, k, v;
    ops::SoftmaxAttentionArgs args;

    Inputs(const Problem& p, DType dtype, uint64_t stream, Bias bias, int64_t window, double qk_std = 1.0) {
        const int64_t B = p.batch, T = p.seq_len, H = p.heads;
        q = testkit::random_normal({B, T, H, p.key_dim}, dtype, stream, qk_std);
        k = testkit::random_normal({B, T, H, p.key_dim}, dtype, stream + 1, qk_std);
        v = testkit::random_normal({B, T, H, p.value_dim}, dtype, stream + 2);
        args.scale = 1.0 / std::sqrt(double(p.key_dim));
        args.window = window;
        if (bias == Bias::alibi || bias == Bias::both) args.alibi_slopes = ops::alibi_slopes(H, dtype);
        if (has_forget(bias)) args.log_forget = testkit::random_uniform({B, T, H}, dtype, stream + 3, -0.5, -0.001);
    }
    Inputs to(DType dtype) const {
        Inputs out = *this;
        out.q = q.to(dtype);
        out.k = k.to(dtype);
        out.v = v.to(dtype);
        if (args.alibi_slopes.defined()) out.args.alibi_slopes = args.alibi_slopes.to(dtype);
        if (args.log_forget.defined()) out.args.log_forget = args.log_forget.to(dtype);
        return out;
    }
    Problem problem() const { return {q.size(0), q.size(1), q.size(2), q.size(3), v.size(3)}; }
};

struct Outputs {
    Tensor o, logsumexp;
};

Outputs run_forward(const Inputs& in) {
    const Problem p = in.problem();
    Outputs out{Tensor::empty({p.batch, p.seq_len, p.heads, p.value_dim}, in.q.dtype()),
                Tensor::empty({p.batch, p.seq_len, p.heads}, in.q.dtype())};
    ops::softmax_attention_forward(out.o, out.logsumexp, in.q, in.k, in.v, in.args);
    return out;
}

// The float64 full-matrix reference on the same (possibly f32-rounded) inputs.
Outputs run_reference(const Inputs& in32) {
    const Inputs in = in32.to(DType::f64);
    const Problem p = in.problem();
    Outputs out{Tensor::empty({p.batch, p.seq_len, p.heads, p.value_dim}, DType::f64),
                Tensor::empty({p.batch, p.seq_len, p.heads}, DType::f64)};
    const auto* slopes = in.args.alibi_slopes.defined() ? in.args.alibi_slopes.data<double>() : nullptr;
    const auto* log_forget = in.args.log_forget.defined() ? in.args.log_forget.data<double>() : nullptr;
    reference::softmax_attention(out.o.data<double>(), out.logsumexp.data<double>(), in.q.data<double>(),
                                 in.k.data<double>(), in.v.data<double>(), slopes, log_forget, in.args.scale,
                                 in.args.window, in.args.cu_seqlens, p.batch, p.seq_len, p.heads, p.key_dim,
                                 p.value_dim);
    return out;
}

struct Gradients {
    Tensor dq, dk, dv, dlog_forget;  // dlog_forget undefined without a forget gate
};

// Backward of loss = dot(o, dout) into zeroed gradients.
Gradients run_backward(const Inputs& in, const Outputs& fwd, const Tensor& dout) {
    const DType dtype = in.q.dtype();
    Gradients g{Tensor::zeros(in.q.shape(), dtype), Tensor::zeros(in.k.shape(), dtype),
                Tensor::zeros(in.v.shape(), dtype), Tensor()};
    if (in.args.log_forget.defined()) g.dlog_forget = Tensor::zeros(in.args.log_forget.shape(), dtype);
    ops::softmax_attention_backward(g.dq, g.dk, g.dv, g.dlog_forget.defined() ? &g.dlog_forget : nullptr, dout,
                                    in.q, in.k, in.v, fwd.o, fwd.logsumexp, in.args);
    return g;
}

// T around and across the 64-row blocks: T = 1, T < block, T a multiple, T not a multiple.
const std::vector<Problem> kForwardProblems = {
    {2, 1, 3, 16, 24},     // T = 1, B > 1
    {2, 37, 3, 16, 24},    // one partial block, Dk < Dv
    {1, 128, 2, 24, 16},   // two whole blocks, Dk > Dv
    {2, 150, 2, 16, 8},    // a partial last block
};
const int64_t kWindows[] = {0, 1, 17, 100};

}  // namespace

TEST(SoftmaxAttentionForward, F32MatchesF64Reference) {
    uint64_t stream = 100;
    for (const Problem& p : kForwardProblems)
        for (Bias bias : kBiases)
            for (int64_t window : kWindows) {
                SCOPED_TRACE(describe(p, bias, window));
                const Inputs in(p, DType::f32, stream += 10, bias, window);
                const Outputs out = run_forward(in), ref = run_reference(in);
                EXPECT_LT(testkit::relative_error(out.o, ref.o), 1e-5);
                EXPECT_LT(testkit::relative_error(out.logsumexp, ref.logsumexp), 1e-5);
            }
}

// In f64 the blockwise online softmax is the same function as the full-matrix one, up to rounding.
TEST(SoftmaxAttentionForward, F64MatchesReferenceToRounding) {
    uint64_t stream = 1000;
    for (const Problem& p : kForwardProblems)
        for (Bias bias : kBiases)
            for (int64_t window : {int64_t(0), int64_t(70)}) {
                SCOPED_TRACE(describe(p, bias, window));
                const Inputs in(p, DType::f64, stream += 10, bias, window);
                const Outputs out = run_forward(in), ref = run_reference(in);
                EXPECT_LT(testkit::relative_error(out.o, ref.o), 1e-12);
                EXPECT_LT(testkit::relative_error(out.logsumexp, ref.logsumexp), 1e-12);
            }
}

// A window as long as the sequence is full causal attention; a constant forget gate log f = −m_h
// is ALiBi with slope m_h (mixers.md §7.2: both are the same additive GRAPE action).
TEST(SoftmaxAttentionForward, BiasAndWindowIdentities) {
    const Problem p{2, 90, 3, 8, 8};
    const Inputs alibi(p, DType::f64, 1500, Bias::alibi, 0);
    Inputs forget = alibi;
    forget.args.alibi_slopes = Tensor();
    forget.args.log_forget = Tensor::empty({p.batch, p.seq_len, p.heads}, DType::f64);
    for (int64_t n = 0; n < forget.args.log_forget.numel(); ++n)
        forget.args.log_forget.data<double>()[n] = -alibi.args.alibi_slopes.flat(n % p.heads);
    EXPECT_LT(testkit::relative_error(run_forward(forget).o, run_forward(alibi).o), 1e-13);
    Inputs windowed = alibi;
    windowed.args.window = p.seq_len;
    EXPECT_LT(testkit::relative_error(run_forward(windowed).o, run_forward(alibi).o), 1e-13);
}

// q, k scaled so the logits spread over about ±60: no overflow (the online softmax subtracts the
// running max) and f32 keeps the accuracy the rounding of its logits allows. An f32 logit of
// size 60 carries an absolute error of ~60·2^−24 ≈ 4e-6 in the exponent, which the softmax turns
// into a relative error of the same size in each weight.
TEST(SoftmaxAttentionForward, LargeLogitsStayFiniteAndAccurate) {
    const Problem p{2, 150, 2, 32, 16};
    uint64_t stream = 2000;
    for (Bias bias : kBiases) {
        SCOPED_TRACE(describe(p, bias, 0));
        const Inputs in(p, DType::f32, stream += 10, bias, 0, std::sqrt(20.0));
        const Outputs out = run_forward(in), ref = run_reference(in);
        double max_logit = 0;
        for (double value : ref.logsumexp.to_vector()) max_logit = std::max(max_logit, std::abs(value));
        EXPECT_GT(max_logit, 40.0) << "the test should reach large logits";
        for (double value : out.o.to_vector()) ASSERT_TRUE(std::isfinite(value));
        EXPECT_LT(testkit::relative_error(out.o, ref.o), 1e-5);
        EXPECT_LT(testkit::relative_error(out.logsumexp, ref.logsumexp), 1e-6);
        const Outputs out64 = run_forward(in.to(DType::f64));
        EXPECT_LT(testkit::relative_error(out64.o, ref.o), 1e-12);
    }
}

// loss = dot(o, R): the backward must match central differences for q, k, v and log_forget. The
// gradients start from random values to check the backward adds into them.
TEST(SoftmaxAttentionBackward, GradientsMatchFiniteDifferences) {
    const std::vector<Problem> problems = {{2, 11, 2, 5, 6}, {1, 70, 1, 3, 4}};
    uint64_t stream = 3000;
    for (const Problem& p : problems)
        for (Bias bias : kBiases)
            for (int64_t window : {int64_t(0), int64_t(5)}) {
                SCOPED_TRACE(describe(p, bias, window));
                Inputs in(p, DType::f64, stream += 10, bias, window);
                const Tensor r = testkit::random_normal({p.batch, p.seq_len, p.heads, p.value_dim}, DType::f64,
                                                        stream + 5);
                auto loss = [&] { return testkit::dot(run_forward(in).o, r); };
                Gradients g{testkit::random_normal(in.q.shape(), DType::f64, stream + 6),
                            testkit::random_normal(in.k.shape(), DType::f64, stream + 7),
                            testkit::random_normal(in.v.shape(), DType::f64, stream + 8), Tensor()};
                if (has_forget(bias))
                    g.dlog_forget = testkit::random_normal(in.args.log_forget.shape(), DType::f64, stream + 9);
                const Gradients before{g.dq.clone(), g.dk.clone(), g.dv.clone(),
                                       has_forget(bias) ? g.dlog_forget.clone() : Tensor()};
                const Outputs fwd = run_forward(in);
                ops::softmax_attention_backward(g.dq, g.dk, g.dv, has_forget(bias) ? &g.dlog_forget : nullptr, r,
                                                in.q, in.k, in.v, fwd.o, fwd.logsumexp, in.args);
                auto added = [](const Tensor& after, const Tensor& start) {
                    Tensor diff = after.clone();
                    for (int64_t i = 0; i < diff.numel(); ++i) diff.data<double>()[i] -= start.flat(i);
                    return diff;
                };
                EXPECT_LT(testkit::gradient_check(loss, in.q, added(g.dq, before.dq)), 1e-6) << "dq";
                EXPECT_LT(testkit::gradient_check(loss, in.k, added(g.dk, before.dk)), 1e-6) << "dk";
                EXPECT_LT(testkit::gradient_check(loss, in.v, added(g.dv, before.dv)), 1e-6) << "dv";
                if (has_forget(bias)) {
                    EXPECT_LT(testkit::gradient_check(loss, in.args.log_forget,
                                                      added(g.dlog_forget, before.dlog_forget)),
                              1e-6)
                        << "dlog_forget";
                }
            }
}

TEST(SoftmaxAttentionBackward, F32MatchesF64) {
    const std::vector<Problem> problems = {{2, 150, 2, 16, 24}, {1, 64, 3, 24, 16}, {3, 1, 2, 8, 8}};
    uint64_t stream = 4000;
    for (const Problem& p : problems)
        for (Bias bias : kBiases)
            for (int64_t window : {int64_t(0), int64_t(40)}) {
                SCOPED_TRACE(describe(p, bias, window));
                const Inputs in32(p, DType::f32, stream += 10, bias, window);
                const Inputs in64 = in32.to(DType::f64);
                const Tensor r = testkit::random_normal({p.batch, p.seq_len, p.heads, p.value_dim}, DType::f32,
                                                        stream + 5);
                const Gradients g32 = run_backward(in32, run_forward(in32), r);
                const Gradients g64 = run_backward(in64, run_forward(in64), r.to(DType::f64));
                EXPECT_LT(testkit::relative_error(g32.dv, g64.dv), 1e-4);
                if (p.seq_len == 1) continue;  // one key: the softmax is constant, dq = dk = 0 exactly
                EXPECT_LT(testkit::relative_error(g32.dq, g64.dq), 1e-4);
                EXPECT_LT(testkit::relative_error(g32.dk, g64.dk), 1e-4);
                if (has_forget(bias)) {
                    EXPECT_LT(testkit::relative_error(g32.dlog_forget, g64.dlog_forget), 1e-4);
                }
            }
}

// Packed sequences (cu_seqlens) compute what separate runs compute, forward and backward, and
// perturbing one sequence leaves every other sequence's outputs exactly unchanged.
TEST(SoftmaxAttention, PackedSequencesMatchSeparateRuns) {
    const std::vector<int64_t> cu_seqlens = {0, 5, 75, 76, 140};
    const Problem packed{1, cu_seqlens.back(), 2, 8, 6};
    uint64_t stream = 5000;
    for (Bias bias : kBiases)
        for (int64_t window : {int64_t(0), int64_t(9)}) {
            SCOPED_TRACE(describe(packed, bias, window));
            Inputs in(packed, DType::f64, stream += 10, bias, window);
            in.args.cu_seqlens = cu_seqlens;
            const Outputs out = run_forward(in);
            const Tensor dout = testkit::random_normal(out.o.shape(), DType::f64, stream + 5);
            const Gradients g = run_backward(in, out, dout);
            for (size_t s = 0; s + 1 < cu_seqlens.size(); ++s) {
                const int64_t start = cu_seqlens[s], length = cu_seqlens[s + 1] - start;
                auto part = [&](const Tensor& t) { return t.narrow(1, start, length).contiguous(); };
                Inputs one = in;
                one.args.cu_seqlens.clear();
                one.q = part(in.q);
                one.k = part(in.k);
                one.v = part(in.v);
                if (has_forget(bias)) one.args.log_forget = part(in.args.log_forget);
                const Outputs one_out = run_forward(one);
                const Gradients one_g = run_backward(one, one_out, part(dout));
                EXPECT_LT(testkit::relative_error(part(out.o), one_out.o), 1e-13) << "sequence " << s;
                EXPECT_LT(testkit::relative_error(part(out.logsumexp), one_out.logsumexp), 1e-13);
                EXPECT_LT(testkit::relative_error(part(g.dv), one_g.dv), 1e-13);
                if (length == 1) continue;  // one key: dq = dk = dlog_forget = 0 exactly
                EXPECT_LT(testkit::relative_error(part(g.dq), one_g.dq), 1e-13);
                EXPECT_LT(testkit::relative_error(part(g.dk), one_g.dk), 1e-13);
                if (has_forget(bias)) {
                    EXPECT_LT(testkit::relative_error(part(g.dlog_forget), one_g.dlog_forget), 1e-13);
                }
            }
            // Perturb every input of sequence 1 (tokens 5..74).
            Inputs changed = in;
            for (Tensor* t : {&changed.q, &changed.k, &changed.v, &changed.args.log_forget}) {
                if (!t->defined()) continue;
                *t = t->clone();
                const int64_t row = t->numel() / packed.seq_len;
                for (int64_t n = cu_seqlens[1] * row; n < cu_seqlens[2] * row; ++n) t->data<double>()[n] *= 0.5;
            }
            const Outputs changed_out = run_forward(changed);
            for (size_t s : {size_t(0), size_t(2), size_t(3)}) {
                const int64_t start = cu_seqlens[s], length = cu_seqlens[s + 1] - start;
                EXPECT_EQ(testkit::relative_error(changed_out.o.narrow(1, start, length),
                                                  out.o.narrow(1, start, length)),
                          0.0)
                    << "sequence " << s;
            }
            EXPECT_GT(testkit::relative_error(changed_out.o.narrow(1, 5, 70), out.o.narrow(1, 5, 70)), 1e-3);
        }
}

TEST(SoftmaxAttention, AlibiSlopesFollowThePaper) {
    auto expect_slopes = [](int64_t heads, const std::vector<double>& exponents) {
        const Tensor slopes = ops::alibi_slopes(heads, DType::f64);
        ASSERT_EQ(slopes.shape(), Shape{heads});
        for (int64_t h = 0; h < heads; ++h)
            EXPECT_EQ(slopes.flat(h), std::exp2(exponents[size_t(h)])) << "heads " << heads << " head " << h;
    };
    expect_slopes(1, {-8});
    expect_slopes(4, {-2, -4, -6, -8});
    expect_slopes(8, {-1, -2, -3, -4, -5, -6, -7, -8});
    // Not a power of two: the 4-head slopes, then every other 8-head slope.
    expect_slopes(6, {-2, -4, -6, -8, -1, -3});
    expect_slopes(12, {-1, -2, -3, -4, -5, -6, -7, -8, -0.5, -1.5, -2.5, -3.5});
    EXPECT_EQ(ops::alibi_slopes(3).dtype(), DType::f32);
}

TEST(SoftmaxAttention, BadInputsAreErrors) {
    const Problem p{2, 5, 3, 4, 6};
    const Inputs in(p, DType::f32, 6000, Bias::forget, 0);
    Tensor o = Tensor::empty({2, 5, 3, 6}), lse = Tensor::empty({2, 5, 3});
    const char* fwd = "softmax_attention_forward";
    auto forward = [&](const Tensor& q, const Tensor& k, const Tensor& v, const ops::SoftmaxAttentionArgs& args) {
        ops::softmax_attention_forward(o, lse, q, k, v, args);
    };
    const Tensor bad_v = testkit::random_normal({2, 5, 4, 6}, DType::f32, 6010);
    expect_error([&] { forward(in.q, in.k, bad_v, in.args); },
                 {fmt::format("{}: v: expected shape [2, 5, 3, Dv], got [2, 5, 4, 6]", fwd)});
    const Tensor bad_k = testkit::random_normal({2, 5, 3, 5}, DType::f32, 6011);
    expect_error([&] { forward(in.q, bad_k, in.v, in.args); },
                 {fmt::format("{}: k: expected shape [2, 5, 3, 4], got [2, 5, 3, 5]", fwd)});
    expect_error([&] { forward(in.q, in.k.to(DType::f64), in.v, in.args); },
                 {fmt::format("{}: k: expected dtype F32", fwd)});
    expect_error([&] { forward(in.q.to(DType::bf16), in.k, in.v, in.args); },
                 {fmt::format("{}: q: expected dtype F32 or F64, got BF16", fwd)});
    const Tensor q3 = testkit::random_normal({2, 5, 12}, DType::f32, 6012);
    expect_error([&] { forward(q3, in.k, in.v, in.args); },
                 {fmt::format("{}: q: expected a non-empty [B, T, H, Dk] tensor, got shape [2, 5, 12]", fwd)});
    const Tensor strided_q = testkit::random_normal({2, 3, 5, 4}, DType::f32, 6013).transpose(1, 2);
    expect_error([&] { forward(strided_q, in.k, in.v, in.args); },
                 {fmt::format("{}: q: expected a contiguous tensor", fwd)});

    ops::SoftmaxAttentionArgs args = in.args;
    args.log_forget = args.log_forget.clone();
    args.log_forget.data<float>()[(1 * 5 + 2) * 3 + 1] = 0.25f;
    expect_error([&] { forward(in.q, in.k, in.v, args); },
                 {fmt::format("{}: log_forget: expected every value ≤ 0, got 0.25 at [1, 2, 1]", fwd)});
    args.log_forget = Tensor::zeros({2, 5, 4});
    expect_error([&] { forward(in.q, in.k, in.v, args); },
                 {fmt::format("{}: log_forget: expected shape [2, 5, 3], got [2, 5, 4]", fwd)});
    args = in.args;
    args.alibi_slopes = Tensor::zeros({2});
    expect_error([&] { forward(in.q, in.k, in.v, args); },
                 {fmt::format("{}: alibi_slopes: expected shape [3], got [2]", fwd)});
    args = in.args;
    args.window = -1;
    expect_error([&] { forward(in.q, in.k, in.v, args); },
                 {fmt::format("{}: window: expected ≥ 0 (0 = full causal), got -1", fwd)});

    // cu_seqlens: B must be 1, the bounds must cover [0, T] and increase.
    args = in.args;
    args.cu_seqlens = {0, 2, 5};
    expect_error([&] { forward(in.q, in.k, in.v, args); },
                 {fmt::format("{}: cu_seqlens: packed sequences need B == 1, got q of shape [2, 5, 3, 4]", fwd)});
    const Inputs one(Problem{1, 5, 3, 4, 6}, DType::f32, 6020, Bias::none, 0);
    Tensor o1 = Tensor::empty({1, 5, 3, 6}), lse1 = Tensor::empty({1, 5, 3});
    for (const std::vector<int64_t>& bad : {std::vector<int64_t>{0, 2, 4}, std::vector<int64_t>{1, 5},
                                            std::vector<int64_t>{0}}) {
        args = one.args;
        args.cu_seqlens = bad;
        expect_error([&] { ops::softmax_attention_forward(o1, lse1, one.q, one.k, one.v, args); },
                     {fmt::format("{}: cu_seqlens: expected 0 = cu_seqlens[0] < … < cu_seqlens[last] = T = 5", fwd)});
    }
    args.cu_seqlens = {0, 3, 3, 5};
    expect_error([&] { ops::softmax_attention_forward(o1, lse1, one.q, one.k, one.v, args); },
                 {fmt::format("{}: cu_seqlens: expected strictly increasing bounds, got 3 then 3 at 1", fwd)});

    Tensor bad_o = Tensor::empty({2, 5, 3, 4});
    expect_error([&] { ops::softmax_attention_forward(bad_o, lse, in.q, in.k, in.v, in.args); },
                 {fmt::format("{}: o: expected shape [2, 5, 3, 6], got [2, 5, 3, 4]", fwd)});
    Tensor bad_lse = Tensor::empty({2, 5});
    expect_error([&] { ops::softmax_attention_forward(o, bad_lse, in.q, in.k, in.v, in.args); },
                 {fmt::format("{}: logsumexp: expected shape [2, 5, 3], got [2, 5]", fwd)});

    // Backward.
    ops::softmax_attention_forward(o, lse, in.q, in.k, in.v, in.args);
    Tensor dq = Tensor::zeros(in.q.shape()), dk = Tensor::zeros(in.k.shape()), dv = Tensor::zeros(in.v.shape());
    Tensor dlog_forget = Tensor::zeros({2, 5, 3});
    const Tensor dout = testkit::random_normal(in.v.shape(), DType::f32, 6030);
    const char* bwd = "softmax_attention_backward";
    Tensor bad_dq = Tensor::zeros({2, 5, 3, 6});
    expect_error(
        [&] { ops::softmax_attention_backward(bad_dq, dk, dv, &dlog_forget, dout, in.q, in.k, in.v, o, lse, in.args); },
        {fmt::format("{}: dq: expected shape [2, 5, 3, 4], got [2, 5, 3, 6]", bwd)});
    const Tensor dout64 = dout.to(DType::f64);
    expect_error(
        [&] { ops::softmax_attention_backward(dq, dk, dv, &dlog_forget, dout64, in.q, in.k, in.v, o, lse, in.args); },
        {fmt::format("{}: dout: expected dtype F32", bwd)});
    Tensor bad_dlog_forget = Tensor::zeros({2, 5});
    expect_error(
        [&] { ops::softmax_attention_backward(dq, dk, dv, &bad_dlog_forget, dout, in.q, in.k, in.v, o, lse, in.args); },
        {fmt::format("{}: dlog_forget: expected shape [2, 5, 3], got [2, 5]", bwd)});
    args = in.args;
    args.log_forget = Tensor();
    expect_error(
        [&] { ops::softmax_attention_backward(dq, dk, dv, &dlog_forget, dout, in.q, in.k, in.v, o, lse, args); },
        {fmt::format("{}: dlog_forget: given, but args.log_forget is undefined", bwd)});
    args = in.args;
    args.window = -3;
    expect_error(
        [&] { ops::softmax_attention_backward(dq, dk, dv, &dlog_forget, dout, in.q, in.k, in.v, o, lse, args); },
        {fmt::format("{}: window: expected ≥ 0", bwd)});
}
