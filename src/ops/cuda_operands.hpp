// What the ops' CUDA paths share (internal to src/ops, CUDA builds only): the check of one device
// operand, mixed precision's bf16 copies of fp32 operands and fp32 sums of bf16 results
// (ops/precision.hpp), and packed sequences as padded batches.
#pragma once
#if LINARCH_HAS_CUDA
#include <algorithm>
#include <cstdint>
#include <vector>

#include "backend/cuda/dense.hpp"
#include "backend/cuda/device.hpp"
#include "backend/cuda/gemm.hpp"
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

// c[m,n] = op(a) · op(b) + beta · c on row-major f32 device arrays (cuBLASLt).
inline void gemm_f32(const float* a, bool trans_a, const float* b, bool trans_b, float* c, int64_t m, int64_t n,
                     int64_t k, float beta = 0.f) {
    cuda::gemm({.a = a, .b = b, .c = c, .m = m, .n = n, .k = k, .trans_a = trans_a, .trans_b = trans_b, .beta = beta});
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

// Packed sequences (cu_seqlens, tensors [1, T, …]) for kernels that take batches [N, T_max, …]: the tokens
// are moved into a batch with zeros after each sequence's end, and the results moved back. For the
// chunkwise mixers this is exact: zero keys, values and β change no state and a zero log gate decays
// nothing, so each final state is its own sequence's; the padded rows' outputs are dropped. It costs
// N·T_max − T padded tokens of work.
class PaddedBatch {
public:
    explicit PaddedBatch(const std::vector<int64_t>& cu_seqlens)
        : sequences_(int64_t(cu_seqlens.size()) - 1),
          max_length_(longest(cu_seqlens)),
          source_rows_(source_rows(cu_seqlens, max_length_)) {}

    int64_t sequences() const { return sequences_; }

    // [1, T, …] → [N, T_max, …]; an undefined tensor stays undefined.
    Tensor pad(const Tensor& packed) const {
        if (!packed.defined()) return packed;
        Shape shape = packed.shape();
        shape[0] = sequences_;
        shape[1] = max_length_;
        Tensor padded = Tensor::empty(shape, packed.dtype(), Device::cuda);
        cuda::gather_rows(padded.raw_data(), packed.raw_data(), source_rows_.as<int64_t>(), sequences_ * max_length_,
                          row_bytes(packed));
        return padded;
    }

    // The tokens' rows of padded [N, T_max, …] back into packed [1, T, …].
    void unpad_into(Tensor& packed, const Tensor& padded) const {
        cuda::scatter_rows(packed.raw_data(), padded.raw_data(), source_rows_.as<int64_t>(), sequences_ * max_length_,
                           row_bytes(packed));
    }

private:
    static int64_t longest(const std::vector<int64_t>& cu) {
        int64_t length = 0;
        for (size_t n = 0; n + 1 < cu.size(); ++n) length = std::max(length, cu[n + 1] - cu[n]);
        return length;
    }
    // For each padded row, the packed row it holds, or −1 past its sequence's end.
    static std::vector<int64_t> source_rows(const std::vector<int64_t>& cu, int64_t max_length) {
        std::vector<int64_t> rows(size_t((cu.size() - 1) * size_t(max_length)), -1);
        for (size_t n = 0; n + 1 < cu.size(); ++n)
            for (int64_t t = 0; t < cu[n + 1] - cu[n]; ++t) rows[n * size_t(max_length) + size_t(t)] = cu[n] + t;
        return rows;
    }
    static int64_t row_bytes(const Tensor& packed) {
        return packed.numel() / packed.size(1) * int64_t(dtype_size(packed.dtype()));
    }

    int64_t sequences_, max_length_;
    cuda::DeviceBuffer source_rows_;
};

}  // namespace linarch::ops
#endif
