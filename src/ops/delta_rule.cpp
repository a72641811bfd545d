// Delta-rule ops: check every tensor (device, dtype, contiguity, shape, value ranges) and cu_seqlens,
// then dispatch to the backend: the CPU one; for f32 CUDA tensors the exact fp32 recurrent scan
// (ops/cuda_recurrent_scan.hpp), which stands for every form; for bf16 CUDA tensors the tensor-core
// chunkwise forward (backend/cuda/linear_attention_chunkwise.hpp), which the chunkwise forward of f32
// tensors takes too under mixed precision (ops/precision.hpp), through bf16 copies; likewise the chunkwise
// backward.
#include "ops/delta_rule.hpp"

#include <cmath>
#include <span>
#include <string>

#include "backend/cpu/delta_rule.hpp"
#include "ops/operand_checks.hpp"
#include "ops/precision.hpp"
#if LINARCH_HAS_CUDA
#include "backend/cuda/linear_attention_chunkwise.hpp"
#include "ops/cuda_operands.hpp"
#include "ops/cuda_recurrent_scan.hpp"
#endif

namespace linarch::ops {
namespace {

#if LINARCH_HAS_CUDA
const Tensor kNoFixedDecay;  // the delta rule has no fixed-decay form

CudaScanInputs scan_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta,
                           const Tensor* initial_state, const DeltaRuleArgs& args) {
    return {q, k, v, &beta, args.log_gate, kNoFixedDecay, initial_state, args.cu_seqlens, args.scale};
}

struct CudaShapes {
    int64_t B, T, H, Dk, Dv;
    int64_t sequences;  // B, or the packed sequences of cu_seqlens
    Shape state_shape() const { return {sequences, H, Dk, Dv}; }
};

// The checks both bf16 CUDA directions share: q, k, v bf16 on the GPU; beta, log_gate [B,T,H], the
// initial state fp32; cu_seqlens. The values of beta and log_gate are not range-checked: that would copy
// them to the host on every call.
CudaShapes check_cuda_delta_rule(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                                 const Tensor& beta, const Tensor* initial_state, const DeltaRuleArgs& args) {
    LINARCH_CHECK(q.dim() == 4 && q.numel() > 0, "{}: q: expected a non-empty [B, T, H, Dk] tensor, got shape {}",
                  op, shape_string(q.shape()));
    check_cuda_operand(op, "q", q, DType::bf16, q.shape());
    const int64_t B = q.size(0), T = q.size(1), H = q.size(2), Dk = q.size(3);
    check_cuda_operand(op, "k", k, DType::bf16, q.shape());
    LINARCH_CHECK(v.defined() && v.dim() == 4 && v.size(3) > 0, "{}: v: expected shape [{}, {}, {}, Dv], got {}", op,
                  B, T, H, v.defined() ? shape_string(v.shape()) : "undefined");
    const int64_t Dv = v.size(3);
    check_cuda_operand(op, "v", v, DType::bf16, {B, T, H, Dv});
    check_cuda_operand(op, "beta", beta, DType::f32, {B, T, H});
    if (args.log_gate.defined()) check_cuda_operand(op, "log_gate", args.log_gate, DType::f32, {B, T, H});
    const CudaShapes d{B, T, H, Dk, Dv, check_cu_seqlens(op, args.cu_seqlens, B, T)};
    if (present(initial_state)) check_cuda_operand(op, "initial_state", *initial_state, DType::f32, d.state_shape());
    return d;
}

// The arguments of packed sequences' padded batch: no cu_seqlens, and the gate padded with zeros (the
// padding decays nothing; its β of 0 writes nothing).
DeltaRuleArgs padded_args(const PaddedBatch& batch, const DeltaRuleArgs& args) {
    DeltaRuleArgs padded = args;
    padded.cu_seqlens.clear();
    padded.log_gate = batch.pad(args.log_gate);
    return padded;
}

// The chunkwise forward on bf16 CUDA tensors (o bf16, final_state fp32). Any chunk_size gives the same
// function; the kernels use chunks of 64.
void delta_rule_chunkwise_forward_cuda(Tensor& o, Tensor* final_state, const Tensor& q, const Tensor& k,
                                       const Tensor& v, const Tensor& beta, const Tensor* initial_state,
                                       const DeltaRuleArgs& args) {
    const char* op = "delta_rule_chunkwise_forward";
    const CudaShapes d = check_cuda_delta_rule(op, q, k, v, beta, initial_state, args);
    const auto [B, T, H, Dk, Dv, sequences] = d;
    check_cuda_operand(op, "o", o, DType::bf16, {B, T, H, Dv});
    LINARCH_CHECK(cuda::linear_attention_chunkwise_supports(Dk, Dv),
                  "{}: the CUDA kernel is built for Dk 64 or 128 and Dv a multiple of 64, got Dk={}, Dv={}", op, Dk, Dv);
    if (present(final_state)) check_cuda_operand(op, "final_state", *final_state, DType::f32, d.state_shape());
    if (!args.cu_seqlens.empty()) {
        const PaddedBatch batch(args.cu_seqlens);
        Tensor padded_o = batch.pad(o);
        delta_rule_chunkwise_forward_cuda(padded_o, final_state, batch.pad(q), batch.pad(k), batch.pad(v),
                                          batch.pad(beta), initial_state, padded_args(batch, args));
        return batch.unpad_into(o, padded_o);
    }
    Tensor w = Tensor::empty(q.shape(), DType::bf16, Device::cuda);
    Tensor u = Tensor::empty(v.shape(), DType::bf16, Device::cuda);
    cuda::delta_rule_chunkwise_forward({q.raw_data(), k.raw_data(), v.raw_data(), beta.data<float>(),
                                        data_or_null<float>(&args.log_gate), data_or_null<float>(initial_state),
                                        o.raw_data(), data_or_null<float>(final_state), w.raw_data(), u.raw_data(),
                                        B, T, H, Dk, Dv, args.scale});
}

// The chunkwise backward on bf16 CUDA tensors: dout, dq, dk, dv bf16; dbeta, dlog_gate, dinitial_state,
// dfinal_state fp32; gradients are added into, as on the CPU.
void delta_rule_chunkwise_backward_cuda(Tensor& dq, Tensor& dk, Tensor& dv, Tensor& dbeta, Tensor* dlog_gate,
                                        Tensor* dinitial_state, const Tensor& dout, const Tensor* dfinal_state,
                                        const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta,
                                        const Tensor* initial_state, const DeltaRuleArgs& args) {
    const char* op = "delta_rule_chunkwise_backward";
    const CudaShapes d = check_cuda_delta_rule(op, q, k, v, beta, initial_state, args);
    const auto [B, T, H, Dk, Dv, sequences] = d;
    LINARCH_CHECK(cuda::delta_rule_chunkwise_backward_supports(Dk, Dv),
                  "{}: the CUDA kernel is built for Dk and Dv of 64 or 128, got Dk={}, Dv={}", op, Dk, Dv);
    check_cuda_operand(op, "dout", dout, DType::bf16, {B, T, H, Dv});
    check_cuda_operand(op, "dq", dq, DType::bf16, q.shape());
    check_cuda_operand(op, "dk", dk, DType::bf16, q.shape());
    check_cuda_operand(op, "dv", dv, DType::bf16, {B, T, H, Dv});
    check_cuda_operand(op, "dbeta", dbeta, DType::f32, {B, T, H});
    if (present(dlog_gate)) {
        LINARCH_CHECK(args.log_gate.defined(), "{}: dlog_gate: given, but there is no log_gate (pass null)", op);
        check_cuda_operand(op, "dlog_gate", *dlog_gate, DType::f32, {B, T, H});
    }
    if (present(dfinal_state)) check_cuda_operand(op, "dfinal_state", *dfinal_state, DType::f32, d.state_shape());
    if (present(dinitial_state))
        check_cuda_operand(op, "dinitial_state", *dinitial_state, DType::f32, d.state_shape());
    if (!args.cu_seqlens.empty()) {
        const PaddedBatch batch(args.cu_seqlens);
        Tensor padded_dq = batch.pad(dq), padded_dk = batch.pad(dk), padded_dv = batch.pad(dv);
        Tensor padded_dbeta = batch.pad(dbeta);
        Tensor padded_dlog_gate = present(dlog_gate) ? batch.pad(*dlog_gate) : Tensor();
        delta_rule_chunkwise_backward_cuda(padded_dq, padded_dk, padded_dv, padded_dbeta,
                                           present(dlog_gate) ? &padded_dlog_gate : nullptr, dinitial_state,
                                           batch.pad(dout), dfinal_state, batch.pad(q), batch.pad(k), batch.pad(v),
                                           batch.pad(beta), initial_state, padded_args(batch, args));
        batch.unpad_into(dq, padded_dq);
        batch.unpad_into(dk, padded_dk);
        batch.unpad_into(dv, padded_dv);
        batch.unpad_into(dbeta, padded_dbeta);
        if (present(dlog_gate)) batch.unpad_into(*dlog_gate, padded_dlog_gate);
        return;
    }
    const size_t scratch_bytes = cuda::delta_rule_chunkwise_backward_scratch_bytes(B, T, H, Dk, Dv);
    Tensor scratch = Tensor::empty({int64_t((scratch_bytes + 3) / 4)}, DType::f32, Device::cuda);
    cuda::delta_rule_chunkwise_backward({q.raw_data(), k.raw_data(), v.raw_data(), dout.raw_data(), beta.data<float>(),
                                         data_or_null<float>(&args.log_gate), data_or_null<float>(initial_state),
                                         data_or_null<float>(dfinal_state), dq.raw_data(), dk.raw_data(), dv.raw_data(),
                                         dbeta.data<float>(), data_or_null<float>(dlog_gate),
                                         data_or_null<float>(dinitial_state), scratch.raw_data(), B, T, H, Dk, Dv,
                                         args.scale});
}

// Mixed precision on f32 CUDA tensors: whether the bf16 kernels take this problem (in both directions:
// the forward and its backward must agree on the path).
bool bf16_kernels_take(const Tensor& q, const Tensor& v) {
    return compute_precision() == Precision::bf16 && q.dim() == 4 && v.dim() == 4 &&
           cuda::linear_attention_chunkwise_supports(q.size(3), v.size(3)) &&
           cuda::delta_rule_chunkwise_backward_supports(q.size(3), v.size(3));
}

void delta_rule_mixed_forward(Tensor& o, Tensor* final_state, const Tensor& q, const Tensor& k, const Tensor& v,
                              const Tensor& beta, const Tensor* initial_state, const DeltaRuleArgs& args) {
    const char* op = "delta_rule_chunkwise_forward";
    check_cuda_operand(op, "o", o, DType::f32, {q.size(0), q.size(1), q.size(2), v.size(3)});
    Tensor o16 = Tensor::empty(o.shape(), DType::bf16, Device::cuda);
    delta_rule_chunkwise_forward_cuda(o16, final_state, bf16_copy(op, "q", q), bf16_copy(op, "k", k),
                                      bf16_copy(op, "v", v), beta, initial_state, args);
    add_bf16(o, o16, true);
}

void delta_rule_mixed_backward(Tensor& dq, Tensor& dk, Tensor& dv, Tensor& dbeta, Tensor* dlog_gate,
                               Tensor* dinitial_state, const Tensor& dout, const Tensor* dfinal_state, const Tensor& q,
                               const Tensor& k, const Tensor& v, const Tensor& beta, const Tensor* initial_state,
                               const DeltaRuleArgs& args) {
    const char* op = "delta_rule_chunkwise_backward";
    check_cuda_operand(op, "dq", dq, DType::f32, q.shape());
    check_cuda_operand(op, "dk", dk, DType::f32, q.shape());
    check_cuda_operand(op, "dv", dv, DType::f32, v.shape());
    Tensor dq16 = Tensor::zeros(q.shape(), DType::bf16, Device::cuda);
    Tensor dk16 = Tensor::zeros(q.shape(), DType::bf16, Device::cuda);
    Tensor dv16 = Tensor::zeros(v.shape(), DType::bf16, Device::cuda);
    delta_rule_chunkwise_backward_cuda(dq16, dk16, dv16, dbeta, dlog_gate, dinitial_state, bf16_copy(op, "dout", dout),
                                       dfinal_state, bf16_copy(op, "q", q), bf16_copy(op, "k", k),
                                       bf16_copy(op, "v", v), beta, initial_state, args);
    add_bf16(dq, dq16, false);
    add_bf16(dk, dk16, false);
    add_bf16(dv, dv16, false);
}
#endif

// Sizes the inputs agree on, and N, the number of sequences (the states' leading dim).
struct Checked {
    cpu::DeltaRuleDims dims;
    int64_t sequences;
};

// Checks q, k, v, beta, initial_state, the gate and cu_seqlens.
Checked check_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta,
                     const Tensor* initial_state, const DeltaRuleArgs& args) {
    const QkvShape shape = check_qkv(op, q, k, v);
    const DType dtype = shape.dtype;
    const int64_t B = shape.batch, T = shape.seq_len, H = shape.heads, Dk = shape.key_dim, Dv = shape.value_dim;
    check_operand(op, "beta", beta, dtype, {B, T, H});
    // β ∈ [0,1] keeps each Householder factor contractive (mixers.md §13); `!(0 <= x && x <= 1)`
    // also rejects NaN.
    const std::vector<double> betas = beta.to_vector();
    for (size_t i = 0; i < betas.size(); ++i)
        LINARCH_CHECK(betas[i] >= 0 && betas[i] <= 1, "{}: beta: expected every value in [0, 1], got {} at index {}",
                      op, betas[i], i);
    if (args.log_gate.defined()) {
        check_operand(op, "log_gate", args.log_gate, dtype, {B, T, H});
        const std::vector<double> gates = args.log_gate.to_vector();
        for (size_t i = 0; i < gates.size(); ++i)
            LINARCH_CHECK(gates[i] <= 0, "{}: log_gate: expected every value ≤ 0, got {} at index {}", op, gates[i],
                          i);
    }
    int64_t N = B;
    if (!args.cu_seqlens.empty()) {
        const std::vector<int64_t>& cu = args.cu_seqlens;
        LINARCH_CHECK(B == 1, "{}: cu_seqlens: packed sequences need batch size 1, got q of shape {}", op,
                      shape_string(q.shape()));
        LINARCH_CHECK(cu.size() >= 2 && cu.front() == 0 && cu.back() == T,
                      "{}: cu_seqlens: expected offsets from 0 to T = {} (at least two), got {} offsets from {} to {}",
                      op, T, cu.size(), cu.front(), cu.back());
        for (size_t n = 0; n + 1 < cu.size(); ++n)
            LINARCH_CHECK(cu[n] < cu[n + 1], "{}: cu_seqlens: expected strictly increasing offsets, got {} then {}",
                          op, cu[n], cu[n + 1]);
        N = int64_t(cu.size()) - 1;
    }
    if (present(initial_state)) check_operand(op, "initial_state", *initial_state, dtype, {N, H, Dk, Dv});
    return {{B, T, H, Dk, Dv}, N};
}

void check_state(const char* op, const char* name, const Tensor* state, DType dtype, const Checked& c) {
    if (present(state))
        check_operand(op, name, *state, dtype, {c.sequences, c.dims.heads, c.dims.key_dim, c.dims.value_dim});
}

void check_chunk_size(const char* op, const DeltaRuleArgs& args) {
    LINARCH_CHECK(args.chunk_size >= 1, "{}: chunk_size: expected ≥ 1, got {}", op, args.chunk_size);
}

Shape token_shape(const cpu::DeltaRuleDims& d, int64_t dim) { return {d.batch, d.seq_len, d.heads, dim}; }

// The three forward forms share their checks and signature.
template <typename Kernel>
void forward(const char* op, Tensor& o, Tensor* final_state, const Tensor& q, const Tensor& k, const Tensor& v,
             const Tensor& beta, const Tensor* initial_state, const DeltaRuleArgs& args, Kernel&& kernel) {
#if LINARCH_HAS_CUDA
    if (q.defined() && q.device() == Device::cuda)
        return cuda_scan_forward(op, o, final_state, scan_inputs(q, k, v, beta, initial_state, args));
#endif
    const Checked c = check_inputs(op, q, k, v, beta, initial_state, args);
    check_operand(op, "o", o, q.dtype(), token_shape(c.dims, c.dims.value_dim));
    check_state(op, "final_state", final_state, q.dtype(), c);
    dispatch(q.dtype(), [&](auto tag) {
        using T = decltype(tag);
        kernel(o.data<T>(), data_or_null<T>(final_state), q.data<T>(), k.data<T>(), v.data<T>(), beta.data<T>(),
               data_or_null<T>(&args.log_gate), data_or_null<T>(initial_state), c.dims);
    });
}

}  // namespace

void delta_rule_recurrent_forward(Tensor& o, Tensor* final_state, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const Tensor& beta, const Tensor* initial_state,
                                  const DeltaRuleArgs& args) {
    forward("delta_rule_recurrent_forward", o, final_state, q, k, v, beta, initial_state, args,
            [&](auto* out, auto* fin, auto* q_, auto* k_, auto* v_, auto* beta_, auto* gate, auto* s0, auto& d) {
                cpu::delta_rule_recurrent_forward(out, fin, q_, k_, v_, beta_, gate, s0, args.scale, d,
                                                  std::span(args.cu_seqlens));
            });
}

void delta_rule_chunkwise_forward(Tensor& o, Tensor* final_state, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const Tensor& beta, const Tensor* initial_state,
                                  const DeltaRuleArgs& args) {
    const char* op = "delta_rule_chunkwise_forward";
    check_chunk_size(op, args);
#if LINARCH_HAS_CUDA
    if (q.defined() && q.device() == Device::cuda && q.dtype() == DType::bf16)
        return delta_rule_chunkwise_forward_cuda(o, final_state, q, k, v, beta, initial_state, args);
    if (q.defined() && q.device() == Device::cuda && q.dtype() == DType::f32 && bf16_kernels_take(q, v))
        return delta_rule_mixed_forward(o, final_state, q, k, v, beta, initial_state, args);
#endif
    forward(op, o, final_state, q, k, v, beta, initial_state, args,
            [&](auto* out, auto* fin, auto* q_, auto* k_, auto* v_, auto* beta_, auto* gate, auto* s0, auto& d) {
                cpu::delta_rule_chunkwise_forward(out, fin, q_, k_, v_, beta_, gate, s0, args.scale, args.chunk_size,
                                                  d, std::span(args.cu_seqlens));
            });
}

void delta_rule_parallel_forward(Tensor& o, Tensor* final_state, const Tensor& q, const Tensor& k,
                                 const Tensor& v, const Tensor& beta, const Tensor* initial_state,
                                 const DeltaRuleArgs& args) {
    forward("delta_rule_parallel_forward", o, final_state, q, k, v, beta, initial_state, args,
            [&](auto* out, auto* fin, auto* q_, auto* k_, auto* v_, auto* beta_, auto* gate, auto* s0, auto& d) {
                cpu::delta_rule_parallel_forward(out, fin, q_, k_, v_, beta_, gate, s0, args.scale, d,
                                                 std::span(args.cu_seqlens));
            });
}

void delta_rule_chunkwise_backward(Tensor& dq, Tensor& dk, Tensor& dv, Tensor& dbeta, Tensor* dlog_gate,
                                   Tensor* dinitial_state, const Tensor& dout, const Tensor* dfinal_state,
                                   const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta,
                                   const Tensor* initial_state, const DeltaRuleArgs& args) {
    const char* op = "delta_rule_chunkwise_backward";
    check_chunk_size(op, args);
#if LINARCH_HAS_CUDA
    if (q.defined() && q.device() == Device::cuda && q.dtype() == DType::bf16)
        return delta_rule_chunkwise_backward_cuda(dq, dk, dv, dbeta, dlog_gate, dinitial_state, dout, dfinal_state, q,
                                                  k, v, beta, initial_state, args);
    if (q.defined() && q.device() == Device::cuda && q.dtype() == DType::f32 && bf16_kernels_take(q, v))
        return delta_rule_mixed_backward(dq, dk, dv, dbeta, dlog_gate, dinitial_state, dout, dfinal_state, q, k, v,
                                         beta, initial_state, args);
    if (q.defined() && q.device() == Device::cuda)
        return cuda_scan_backward(op, {dq, dk, dv, &dbeta, dlog_gate, dinitial_state, dout, dfinal_state},
                                  scan_inputs(q, k, v, beta, initial_state, args));
#endif
    const Checked c = check_inputs(op, q, k, v, beta, initial_state, args);
    const cpu::DeltaRuleDims& d = c.dims;
    const DType dtype = q.dtype();
    check_operand(op, "dout", dout, dtype, token_shape(d, d.value_dim));
    check_state(op, "dfinal_state", dfinal_state, dtype, c);
    check_operand(op, "dq", dq, dtype, token_shape(d, d.key_dim));
    check_operand(op, "dk", dk, dtype, token_shape(d, d.key_dim));
    check_operand(op, "dv", dv, dtype, token_shape(d, d.value_dim));
    check_operand(op, "dbeta", dbeta, dtype, beta.shape());
    if (present(dlog_gate)) {
        LINARCH_CHECK(args.log_gate.defined(), "{}: dlog_gate: given, but there is no log_gate (pass null)", op);
        check_operand(op, "dlog_gate", *dlog_gate, dtype, beta.shape());
    }
    check_state(op, "dinitial_state", dinitial_state, dtype, c);
    dispatch(dtype, [&](auto tag) {
        using T = decltype(tag);
        cpu::delta_rule_chunkwise_backward<T>(
            dq.data<T>(), dk.data<T>(), dv.data<T>(), dbeta.data<T>(), data_or_null<T>(dlog_gate),
            data_or_null<T>(dinitial_state), dout.data<T>(), data_or_null<T>(dfinal_state), q.data<T>(),
            k.data<T>(), v.data<T>(), beta.data<T>(), data_or_null<T>(&args.log_gate),
            data_or_null<T>(initial_state), args.scale, args.chunk_size, d, std::span(args.cu_seqlens));
    });
}

}  // namespace linarch::ops
