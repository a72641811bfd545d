// Linear attention and short conv ops: check every tensor (device, dtype, contiguity, shape) and the
// decay and sequence arguments, then dispatch to the backend: the CPU one; for f32 CUDA tensors the
// exact fp32 recurrent scan, every form and decay (ops/cuda_recurrent_scan.hpp); for bf16 CUDA tensors
// the tensor-core chunkwise forward and backward without decay, with a scalar gate or with a gate per key
// dimension (GLA) (backend/cuda/linear_attention_chunkwise.hpp), which f32 tensors take too under mixed
// precision (ops/precision.hpp) through bf16 copies.
#include "ops/linear_attention.hpp"

#include <string>
#include <vector>

#include "backend/cpu/linear_attention.hpp"
#include "backend/cpu/short_conv.hpp"
#include "ops/operand_checks.hpp"
#include "ops/precision.hpp"
#if LINARCH_HAS_CUDA
#include "backend/cuda/dense.hpp"
#include "backend/cuda/linear_attention_chunkwise.hpp"
#include "backend/cuda/mixer_elementwise.hpp"
#include "ops/cuda_operands.hpp"
#include "ops/cuda_recurrent_scan.hpp"
#endif

namespace linarch::ops {
namespace {

// The short conv kernel is a handful of taps (mixers.md §12: typically 4).
constexpr int64_t kMaxConvKernel = 8;

// The first tensor fixes the op's dtype, which must be a compute type.
void check_compute_dtype(const char* op, const char* name, const Tensor& t) {
    LINARCH_CHECK(t.defined(), "{}: {}: tensor is not defined", op, name);
    LINARCH_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::f64, "{}: {}: expected dtype F32 or F64, got {}",
                  op, name, dtype_name(t.dtype()));
}

// What the checks establish: the sizes and the kind of decay.
struct Checked {
    cpu::LinearAttentionDims dims;
    cpu::GateKind gate;
};

// Every value of a log decay must be ≤ 0 (α = exp(g) ≤ 1 keeps the state bounded); `!(x <= 0)` also
// rejects NaN. Reads the typed data directly: the gate is as large as k, and this runs every step.
template <typename T> void check_non_positive(const char* op, const char* name, const Tensor& t) {
    // A plain scan first (it vectorises; the gate has B·T·H·d_k entries), the message only on failure.
    const T* values = t.data<T>();
    const int64_t n = t.numel();
    bool all_non_positive = true;
    for (int64_t i = 0; i < n; ++i) all_non_positive &= values[i] <= T(0);
    if (all_non_positive) return;
    for (int64_t i = 0; i < n; ++i)
        LINARCH_CHECK(values[i] <= T(0), "{}: {}: expected every value ≤ 0, got {} at index {}", op, name,
                      double(values[i]), i);
}

// Checks q, k, v, initial_state, the decay and cu_seqlens; returns the sizes they agree on.
Checked check_linear_attention_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                                      const Tensor* initial_state, const LinearAttentionArgs& args) {
    check_compute_dtype(op, "q", q);
    const DType dtype = q.dtype();
    check_operand(op, "q", q, dtype);
    LINARCH_CHECK(q.dim() == 4 && q.numel() > 0, "{}: q: expected a non-empty [B, T, H, Dk] tensor, got shape {}",
                  op, shape_string(q.shape()));
    const int64_t B = q.size(0), T = q.size(1), H = q.size(2), Dk = q.size(3);
    check_operand(op, "k", k, dtype, q.shape());
    check_operand(op, "v", v, dtype);
    LINARCH_CHECK(v.dim() == 4 && v.size(0) == B && v.size(1) == T && v.size(2) == H && v.size(3) > 0,
                  "{}: v: expected shape [{}, {}, {}, Dv], got {}", op, B, T, H, shape_string(v.shape()));
    const int64_t Dv = v.size(3);
    const int64_t N = check_cu_seqlens(op, args.cu_seqlens, B, T);
    if (present(initial_state)) check_operand(op, "initial_state", *initial_state, dtype, {N, H, Dk, Dv});
    cpu::GateKind gate = cpu::GateKind::none;
    if (args.log_decay.defined()) {
        LINARCH_CHECK(!args.log_gate.defined(),
                      "{}: log_gate: expected at most one of log_decay and log_gate, got both", op);
        check_operand(op, "log_decay", args.log_decay, dtype, {H});
        const std::vector<double> values = args.log_decay.to_vector();
        for (int64_t h = 0; h < H; ++h)
            LINARCH_CHECK(values[size_t(h)] <= 0, "{}: log_decay: expected every value ≤ 0, got {} at head {}", op,
                          values[size_t(h)], h);
        gate = cpu::GateKind::fixed;
    } else if (args.log_gate.defined()) {
        const Tensor& g = args.log_gate;
        check_operand(op, "log_gate", g, dtype);
        const Shape scalar_shape{B, T, H}, vector_shape{B, T, H, Dk};
        LINARCH_CHECK(g.shape() == scalar_shape || g.shape() == vector_shape,
                      "{}: log_gate: expected shape {} or {}, got {}", op, shape_string(scalar_shape),
                      shape_string(vector_shape), shape_string(g.shape()));
        dispatch(dtype, [&](auto tag) { check_non_positive<decltype(tag)>(op, "log_gate", g); });
        gate = g.dim() == 3 ? cpu::GateKind::scalar : cpu::GateKind::vector;
    }
    const int64_t* cu = args.cu_seqlens.empty() ? nullptr : args.cu_seqlens.data();
    return {{B, T, H, Dk, Dv, cu, N}, gate};
}

void check_output_state(const char* op, const char* name, const Tensor* state, DType dtype,
                        const cpu::LinearAttentionDims& d) {
    if (present(state)) check_operand(op, name, *state, dtype, {d.num_seqs, d.heads, d.key_dim, d.value_dim});
}

Shape token_shape(const cpu::LinearAttentionDims& d, int64_t dim) { return {d.batch, d.seq_len, d.heads, dim}; }

template <typename T> cpu::LogGate<T> log_gate_of(const LinearAttentionArgs& args, cpu::GateKind kind) {
    if (kind == cpu::GateKind::fixed) return {kind, args.log_decay.data<T>()};
    if (kind == cpu::GateKind::none) return {kind, nullptr};
    return {kind, args.log_gate.data<T>()};
}

// Checks a forward call and runs form(o, final_state, q, k, v, initial_state, gate, dims) in its dtype.
template <typename Form>
void run_forward(const char* op, Tensor& o, Tensor* final_state, const Tensor& q, const Tensor& k, const Tensor& v,
                 const Tensor* initial_state, const LinearAttentionArgs& args, Form&& form) {
    const auto [d, gate] = check_linear_attention_inputs(op, q, k, v, initial_state, args);
    check_operand(op, "o", o, q.dtype(), token_shape(d, d.value_dim));
    check_output_state(op, "final_state", final_state, q.dtype(), d);
    dispatch(q.dtype(), [&](auto tag) {
        using T = decltype(tag);
        form(o.data<T>(), data_or_null<T>(final_state), q.data<T>(), k.data<T>(), v.data<T>(),
             data_or_null<T>(initial_state), log_gate_of<T>(args, gate), d);
    });
}

#if LINARCH_HAS_CUDA
CudaScanInputs scan_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* initial_state,
                           const LinearAttentionArgs& args) {
    return {q, k, v, nullptr, args.log_gate, args.log_decay, initial_state, args.cu_seqlens, args.scale};
}

// The shapes the CUDA forward and backward agree on, from q [B,T,H,Dk] and v [B,T,H,Dv].
struct CudaShapes {
    int64_t B = 0, T = 0, H = 0, Dk = 0, Dv = 0;
    int64_t sequences = 0;            // B, or the packed sequences of cu_seqlens
    const float* log_gate = nullptr;  // [B,T,H], [B,T,H,Dk] (vector_gate) or null
    bool vector_gate = false;
    Tensor fixed_decay_gate;          // a fixed decay as the scalar gate it equals, [B,T,H]
    Shape state_shape() const { return {sequences, H, Dk, Dv}; }
};

// The checks both CUDA directions share: q, k, v bf16 on the GPU; cu_seqlens; an fp32 gate, scalar or per
// key dimension, or an fp32 fixed decay per head, which the kernels take as the scalar gate it equals; an
// fp32 initial state.
CudaShapes check_cuda_linear_attention(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                                       const Tensor* initial_state, const LinearAttentionArgs& args) {
    LINARCH_CHECK(q.dtype() == DType::bf16, "{}: q: the CUDA kernels take bf16 q, k, v and their gradients, got {}",
                  op, dtype_name(q.dtype()));
    LINARCH_CHECK(q.dim() == 4 && q.numel() > 0, "{}: q: expected a non-empty [B, T, H, Dk] tensor, got shape {}",
                  op, shape_string(q.shape()));
    check_cuda_operand(op, "q", q, DType::bf16, q.shape());
    CudaShapes d;
    d.B = q.size(0), d.T = q.size(1), d.H = q.size(2), d.Dk = q.size(3);
    check_cuda_operand(op, "k", k, DType::bf16, q.shape());
    LINARCH_CHECK(v.defined() && v.dim() == 4 && v.size(3) > 0, "{}: v: expected shape [{}, {}, {}, Dv], got {}", op,
                  d.B, d.T, d.H, v.defined() ? shape_string(v.shape()) : "undefined");
    d.Dv = v.size(3);
    check_cuda_operand(op, "v", v, DType::bf16, {d.B, d.T, d.H, d.Dv});
    LINARCH_CHECK(args.chunk_size >= 1, "{}: chunk_size: expected ≥ 1, got {}", op, args.chunk_size);
    d.sequences = check_cu_seqlens(op, args.cu_seqlens, d.B, d.T);
    if (args.log_decay.defined()) {
        LINARCH_CHECK(!args.log_gate.defined(),
                      "{}: log_gate: expected at most one of log_decay and log_gate, got both", op);
        check_cuda_operand(op, "log_decay", args.log_decay, DType::f32, {d.H});
        // (Its values are not checked to be ≤ 0 here, as the gates' are not: that would copy them to the host.)
        d.fixed_decay_gate = Tensor::zeros({d.B, d.T, d.H}, DType::f32, Device::cuda);
        cuda::add_bias_forward(d.fixed_decay_gate.data<float>(), d.fixed_decay_gate.data<float>(),
                               args.log_decay.data<float>(), d.B * d.T, d.H);
        d.log_gate = d.fixed_decay_gate.data<float>();
    }
    if (args.log_gate.defined()) {
        const Tensor& g = args.log_gate;
        d.vector_gate = g.dim() == 4;
        check_cuda_operand(op, "log_gate", g, DType::f32,
                           d.vector_gate ? Shape{d.B, d.T, d.H, d.Dk} : Shape{d.B, d.T, d.H});
        d.log_gate = g.data<float>();
        if (d.vector_gate)
            LINARCH_CHECK(cuda::gla_chunkwise_supports(d.Dk, d.Dv),
                          "{}: the CUDA kernels for a gate per key dimension are built for Dk and Dv of 64 or 128, "
                          "got Dk={}, Dv={}", op, d.Dk, d.Dv);
    }
    if (present(initial_state)) check_cuda_operand(op, "initial_state", *initial_state, DType::f32, d.state_shape());
    return d;
}

// The arguments of packed sequences' padded batch: no cu_seqlens, and the gate (a fixed decay as the
// scalar gate it equals, so that the padding decays nothing) padded with zeros.
LinearAttentionArgs padded_args(const PaddedBatch& batch, const CudaShapes& d, const LinearAttentionArgs& args) {
    LinearAttentionArgs padded = args;
    padded.cu_seqlens.clear();
    padded.log_decay = Tensor();
    padded.log_gate = batch.pad(d.fixed_decay_gate.defined() ? d.fixed_decay_gate : args.log_gate);
    return padded;
}

// The chunkwise forward on CUDA tensors: q, k, v, o bf16; log_gate [B,T,H], initial and final state
// fp32 (the state is accumulated in fp32 and the gates are summed in fp32, so they stay fp32). The gate
// values are not checked to be ≤ 0 here: that would copy them to the host on every call. Any chunk_size
// gives the same function; the kernel uses chunks of 64.
void linear_attention_chunkwise_forward_cuda(Tensor& o, Tensor* final_state, const Tensor& q, const Tensor& k,
                                             const Tensor& v, const Tensor* initial_state,
                                             const LinearAttentionArgs& args) {
    const char* op = "linear_attention_chunkwise_forward";
    const CudaShapes d = check_cuda_linear_attention(op, q, k, v, initial_state, args);
    check_cuda_operand(op, "o", o, DType::bf16, {d.B, d.T, d.H, d.Dv});
    if (present(final_state)) check_cuda_operand(op, "final_state", *final_state, DType::f32, d.state_shape());
    if (!args.cu_seqlens.empty()) {
        const PaddedBatch batch(args.cu_seqlens);
        Tensor padded_o = batch.pad(o);
        linear_attention_chunkwise_forward_cuda(padded_o, final_state, batch.pad(q), batch.pad(k), batch.pad(v),
                                                initial_state, padded_args(batch, d, args));
        return batch.unpad_into(o, padded_o);
    }
    if (d.vector_gate) {
        Tensor scratch = Tensor::empty({int64_t(cuda::gla_chunkwise_forward_scratch_bytes(d.B, d.T, d.H, d.Dk) / 4)},
                                       DType::f32, Device::cuda);
        return cuda::gla_chunkwise_forward({q.raw_data(), k.raw_data(), v.raw_data(), d.log_gate,
                                            data_or_null<float>(initial_state), o.raw_data(),
                                            data_or_null<float>(final_state), scratch.raw_data(), d.B, d.T, d.H, d.Dk,
                                            d.Dv, args.scale});
    }
    LINARCH_CHECK(cuda::linear_attention_chunkwise_supports(d.Dk, d.Dv),
                  "{}: the CUDA kernel is built for Dk 64 or 128 and Dv a multiple of 64, got Dk={}, Dv={}", op, d.Dk,
                  d.Dv);
    cuda::linear_attention_chunkwise_forward({q.raw_data(), k.raw_data(), v.raw_data(), d.log_gate,
                                              data_or_null<float>(initial_state), o.raw_data(),
                                              data_or_null<float>(final_state), d.B, d.T, d.H, d.Dk, d.Dv,
                                              args.scale});
}

// The chunkwise backward on CUDA tensors: the forward's operands plus dout, dq, dk, dv (bf16) and the
// fp32 dfinal_state, dinitial_state, dlog_gate; gradients are added into, as on the CPU.
void linear_attention_chunkwise_backward_cuda(Tensor& dq, Tensor& dk, Tensor& dv, Tensor* dinitial_state,
                                              const Tensor& dout, const Tensor* dfinal_state, const Tensor& q,
                                              const Tensor& k, const Tensor& v, const Tensor* initial_state,
                                              const LinearAttentionArgs& args, Tensor* dlog_gate) {
    const char* op = "linear_attention_chunkwise_backward";
    const CudaShapes d = check_cuda_linear_attention(op, q, k, v, initial_state, args);
    const int64_t B = d.B, T = d.T, H = d.H, Dk = d.Dk, Dv = d.Dv;
    check_cuda_operand(op, "dout", dout, DType::bf16, {B, T, H, Dv});
    check_cuda_operand(op, "dq", dq, DType::bf16, q.shape());
    check_cuda_operand(op, "dk", dk, DType::bf16, q.shape());
    check_cuda_operand(op, "dv", dv, DType::bf16, {B, T, H, Dv});
    LINARCH_CHECK(args.scale != 0, "{}: scale: the CUDA backward needs a non-zero scale", op);
    LINARCH_CHECK(cuda::linear_attention_chunkwise_backward_supports(Dk, Dv),
                  "{}: the CUDA kernel is built for Dk and Dv of 64 or 128, got Dk={}, Dv={}", op, Dk, Dv);
    const float* log_gate = d.log_gate;
    if (present(dfinal_state)) check_cuda_operand(op, "dfinal_state", *dfinal_state, DType::f32, d.state_shape());
    if (present(dinitial_state))
        check_cuda_operand(op, "dinitial_state", *dinitial_state, DType::f32, d.state_shape());
    if (present(dlog_gate)) {
        LINARCH_CHECK(args.log_gate.defined(), "{}: dlog_gate: given, but args.log_gate is not defined", op);
        check_cuda_operand(op, "dlog_gate", *dlog_gate, DType::f32, args.log_gate.shape());
    }
    if (!args.cu_seqlens.empty()) {
        const PaddedBatch batch(args.cu_seqlens);
        Tensor padded_dq = batch.pad(dq), padded_dk = batch.pad(dk), padded_dv = batch.pad(dv);
        Tensor padded_dlog_gate = present(dlog_gate) ? batch.pad(*dlog_gate) : Tensor();
        linear_attention_chunkwise_backward_cuda(padded_dq, padded_dk, padded_dv, dinitial_state, batch.pad(dout),
                                                 dfinal_state, batch.pad(q), batch.pad(k), batch.pad(v), initial_state,
                                                 padded_args(batch, d, args),
                                                 present(dlog_gate) ? &padded_dlog_gate : nullptr);
        batch.unpad_into(dq, padded_dq);
        batch.unpad_into(dk, padded_dk);
        batch.unpad_into(dv, padded_dv);
        if (present(dlog_gate)) batch.unpad_into(*dlog_gate, padded_dlog_gate);
        return;
    }
    if (d.vector_gate) {
        Tensor scratch = Tensor::empty(
            {int64_t(cuda::gla_chunkwise_backward_scratch_bytes(B, T, H, Dk, Dv) / 4)}, DType::f32, Device::cuda);
        return cuda::gla_chunkwise_backward({q.raw_data(), k.raw_data(), v.raw_data(), dout.raw_data(), log_gate,
                                             data_or_null<float>(initial_state), data_or_null<float>(dfinal_state),
                                             dq.raw_data(), dk.raw_data(), dv.raw_data(),
                                             data_or_null<float>(dlog_gate), data_or_null<float>(dinitial_state),
                                             scratch.raw_data(), B, T, H, Dk, Dv, args.scale});
    }
    Tensor gate_scratch;
    if (present(dlog_gate)) {
        gate_scratch = Tensor::empty(
            {int64_t(cuda::linear_attention_chunkwise_backward_scratch_floats(B, T, H, Dk))}, DType::f32, Device::cuda);
    }
    cuda::linear_attention_chunkwise_backward(
        {q.raw_data(), k.raw_data(), v.raw_data(), dout.raw_data(), log_gate, data_or_null<float>(initial_state),
         data_or_null<float>(dfinal_state), dq.raw_data(), dk.raw_data(), dv.raw_data(),
         data_or_null<float>(dinitial_state), data_or_null<float>(dlog_gate),
         gate_scratch.defined() ? gate_scratch.data<float>() : nullptr, B, T, H, Dk, Dv, args.scale});
}

// Mixed precision (ops/precision.hpp) on f32 CUDA tensors: whether the bf16 chunkwise kernels take this
// problem in both directions (the forward and its backward must agree on the path), and the two calls
// through bf16 copies of q, k, v (and dout), with fp32 results.
bool bf16_kernels_take(const Tensor& q, const Tensor& v, const LinearAttentionArgs& args) {
    if (compute_precision() != Precision::bf16 || q.dim() != 4 || v.dim() != 4) return false;
    const int64_t Dk = q.size(3), Dv = v.size(3);
    if (args.scale == 0) return false;
    if (args.log_gate.defined() && args.log_gate.dim() == 4) return cuda::gla_chunkwise_supports(Dk, Dv);
    return cuda::linear_attention_chunkwise_supports(Dk, Dv) && cuda::linear_attention_chunkwise_backward_supports(Dk, Dv);
}

void linear_attention_mixed_forward(Tensor& o, Tensor* final_state, const Tensor& q, const Tensor& k,
                                    const Tensor& v, const Tensor* initial_state, const LinearAttentionArgs& args) {
    const char* op = "linear_attention_chunkwise_forward";
    check_cuda_operand(op, "o", o, DType::f32, {q.size(0), q.size(1), q.size(2), v.size(3)});
    Tensor o16 = Tensor::empty(o.shape(), DType::bf16, Device::cuda);
    linear_attention_chunkwise_forward_cuda(o16, final_state, bf16_copy(op, "q", q), bf16_copy(op, "k", k),
                                            bf16_copy(op, "v", v), initial_state, args);
    add_bf16(o, o16, true);
}

void linear_attention_mixed_backward(Tensor& dq, Tensor& dk, Tensor& dv, Tensor* dinitial_state,
                                     const Tensor& dout, const Tensor* dfinal_state, const Tensor& q, const Tensor& k, const Tensor& v,
                                     const Tensor* initial_state, const LinearAttentionArgs& args,
                                     Tensor* dlog_gate) {
    const char* op = "linear_attention_chunkwise_backward";
    check_cuda_operand(op, "dq", dq, DType::f32, q.shape());
    check_cuda_operand(op, "dk", dk, DType::f32, q.shape());
    check_cuda_operand(op, "dv", dv, DType::f32, v.shape());
    Tensor dq16 = Tensor::zeros(q.shape(), DType::bf16, Device::cuda);
    Tensor dk16 = Tensor::zeros(q.shape(), DType::bf16, Device::cuda);
    Tensor dv16 = Tensor::zeros(v.shape(), DType::bf16, Device::cuda);
    linear_attention_chunkwise_backward_cuda(dq16, dk16, dv16, dinitial_state, bf16_copy(op, "dout", dout),
                                             dfinal_state, bf16_copy(op, "q", q), bf16_copy(op, "k", k),
                                             bf16_copy(op, "v", v), initial_state, args, dlog_gate);
    add_bf16(dq, dq16, false);
    add_bf16(dk, dk16, false);
    add_bf16(dv, dv16, false);
}
#endif

}  // namespace

void linear_attention_recurrent_forward(Tensor& o, Tensor* final_state, const Tensor& q, const Tensor& k,
                                        const Tensor& v, const Tensor* initial_state,
                                        const LinearAttentionArgs& args) {
#if LINARCH_HAS_CUDA
    if (q.defined() && q.device() == Device::cuda)
        return cuda_scan_forward("linear_attention_recurrent_forward", o, final_state,
                                 scan_inputs(q, k, v, initial_state, args));
#endif
    run_forward("linear_attention_recurrent_forward", o, final_state, q, k, v, initial_state, args,
                [&](auto* out, auto* fs, const auto* q_, const auto* k_, const auto* v_, const auto* s0,
                    const auto& gate, const cpu::LinearAttentionDims& d) {
                    cpu::linear_attention_recurrent_forward(out, fs, q_, k_, v_, s0, gate, args.scale, d);
                });
}

void linear_attention_parallel_forward(Tensor& o, Tensor* final_state, const Tensor& q, const Tensor& k,
                                       const Tensor& v, const Tensor* initial_state, const LinearAttentionArgs& args) {
#if LINARCH_HAS_CUDA
    if (q.defined() && q.device() == Device::cuda)
        return cuda_scan_forward("linear_attention_parallel_forward", o, final_state,
                                 scan_inputs(q, k, v, initial_state, args));
#endif
    run_forward("linear_attention_parallel_forward", o, final_state, q, k, v, initial_state, args,
                [&](auto* out, auto* fs, const auto* q_, const auto* k_, const auto* v_, const auto* s0,
                    const auto& gate, const cpu::LinearAttentionDims& d) {
                    cpu::linear_attention_parallel_forward(out, fs, q_, k_, v_, s0, gate, args.scale, d);
                });
}

void linear_attention_chunkwise_forward(Tensor& o, Tensor* final_state, const Tensor& q, const Tensor& k,
                                        const Tensor& v, const Tensor* initial_state,
                                        const LinearAttentionArgs& args) {
    const char* op = "linear_attention_chunkwise_forward";
#if LINARCH_HAS_CUDA
    if (q.defined() && q.device() == Device::cuda && q.dtype() == DType::f32 && bf16_kernels_take(q, v, args))
        return linear_attention_mixed_forward(o, final_state, q, k, v, initial_state, args);
    if (q.defined() && q.device() == Device::cuda && q.dtype() == DType::f32)
        return cuda_scan_forward(op, o, final_state, scan_inputs(q, k, v, initial_state, args));
    if (q.defined() && q.device() == Device::cuda)
        return linear_attention_chunkwise_forward_cuda(o, final_state, q, k, v, initial_state, args);
#endif
    LINARCH_CHECK(args.chunk_size >= 1, "{}: chunk_size: expected ≥ 1, got {}", op, args.chunk_size);
    run_forward(op, o, final_state, q, k, v, initial_state, args,
                [&](auto* out, auto* fs, const auto* q_, const auto* k_, const auto* v_, const auto* s0,
                    const auto& gate, const cpu::LinearAttentionDims& d) {
                    cpu::linear_attention_chunkwise_forward(out, fs, q_, k_, v_, s0, gate, args.scale,
                                                            args.chunk_size, d);
                });
}

void linear_attention_chunkwise_backward(Tensor& dq, Tensor& dk, Tensor& dv, Tensor* dinitial_state,
                                         const Tensor& dout, const Tensor* dfinal_state, const Tensor& q,
                                         const Tensor& k, const Tensor& v, const Tensor* initial_state,
                                         const LinearAttentionArgs& args, Tensor* dlog_gate) {
    const char* op = "linear_attention_chunkwise_backward";
#if LINARCH_HAS_CUDA
    if (q.defined() && q.device() == Device::cuda && q.dtype() == DType::f32 && bf16_kernels_take(q, v, args))
        return linear_attention_mixed_backward(dq, dk, dv, dinitial_state, dout, dfinal_state, q, k, v, initial_state,
                                               args, dlog_gate);
    if (q.defined() && q.device() == Device::cuda && q.dtype() == DType::f32)
        return cuda_scan_backward(op, {dq, dk, dv, nullptr, dlog_gate, dinitial_state, dout, dfinal_state},
                                  scan_inputs(q, k, v, initial_state, args));
    if (q.defined() && q.device() == Device::cuda)
        return linear_attention_chunkwise_backward_cuda(dq, dk, dv, dinitial_state, dout, dfinal_state, q, k, v,
                                                        initial_state, args, dlog_gate);
#endif
    const auto [d, gate] = check_linear_attention_inputs(op, q, k, v, initial_state, args);
    LINARCH_CHECK(args.chunk_size >= 1, "{}: chunk_size: expected ≥ 1, got {}", op, args.chunk_size);
    const DType dtype = q.dtype();
    check_operand(op, "dout", dout, dtype, token_shape(d, d.value_dim));
    check_output_state(op, "dfinal_state", dfinal_state, dtype, d);
    check_operand(op, "dq", dq, dtype, token_shape(d, d.key_dim));
    check_operand(op, "dk", dk, dtype, token_shape(d, d.key_dim));
    check_operand(op, "dv", dv, dtype, token_shape(d, d.value_dim));
    check_output_state(op, "dinitial_state", dinitial_state, dtype, d);
    if (present(dlog_gate)) {
        LINARCH_CHECK(args.log_gate.defined(), "{}: dlog_gate: given, but args.log_gate is not defined", op);
        check_operand(op, "dlog_gate", *dlog_gate, dtype, args.log_gate.shape());
    }
    dispatch(dtype, [&](auto tag) {
        using T = decltype(tag);
        cpu::linear_attention_chunkwise_backward<T>(
            dq.data<T>(), dk.data<T>(), dv.data<T>(), data_or_null<T>(dinitial_state), data_or_null<T>(dlog_gate),
            dout.data<T>(), data_or_null<T>(dfinal_state), q.data<T>(), k.data<T>(), v.data<T>(),
            data_or_null<T>(initial_state), log_gate_of<T>(args, gate), args.scale, args.chunk_size, d);
    });
}

namespace {

// On the CPU f32 or f64; CUDA tensors are f32 (all of them on the device of x).
cpu::ShortConvDims check_short_conv_inputs(const char* op, const Tensor& x, const Tensor& weight) {
    check_compute_dtype(op, "x", x);
#if LINARCH_HAS_CUDA
    if (x.device() == Device::cuda) {
        LINARCH_CHECK(x.dim() == 3 && x.numel() > 0, "{}: x: expected a non-empty [B, T, C] tensor, got shape {}", op,
                      shape_string(x.shape()));
        LINARCH_CHECK(weight.defined() && weight.dim() == 2 && weight.size(1) >= 1 && weight.size(1) <= kMaxConvKernel,
                      "{}: weight: expected shape [{}, K] with 1 ≤ K ≤ {}", op, x.size(2), kMaxConvKernel);
        check_cuda_operand(op, "x", x, DType::f32, x.shape());
        check_cuda_operand(op, "weight", weight, DType::f32, {x.size(2), weight.size(1)});
        return {x.size(0), x.size(1), x.size(2), weight.size(1)};
    }
#endif
    check_operand(op, "x", x, x.dtype());
    LINARCH_CHECK(x.dim() == 3 && x.numel() > 0, "{}: x: expected a non-empty [B, T, C] tensor, got shape {}", op,
                  shape_string(x.shape()));
    const int64_t C = x.size(2);
    check_operand(op, "weight", weight, x.dtype());
    LINARCH_CHECK(weight.dim() == 2 && weight.size(0) == C && weight.size(1) >= 1 &&
                      weight.size(1) <= kMaxConvKernel,
                  "{}: weight: expected shape [{}, K] with 1 ≤ K ≤ {}, got {}", op, C, kMaxConvKernel,
                  shape_string(weight.shape()));
    return {x.size(0), x.size(1), C, weight.size(1)};
}

}  // namespace

void short_conv_forward(Tensor& out, const Tensor& x, const Tensor& weight, bool silu) {
    const char* op = "short_conv_forward";
    const auto d = check_short_conv_inputs(op, x, weight);
#if LINARCH_HAS_CUDA
    if (x.device() == Device::cuda) {
        check_cuda_operand(op, "out", out, DType::f32, x.shape());
        return cuda::short_conv_forward(out.data<float>(), x.data<float>(), weight.data<float>(), silu, d.batch,
                                        d.seq_len, d.channels, d.kernel_size);
    }
#endif
    check_operand(op, "out", out, x.dtype(), x.shape());
    dispatch(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::short_conv_forward<T>(out.data<T>(), x.data<T>(), weight.data<T>(), silu, d);
    });
}

void short_conv_backward(Tensor& dx, Tensor& dweight, const Tensor& dout, const Tensor& x, const Tensor& weight,
                         bool silu) {
    const char* op = "short_conv_backward";
    const auto d = check_short_conv_inputs(op, x, weight);
#if LINARCH_HAS_CUDA
    if (x.device() == Device::cuda) {
        check_cuda_operand(op, "dout", dout, DType::f32, x.shape());
        check_cuda_operand(op, "dx", dx, DType::f32, x.shape());
        check_cuda_operand(op, "dweight", dweight, DType::f32, weight.shape());
        return cuda::short_conv_backward(dx.data<float>(), dweight.data<float>(), dout.data<float>(), x.data<float>(),
                                         weight.data<float>(), silu, d.batch, d.seq_len, d.channels, d.kernel_size);
    }
#endif
    check_operand(op, "dout", dout, x.dtype(), x.shape());
    check_operand(op, "dx", dx, x.dtype(), x.shape());
    check_operand(op, "dweight", dweight, x.dtype(), weight.shape());
    dispatch(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::short_conv_backward<T>(dx.data<T>(), dweight.data<T>(), dout.data<T>(), x.data<T>(), weight.data<T>(),
                                    silu, d);
    });
}

}  // namespace linarch::ops
