// Packed sequences (cu_seqlens) on the bf16 CUDA chunkwise kernels, which run them as a zero-padded batch
// (ops/cuda_operands.hpp's PaddedBatch): every member those kernels take — no decay, a scalar gate, a fixed
// decay, a gate per key dimension (GLA), the delta rule and the gated delta rule — forward (o, each
// sequence's final state) and backward (every gradient, each sequence's initial-state gradient) against the
// CPU float64 chunkwise forms with the same cu_seqlens, on fresh random inputs whose sequences are 1, 63,
// 130, 64 and 43 tokens long; the gradients are added into nonzero ones. Mixed precision (f32 tensors) takes the same path. Skipped (not passed)
// where no GPU is usable.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "core/tensor.hpp"
#include "ops/delta_rule.hpp"
#include "ops/dense.hpp"
#include "ops/linear_attention.hpp"
#include "ops/precision.hpp"
#include "support/gpu.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using testkit::minus;
using testkit::relative_error;

namespace {

// bf16 operands and outputs, fp32 accumulation, against float64: a few 1e-3, as the unpacked tests.
constexpr double kTolerance = 2e-2;

const std::vector<int64_t> kCuSeqlens = {0, 1, 64, 194, 258, 301};
constexpr int64_t kTokens = 301, kSequences = 5, kHeads = 2, kKeyDim = 64, kValueDim = 128;

enum class Gate { none, scalar, fixed, vector };

struct Member {
    std::string name;
    bool delta;
    Gate gate;
};

const std::vector<Member>& members() {
    static const std::vector<Member> all = {
        {"linear attention", false, Gate::none},   {"scalar gate", false, Gate::scalar},
        {"fixed decay", false, Gate::fixed},       {"GLA", false, Gate::vector},
        {"delta rule", true, Gate::none},          {"gated delta rule", true, Gate::scalar},
    };
    return all;
}

// Inputs rounded to bf16 (the kernels' operands; the reference sees the same values), gates and β fp32,
// all in f64 on the CPU. Delta-rule keys have unit rows, as the layers make them.
struct Inputs {
    Tensor q, k, v, beta, gate, initial_state, dout, dfinal_state;

    Inputs(const Member& m, uint64_t stream) {
        const Shape keys = {1, kTokens, kHeads, kKeyDim}, values = {1, kTokens, kHeads, kValueDim};
        q = testkit::random_normal(keys, DType::bf16, stream).to(DType::f64);
        k = (m.delta ? testkit::random_unit_rows(keys, DType::bf16, stream + 1)
                     : testkit::random_normal(keys, DType::bf16, stream + 1))
                .to(DType::f64);
        v = testkit::random_normal(values, DType::bf16, stream + 2).to(DType::f64);
        dout = testkit::random_normal(values, DType::bf16, stream + 3).to(DType::f64);
        beta = testkit::random_uniform({1, kTokens, kHeads}, DType::f32, stream + 4, 0.1, 0.9).to(DType::f64);
        if (m.gate == Gate::scalar)
            gate = testkit::random_uniform({1, kTokens, kHeads}, DType::f32, stream + 5, -0.5, -0.01).to(DType::f64);
        if (m.gate == Gate::vector)
            gate = testkit::random_uniform(keys, DType::f32, stream + 5, -0.5, -0.01).to(DType::f64);
        if (m.gate == Gate::fixed)
            gate = testkit::random_uniform({kHeads}, DType::f32, stream + 5, -0.2, -0.01).to(DType::f64);
        const Shape states = {kSequences, kHeads, kKeyDim, kValueDim};
        initial_state = testkit::random_normal(states, DType::f32, stream + 6, 0.5).to(DType::f64);
        dfinal_state = testkit::random_normal(states, DType::f32, stream + 7, 0.5).to(DType::f64);
    }
};

// Where each operand lives in one run: the CPU in f64, or the GPU with q, k, v, dout in `tokens`' dtype
// (bf16, or f32 for mixed precision) and the rest f32.
struct Placement {
    Device device;
    DType tokens;
    Tensor put(const Tensor& t, bool token_operand) const {
        if (!t.defined()) return t;
        if (device == Device::cpu) return t;
        return t.to(token_operand ? tokens : DType::f32).to(Device::cuda);
    }
};

// o, final_state, then dq, dk, dv, dinitial_state, dgate, dbeta (the last two where the member has them),
// as f64 CPU tensors. The gradients start from `priors` (f64, in that order) where given, else from zeros.
std::vector<Tensor> run(const Member& m, const Inputs& in, const Placement& at, const std::vector<int64_t>& cu,
                        const std::vector<Tensor>& priors = {}) {
    const Tensor q = at.put(in.q, true), k = at.put(in.k, true), v = at.put(in.v, true);
    const Tensor dout = at.put(in.dout, true), beta = at.put(in.beta, false), gate = at.put(in.gate, false);
    const Tensor s0 = at.put(in.initial_state, false), dsT = at.put(in.dfinal_state, false);
    const DType token_dtype = at.device == Device::cpu ? DType::f64 : at.tokens;
    const DType state_dtype = at.device == Device::cpu ? DType::f64 : DType::f32;
    const int64_t sequences = int64_t(cu.size()) - 1;
    Tensor o = Tensor::empty(v.shape(), token_dtype, at.device);
    Tensor final_state = Tensor::empty(s0.shape(), state_dtype, at.device);
    Tensor dq = Tensor::zeros(q.shape(), token_dtype, at.device), dk = dq.clone();
    Tensor dv = Tensor::zeros(v.shape(), token_dtype, at.device);
    Tensor ds0 = Tensor::zeros(s0.shape(), state_dtype, at.device);
    Tensor dgate = gate.defined() && m.gate != Gate::fixed ? Tensor::zeros(gate.shape(), state_dtype, at.device)
                                                           : Tensor();
    Tensor dbeta = Tensor::zeros(beta.shape(), state_dtype, at.device);
    EXPECT_EQ(s0.size(0), sequences);
    if (!priors.empty()) {
        std::vector<Tensor*> grads = {&dq, &dk, &dv, &ds0};
        if (dgate.defined()) grads.push_back(&dgate);
        if (m.delta) grads.push_back(&dbeta);
        EXPECT_EQ(priors.size(), grads.size());
        for (size_t g = 0; g < grads.size(); ++g) grads[g]->copy_from(priors[g].to(grads[g]->dtype()).to(at.device));
    }
    const double scale = 1.0 / 8;
    if (m.delta) {
        ops::DeltaRuleArgs args;
        args.scale = scale;
        args.log_gate = gate;
        args.cu_seqlens = cu;
        ops::delta_rule_chunkwise_forward(o, &final_state, q, k, v, beta, &s0, args);
        ops::delta_rule_chunkwise_backward(dq, dk, dv, dbeta, dgate.defined() ? &dgate : nullptr, &ds0, dout, &dsT, q,
                                           k, v, beta, &s0, args);
    } else {
        ops::LinearAttentionArgs args;
        args.scale = scale;
        (m.gate == Gate::fixed ? args.log_decay : args.log_gate) = gate;
        args.cu_seqlens = cu;
        ops::linear_attention_chunkwise_forward(o, &final_state, q, k, v, &s0, args);
        ops::linear_attention_chunkwise_backward(dq, dk, dv, &ds0, dout, &dsT, q, k, v, &s0, args,
                                                 dgate.defined() ? &dgate : nullptr);
    }
    std::vector<Tensor> out = {o, final_state, dq, dk, dv, ds0};
    if (dgate.defined()) out.push_back(dgate);
    if (m.delta) out.push_back(dbeta);
    for (Tensor& t : out) t = t.to(Device::cpu).to(DType::f64);
    return out;
}

const char* kNames[] = {"o", "final_state", "dq", "dk", "dv", "dinitial_state", "dgate or dbeta", "dbeta"};

}  // namespace

TEST(CudaPackedSequences, EveryMemberMatchesF64BothWays) {
    SKIP_WITHOUT_GPU();
    uint64_t stream = 9500;
    for (const Member& m : members()) {
        SCOPED_TRACE(m.name);
        const Inputs in(m, stream);
        stream += 10;
        const std::vector<Tensor> ref = run(m, in, {Device::cpu, DType::f64}, kCuSeqlens);
        // The GPU's gradients start from random values of the reference gradients' size (bf16 ones rounded
        // to bf16): what was added must be the gradient (one that overwrote would miss by ~100%).
        std::vector<Tensor> priors;
        for (size_t n = 2; n < ref.size(); ++n) {
            const double rms = std::sqrt(ops::sum_squares(ref[n]) / double(ref[n].numel()));
            const DType rounding = n < 5 ? DType::bf16 : DType::f32;
            priors.push_back(testkit::random_normal(ref[n].shape(), rounding, stream + 100 + n, rms).to(DType::f64));
        }
        const std::vector<Tensor> got = run(m, in, {Device::cuda, DType::bf16}, kCuSeqlens, priors);
        ASSERT_EQ(got.size(), ref.size());
        for (size_t n = 0; n < ref.size(); ++n) {
            const Tensor added = n < 2 ? got[n] : minus(got[n], priors[n - 2]);
            EXPECT_LT(relative_error(added, ref[n]), kTolerance) << kNames[n];
        }
    }
}

TEST(CudaPackedSequences, MixedPrecisionTakesThePackedKernels) {
    SKIP_WITHOUT_GPU();
    const ops::ScopedPrecision bf16(ops::Precision::bf16);
    uint64_t stream = 9600;
    for (const Member& m : {members()[3], members()[5]}) {
        SCOPED_TRACE(m.name);
        const Inputs in(m, stream);
        stream += 10;
        const std::vector<Tensor> ref = run(m, in, {Device::cpu, DType::f64}, kCuSeqlens);
        const std::vector<Tensor> got = run(m, in, {Device::cuda, DType::f32}, kCuSeqlens);
        for (size_t n = 0; n < ref.size(); ++n) {
            const double error = relative_error(got[n], ref[n]);
            EXPECT_LT(error, kTolerance) << kNames[n];
            // The exact fp32 scan would agree to ~1e-6: bf16 rounding shows the kernels ran.
            EXPECT_GT(error, 1e-6) << kNames[n];
        }
    }
}

TEST(CudaPackedSequences, TheBoundariesMatter) {
    // The inputs above would not catch a kernel that ignored cu_seqlens: the same tokens as one sequence
    // give a different output (a guard on the test itself; CPU only).
    const Member& m = members()[1];
    const Inputs in(m, 9700);
    const std::vector<Tensor> packed = run(m, in, {Device::cpu, DType::f64}, kCuSeqlens);
    Inputs whole = in;
    whole.initial_state = in.initial_state.narrow(0, 0, 1).contiguous();
    whole.dfinal_state = in.dfinal_state.narrow(0, 0, 1).contiguous();
    const std::vector<Tensor> joined = run(m, whole, {Device::cpu, DType::f64}, {0, kTokens});
    EXPECT_GT(relative_error(joined[0], packed[0]), 0.1);
}
