// Linear attention and short conv ops: check every tensor (device, dtype, contiguity, shape), then
// dispatch to the backend. Only the CPU backend exists so far.
#include "ops/linear_attention.hpp"

#include <string>
#include <vector>

#include "backend/cpu/linear_attention.hpp"
#include "backend/cpu/short_conv.hpp"

namespace linarch::ops {
namespace {

// The short conv kernel is a handful of taps (mixers.md §12: typically 4).
constexpr int64_t kMaxConvKernel = 8;

bool present(const Tensor* t) { return t && t->defined(); }

template <typename T> const T* data_or_null(const Tensor* t) { return present(t) ? t->data<T>() : nullptr; }
template <typename T> T* data_or_null(Tensor* t) { return present(t) ? t->data<T>() : nullptr; }

// Calls fn(float{}) or fn(double{}) for the op's dtype (checked to be one of the two).
template <typename Fn> void dispatch(DType dtype, Fn&& fn) {
    if (dtype == DType::f32) fn(float{});
    else fn(double{});
}

// The first tensor fixes the op's dtype, which must be a compute type.
void check_compute_dtype(const char* op, const char* name, const Tensor& t) {
    LINARCH_CHECK(t.defined(), "{}: {}: tensor is not defined", op, name);
    LINARCH_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::f64, "{}: {}: expected dtype F32 or F64, got {}",
                  op, name, dtype_name(t.dtype()));
}

// Everything but the shape: defined, on the CPU, contiguous, and of the op's dtype.
void check_operand(const char* op, const char* name, const Tensor& t, DType dtype) {
    LINARCH_CHECK(t.defined(), "{}: {}: tensor is not defined", op, name);
    LINARCH_CHECK(t.device() == Device::cpu, "{}: {}: tensor is on {}, and this op has no CUDA implementation yet",
                  op, name, device_name(t.device()));
    LINARCH_CHECK(t.dtype() == dtype, "{}: {}: expected dtype {} (all tensors of one op share a dtype), got {}", op,
                  name, dtype_name(dtype), dtype_name(t.dtype()));
    LINARCH_CHECK(t.is_contiguous(), "{}: {}: expected a contiguous tensor", op, name);
}

void check_operand(const char* op, const char* name, const Tensor& t, DType dtype, const Shape& shape) {
    check_operand(op, name, t, dtype);
    LINARCH_CHECK(t.shape() == shape, "{}: {}: expected shape {}, got {}", op, name, shape_string(shape),
                  shape_string(t.shape()));
}

// Checks q, k, v, initial_state and log_decay; returns the sizes they agree on.
cpu::LinearAttentionDims check_linear_attention_inputs(const char* op, const Tensor& q, const Tensor& k,
                                                       const Tensor& v, const Tensor* initial_state,
                                                       const LinearAttentionArgs& args) {
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
    if (present(initial_state)) check_operand(op, "initial_state", *initial_state, dtype, {B, H, Dk, Dv});
    if (args.log_decay.defined()) {
        check_operand(op, "log_decay", args.log_decay, dtype, {H});
        // γ = exp(log_decay) ≤ 1 keeps the state bounded; `!(x <= 0)` also rejects NaN.
        const std::vector<double> values = args.log_decay.to_vector();
        for (int64_t h = 0; h < H; ++h)
            LINARCH_CHECK(values[size_t(h)] <= 0, "{}: log_decay: expected every value ≤ 0, got {} at head {}", op,
                          values[size_t(h)], h);
    }
    return {B, T, H, Dk, Dv};
}

void check_output_state(const char* op, const char* name, const Tensor* state, DType dtype,
                        const cpu::LinearAttentionDims& d) {
    if (present(state)) check_operand(op, name, *state, dtype, {d.batch, d.heads, d.key_dim, d.value_dim});
}

Shape token_shape(const cpu::LinearAttentionDims& d, int64_t dim) { return {d.batch, d.seq_len, d.heads, dim}; }

}  // namespace

void linear_attention_recurrent_forward(Tensor& o, Tensor* final_state, const Tensor& q, const Tensor& k,
                                        const Tensor& v, const Tensor* initial_state,
                                        const LinearAttentionArgs& args) {
    const char* op = "linear_attention_recurrent_forward";
    const auto d = check_linear_attention_inputs(op, q, k, v, initial_state, args);
    check_operand(op, "o", o, q.dtype(), token_shape(d, d.value_dim));
    check_output_state(op, "final_state", final_state, q.dtype(), d);
    dispatch(q.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::linear_attention_recurrent_forward<T>(o.data<T>(), data_or_null<T>(final_state), q.data<T>(),
                                                   k.data<T>(), v.data<T>(), data_or_null<T>(initial_state),
                                                   data_or_null<T>(&args.log_decay), args.scale, d);
    });
}

void linear_attention_chunkwise_forward(Tensor& o, Tensor* final_state, const Tensor& q, const Tensor& k,
                                        const Tensor& v, const Tensor* initial_state,
                                        const LinearAttentionArgs& args) {
    const char* op = "linear_attention_chunkwise_forward";
    const auto d = check_linear_attention_inputs(op, q, k, v, initial_state, args);
    LINARCH_CHECK(args.chunk_size >= 1, "{}: chunk_size: expected ≥ 1, got {}", op, args.chunk_size);
    check_operand(op, "o", o, q.dtype(), token_shape(d, d.value_dim));
    check_output_state(op, "final_state", final_state, q.dtype(), d);
    dispatch(q.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::linear_attention_chunkwise_forward<T>(o.data<T>(), data_or_null<T>(final_state), q.data<T>(),
                                                   k.data<T>(), v.data<T>(), data_or_null<T>(initial_state),
                                                   data_or_null<T>(&args.log_decay), args.scale, args.chunk_size,
                                                   d);
    });
}

void linear_attention_chunkwise_backward(Tensor& dq, Tensor& dk, Tensor& dv, Tensor* dinitial_state,
                                         const Tensor& dout, const Tensor* dfinal_state, const Tensor& q,
                                         const Tensor& k, const Tensor& v, const Tensor* initial_state,
                                         const LinearAttentionArgs& args) {
    const char* op = "linear_attention_chunkwise_backward";
    const auto d = check_linear_attention_inputs(op, q, k, v, initial_state, args);
    LINARCH_CHECK(args.chunk_size >= 1, "{}: chunk_size: expected ≥ 1, got {}", op, args.chunk_size);
    const DType dtype = q.dtype();
    check_operand(op, "dout", dout, dtype, token_shape(d, d.value_dim));
    check_output_state(op, "dfinal_state", dfinal_state, dtype, d);
    check_operand(op, "dq", dq, dtype, token_shape(d, d.key_dim));
    check_operand(op, "dk", dk, dtype, token_shape(d, d.key_dim));
    check_operand(op, "dv", dv, dtype, token_shape(d, d.value_dim));
    check_output_state(op, "dinitial_state", dinitial_state, dtype, d);
    dispatch(dtype, [&](auto tag) {
        using T = decltype(tag);
        cpu::linear_attention_chunkwise_backward<T>(
            dq.data<T>(), dk.data<T>(), dv.data<T>(), data_or_null<T>(dinitial_state), dout.data<T>(),
            data_or_null<T>(dfinal_state), q.data<T>(), k.data<T>(), v.data<T>(), data_or_null<T>(initial_state),
            data_or_null<T>(&args.log_decay), args.scale, args.chunk_size, d);
    });
}

namespace {

cpu::ShortConvDims check_short_conv_inputs(const char* op, const Tensor& x, const Tensor& weight) {
    check_compute_dtype(op, "x", x);
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
