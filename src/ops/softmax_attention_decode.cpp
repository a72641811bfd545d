#include "backend/cpu/softmax_attention_decode.hpp"
#include "ops/softmax_attention.hpp"

#include <utility>

#if LINARCH_HAS_CUDA
#include "backend/cuda/softmax_attention.hpp"
#endif

namespace linarch::ops {

void softmax_attention_decode(Tensor& o, const Tensor& q, const Tensor& keys, const Tensor& values,
                              const Tensor& log_forget, int64_t cached, const SoftmaxAttentionArgs& args) {
    const char* op = "softmax_attention_decode";
    LINARCH_CHECK(q.dim() == 2 && keys.dim() == 3 && values.dim() == 3, "{}: expected q [H,Dk], keys [T,H,Dk], "
                  "values [T,H,Dv]; got {}, {}, {}", op, shape_string(q.shape()), shape_string(keys.shape()),
                  shape_string(values.shape()));
    const int64_t heads = q.size(0), dk = q.size(1), dv = values.size(2);
    LINARCH_CHECK(cached >= 1 && cached <= keys.size(0) && cached <= values.size(0),
                  "{}: {} cached tokens but the cache holds {}", op, cached, keys.size(0));
    LINARCH_CHECK(keys.size(1) == heads && keys.size(2) == dk && values.size(1) == heads,
                  "{}: keys {} / values {} do not match q {}", op, shape_string(keys.shape()),
                  shape_string(values.shape()), shape_string(q.shape()));
    check_shape(o, {heads, dv}, "softmax_attention_decode: o");
#if LINARCH_HAS_CUDA
    if (q.device() == Device::cuda) {
        const std::pair<const char*, const Tensor*> operands[] = {
            {"o", &o}, {"q", &q}, {"keys", &keys}, {"values", &values}, {"log_forget", &log_forget},
            {"alibi_slopes", &args.alibi_slopes}};
        for (const auto& [name, t] : operands)
            LINARCH_CHECK(!t->defined() || (t->device() == Device::cuda && t->dtype() == DType::f32 &&
                                            t->is_contiguous()),
                          "{}: {}: expected a contiguous F32 tensor on cuda like q", op, name);
        if (log_forget.defined())
            LINARCH_CHECK(log_forget.dim() == 2 && log_forget.size(1) == heads && log_forget.size(0) >= cached,
                          "{}: log_forget: expected [≥{}, {}], got {}", op, cached, heads,
                          shape_string(log_forget.shape()));
        if (args.alibi_slopes.defined()) check_shape(args.alibi_slopes, {heads}, "softmax_attention_decode: alibi_slopes");
        return cuda::softmax_attention_decode(
            o.data<float>(), q.data<float>(), keys.data<float>(), values.data<float>(),
            log_forget.defined() ? log_forget.data<float>() : nullptr,
            args.alibi_slopes.defined() ? args.alibi_slopes.data<float>() : nullptr, cached, heads, dk, dv, args.scale,
            args.window);
    }
#endif
    for (const Tensor* t : {static_cast<const Tensor*>(&o), &q, &keys, &values}) {
        LINARCH_CHECK(t->device() == Device::cpu && t->is_contiguous() && t->dtype() == q.dtype(),
                      "{}: every tensor must be a contiguous CPU tensor of q's dtype", op);
    }
    if (log_forget.defined())
        LINARCH_CHECK(log_forget.dim() == 2 && log_forget.size(1) == heads && log_forget.size(0) >= cached &&
                          log_forget.dtype() == q.dtype(),
                      "{}: log_forget: expected [≥{}, {}], got {}", op, cached, heads, shape_string(log_forget.shape()));
    if (args.alibi_slopes.defined()) check_shape(args.alibi_slopes, {heads}, "softmax_attention_decode: alibi_slopes");
    auto run = [&]<typename T>(T) {
        cpu::softmax_attention_decode<T>(
            o.data<T>(), q.data<T>(), keys.data<T>(), values.data<T>(),
            log_forget.defined() ? log_forget.data<T>() : nullptr,
            args.alibi_slopes.defined() ? args.alibi_slopes.data<T>() : nullptr, cached, heads, dk, dv, args.scale,
            args.window);
    };
    if (q.dtype() == DType::f32) run(float{});
    else if (q.dtype() == DType::f64) run(double{});
    else fail("{}: q is {}, expected F32 or F64", op, dtype_name(q.dtype()));
}

}  // namespace linarch::ops
