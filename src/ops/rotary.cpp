// Rotary position embedding op: check tensors and positions, then dispatch to the CPU backend, or the
// CUDA one for f32 device tensors.
#include "ops/rotary.hpp"

#include <cmath>
#include <initializer_list>
#include <utility>
#include <vector>

#include "backend/cpu/rotary.hpp"
#include "ops/operand_checks.hpp"
#if LINARCH_HAS_CUDA
#include "backend/cuda/device.hpp"
#include "backend/cuda/rotary.hpp"
#endif

namespace linarch::ops {
namespace {

// Checks the input x (or dout), the frequencies and the positions; returns the sizes.
cpu::RopeDims check_inputs(const char* op, const char* name, const Tensor& x, std::span<const int64_t> positions,
                           const Tensor& frequencies) {
    LINARCH_CHECK(x.defined(), "{}: {}: tensor is not defined", op, name);
    LINARCH_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::f64, "{}: {}: expected dtype F32 or F64, got {}",
                  op, name, dtype_name(x.dtype()));
    if (x.device() == Device::cpu) check_operand(op, name, x, x.dtype());
    LINARCH_CHECK(x.dim() == 4 && x.numel() > 0, "{}: {}: expected a non-empty [B, T, H, D] tensor, got shape {}",
                  op, name, shape_string(x.shape()));
    const int64_t D = x.size(3);
    LINARCH_CHECK(D % 2 == 0, "{}: {}: the head dim D = {} must be even (RoPE rotates pairs of coordinates)", op,
                  name, D);
    if (x.device() == Device::cpu) check_operand(op, "frequencies", frequencies, x.dtype());
    LINARCH_CHECK(frequencies.shape() == Shape{D / 2}, "{}: frequencies: expected shape [{}] (D/2), got {}", op,
                  D / 2, shape_string(frequencies.shape()));
    LINARCH_CHECK(positions.empty() || int64_t(positions.size()) == x.size(1),
                  "{}: positions: expected T = {} positions (or none for 0..T−1), got {}", op, x.size(1),
                  positions.size());
    return {x.size(0), x.size(1), x.size(2), D};
}

#if LINARCH_HAS_CUDA
// The CUDA path's operands: every tensor f32, contiguous, on the GPU.
void check_cuda_operands(const char* op, std::initializer_list<std::pair<const char*, const Tensor*>> tensors) {
    for (const auto& [name, t] : tensors) {
        LINARCH_CHECK(t->defined() && t->device() == Device::cuda && t->dtype() == DType::f32 && t->is_contiguous(),
                      "{}: {}: expected a contiguous F32 tensor on cuda (one device per call), got {} on {}", op,
                      name, t->defined() ? dtype_name(t->dtype()) : "undefined",
                      t->defined() ? device_name(t->device()) : "-");
    }
}
#endif

}  // namespace

void rope_forward(Tensor& out, const Tensor& x, std::span<const int64_t> positions, const Tensor& frequencies) {
    const char* op = "rope_forward";
    const cpu::RopeDims d = check_inputs(op, "x", x, positions, frequencies);
    LINARCH_CHECK(out.shape() == x.shape(), "{}: out: expected shape {}, got {}", op, shape_string(x.shape()),
                  shape_string(out.shape()));
#if LINARCH_HAS_CUDA
    if (x.device() == Device::cuda) {
        check_cuda_operands(op, {{"x", &x}, {"frequencies", &frequencies}, {"out", &out}});
        const cuda::DeviceBuffer device_positions(std::vector<int64_t>(positions.begin(), positions.end()));
        return cuda::rope_forward(out.data<float>(), x.data<float>(), device_positions.as<int64_t>(),
                                  frequencies.data<float>(), d.batch, d.seq_len, d.heads, d.head_dim);
    }
#endif
    check_operand(op, "out", out, x.dtype());
    dispatch(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::rope_forward<T>(out.data<T>(), x.data<T>(), positions.empty() ? nullptr : positions.data(),
                             frequencies.data<T>(), d);
    });
}

void rope_backward(Tensor& dx, const Tensor& dout, std::span<const int64_t> positions, const Tensor& frequencies) {
    const char* op = "rope_backward";
    const cpu::RopeDims d = check_inputs(op, "dout", dout, positions, frequencies);
    LINARCH_CHECK(dx.shape() == dout.shape(), "{}: dx: expected shape {}, got {}", op, shape_string(dout.shape()),
                  shape_string(dx.shape()));
#if LINARCH_HAS_CUDA
    if (dout.device() == Device::cuda) {
        check_cuda_operands(op, {{"dout", &dout}, {"frequencies", &frequencies}, {"dx", &dx}});
        const cuda::DeviceBuffer device_positions(std::vector<int64_t>(positions.begin(), positions.end()));
        return cuda::rope_backward(dx.data<float>(), dout.data<float>(), device_positions.as<int64_t>(),
                                   frequencies.data<float>(), d.batch, d.seq_len, d.heads, d.head_dim);
    }
#endif
    check_operand(op, "dx", dx, dout.dtype());
    dispatch(dout.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::rope_backward<T>(dx.data<T>(), dout.data<T>(), positions.empty() ? nullptr : positions.data(),
                              frequencies.data<T>(), d);
    });
}

Tensor rope_frequencies(int64_t head_dim, double base, DType dtype) {
    LINARCH_CHECK(head_dim > 0 && head_dim % 2 == 0, "rope_frequencies: head_dim: expected a positive even number, got {}",
                  head_dim);
    LINARCH_CHECK(base > 1, "rope_frequencies: base: expected > 1, got {}", base);
    std::vector<double> frequencies(size_t(head_dim / 2));
    for (int64_t i = 0; i < head_dim / 2; ++i)
        frequencies[size_t(i)] = std::pow(base, -2.0 * double(i) / double(head_dim));
    return Tensor::from_vector({head_dim / 2}, frequencies, dtype);
}

}  // namespace linarch::ops
