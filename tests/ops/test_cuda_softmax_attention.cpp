// CUDA causal softmax attention in fp32 (backend/cuda/softmax_attention.cu) against the CPU op in float64
// (itself checked against a full-matrix reference and finite differences in test_softmax_attention.cpp)
// on fresh random inputs: lengths that are not multiples of the 64-token tiles, head sizes that are not
// multiples of the kernels' 16-column strips, Dk ≠ Dv, windows, ALiBi, FoX's forget gate, packed
// sequences down to one token, and backward passes adding into nonzero gradients. Skipped (not passed)
// where no GPU is usable.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "core/tensor.hpp"
#include "ops/softmax_attention.hpp"
#include "support/gpu.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using testkit::minus;
using testkit::relative_error;

namespace {

// fp32 dot products over ≤ 128 features and sums over ≤ 300 keys against float64: ~1e-6 expected.
constexpr double kTolerance = 1e-4;

struct Case {
    std::string name;
    int64_t batch, seq_len, heads, key_dim, value_dim;
    int64_t window = 0;
    bool alibi = false, forget = false;
    std::vector<int64_t> cu_seqlens = {};
};

// q, k ~ N(0, 1.5²) (logits of std ≈ 2: peaked rows), v ~ N(0,1), log forget gates in [−0.5, −0.001]; f64
// on the CPU.
ops::SoftmaxAttentionArgs make_args(const Case& c, uint64_t stream) {
    ops::SoftmaxAttentionArgs args;
    args.scale = 1.0 / std::sqrt(double(c.key_dim));
    args.window = c.window;
    args.cu_seqlens = c.cu_seqlens;
    if (c.alibi) args.alibi_slopes = ops::alibi_slopes(c.heads, DType::f64);
    if (c.forget)
        args.log_forget = testkit::random_uniform({c.batch, c.seq_len, c.heads}, DType::f64, stream, -0.5, -0.001);
    return args;
}

ops::SoftmaxAttentionArgs on_gpu(const ops::SoftmaxAttentionArgs& args) {
    ops::SoftmaxAttentionArgs out = args;
    if (args.alibi_slopes.defined()) out.alibi_slopes = args.alibi_slopes.to(DType::f32).to(Device::cuda);
    if (args.log_forget.defined()) out.log_forget = args.log_forget.to(DType::f32).to(Device::cuda);
    return out;
}

Tensor gpu(const Tensor& t) { return t.to(DType::f32).to(Device::cuda); }
Tensor host(const Tensor& t) { return t.to(Device::cpu).to(DType::f64); }

const std::vector<Case>& cases() {
    static const std::vector<Case> all = {
        {"causal", 2, 130, 3, 32, 48},
        {"window", 1, 200, 2, 64, 64, 37},
        {"alibi", 2, 65, 4, 16, 24, 0, true},
        {"forget", 2, 150, 2, 64, 32, 0, false, true},
        {"alibi, forget and a window", 1, 190, 3, 40, 40, 70, true, true},
        {"packed", 1, 265, 2, 128, 128, 0, false, true, {0, 1, 64, 194, 258, 265}},
        {"packed with a window", 1, 265, 2, 24, 100, 50, true, false, {0, 1, 64, 194, 258, 265}},
        {"one query tile", 3, 17, 1, 7, 5, 0, true, true},
    };
    return all;
}

}  // namespace

TEST(CudaSoftmaxAttention, ForwardMatchesF64) {
    SKIP_WITHOUT_GPU();
    uint64_t stream = 9100;
    for (const Case& c : cases()) {
        SCOPED_TRACE(fmt::format("{}: B={} T={} H={} Dk={} Dv={}", c.name, c.batch, c.seq_len, c.heads, c.key_dim,
                                 c.value_dim));
        const Tensor q = testkit::random_normal({c.batch, c.seq_len, c.heads, c.key_dim}, DType::f64, stream++, 1.5);
        const Tensor k = testkit::random_normal({c.batch, c.seq_len, c.heads, c.key_dim}, DType::f64, stream++, 1.5);
        const Tensor v = testkit::random_normal({c.batch, c.seq_len, c.heads, c.value_dim}, DType::f64, stream++);
        const ops::SoftmaxAttentionArgs args = make_args(c, stream++);
        Tensor o = Tensor::empty(v.shape(), DType::f64), lse = Tensor::empty({c.batch, c.seq_len, c.heads}, DType::f64);
        ops::softmax_attention_forward(o, lse, q, k, v, args);
        Tensor o_gpu = Tensor::empty(v.shape(), DType::f32, Device::cuda);
        Tensor lse_gpu = Tensor::empty(lse.shape(), DType::f32, Device::cuda);
        ops::softmax_attention_forward(o_gpu, lse_gpu, gpu(q), gpu(k), gpu(v), on_gpu(args));
        EXPECT_LT(relative_error(host(o_gpu), o), kTolerance);
        EXPECT_LT(relative_error(host(lse_gpu), lse), kTolerance);
    }
}

TEST(CudaSoftmaxAttention, BackwardMatchesF64AndAddsIntoGradients) {
    SKIP_WITHOUT_GPU();
    uint64_t stream = 9200;
    for (const Case& c : cases()) {
        SCOPED_TRACE(fmt::format("{}: B={} T={} H={} Dk={} Dv={}", c.name, c.batch, c.seq_len, c.heads, c.key_dim,
                                 c.value_dim));
        const Shape qk = {c.batch, c.seq_len, c.heads, c.key_dim}, vo = {c.batch, c.seq_len, c.heads, c.value_dim};
        const Shape scalars = {c.batch, c.seq_len, c.heads};
        const Tensor q = testkit::random_normal(qk, DType::f64, stream++, 1.5);
        const Tensor k = testkit::random_normal(qk, DType::f64, stream++, 1.5);
        const Tensor v = testkit::random_normal(vo, DType::f64, stream++);
        const Tensor dout = testkit::random_normal(vo, DType::f64, stream++);
        const ops::SoftmaxAttentionArgs args = make_args(c, stream++);
        Tensor o = Tensor::empty(vo, DType::f64), lse = Tensor::empty(scalars, DType::f64);
        ops::softmax_attention_forward(o, lse, q, k, v, args);
        // The gradients start from nonzero values (the op adds into them); compared is what it added.
        const Tensor prior[4] = {testkit::random_normal(qk, DType::f64, stream++),
                                 testkit::random_normal(qk, DType::f64, stream++),
                                 testkit::random_normal(vo, DType::f64, stream++),
                                 testkit::random_normal(scalars, DType::f64, stream++)};
        Tensor ref[4] = {prior[0].clone(), prior[1].clone(), prior[2].clone(), prior[3].clone()};
        ops::softmax_attention_backward(ref[0], ref[1], ref[2], c.forget ? &ref[3] : nullptr, dout, q, k, v, o, lse,
                                        args);
        const ops::SoftmaxAttentionArgs gpu_args = on_gpu(args);
        Tensor o_gpu = Tensor::empty(vo, DType::f32, Device::cuda), lse_gpu = Tensor::empty(scalars, DType::f32, Device::cuda);
        const Tensor q_gpu = gpu(q), k_gpu = gpu(k), v_gpu = gpu(v);
        ops::softmax_attention_forward(o_gpu, lse_gpu, q_gpu, k_gpu, v_gpu, gpu_args);
        Tensor got[4] = {gpu(prior[0]), gpu(prior[1]), gpu(prior[2]), gpu(prior[3])};
        ops::softmax_attention_backward(got[0], got[1], got[2], c.forget ? &got[3] : nullptr, gpu(dout), q_gpu, k_gpu,
                                        v_gpu, o_gpu, lse_gpu, gpu_args);
        const char* names[4] = {"dq", "dk", "dv", "dlog_forget"};
        for (int n = 0; n < (c.forget ? 4 : 3); ++n)
            EXPECT_LT(relative_error(minus(host(got[n]), prior[n]), minus(ref[n], prior[n])), kTolerance) << names[n];
    }
}

TEST(CudaSoftmaxAttention, BadOperandsAreNamed) {
    SKIP_WITHOUT_GPU();
    const Shape wide = {1, 8, 1, 256};
    const Tensor q = Tensor::zeros(wide, DType::f32, Device::cuda);
    Tensor o = Tensor::empty(wide, DType::f32, Device::cuda), lse = Tensor::empty({1, 8, 1}, DType::f32, Device::cuda);
    ops::SoftmaxAttentionArgs args;
    args.scale = 1;
    testkit::expect_error([&] { ops::softmax_attention_forward(o, lse, q, q, q, args); },
                          {"softmax_attention_forward", "head sizes up to 128", "Dk=256"});
    const Tensor q16 = Tensor::zeros({1, 8, 1, 16}, DType::f32, Device::cuda);
    Tensor o16 = Tensor::empty({1, 8, 1, 16}, DType::f32, Device::cuda);
    args.cu_seqlens = {0, 5, 7};
    testkit::expect_error([&] { ops::softmax_attention_forward(o16, lse, q16, q16, q16, args); },
                          {"softmax_attention_forward", "cu_seqlens", "T = 8"});
    args.cu_seqlens = {};
    testkit::expect_error([&] { ops::softmax_attention_forward(o16, lse, q16, Tensor::zeros({1, 8, 1, 16}, DType::f32), q16, args); },
                          {"softmax_attention_forward", "k:", "expected cuda"});
}

TEST(CudaSoftmaxAttention, DecodeMatchesF64) {
    SKIP_WITHOUT_GPU();
    // A KV cache of 300 slots, 0 to 299 of them in use; every bias and a window.
    const int64_t capacity = 300, heads = 3, key_dim = 40, value_dim = 24;
    uint64_t stream = 9300;
    const Tensor keys = testkit::random_normal({capacity, heads, key_dim}, DType::f64, stream++, 1.5);
    const Tensor values = testkit::random_normal({capacity, heads, value_dim}, DType::f64, stream++);
    const Tensor log_forget = testkit::random_uniform({capacity, heads}, DType::f64, stream++, -0.5, -0.001);
    for (const int64_t cached : {int64_t(1), int64_t(77), int64_t(300)})
        for (const Case& c : {Case{"plain", 1, 1, heads, key_dim, value_dim},
                              Case{"every bias and a window", 1, 1, heads, key_dim, value_dim, 50, true, true}}) {
            SCOPED_TRACE(fmt::format("{}, {} cached", c.name, cached));
            const Tensor q = testkit::random_normal({heads, key_dim}, DType::f64, stream++, 1.5);
            ops::SoftmaxAttentionArgs args;
            args.scale = 1.0 / std::sqrt(double(key_dim));
            args.window = c.window;
            if (c.alibi) args.alibi_slopes = ops::alibi_slopes(heads, DType::f64);
            const Tensor forget = c.forget ? log_forget : Tensor();
            Tensor o = Tensor::empty({heads, value_dim}, DType::f64);
            ops::softmax_attention_decode(o, q, keys, values, forget, cached, args);
            Tensor o_gpu = Tensor::empty({heads, value_dim}, DType::f32, Device::cuda);
            ops::softmax_attention_decode(o_gpu, gpu(q), gpu(keys), gpu(values), c.forget ? gpu(forget) : Tensor(),
                                          cached, on_gpu(args));
            EXPECT_LT(relative_error(host(o_gpu), o), kTolerance);
        }
}
