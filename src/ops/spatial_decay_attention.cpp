// LASAD spatial-decay attention ops: check every tensor (device, dtype, contiguity, shape), the grid
// shape and the decay rates, then dispatch to the backend: the CPU one, or for f32 CUDA tensors the masked
// parallel form on the GPU for every form (exact, like each of the CPU's), one (batch, head) pair at a time:
// cuBLASLt GEMMs on head-major copies and backend/cuda/spatial_decay_attention.hpp's masks between them,
// O(T²) per pair. A decode step on the GPU runs on the host, where its O(W·H·Dk·Dv) state lives.
#include "ops/spatial_decay_attention.hpp"

#include <cmath>
#include <vector>

#include "backend/cpu/spatial_decay_attention.hpp"
#include "ops/dense.hpp"
#include "ops/operand_checks.hpp"
#if LINARCH_HAS_CUDA
#include "backend/cuda/device.hpp"
#include "backend/cuda/spatial_decay_attention.hpp"
#include "ops/cuda_operands.hpp"
#endif

namespace linarch::ops {
namespace {

// A decay rate γ = exp(log γ) must lie in (0, 1]: log γ finite and ≤ 0 (`!(x <= 0)` also rejects NaN).
void check_log_decay(const char* op, const char* name, const Tensor& log_decay, DType dtype, int64_t heads) {
    check_operand(op, name, log_decay, dtype, {heads});
    const std::vector<double> values = log_decay.to_vector();
    for (int64_t h = 0; h < heads; ++h) {
        const double x = values[size_t(h)];
        LINARCH_CHECK(x <= 0 && std::isfinite(x),
                      "{}: {}: expected every value finite and ≤ 0 (a decay rate in (0, 1]), got {} at head {}", op,
                      name, x, h);
    }
}

// Checks q, k, v, the grid shape and the decays; returns the sizes they agree on.
cpu::SpatialDecayDims check_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                                   const SpatialDecayAttentionArgs& args) {
    LINARCH_CHECK(q.defined(), "{}: q: tensor is not defined", op);
    LINARCH_CHECK(q.dtype() == DType::f32 || q.dtype() == DType::f64, "{}: q: expected dtype F32 or F64, got {}", op,
                  dtype_name(q.dtype()));
    const DType dtype = q.dtype();
    check_operand(op, "q", q, dtype);
    LINARCH_CHECK(q.dim() == 4 && q.numel() > 0, "{}: q: expected a non-empty [B, T, H, Dk] tensor, got shape {}",
                  op, shape_string(q.shape()));
    const int64_t B = q.size(0), T = q.size(1), H = q.size(2), Dk = q.size(3);
    check_operand(op, "k", k, dtype, q.shape());
    check_operand(op, "v", v, dtype);
    LINARCH_CHECK(v.dim() == 4 && v.size(0) == B && v.size(1) == T && v.size(2) == H && v.size(3) > 0,
                  "{}: v: expected shape [{}, {}, {}, Dv], got {}", op, B, T, H, shape_string(v.shape()));
    LINARCH_CHECK(args.grid_height >= 1 && args.grid_width >= 1,
                  "{}: grid_height, grid_width: expected both ≥ 1, got {} × {}", op, args.grid_height,
                  args.grid_width);
    LINARCH_CHECK(args.grid_height * args.grid_width == T,
                  "{}: grid_height, grid_width: the grid of {} × {} = {} cells must hold the sequence length T = {}",
                  op, args.grid_height, args.grid_width, args.grid_height * args.grid_width, T);
    check_log_decay(op, "log_decay_row", args.log_decay_row, dtype, H);
    check_log_decay(op, "log_decay_col", args.log_decay_col, dtype, H);
    LINARCH_CHECK(std::isfinite(args.scale), "{}: scale: expected a finite value, got {}", op, args.scale);
    return {B, T, H, Dk, v.size(3), args.grid_height, args.grid_width};
}

Shape token_shape(const cpu::SpatialDecayDims& d, int64_t dim) { return {d.batch, d.seq_len, d.heads, dim}; }

// Checks a forward call and runs form(o, q, k, v, log_decay_row, log_decay_col, scale, dims) in its dtype.
template <typename Form>
void run_forward(const char* op, Tensor& o, const Tensor& q, const Tensor& k, const Tensor& v,
                 const SpatialDecayAttentionArgs& args, Form&& form) {
    const cpu::SpatialDecayDims d = check_inputs(op, q, k, v, args);
    check_operand(op, "o", o, q.dtype(), token_shape(d, d.value_dim));
    dispatch(q.dtype(), [&](auto tag) {
        using T = decltype(tag);
        form(o.data<T>(), q.data<T>(), k.data<T>(), v.data<T>(), args.log_decay_row.data<T>(),
             args.log_decay_col.data<T>(), args.scale, d);
    });
}

// Checks a backward call and runs form(dq, dk, dv, dlog_decay_row, dlog_decay_col, dout, q, k, v,
// log_decay_row, log_decay_col, scale, dims) in its dtype.
template <typename Form>
void run_backward(const char* op, Tensor& dq, Tensor& dk, Tensor& dv, Tensor* dlog_decay_row, Tensor* dlog_decay_col,
                  const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                  const SpatialDecayAttentionArgs& args, Form&& form) {
    const cpu::SpatialDecayDims d = check_inputs(op, q, k, v, args);
    const DType dtype = q.dtype();
    check_operand(op, "dout", dout, dtype, token_shape(d, d.value_dim));
    check_operand(op, "dq", dq, dtype, token_shape(d, d.key_dim));
    check_operand(op, "dk", dk, dtype, token_shape(d, d.key_dim));
    check_operand(op, "dv", dv, dtype, token_shape(d, d.value_dim));
    if (present(dlog_decay_row)) check_operand(op, "dlog_decay_row", *dlog_decay_row, dtype, {d.heads});
    if (present(dlog_decay_col)) check_operand(op, "dlog_decay_col", *dlog_decay_col, dtype, {d.heads});
    dispatch(dtype, [&](auto tag) {
        using T = decltype(tag);
        form(dq.data<T>(), dk.data<T>(), dv.data<T>(), data_or_null<T>(dlog_decay_row),
             data_or_null<T>(dlog_decay_col), dout.data<T>(), q.data<T>(), k.data<T>(), v.data<T>(),
             args.log_decay_row.data<T>(), args.log_decay_col.data<T>(), args.scale, d);
    });
}

#if LINARCH_HAS_CUDA
// The CUDA path's checks: q, k, v and the decays f32 on the GPU (their values are not checked to be ≤ 0
// there: that would copy them to the host on every call; the layers make them so by construction).
cpu::SpatialDecayDims check_cuda_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                                        const SpatialDecayAttentionArgs& args) {
    LINARCH_CHECK(q.dim() == 4 && q.numel() > 0, "{}: q: expected a non-empty [B, T, H, Dk] tensor, got shape {}",
                  op, shape_string(q.shape()));
    const int64_t B = q.size(0), T = q.size(1), H = q.size(2), Dk = q.size(3);
    check_cuda_operand(op, "q", q, DType::f32, q.shape());
    check_cuda_operand(op, "k", k, DType::f32, q.shape());
    LINARCH_CHECK(v.defined() && v.dim() == 4 && v.size(3) > 0, "{}: v: expected shape [{}, {}, {}, Dv]", op, B, T, H);
    check_cuda_operand(op, "v", v, DType::f32, {B, T, H, v.size(3)});
    LINARCH_CHECK(args.grid_height >= 1 && args.grid_width >= 1 && args.grid_height * args.grid_width == T,
                  "{}: grid_height, grid_width: the grid of {} × {} cells must hold the sequence length T = {}", op,
                  args.grid_height, args.grid_width, T);
    check_cuda_operand(op, "log_decay_row", args.log_decay_row, DType::f32, {H});
    check_cuda_operand(op, "log_decay_col", args.log_decay_col, DType::f32, {H});
    LINARCH_CHECK(std::isfinite(args.scale), "{}: scale: expected a finite value, got {}", op, args.scale);
    return {B, T, H, Dk, v.size(3), args.grid_height, args.grid_width};
}

// [B,T,H,D] ↔ [B,H,T,D]: every (batch, head) pair's rows contiguous, as the GEMMs take them.
Tensor swap_tokens_and_heads(const Tensor& x) { return x.transpose(1, 2).contiguous(); }

// Pair p's [T, width] slice of a head-major [B,H,T,width] tensor.
float* slice(const Tensor& head_major, int64_t pair) {
    return static_cast<float*>(head_major.raw_data()) + pair * head_major.size(2) * head_major.size(3);
}

cuda::SpatialPair pair_of(const cpu::SpatialDecayDims& d, const SpatialDecayAttentionArgs& args, int64_t pair) {
    return {d.seq_len, d.grid_width, args.log_decay_row.data<float>(), args.log_decay_col.data<float>(),
            pair % d.heads, args.scale};
}

void cuda_forward(const char* op, Tensor& o, const Tensor& q, const Tensor& k, const Tensor& v,
                  const SpatialDecayAttentionArgs& args) {
    const cpu::SpatialDecayDims d = check_cuda_inputs(op, q, k, v, args);
    check_cuda_operand(op, "o", o, DType::f32, token_shape(d, d.value_dim));
    const int64_t T = d.seq_len, Dk = d.key_dim, Dv = d.value_dim;
    const Tensor Q = swap_tokens_and_heads(q), K = swap_tokens_and_heads(k), V = swap_tokens_and_heads(v);
    Tensor O = Tensor::empty({d.batch, d.heads, T, Dv}, DType::f32, Device::cuda);
    Tensor scores = Tensor::empty({T, T}, DType::f32, Device::cuda);
    for (int64_t pair = 0; pair < d.batch * d.heads; ++pair) {
        gemm_f32(slice(Q, pair), false, slice(K, pair), true, scores.data<float>(), T, T, Dk);  // q kᵀ
        cuda::spatial_decay_mask(scores.data<float>(), pair_of(d, args, pair));          // S
        gemm_f32(scores.data<float>(), false, slice(V, pair), false, slice(O, pair), T, Dv, T);  // S v
    }
    o.copy_from(O.transpose(1, 2));
}

void cuda_backward(const char* op, Tensor& dq, Tensor& dk, Tensor& dv, Tensor* dlog_decay_row,
                   Tensor* dlog_decay_col, const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                   const SpatialDecayAttentionArgs& args) {
    const cpu::SpatialDecayDims d = check_cuda_inputs(op, q, k, v, args);
    const int64_t B = d.batch, H = d.heads, T = d.seq_len, Dk = d.key_dim, Dv = d.value_dim;
    check_cuda_operand(op, "dout", dout, DType::f32, token_shape(d, Dv));
    check_cuda_operand(op, "dq", dq, DType::f32, token_shape(d, Dk));
    check_cuda_operand(op, "dk", dk, DType::f32, token_shape(d, Dk));
    check_cuda_operand(op, "dv", dv, DType::f32, token_shape(d, Dv));
    if (present(dlog_decay_row)) check_cuda_operand(op, "dlog_decay_row", *dlog_decay_row, DType::f32, {H});
    if (present(dlog_decay_col)) check_cuda_operand(op, "dlog_decay_col", *dlog_decay_col, DType::f32, {H});
    const Tensor Q = swap_tokens_and_heads(q), K = swap_tokens_and_heads(k), V = swap_tokens_and_heads(v);
    const Tensor dO = swap_tokens_and_heads(dout);
    Tensor dQ = Tensor::empty({B, H, T, Dk}, DType::f32, Device::cuda), dK = Tensor::empty(dQ.shape(), DType::f32, Device::cuda);
    Tensor dV = Tensor::empty({B, H, T, Dv}, DType::f32, Device::cuda);
    Tensor scores = Tensor::empty({T, T}, DType::f32, Device::cuda), dscores = Tensor::empty({T, T}, DType::f32, Device::cuda);
    Tensor partials = Tensor::empty({B * H * cuda::kSpatialReductionBlocks * 2}, DType::f64, Device::cuda);
    for (int64_t pair = 0; pair < B * H; ++pair) {
        gemm_f32(slice(Q, pair), false, slice(K, pair), true, scores.data<float>(), T, T, Dk);      // q kᵀ
        gemm_f32(slice(dO, pair), false, slice(V, pair), true, dscores.data<float>(), T, T, Dv);   // dO vᵀ
        cuda::spatial_decay_mask_backward(scores.data<float>(), dscores.data<float>(),
                                          partials.data<double>() + pair * cuda::kSpatialReductionBlocks * 2,
                                          pair_of(d, args, pair));                           // S, dS
        gemm_f32(dscores.data<float>(), false, slice(K, pair), false, slice(dQ, pair), T, Dk, T);  // dS k
        gemm_f32(dscores.data<float>(), true, slice(Q, pair), false, slice(dK, pair), T, Dk, T);   // dSᵀ q
        gemm_f32(scores.data<float>(), true, slice(dO, pair), false, slice(dV, pair), T, Dv, T);   // Sᵀ dO
    }
    add_into(dq, swap_tokens_and_heads(dQ));
    add_into(dk, swap_tokens_and_heads(dK));
    add_into(dv, swap_tokens_and_heads(dV));
    if (present(dlog_decay_row) || present(dlog_decay_col))
        cuda::spatial_decay_add_rate_gradients(present(dlog_decay_row) ? dlog_decay_row->data<float>() : nullptr,
                                               present(dlog_decay_col) ? dlog_decay_col->data<float>() : nullptr,
                                               partials.data<double>(), B, H);
}
#endif

bool on_cuda(const Tensor& q) { return q.defined() && q.device() == Device::cuda; }

}  // namespace

void spatial_decay_attention_parallel_forward(Tensor& o, const Tensor& q, const Tensor& k, const Tensor& v,
                                              const SpatialDecayAttentionArgs& args) {
#if LINARCH_HAS_CUDA
    if (on_cuda(q)) return cuda_forward("spatial_decay_attention_parallel_forward", o, q, k, v, args);
#endif
    run_forward("spatial_decay_attention_parallel_forward", o, q, k, v, args,
                [](auto&&... a) { cpu::spatial_decay_attention_parallel_forward(a...); });
}

void spatial_decay_attention_recurrent_forward(Tensor& o, const Tensor& q, const Tensor& k, const Tensor& v,
                                               const SpatialDecayAttentionArgs& args) {
#if LINARCH_HAS_CUDA
    if (on_cuda(q)) return cuda_forward("spatial_decay_attention_recurrent_forward", o, q, k, v, args);
#endif
    run_forward("spatial_decay_attention_recurrent_forward", o, q, k, v, args,
                [](auto&&... a) { cpu::spatial_decay_attention_recurrent_forward(a...); });
}

void spatial_decay_attention_chunkwise_forward(Tensor& o, const Tensor& q, const Tensor& k, const Tensor& v,
                                               const SpatialDecayAttentionArgs& args) {
    const char* op = "spatial_decay_attention_chunkwise_forward";
    LINARCH_CHECK(args.chunk_rows >= 1, "{}: chunk_rows: expected ≥ 1, got {}", op, args.chunk_rows);
#if LINARCH_HAS_CUDA
    if (on_cuda(q)) return cuda_forward(op, o, q, k, v, args);
#endif
    run_forward(op, o, q, k, v, args,
                [&](auto&&... a) { cpu::spatial_decay_attention_chunkwise_forward(a..., args.chunk_rows); });
}

void spatial_decay_attention_parallel_backward(Tensor& dq, Tensor& dk, Tensor& dv, Tensor* dlog_decay_row,
                                               Tensor* dlog_decay_col, const Tensor& dout, const Tensor& q,
                                               const Tensor& k, const Tensor& v,
                                               const SpatialDecayAttentionArgs& args) {
#if LINARCH_HAS_CUDA
    if (on_cuda(q))
        return cuda_backward("spatial_decay_attention_parallel_backward", dq, dk, dv, dlog_decay_row, dlog_decay_col,
                             dout, q, k, v, args);
#endif
    run_backward("spatial_decay_attention_parallel_backward", dq, dk, dv, dlog_decay_row, dlog_decay_col, dout, q, k,
                 v, args, [](auto&&... a) { cpu::spatial_decay_attention_parallel_backward(a...); });
}

void spatial_decay_attention_recurrent_backward(Tensor& dq, Tensor& dk, Tensor& dv, Tensor* dlog_decay_row,
                                                Tensor* dlog_decay_col, const Tensor& dout, const Tensor& q,
                                                const Tensor& k, const Tensor& v,
                                                const SpatialDecayAttentionArgs& args) {
#if LINARCH_HAS_CUDA
    if (on_cuda(q))
        return cuda_backward("spatial_decay_attention_recurrent_backward", dq, dk, dv, dlog_decay_row, dlog_decay_col,
                             dout, q, k, v, args);
#endif
    run_backward("spatial_decay_attention_recurrent_backward", dq, dk, dv, dlog_decay_row, dlog_decay_col, dout, q,
                 k, v, args, [](auto&&... a) { cpu::spatial_decay_attention_recurrent_backward(a...); });
}

void spatial_decay_attention_chunkwise_backward(Tensor& dq, Tensor& dk, Tensor& dv, Tensor* dlog_decay_row,
                                                Tensor* dlog_decay_col, const Tensor& dout, const Tensor& q,
                                                const Tensor& k, const Tensor& v,
                                                const SpatialDecayAttentionArgs& args) {
    const char* op = "spatial_decay_attention_chunkwise_backward";
    LINARCH_CHECK(args.chunk_rows >= 1, "{}: chunk_rows: expected ≥ 1, got {}", op, args.chunk_rows);
#if LINARCH_HAS_CUDA
    if (on_cuda(q)) return cuda_backward(op, dq, dk, dv, dlog_decay_row, dlog_decay_col, dout, q, k, v, args);
#endif
    run_backward(op, dq, dk, dv, dlog_decay_row, dlog_decay_col, dout, q, k, v, args,
                 [&](auto&&... a) { cpu::spatial_decay_attention_chunkwise_backward(a..., args.chunk_rows); });
}

SpatialDecayState spatial_decay_attention_initial_state(int64_t heads, int64_t key_dim, int64_t value_dim,
                                                        const SpatialDecayAttentionArgs& args, DType dtype) {
    const int64_t W = args.grid_width;
    LINARCH_CHECK(heads >= 1 && key_dim >= 1 && value_dim >= 1 && W >= 1 && args.grid_height >= 1,
                  "spatial_decay_attention_initial_state: expected heads, key_dim, value_dim and the grid ≥ 1, got "
                  "{}, {}, {} and {} × {}", heads, key_dim, value_dim, args.grid_height, W);
    return {Tensor::zeros({W, heads, key_dim, value_dim}, dtype), Tensor::zeros({heads, key_dim, value_dim}, dtype),
            Tensor::zeros({W, heads, key_dim}, dtype), Tensor::zeros({W, heads, value_dim}, dtype)};
}

void spatial_decay_attention_step(Tensor& o, SpatialDecayState& state, const Tensor& q, const Tensor& k,
                                  const Tensor& v, int64_t position, const SpatialDecayAttentionArgs& args) {
    const char* op = "spatial_decay_attention_step";
    if (on_cuda(q)) {
        // The state stays on the host (spatial_decay_attention_initial_state makes it there): one token's
        // q, k, v and the rates come over, its output goes back.
        const auto host = [](const Tensor& t) { return t.defined() ? t.to(Device::cpu) : t; };
        SpatialDecayAttentionArgs host_args = args;
        host_args.log_decay_row = host(args.log_decay_row);
        host_args.log_decay_col = host(args.log_decay_col);
        Tensor out = Tensor::empty(o.shape(), o.dtype());
        spatial_decay_attention_step(out, state, host(q), host(k), host(v), position, host_args);
        o.copy_from(out);
        return;
    }
    LINARCH_CHECK(q.defined() && (q.dtype() == DType::f32 || q.dtype() == DType::f64) && q.dim() == 4 &&
                      q.size(0) == 1 && q.size(1) == 1,
                  "{}: q: expected one token [1, 1, H, Dk] of dtype F32 or F64, got shape {}", op,
                  q.defined() ? shape_string(q.shape()) : "undefined");
    const DType dtype = q.dtype();
    const int64_t H = q.size(2), Dk = q.size(3), W = args.grid_width;
    check_operand(op, "q", q, dtype);
    check_operand(op, "k", k, dtype, q.shape());
    check_operand(op, "v", v, dtype);
    LINARCH_CHECK(v.dim() == 4 && v.size(0) == 1 && v.size(1) == 1 && v.size(2) == H,
                  "{}: v: expected shape [1, 1, {}, Dv], got {}", op, H, shape_string(v.shape()));
    const int64_t Dv = v.size(3);
    check_operand(op, "o", o, dtype, v.shape());
    LINARCH_CHECK(args.grid_height >= 1 && W >= 1, "{}: grid_height, grid_width: expected both ≥ 1, got {} × {}", op,
                  args.grid_height, W);
    LINARCH_CHECK(position >= 0 && position < args.grid_height * W,
                  "{}: position {} is outside the {} × {} grid (positions 0 … {}): the image is complete", op,
                  position, args.grid_height, W, args.grid_height * W - 1);
    check_log_decay(op, "log_decay_row", args.log_decay_row, dtype, H);
    check_log_decay(op, "log_decay_col", args.log_decay_col, dtype, H);
    check_operand(op, "state.columns", state.columns, dtype, {W, H, Dk, Dv});
    check_operand(op, "state.row_scan", state.row_scan, dtype, {H, Dk, Dv});
    check_operand(op, "state.row_keys", state.row_keys, dtype, {W, H, Dk});
    check_operand(op, "state.row_values", state.row_values, dtype, {W, H, Dv});
    const cpu::SpatialDecayDims d{1, 1, H, Dk, Dv, args.grid_height, W};
    dispatch(dtype, [&](auto tag) {
        using T = decltype(tag);
        cpu::spatial_decay_attention_step(o.data<T>(), state.columns.data<T>(), state.row_scan.data<T>(),
                                          state.row_keys.data<T>(), state.row_values.data<T>(), q.data<T>(),
                                          k.data<T>(), v.data<T>(), args.log_decay_row.data<T>(),
                                          args.log_decay_col.data<T>(), args.scale, position, d);
    });
}

}  // namespace linarch::ops
