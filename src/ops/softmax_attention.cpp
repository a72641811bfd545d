// Softmax attention op: check every tensor and argument (device, dtype, contiguity, shape, the
// forget gate's sign, window, cu_seqlens), then dispatch to the backend. Only the CPU backend exists.
#include "ops/softmax_attention.hpp"

#include <cmath>
#include <string>

#include "backend/cpu/softmax_attention.hpp"
#include "ops/operand_checks.hpp"

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

}  // namespace

void softmax_attention_forward(Tensor& o, Tensor& logsumexp, const Tensor& q, const Tensor& k, const Tensor& v,
                               const SoftmaxAttentionArgs& args) {
    const char* op = "softmax_attention_forward";
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
