// The CUDA dense ops (ops/dense.hpp on fp32 device tensors: cuBLASLt GEMMs and the kernels of
// backend/cuda/dense.cu) against the same ops on the CPU in float64, on fresh random inputs of odd and
// larger shapes, backward passes adding into nonzero gradients; and the device and dtype checks.
// Skipped (not passed) where no GPU is usable.
#include <gtest/gtest.h>

#include <string>
#include <tuple>
#include <vector>

#include "backend/cuda/device.hpp"
#include "core/error.hpp"
#include "core/tensor.hpp"
#include "ops/dense.hpp"
#include "ops/precision.hpp"
#include "support/gpu.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using testkit::random_normal;
using testkit::relative_error;

namespace {

// fp32 sums of a few hundred terms in another order: ~1e-6; a wrong index or transpose is O(1).
constexpr double kTolerance = 1e-5;

Tensor gpu(const Tensor& t) { return t.to(Device::cuda); }
Tensor f64(const Tensor& t) { return t.to(DType::f64); }
Tensor host(const Tensor& t) { return t.to(Device::cpu); }

struct MatmulShape {
    int64_t M, K, N;
};

}  // namespace

TEST(CudaDense, MatmulForwardAndBackwardMatchF64) {
    SKIP_WITHOUT_GPU();
    uint64_t stream = 1000;
    for (const MatmulShape s : {MatmulShape{37, 29, 53}, MatmulShape{256, 130, 300}, MatmulShape{1, 64, 3}}) {
        SCOPED_TRACE(::testing::Message() << "M=" << s.M << " K=" << s.K << " N=" << s.N);
        const Tensor inp = random_normal({s.M, s.K}, DType::f32, stream++);
        const Tensor weight = random_normal({s.N, s.K}, DType::f32, stream++);
        const Tensor prior = random_normal({s.M, s.N}, DType::f32, stream++);
        const Tensor dout = random_normal({s.M, s.N}, DType::f32, stream++);
        const Tensor dinp0 = random_normal({s.M, s.K}, DType::f32, stream++);
        const Tensor dweight0 = random_normal({s.N, s.K}, DType::f32, stream++);
        for (bool accumulate : {false, true}) {
            Tensor ref = f64(prior), out = gpu(prior);
            ops::matmul_forward(ref, f64(inp), f64(weight), accumulate);
            ops::matmul_forward(out, gpu(inp), gpu(weight), accumulate);
            EXPECT_LT(relative_error(host(out), ref), kTolerance) << "accumulate " << accumulate;
        }
        Tensor dinp_ref = f64(dinp0), dweight_ref = f64(dweight0), dinp = gpu(dinp0), dweight = gpu(dweight0);
        ops::matmul_backward(&dinp_ref, &dweight_ref, f64(dout), f64(inp), f64(weight));
        ops::matmul_backward(&dinp, &dweight, gpu(dout), gpu(inp), gpu(weight));
        EXPECT_LT(relative_error(host(dinp), dinp_ref), kTolerance);
        EXPECT_LT(relative_error(host(dweight), dweight_ref), kTolerance);
        Tensor dweight_only = gpu(dweight0);  // a null dinp skips that product
        ops::matmul_backward(nullptr, &dweight_only, gpu(dout), gpu(inp), gpu(weight));
        EXPECT_LT(relative_error(host(dweight_only), dweight_ref), kTolerance);
    }
}

TEST(CudaDense, MatmulUnderMixedPrecisionRoundsOperandsToBf16) {
    SKIP_WITHOUT_GPU();
    const int64_t M = 300, K = 130, N = 77;
    const Tensor inp = random_normal({M, K}, DType::f32, 1050), weight = random_normal({N, K}, DType::f32, 1051);
    const Tensor dout = random_normal({M, N}, DType::f32, 1052), dinp0 = random_normal({M, K}, DType::f32, 1053);
    const Tensor dweight0 = random_normal({N, K}, DType::f32, 1054);
    Tensor ref = Tensor::zeros({M, N}, DType::f64), dinp_ref = f64(dinp0), dweight_ref = f64(dweight0);
    ops::matmul_forward(ref, f64(inp), f64(weight));
    ops::matmul_backward(&dinp_ref, &dweight_ref, f64(dout), f64(inp), f64(weight));
    Tensor out = gpu(Tensor::zeros({M, N})), dinp = gpu(dinp0), dweight = gpu(dweight0);
    {
        const ops::ScopedPrecision bf16(ops::Precision::bf16);
        ops::matmul_forward(out, gpu(inp), gpu(weight));
        ops::matmul_backward(&dinp, &dweight, gpu(dout), gpu(inp), gpu(weight));
    }
    EXPECT_EQ(ops::compute_precision(), ops::Precision::fp32);  // the scope restored it
    // bf16 keeps 8 bits of mantissa: operands are off by up to 2⁻⁹ relative, products summed in fp32.
    for (const auto& [name, got, want] : {std::tuple{"out", &out, &ref}, {"dinp", &dinp, &dinp_ref},
                                          {"dweight", &dweight, &dweight_ref}}) {
        const double error = relative_error(host(*got), *want);
        EXPECT_LT(error, 1e-2) << name;
        EXPECT_GT(error, 1e-5) << name << ": as exact as fp32, so the bf16 path did not run";
    }
}

TEST(CudaDense, EmbeddingGathersAndScattersRepeatedIds) {
    SKIP_WITHOUT_GPU();
    const int64_t V = 300, D = 77, N = 1000;  // ids repeat ~3 times each on average
    const std::vector<int32_t> ids = testkit::random_ids(N, int32_t(V), 1100);
    const Tensor table = random_normal({V, D}, DType::f32, 1101);
    Tensor ref = Tensor::zeros({N, D}, DType::f64), out = gpu(Tensor::zeros({N, D}));
    ops::embedding_forward(ref, ids, f64(table));
    ops::embedding_forward(out, ids, gpu(table));
    EXPECT_EQ(relative_error(host(out), ref), 0.0);  // a gather is exact
    const Tensor dout = random_normal({N, D}, DType::f32, 1102), dtable0 = random_normal({V, D}, DType::f32, 1103);
    Tensor dref = f64(dtable0), dtable = gpu(dtable0);
    ops::embedding_backward(dref, ids, f64(dout));
    ops::embedding_backward(dtable, ids, gpu(dout));
    EXPECT_LT(relative_error(host(dtable), dref), kTolerance);
}

TEST(CudaDense, RmsNormForwardAndBackwardMatchF64) {
    SKIP_WITHOUT_GPU();
    uint64_t stream = 1200;
    // D = 130: not a multiple of 4, so the rows are read one column at a time.
    for (const auto& [N, D] : {std::pair<int64_t, int64_t>{37, 200}, {5, 1000}, {300, 64}, {41, 130}}) {
        SCOPED_TRACE(::testing::Message() << "N=" << N << " D=" << D);
        const Tensor x = random_normal({N, D}, DType::f32, stream++, 2.0);
        const Tensor weight = testkit::random_uniform({D}, DType::f32, stream++, 0.5, 1.5);
        Tensor ref = Tensor::zeros({N, D}, DType::f64), rstd_ref = Tensor::zeros({N}, DType::f64);
        Tensor out = gpu(Tensor::zeros({N, D})), rstd = gpu(Tensor::zeros({N}));
        ops::rmsnorm_forward(ref, rstd_ref, f64(x), f64(weight), 1e-5);
        ops::rmsnorm_forward(out, rstd, gpu(x), gpu(weight), 1e-5);
        EXPECT_LT(relative_error(host(out), ref), kTolerance);
        EXPECT_LT(relative_error(host(rstd), rstd_ref), kTolerance);
        const Tensor dout = random_normal({N, D}, DType::f32, stream++);
        const Tensor dx0 = random_normal({N, D}, DType::f32, stream++), dw0 = random_normal({D}, DType::f32, stream++);
        Tensor dx_ref = f64(dx0), dw_ref = f64(dw0), dx = gpu(dx0), dw = gpu(dw0);
        ops::rmsnorm_backward(&dx_ref, &dw_ref, f64(dout), f64(x), f64(weight), rstd_ref);
        ops::rmsnorm_backward(&dx, &dw, gpu(dout), gpu(x), gpu(weight), rstd);
        EXPECT_LT(relative_error(host(dx), dx_ref), kTolerance);
        EXPECT_LT(relative_error(host(dw), dw_ref), kTolerance);
    }
}

TEST(CudaDense, GroupNormForwardAndBackwardMatchF64) {
    SKIP_WITHOUT_GPU();
    uint64_t stream = 1250;
    for (const auto& [N, groups, dim] : {std::tuple<int64_t, int64_t, int64_t>{37, 4, 64}, {300, 3, 50}}) {
        SCOPED_TRACE(::testing::Message() << "N=" << N << " groups=" << groups << " dim=" << dim);
        const int64_t C = groups * dim;
        // A large mean per row: the two-pass variance must not cancel.
        const Tensor x = testkit::random_uniform({N, C}, DType::f32, stream++, 3.0, 5.0);
        const Tensor weight = testkit::random_uniform({C}, DType::f32, stream++, 0.5, 1.5);
        const Tensor bias = random_normal({C}, DType::f32, stream++);
        Tensor ref = Tensor::zeros({N, C}, DType::f64), mean_ref = Tensor::zeros({N * groups}, DType::f64),
               rstd_ref = Tensor::zeros({N * groups}, DType::f64);
        Tensor out = gpu(Tensor::zeros({N, C})), mean = gpu(Tensor::zeros({N * groups})),
               rstd = gpu(Tensor::zeros({N * groups}));
        ops::group_norm_forward(ref, mean_ref, rstd_ref, f64(x), f64(weight), f64(bias), groups, 1e-5);
        ops::group_norm_forward(out, mean, rstd, gpu(x), gpu(weight), gpu(bias), groups, 1e-5);
        EXPECT_LT(relative_error(host(out), ref), kTolerance);
        EXPECT_LT(relative_error(host(rstd), rstd_ref), kTolerance);
        const Tensor dout = random_normal({N, C}, DType::f32, stream++), dx0 = random_normal({N, C}, DType::f32, stream++);
        const Tensor dw0 = random_normal({C}, DType::f32, stream++), db0 = random_normal({C}, DType::f32, stream++);
        Tensor dx_ref = f64(dx0), dw_ref = f64(dw0), db_ref = f64(db0), dx = gpu(dx0), dw = gpu(dw0), db = gpu(db0);
        ops::group_norm_backward(dx_ref, dw_ref, db_ref, f64(dout), f64(x), f64(weight), mean_ref, rstd_ref, groups);
        ops::group_norm_backward(dx, dw, db, gpu(dout), gpu(x), gpu(weight), mean, rstd, groups);
        EXPECT_LT(relative_error(host(dx), dx_ref), kTolerance);
        EXPECT_LT(relative_error(host(dw), dw_ref), kTolerance);
        EXPECT_LT(relative_error(host(db), db_ref), kTolerance);
    }
}

TEST(CudaDense, ElementwiseOpsMatchF64) {
    SKIP_WITHOUT_GPU();
    const Shape shape = {41, 173};  // not a multiple of the block size
    const Tensor gate = random_normal(shape, DType::f32, 1300, 3.0), up = random_normal(shape, DType::f32, 1301);
    Tensor ref = Tensor::zeros(shape, DType::f64), out = gpu(Tensor::zeros(shape));
    ops::swiglu_forward(ref, f64(gate), f64(up));
    ops::swiglu_forward(out, gpu(gate), gpu(up));
    EXPECT_LT(relative_error(host(out), ref), kTolerance);
    const Tensor dout = random_normal(shape, DType::f32, 1302);
    const Tensor dgate0 = random_normal(shape, DType::f32, 1303), dup0 = random_normal(shape, DType::f32, 1304);
    Tensor dgate_ref = f64(dgate0), dup_ref = f64(dup0), dgate = gpu(dgate0), dup = gpu(dup0);
    ops::swiglu_backward(dgate_ref, dup_ref, f64(dout), f64(gate), f64(up));
    ops::swiglu_backward(dgate, dup, gpu(dout), gpu(gate), gpu(up));
    EXPECT_LT(relative_error(host(dgate), dgate_ref), kTolerance);
    EXPECT_LT(relative_error(host(dup), dup_ref), kTolerance);

    Tensor sum = gpu(gate);
    ops::add_forward(sum, sum, gpu(up));  // out aliasing a
    Tensor sum_ref = f64(gate);
    ops::add_forward(sum_ref, sum_ref, f64(up));
    EXPECT_LT(relative_error(host(sum), sum_ref), kTolerance);
    ops::add_into(sum, gpu(dout));
    ops::add_into(sum_ref, f64(dout));
    EXPECT_LT(relative_error(host(sum), sum_ref), kTolerance);
}

// V·N over the kernel's 64M-float logits buffer, so the vocabulary is folded in four blocks (the last one
// partial); some targets are ignored (< 0).
TEST(CudaDense, LmHeadCrossEntropyMatchesF64AcrossVocabularyBlocks) {
    SKIP_WITHOUT_GPU();
    for (const auto& [N, D, V] : {std::tuple<int64_t, int64_t, int64_t>{37, 64, 1000}, {4096, 32, 50000}}) {
        SCOPED_TRACE(::testing::Message() << "N=" << N << " D=" << D << " V=" << V);
        const Tensor hidden = random_normal({N, D}, DType::f32, 1500 + uint64_t(N));
        const Tensor weight = random_normal({V, D}, DType::f32, 1501 + uint64_t(N), 0.3);
        std::vector<int32_t> targets = testkit::random_ids(N, int32_t(V), 1502 + uint64_t(N));
        for (int64_t n = 0; n < N; n += 7) targets[size_t(n)] = -1;
        Tensor losses_ref = Tensor::zeros({N}, DType::f64), lse_ref = Tensor::zeros({N}, DType::f64);
        Tensor losses = gpu(Tensor::zeros({N})), lse = gpu(Tensor::zeros({N}));
        const double mean_ref = ops::lm_head_cross_entropy_forward(losses_ref, lse_ref, f64(hidden), f64(weight), targets);
        const double mean = ops::lm_head_cross_entropy_forward(losses, lse, gpu(hidden), gpu(weight), targets);
        EXPECT_NEAR(mean, mean_ref, kTolerance * mean_ref);
        EXPECT_LT(relative_error(host(losses), losses_ref), kTolerance);
        EXPECT_LT(relative_error(host(lse), lse_ref), kTolerance);
        const Tensor dhidden0 = random_normal({N, D}, DType::f32, 1503, 1e-3);
        const Tensor dweight0 = random_normal({V, D}, DType::f32, 1504, 1e-3);
        Tensor dhidden_ref = f64(dhidden0), dweight_ref = f64(dweight0), dhidden = gpu(dhidden0), dweight = gpu(dweight0);
        const double scale = 1.0 / double(N);
        ops::lm_head_cross_entropy_backward(&dhidden_ref, &dweight_ref, f64(hidden), f64(weight), targets, lse_ref, scale);
        ops::lm_head_cross_entropy_backward(&dhidden, &dweight, gpu(hidden), gpu(weight), targets, lse, scale);
        EXPECT_LT(relative_error(host(dhidden), dhidden_ref), kTolerance);
        EXPECT_LT(relative_error(host(dweight), dweight_ref), kTolerance);
        Tensor logits_ref = Tensor::zeros({N, V}, DType::f64), logits = gpu(Tensor::zeros({N, V}));
        ops::lm_head_logits(logits_ref, f64(hidden), f64(weight));
        ops::lm_head_logits(logits, gpu(hidden), gpu(weight));
        EXPECT_LT(relative_error(host(logits), logits_ref), kTolerance);
    }
}

TEST(CudaDense, LmHeadCrossEntropyUnderMixedPrecision) {
    SKIP_WITHOUT_GPU();
    const int64_t N = 300, D = 96, V = 5000;
    const Tensor hidden = random_normal({N, D}, DType::f32, 1550), weight = random_normal({V, D}, DType::f32, 1551, 0.3);
    const std::vector<int32_t> targets = testkit::random_ids(N, int32_t(V), 1552);
    Tensor losses_ref = Tensor::zeros({N}, DType::f64), lse_ref = Tensor::zeros({N}, DType::f64);
    ops::lm_head_cross_entropy_forward(losses_ref, lse_ref, f64(hidden), f64(weight), targets);
    Tensor dhidden_ref = Tensor::zeros({N, D}, DType::f64), dweight_ref = Tensor::zeros({V, D}, DType::f64);
    ops::lm_head_cross_entropy_backward(&dhidden_ref, &dweight_ref, f64(hidden), f64(weight), targets, lse_ref, 0.01);
    Tensor losses = gpu(Tensor::zeros({N})), lse = gpu(Tensor::zeros({N}));
    Tensor dhidden = gpu(Tensor::zeros({N, D})), dweight = gpu(Tensor::zeros({V, D}));
    {
        const ops::ScopedPrecision bf16(ops::Precision::bf16);
        ops::lm_head_cross_entropy_forward(losses, lse, gpu(hidden), gpu(weight), targets);
        ops::lm_head_cross_entropy_backward(&dhidden, &dweight, gpu(hidden), gpu(weight), targets, lse, 0.01);
    }
    for (const auto& [name, got, want] : {std::tuple{"losses", &losses, &losses_ref}, {"dhidden", &dhidden, &dhidden_ref},
                                          {"dweight", &dweight, &dweight_ref}}) {
        const double error = relative_error(host(*got), *want);
        EXPECT_LT(error, 2e-2) << name;
        EXPECT_GT(error, 1e-5) << name << ": as exact as fp32, so the bf16 GEMMs did not run";
    }
}

TEST(CudaDense, NormScaleAndAdamWMatchF64) {
    SKIP_WITHOUT_GPU();
    const int64_t n = 1000003;  // more elements than the reduction's grid covers in one sweep
    const Tensor x = random_normal({n}, DType::f32, 1600);
    EXPECT_NEAR(ops::sum_squares(gpu(x)), ops::sum_squares(f64(x)), 1e-9 * ops::sum_squares(f64(x)));
    // Several tensors in one call (the gradient norm): one synchronisation, the same sum.
    const Tensor y = random_normal({777}, DType::f32, 1601), z = random_normal({5, 9}, DType::f32, 1602);
    const Tensor gx = gpu(x), gy = gpu(y), gz = gpu(z);
    const Tensor* all[] = {&gx, &gy, &gz};
    const double expected = ops::sum_squares(f64(x)) + ops::sum_squares(f64(y)) + ops::sum_squares(f64(z));
    EXPECT_NEAR(ops::sum_squares(all), expected, 1e-9 * expected);
    Tensor scaled = gpu(x), scaled_ref = f64(x);
    ops::scale_inplace(scaled, 0.37);
    ops::scale_inplace(scaled_ref, 0.37);
    EXPECT_LT(relative_error(host(scaled), scaled_ref), kTolerance);

    const Shape shape = {301, 7};
    Tensor param = gpu(random_normal(shape, DType::f32, 1601)), m = gpu(Tensor::zeros(shape)), v = gpu(Tensor::zeros(shape));
    Tensor param_ref = f64(host(param)), m_ref = Tensor::zeros(shape, DType::f64), v_ref = Tensor::zeros(shape, DType::f64);
    for (int64_t step = 1; step <= 3; ++step) {
        const Tensor grad = random_normal(shape, DType::f32, 1601 + uint64_t(step));
        const ops::AdamWParams hp{1e-2, 0.9, 0.95, 1e-8, 0.1, step};
        ops::adamw_update(param, gpu(grad), m, v, hp);
        ops::adamw_update(param_ref, f64(grad), m_ref, v_ref, hp);
    }
    EXPECT_LT(relative_error(host(param), param_ref), kTolerance);
    EXPECT_LT(relative_error(host(m), m_ref), kTolerance);
    EXPECT_LT(relative_error(host(v), v_ref), kTolerance);
}

TEST(CudaDense, MixedDevicesAndDtypesAreClearErrors) {
    SKIP_WITHOUT_GPU();
    const Tensor inp = gpu(random_normal({4, 6}, DType::f32, 1400));
    const Tensor weight_on_cpu = random_normal({5, 6}, DType::f32, 1401);
    Tensor out = gpu(Tensor::zeros({4, 5}));
    try {
        ops::matmul_forward(out, inp, weight_on_cpu);
        ADD_FAILURE() << "a CPU weight with a CUDA input was accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("matmul_forward: weight is on cpu but inp is on cuda"), std::string::npos)
            << e.what();
    }
    const Tensor x64 = gpu(random_normal({4, 6}, DType::f64, 1402));
    Tensor y64 = gpu(Tensor::zeros({4, 6}, DType::f64));
    try {
        ops::add_into(y64, x64);
        ADD_FAILURE() << "f64 on CUDA was accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("add_into: dst has dtype F64; dense ops on CUDA take F32"),
                  std::string::npos)
            << e.what();
    }
}
