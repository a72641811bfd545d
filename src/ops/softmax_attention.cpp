// Softmax attention op: check every tensor and argument (device, dtype, contiguity, shape, the
// forget gate's sign, window, cu_seqlens), then dispatch to the backend: the CPU's in f32 and f64, the
// CUDA one for f32 GPU tensors.
#include "ops/softmax_attention.hpp"

#include <cmath>
#include <string>

#include "backend/cpu/softmax_attention.hpp"
#include "ops/operand_checks.hpp"
#if LINARCH_HAS_CUDA
#include "backend/cuda/softmax_attention.hpp"
#include "ops/cuda_operands.hpp"
#endif

namespace linarch::ops {
namespace {


// Checks q, k, v and the arguments; returns the sizes they agree on.
cpu::SoftmaxAttentionDims check_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                                       const SoftmaxAttentionArgs& args) {
    const QkvShape shape = check_qkv(op, q, k, v);
    const DType dtype = shape.dtype;
    const int64_t B = shape.batch, T = shape.seq_len, H = shape.heads, Dk = shape.key_dim;
    LINARCH_CHECK(std::isfinite(args.scale), "{}: scale: expected a finite number, got {}", op, args.scale);
    LINARCH_CHECK(args.window >= 0, "{}: window: expected ≥ 0 (0 = full causal), got {}", op, args.window);
    if (args.alibi_slopes.defined()) check_operand(op, "alibi_slopes", args.alibi_slopes, dtype, {H});
    if (args.log_forget.defined()) {
        check_operand(op, "log_forget", args.log_forget, dtype, {B, T, H});
        // log f ≤ 0 keeps every bias ≤ 0 (f in (0, 1]); `!(x <= 0)` also rejects NaN.
        const std::vector<double> values = args.log_forget.to_vector();
        for (size_t n = 0; n < values.size(); ++n)
            LINARCH_CHECK(values[n] <= 0, "{}: log_forget: expected every value ≤ 0, got {} at [{}, {}, {}]", op,
                          values[n], int64_t(n) / (T * H), int64_t(n) / H % T, int64_t(n) % H);
    }
    const std::vector<int64_t>& cu = args.cu_seqlens;
    if (!cu.empty()) {
        LINARCH_CHECK(B == 1, "{}: cu_seqlens: packed sequences need B == 1, got q of shape {}", op,
                      shape_string(q.shape()));
        LINARCH_CHECK(cu.size() >= 2 && cu.front() == 0 && cu.back() == T,
                      "{}: cu_seqlens: expected 0 = cu_seqlens[0] < … < cu_seqlens[last] = T = {}, got {} bounds "
                      "from {} to {}",
                      op, T, cu.size(), cu.front(), cu.back());
        for (size_t s = 0; s + 1 < cu.size(); ++s)
            LINARCH_CHECK(cu[s] < cu[s + 1], "{}: cu_seqlens: expected strictly increasing bounds, got {} then {} at {}",
                          op, cu[s], cu[s + 1], s);
    }
    return {B, T, H, Dk, v.size(3)};
}

Shape token_shape(const cpu::SoftmaxAttentionDims& d, int64_t dim) { return {d.batch, d.seq_len, d.heads, dim}; }
Shape scalar_shape(const cpu::SoftmaxAttentionDims& d) { return {d.batch, d.seq_len, d.heads}; }

template <typename T> cpu::SoftmaxAttentionBias<T> bias_of(const SoftmaxAttentionArgs& args) {
    return {args.scale, args.window, args.alibi_slopes.defined() ? args.alibi_slopes.data<T>() : nullptr,
            args.log_forget.defined() ? args.log_forget.data<T>() : nullptr, args.cu_seqlens};
}

#if LINARCH_HAS_CUDA
// The CUDA path's checks and layout: every tensor f32 on the GPU, head sizes up to 128. The sequences are
// cu_seqlens' or the batch rows. The forget gate's values are not checked to be ≤ 0 there: that would copy
// them to the host on every call.
cuda::SoftmaxAttentionLayout cuda_layout(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                                         const SoftmaxAttentionArgs& args) {
    LINARCH_CHECK(q.dim() == 4 && q.numel() > 0, "{}: q: expected a non-empty [B, T, H, Dk] tensor, got shape {}",
                  op, shape_string(q.shape()));
    check_cuda_operand(op, "q", q, DType::f32, q.shape());
    const int64_t B = q.size(0), T = q.size(1), H = q.size(2), Dk = q.size(3);
    check_cuda_operand(op, "k", k, DType::f32, q.shape());
    LINARCH_CHECK(v.defined() && v.dim() == 4 && v.size(3) > 0, "{}: v: expected shape [{}, {}, {}, Dv], got {}", op,
                  B, T, H, v.defined() ? shape_string(v.shape()) : "undefined");
    check_cuda_operand(op, "v", v, DType::f32, {B, T, H, v.size(3)});
    LINARCH_CHECK(cuda::softmax_attention_supports(Dk, v.size(3)),
                  "{}: the CUDA kernels take head sizes up to {}, got Dk={}, Dv={}", op, cuda::kMaxSoftmaxHeadDim, Dk,
                  v.size(3));
    LINARCH_CHECK(std::isfinite(args.scale), "{}: scale: expected a finite number, got {}", op, args.scale);
    LINARCH_CHECK(args.window >= 0, "{}: window: expected ≥ 0 (0 = full causal), got {}", op, args.window);
    if (args.alibi_slopes.defined()) check_cuda_operand(op, "alibi_slopes", args.alibi_slopes, DType::f32, {H});
    if (args.log_forget.defined()) check_cuda_operand(op, "log_forget", args.log_forget, DType::f32, {B, T, H});
    cuda::SoftmaxAttentionLayout layout;
    check_cu_seqlens(op, args.cu_seqlens, B, T);
    if (args.cu_seqlens.empty())
        for (int64_t b = 0; b <= B; ++b) layout.starts.push_back(b * T);
    else
        layout.starts = args.cu_seqlens;
    layout.heads = H;
    layout.key_dim = Dk;
    layout.value_dim = v.size(3);
    layout.scale = args.scale;
    layout.window = args.window;
    layout.alibi_slopes = args.alibi_slopes.defined() ? args.alibi_slopes.data<float>() : nullptr;
    layout.log_forget = args.log_forget.defined() ? args.log_forget.data<float>() : nullptr;
    return layout;
}
#endif

}  // namespace

void softmax_attention_forward(Tensor& o, Tensor& logsumexp, const Tensor& q, const Tensor& k, const Tensor& v,
                               const SoftmaxAttentionArgs& args) {
    const char* op = "softmax_attention_forward";
#if LINARCH_HAS_CUDA
    if (q.defined() && q.device() == Device::cuda) {
        const cuda::SoftmaxAttentionLayout layout = cuda_layout(op, q, k, v, args);
        check_cuda_operand(op, "o", o, DType::f32, v.shape());
        check_cuda_operand(op, "logsumexp", logsumexp, DType::f32, {q.size(0), q.size(1), q.size(2)});
        return cuda::softmax_attention_forward(o.data<float>(), logsumexp.data<float>(), q.data<float>(),
                                               k.data<float>(), v.data<float>(), layout);
    }
#endif
    const auto d = check_inputs(op, q, k, v, args);
    check_operand(op, "o", o, q.dtype(), token_shape(d, d.value_dim));
    check_operand(op, "logsumexp", logsumexp, q.dtype(), scalar_shape(d));
    dispatch(q.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::softmax_attention_forward<T>(o.data<T>(), logsumexp.data<T>(), q.data<T>(), k.data<T>(), v.data<T>(),
                                          bias_of<T>(args), d);
    });
}

void softmax_attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, Tensor* dlog_forget, const Tensor& dout,
                                const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                                const Tensor& logsumexp, const SoftmaxAttentionArgs& args) {
    const char* op = "softmax_attention_backward";
#if LINARCH_HAS_CUDA
    if (q.defined() && q.device() == Device::cuda) {
        const cuda::SoftmaxAttentionLayout layout = cuda_layout(op, q, k, v, args);
        const Shape scalars = {q.size(0), q.size(1), q.size(2)};
        check_cuda_operand(op, "o", o, DType::f32, v.shape());
        check_cuda_operand(op, "logsumexp", logsumexp, DType::f32, scalars);
        check_cuda_operand(op, "dout", dout, DType::f32, v.shape());
        check_cuda_operand(op, "dq", dq, DType::f32, q.shape());
        check_cuda_operand(op, "dk", dk, DType::f32, q.shape());
        check_cuda_operand(op, "dv", dv, DType::f32, v.shape());
        if (present(dlog_forget)) {
            LINARCH_CHECK(args.log_forget.defined(),
                          "{}: dlog_forget: given, but args.log_forget is undefined (no forget gate to differentiate)",
                          op);
            check_cuda_operand(op, "dlog_forget", *dlog_forget, DType::f32, scalars);
        }
        return cuda::softmax_attention_backward(dq.data<float>(), dk.data<float>(), dv.data<float>(),
                                                data_or_null<float>(dlog_forget), dout.data<float>(), q.data<float>(),
                                                k.data<float>(), v.data<float>(), o.data<float>(),
                                                logsumexp.data<float>(), layout);
    }
#endif
    const auto d = check_inputs(op, q, k, v, args);
    const DType dtype = q.dtype();
    check_operand(op, "o", o, dtype, token_shape(d, d.value_dim));
    check_operand(op, "logsumexp", logsumexp, dtype, scalar_shape(d));
    check_operand(op, "dout", dout, dtype, token_shape(d, d.value_dim));
    check_operand(op, "dq", dq, dtype, token_shape(d, d.key_dim));
    check_operand(op, "dk", dk, dtype, token_shape(d, d.key_dim));
    check_operand(op, "dv", dv, dtype, token_shape(d, d.value_dim));
    if (present(dlog_forget)) {
        LINARCH_CHECK(args.log_forget.defined(),
                      "{}: dlog_forget: given, but args.log_forget is undefined (no forget gate to differentiate)",
                      op);
        check_operand(op, "dlog_forget", *dlog_forget, dtype, scalar_shape(d));
    }
    dispatch(dtype, [&](auto tag) {
        using T = decltype(tag);
        cpu::softmax_attention_backward<T>(dq.data<T>(), dk.data<T>(), dv.data<T>(),
                                           present(dlog_forget) ? dlog_forget->data<T>() : nullptr, dout.data<T>(),
                                           q.data<T>(), k.data<T>(), v.data<T>(), o.data<T>(), logsumexp.data<T>(),
                                           bias_of<T>(args), d);
    });
}

Tensor alibi_slopes(int64_t heads, DType dtype) {
    LINARCH_CHECK(heads >= 1, "alibi_slopes: heads: expected ≥ 1, got {}", heads);
    // Power of two P: 2^(−8h/P), h = 1..P.
    auto power_of_two_slopes = [](int64_t count) {
        std::vector<double> slopes;
        for (int64_t h = 1; h <= count; ++h) slopes.push_back(std::exp2(-8.0 * double(h) / double(count)));
        return slopes;
    };
    int64_t power = 1;
    while (power * 2 <= heads) power *= 2;
    std::vector<double> slopes = power_of_two_slopes(power);
    if (power < heads) {
        // The paper's interpolation: every other slope of the next power of two fills the gap.
        const std::vector<double> finer = power_of_two_slopes(2 * power);
        for (int64_t h = 0; int64_t(slopes.size()) < heads; h += 2) slopes.push_back(finer[size_t(h)]);
    }
    return Tensor::from_vector({heads}, slopes, dtype);
}

}  // namespace linarch::ops
