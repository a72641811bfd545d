// What the ops' CUDA paths share (internal to src/ops, CUDA builds only): the check of one device
// operand, and mixed precision's bf16 copies of fp32 operands and fp32 sums of bf16 results
// (ops/precision.hpp).
#pragma once
#if LINARCH_HAS_CUDA
#include <cstdint>

#include "backend/cuda/dense.hpp"
#include "core/error.hpp"
#include "core/tensor.hpp"

namespace linarch::ops {

// A tensor of a CUDA kernel: on the GPU, contiguous, of the given dtype and shape.
inline void check_cuda_operand(const char* op, const char* name, const Tensor& t, DType dtype, const Shape& shape) {
    LINARCH_CHECK(t.defined(), "{}: {}: tensor is not defined", op, name);
    LINARCH_CHECK(t.device() == Device::cuda, "{}: {}: tensor is on {}, expected cuda (one device per call)", op, name,
                  device_name(t.device()));
    LINARCH_CHECK(t.dtype() == dtype, "{}: {}: expected dtype {} on cuda, got {}", op, name, dtype_name(dtype),
                  dtype_name(t.dtype()));
    LINARCH_CHECK(t.is_contiguous(), "{}: {}: expected a contiguous tensor", op, name);
    LINARCH_CHECK(t.shape() == shape, "{}: {}: expected shape {}, got {}", op, name, shape_string(shape),
                  shape_string(t.shape()));
}

// A bf16 copy of an f32 CUDA operand.
inline Tensor bf16_copy(const char* op, const char* name, const Tensor& t) {
    check_cuda_operand(op, name, t, DType::f32, t.shape());
    Tensor copy = Tensor::empty(t.shape(), DType::bf16, Device::cuda);
    cuda::to_bf16(static_cast<uint16_t*>(copy.raw_data()), t.data<float>(), t.numel());
    return copy;
}

// dst (f32) += src (bf16), or dst = src when `overwrite`.
inline void add_bf16(Tensor& dst, const Tensor& src, bool overwrite) {
    if (overwrite) dst.zero();
    cuda::add_bf16_into(dst.data<float>(), static_cast<const uint16_t*>(src.raw_data()), dst.numel());
}

}  // namespace linarch::ops
#endif
