// The recurrent step ops on the CPU: T steps of ops::linear_attention_step / ops::delta_rule_step,
// carrying the state, against one call of the recurrent forward over the same T tokens, for every decay
// and update kind; and their argument checks. Fresh random inputs each run (seed printed by testkit).
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "core/tensor.hpp"
#include "ops/delta_rule.hpp"
#include "ops/linear_attention.hpp"
#include "ops/recurrent_step.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using testkit::expect_error;

namespace {

enum class Gate { none, scalar, vector };

struct Kind {
    bool delta;
    Gate gate;
    const char* name;
};
const Kind kKinds[] = {{false, Gate::none, "additive, no decay"},
                       {false, Gate::scalar, "additive, scalar gate"},
                       {false, Gate::vector, "additive, vector gate"},
                       {true, Gate::none, "delta rule"},
                       {true, Gate::scalar, "gated delta rule"}};


// A sequence of T tokens for N sequences: q,k [N,T,H,Dk], v [N,T,H,Dv], beta [N,T,H] ∈ [0,1),
// log_gate [N,T,H] or [N,T,H,Dk] ≤ 0, initial state ~ N(0, 0.5²).
struct Tokens {
    Tensor q, k, v, beta, log_gate, state;

    Tokens(int64_t N, int64_t T, int64_t H, int64_t Dk, int64_t Dv, const Kind& kind, DType dtype, uint64_t stream) {
        q = testkit::random_unit_rows({N, T, H, Dk}, dtype, stream);
        k = testkit::random_unit_rows({N, T, H, Dk}, dtype, stream + 1);
        v = testkit::random_normal({N, T, H, Dv}, dtype, stream + 2);
        beta = testkit::random_uniform({N, T, H}, dtype, stream + 3, 0.0, 1.0);
        if (kind.gate == Gate::scalar) log_gate = testkit::random_uniform({N, T, H}, dtype, stream + 4, -1.0, 0.0);
        if (kind.gate == Gate::vector) log_gate = testkit::random_uniform({N, T, H, Dk}, dtype, stream + 4, -1.0, 0.0);
        state = testkit::random_normal({N, H, Dk, Dv}, dtype, stream + 5, 0.5);
    }
    // Token t of a [N,T,…] tensor as a contiguous [N,…] tensor.
    static Tensor at(const Tensor& x, int64_t t) { return x.defined() ? x.select(1, t).contiguous() : Tensor(); }
};

}  // namespace

TEST(RecurrentStep, StepsMatchTheRecurrentForward) {
    const int64_t N = 3, T = 5, H = 2;
    uint64_t stream = 100;
    for (const Kind& kind : kKinds)
        for (DType dtype : {DType::f64, DType::f32})
            for (auto [Dk, Dv] : {std::pair<int64_t, int64_t>{16, 16}, {8, 24}}) {
                SCOPED_TRACE(fmt::format("{} {} Dk={} Dv={}", kind.name, dtype_name(dtype), Dk, Dv));
                const Tokens in(N, T, H, Dk, Dv, kind, dtype, stream += 10);
                const double scale = 1.0 / std::sqrt(double(Dk));
                // One call over the T tokens.
                Tensor o_ref = Tensor::empty({N, T, H, Dv}, dtype), final_ref = Tensor::empty({N, H, Dk, Dv}, dtype);
                if (kind.delta) {
                    ops::DeltaRuleArgs args;
                    args.scale = scale;
                    args.log_gate = in.log_gate;
                    ops::delta_rule_recurrent_forward(o_ref, &final_ref, in.q, in.k, in.v, in.beta, &in.state, args);
                } else {
                    ops::LinearAttentionArgs args;
                    args.scale = scale;
                    args.log_gate = in.log_gate;
                    ops::linear_attention_recurrent_forward(o_ref, &final_ref, in.q, in.k, in.v, &in.state, args);
                }
                // T steps, the state updated in place.
                Tensor state = in.state.clone();
                for (int64_t t = 0; t < T; ++t) {
                    Tensor o = Tensor::empty({N, H, Dv}, dtype);
                    o.fill(NAN);
                    const Tensor q = Tokens::at(in.q, t), k = Tokens::at(in.k, t), v = Tokens::at(in.v, t);
                    const Tensor g = Tokens::at(in.log_gate, t);
                    if (kind.delta) ops::delta_rule_step(o, state, q, k, v, Tokens::at(in.beta, t), g, scale);
                    else ops::linear_attention_step(o, state, q, k, v, g, scale);
                    // Same arithmetic in the same order: equal up to rounding of the dtype.
                    EXPECT_LT(testkit::relative_error(o, o_ref.select(1, t)), dtype == DType::f64 ? 1e-13 : 1e-5)
                        << "step " << t;
                }
                EXPECT_LT(testkit::relative_error(state, final_ref), dtype == DType::f64 ? 1e-13 : 1e-5);
            }
}

TEST(RecurrentStep, BadInputsAreErrors) {
    const int64_t N = 2, H = 3, Dk = 8, Dv = 4;
    const Tokens in(N, 1, H, Dk, Dv, kKinds[4], DType::f32, 900);
    const Tensor q = Tokens::at(in.q, 0), k = Tokens::at(in.k, 0), v = Tokens::at(in.v, 0);
    const Tensor beta = Tokens::at(in.beta, 0), g = Tokens::at(in.log_gate, 0);
    Tensor o = Tensor::empty({N, H, Dv}), state = in.state.clone();
    const char* la = "linear_attention_step";
    const char* dr = "delta_rule_step";
    expect_error([&] { ops::linear_attention_step(o, state, q, in.k, v, g, 1.0); },
                 {fmt::format("{}: k: expected shape [2, 3, 8], got [2, 1, 3, 8]", la)});
    const Tensor v_bad = testkit::random_normal({N, H + 1, Dv}, DType::f32, 901);
    expect_error([&] { ops::linear_attention_step(o, state, q, k, v_bad, g, 1.0); },
                 {fmt::format("{}: v: expected shape [2, 3, 4], got [2, 4, 4]", la)});
    Tensor state_bad = Tensor::zeros({N, H, Dk, Dv + 1});
    expect_error([&] { ops::linear_attention_step(o, state_bad, q, k, v, g, 1.0); },
                 {fmt::format("{}: state: expected shape [2, 3, 8, 4], got [2, 3, 8, 5]", la)});
    Tensor state_f64 = state.to(DType::f64);
    expect_error([&] { ops::linear_attention_step(o, state_f64, q, k, v, g, 1.0); },
                 {fmt::format("{}: state: expected dtype F32 on cpu, got F64", la)});
    const Tensor q_bf16 = q.to(DType::bf16);
    expect_error([&] { ops::linear_attention_step(o, state, q_bf16, k, v, g, 1.0); },
                 {fmt::format("{}: q: expected dtype F32 or F64 on cpu, got BF16", la)});
    const Tensor g_bad = testkit::random_uniform({N, H, Dk + 1}, DType::f32, 902, -1.0, 0.0);
    expect_error([&] { ops::linear_attention_step(o, state, q, k, v, g_bad, 1.0); },
                 {fmt::format("{}: log_gate: expected shape [2, 3, 8], got [2, 3, 9]", la)});
    const Tensor g_positive = testkit::random_uniform({N, H}, DType::f32, 903, 0.5, 1.0);
    expect_error([&] { ops::linear_attention_step(o, state, q, k, v, g_positive, 1.0); },
                 {"log_gate: expected every value ≤ 0"});
    const Tensor q_strided = testkit::random_normal({N, H, 2 * Dk}, DType::f32, 904).narrow(2, 0, Dk);
    expect_error([&] { ops::linear_attention_step(o, state, q_strided, k, v, g, 1.0); },
                 {fmt::format("{}: q: expected a contiguous tensor", la)});
    // The delta rule: β's shape and range, no per-key-channel gate.
    const Tensor g_vector = Tokens::at(Tokens(N, 1, H, Dk, Dv, kKinds[2], DType::f32, 905).log_gate, 0);
    expect_error([&] { ops::delta_rule_step(o, state, q, k, v, beta, g_vector, 1.0); },
                 {fmt::format("{}: log_gate: expected shape [2, 3], got [2, 3, 8]", dr)});
    expect_error([&] { ops::delta_rule_step(o, state, q, k, v, Tensor(), g, 1.0); },
                 {fmt::format("{}: beta: tensor is not defined", dr)});
    const Tensor beta_big = testkit::random_uniform({N, H}, DType::f32, 906, 1.5, 2.0);
    expect_error([&] { ops::delta_rule_step(o, state, q, k, v, beta_big, g, 1.0); },
                 {"beta: expected every value in [0, 1]"});
}
