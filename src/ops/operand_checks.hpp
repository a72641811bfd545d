// Checks and dispatch shared by the op entry points in src/ops/*.cpp (internal to them): every op
// validates its tensors the same way and names the op and the tensor in its messages.
#pragma once
#include <string_view>
#include <vector>

#include "core/error.hpp"
#include "core/tensor.hpp"

namespace linarch::ops {

inline bool present(const Tensor* t) { return t && t->defined(); }

template <typename T> const T* data_or_null(const Tensor* t) { return present(t) ? t->data<T>() : nullptr; }
template <typename T> T* data_or_null(Tensor* t) { return present(t) ? t->data<T>() : nullptr; }

// Calls fn(float{}) or fn(double{}) for the op's dtype (checked to be one of the two).
template <typename Fn> void dispatch(DType dtype, Fn&& fn) {
    if (dtype == DType::f32) fn(float{});
    else fn(double{});
}

// Everything but the shape: defined, on the CPU (the ops' CUDA paths check their own operands),
// contiguous, and of the op's dtype.
inline void check_operand(std::string_view op, std::string_view name, const Tensor& t, DType dtype) {
    LINARCH_CHECK(t.defined(), "{}: {}: tensor is not defined", op, name);
    LINARCH_CHECK(t.device() == Device::cpu,
                  "{}: {}: tensor is on {}, expected cpu (one device per call; where the op has a CUDA path, it "
                  "takes every operand on the GPU)", op, name, device_name(t.device()));
    LINARCH_CHECK(t.dtype() == dtype, "{}: {}: expected dtype {} (all tensors of one op share a dtype), got {}", op,
                  name, dtype_name(dtype), dtype_name(t.dtype()));
    LINARCH_CHECK(t.is_contiguous(), "{}: {}: expected a contiguous tensor", op, name);
}

inline void check_operand(std::string_view op, std::string_view name, const Tensor& t, DType dtype,
                          const Shape& shape) {
    check_operand(op, name, t, dtype);
    LINARCH_CHECK(t.shape() == shape, "{}: {}: expected shape {}, got {}", op, name, shape_string(shape),
                  shape_string(t.shape()));
}

// q [B,T,H,Dk], k like q, v [B,T,H,Dv]: the layout every mixer op shares. q fixes the op's dtype.
struct QkvShape {
    DType dtype;
    int64_t batch, seq_len, heads, key_dim, value_dim;
};

inline QkvShape check_qkv(std::string_view op, const Tensor& q, const Tensor& k, const Tensor& v) {
    LINARCH_CHECK(q.defined(), "{}: q: tensor is not defined", op);
    LINARCH_CHECK(q.dtype() == DType::f32 || q.dtype() == DType::f64, "{}: q: expected dtype F32 or F64, got {}",
                  op, dtype_name(q.dtype()));
    const DType dtype = q.dtype();
    check_operand(op, "q", q, dtype);
    LINARCH_CHECK(q.dim() == 4 && q.numel() > 0, "{}: q: expected a non-empty [B, T, H, Dk] tensor, got shape {}",
                  op, shape_string(q.shape()));
    const int64_t B = q.size(0), T = q.size(1), H = q.size(2), Dk = q.size(3);
    check_operand(op, "k", k, dtype, q.shape());
    check_operand(op, "v", v, dtype);
    LINARCH_CHECK(v.dim() == 4 && v.size(0) == B && v.size(1) == T && v.size(2) == H && v.size(3) > 0,
                  "{}: v: expected shape [{}, {}, {}, Dv], got {}", op, B, T, H, shape_string(v.shape()));
    return {dtype, B, T, H, Dk, v.size(3)};
}

// The packed-sequence offsets (FlashAttention's cu_seqlens); returns the number of sequences
// (B without cu_seqlens).
inline int64_t check_cu_seqlens(std::string_view op, const std::vector<int64_t>& cu, int64_t B, int64_t T) {
    if (cu.empty()) return B;
    LINARCH_CHECK(B == 1, "{}: cu_seqlens: expected batch 1 with packed sequences, got q batch {}", op, B);
    LINARCH_CHECK(cu.size() >= 2, "{}: cu_seqlens: expected at least 2 offsets (one sequence), got {}", op,
                  cu.size());
    LINARCH_CHECK(cu.front() == 0, "{}: cu_seqlens: expected to start at 0, got {}", op, cu.front());
    for (size_t n = 1; n < cu.size(); ++n)
        LINARCH_CHECK(cu[n] > cu[n - 1],
                      "{}: cu_seqlens: expected strictly increasing offsets, got {} after {} at index {}", op, cu[n],
                      cu[n - 1], n);
    LINARCH_CHECK(cu.back() == T, "{}: cu_seqlens: expected to end at T = {}, got {}", op, T, cu.back());
    return int64_t(cu.size()) - 1;
}

}  // namespace linarch::ops
