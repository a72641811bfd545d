// Dense ops (ops/dense.hpp) on the CPU backend. For each op: the f32 forward against the float64
// reference (backend/cpu/reference_dense.hpp) on fresh random inputs and several shapes, the f64
// backward against central finite differences of the f64 forward, the f32 backward against the f64
// backward, backward accumulation, and bad inputs. Inputs are random per run (seed printed).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "backend/cpu/reference_dense.hpp"
#include "backend/cuda/device.hpp"
#include "core/rng.hpp"
#include "core/tensor.hpp"
#include "ops/dense.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using testkit::count_non_finite;
using testkit::expect_error;
using testkit::gradient_check;
using testkit::random_ids;
using testkit::random_normal;
using testkit::relative_error;

namespace {

// f32 forward vs the f64 reference: a few f32 roundings per output on O(1) values.
constexpr double kF32ForwardBound = 1e-5;
// f64 analytic gradient vs central differences with step 1e-6 (truncation ~1e-12, rounding ~1e-9).
constexpr double kFiniteDifferenceBound = 1e-6;
// f32 backward vs f64 backward (same math, inputs rounded to f32).
constexpr double kF32BackwardBound = 1e-4;

// Output buffers start as NaN so an element the op forgets to write fails the comparison.
Tensor nan_tensor(const Shape& shape, DType dtype) {
    Tensor t = Tensor::empty(shape, dtype);
    t.fill(NAN);
    return t;
}

// factor · t, as f64.
Tensor scaled(const Tensor& t, double factor) {
    Tensor out = t.to(DType::f64);
    double* p = out.data<double>();
    for (int64_t i = 0; i < out.numel(); ++i) p[i] *= factor;
    return out;
}

// a + b, as f64.
Tensor plus(const Tensor& a, const Tensor& b) {
    Tensor out = a.to(DType::f64);
    double* p = out.data<double>();
    for (int64_t i = 0; i < out.numel(); ++i) p[i] += b.flat(i);
    return out;
}

// Random targets in [0, V) with about a fifth ignored (−1), always at least one of each when n ≥ 2.
std::vector<int32_t> targets_with_ignored(int64_t n, int32_t V, uint64_t stream) {
    std::vector<int32_t> targets = random_ids(n, V, stream);
    RngStream coin(testkit::test_seed(), stream + 1);
    for (auto& t : targets)
        if (coin.uniform() < 0.2) t = -1;
    if (n >= 2) {
        targets[size_t(n / 2)] = -1;
        targets[0] = int32_t(coin.below(uint64_t(V)));
    }
    return targets;
}

int64_t count_kept(const std::vector<int32_t>& targets) {
    int64_t count = 0;
    for (int32_t t : targets) count += t >= 0;
    return count;
}

// Runs backward(dtype, grads), which adds into `grads` (zeroed, of grad_shapes) from inputs converted to
// dtype, in f64 and in f32; checks f32 against f64, then calls the f32 one again and checks that every
// gradient doubled (backward adds into its gradients, it does not overwrite them).
void expect_f32_backward_matches_f64_and_accumulates(const std::vector<Shape>& grad_shapes,
                                                     const std::function<void(DType, std::vector<Tensor>&)>& backward) {
    auto zeroed = [&](DType dtype) {
        std::vector<Tensor> grads;
        for (const auto& shape : grad_shapes) grads.push_back(Tensor::zeros(shape, dtype));
        return grads;
    };
    std::vector<Tensor> grads64 = zeroed(DType::f64), grads32 = zeroed(DType::f32);
    backward(DType::f64, grads64);
    backward(DType::f32, grads32);
    for (size_t i = 0; i < grads64.size(); ++i)
        EXPECT_LT(relative_error(grads32[i], grads64[i]), kF32BackwardBound) << "gradient " << i;
    backward(DType::f32, grads32);
    for (size_t i = 0; i < grads64.size(); ++i)
        EXPECT_LT(relative_error(grads32[i], scaled(grads64[i], 2)), kF32BackwardBound) << "gradient " << i << " twice";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// matmul: out[M,N] = inp[M,K] · weight[N,K]ᵀ

TEST(Matmul, ForwardMatchesReference) {
    struct Case { int64_t M, K, N; };
    for (const Case c : {Case{1, 1, 1}, Case{1, 129, 65}, Case{37, 129, 257}, Case{64, 64, 64}, Case{200, 33, 17}}) {
        SCOPED_TRACE(testing::Message() << "M=" << c.M << " K=" << c.K << " N=" << c.N);
        const Tensor inp = random_normal({c.M, c.K}, DType::f32, 101);
        const Tensor weight = random_normal({c.N, c.K}, DType::f32, 102);
        Tensor out = nan_tensor({c.M, c.N}, DType::f32);
        ops::matmul_forward(out, inp, weight);
        const Tensor ref = reference::matmul(inp.to(DType::f64), weight.to(DType::f64));
        EXPECT_LT(relative_error(out, ref), kF32ForwardBound);
        // accumulate adds the product to what out holds.
        const Tensor base = random_normal({c.M, c.N}, DType::f32, 103);
        Tensor accumulated = base.clone();
        ops::matmul_forward(accumulated, inp, weight, /*accumulate=*/true);
        EXPECT_LT(relative_error(accumulated, plus(ref, base)), kF32ForwardBound);
    }
}

TEST(Matmul, BackwardMatchesFiniteDifferences) {
    struct Case { int64_t M, K, N; };
    for (const Case c : {Case{1, 5, 3}, Case{37, 29, 17}}) {
        SCOPED_TRACE(testing::Message() << "M=" << c.M << " K=" << c.K << " N=" << c.N);
        Tensor inp = random_normal({c.M, c.K}, DType::f64, 111);
        Tensor weight = random_normal({c.N, c.K}, DType::f64, 112);
        const Tensor direction = random_normal({c.M, c.N}, DType::f64, 113);
        Tensor out = Tensor::empty({c.M, c.N}, DType::f64);
        auto loss = [&] {
            ops::matmul_forward(out, inp, weight);
            return testkit::dot(out, direction);
        };
        // One gradient per call: a null gradient is skipped.
        Tensor dinp = Tensor::zeros({c.M, c.K}, DType::f64), dweight = Tensor::zeros({c.N, c.K}, DType::f64);
        ops::matmul_backward(&dinp, nullptr, direction, inp, weight);
        ops::matmul_backward(nullptr, &dweight, direction, inp, weight);
        EXPECT_LT(gradient_check(loss, inp, dinp), kFiniteDifferenceBound);
        EXPECT_LT(gradient_check(loss, weight, dweight), kFiniteDifferenceBound);
    }
}

TEST(Matmul, BackwardF32MatchesF64AndAccumulates) {
    const int64_t M = 37, K = 129, N = 65;
    const Tensor inp = random_normal({M, K}, DType::f64, 121), weight = random_normal({N, K}, DType::f64, 122);
    const Tensor dout = random_normal({M, N}, DType::f64, 123);
    expect_f32_backward_matches_f64_and_accumulates({{M, K}, {N, K}}, [&](DType dtype, std::vector<Tensor>& grads) {
        ops::matmul_backward(&grads[0], &grads[1], dout.to(dtype), inp.to(dtype), weight.to(dtype));
    });
}

TEST(Matmul, BadInputsAreErrors) {
    const Tensor inp = random_normal({4, 6}, DType::f32, 131);
    const Tensor weight = random_normal({5, 6}, DType::f32, 132);
    Tensor out = Tensor::zeros({4, 5});
    expect_error([&] { ops::matmul_forward(out, inp, random_normal({5, 7}, DType::f32, 133)); },
                 {"matmul_forward", "weight: expected shape [5, 6], got [5, 7]"});
    Tensor wrong_out = Tensor::zeros({5, 4});
    expect_error([&] { ops::matmul_forward(wrong_out, inp, weight); },
                 {"matmul_forward", "out: expected shape [4, 5], got [5, 4]"});
    expect_error([&] { ops::matmul_forward(out, inp, weight.to(DType::f64)); }, {"matmul_forward", "weight", "F64"});
    expect_error([&] { ops::matmul_forward(out, inp.to(DType::bf16), weight); }, {"matmul_forward", "inp", "BF16"});
    expect_error([&] { ops::matmul_forward(out, inp.view({24}), weight); }, {"matmul_forward", "inp", "2-D"});
    const Tensor wide = random_normal({6, 4}, DType::f32, 134);
    expect_error([&] { ops::matmul_forward(out, wide.transpose(0, 1), weight); },
                 {"matmul_forward", "inp", "contiguous"});
    Tensor dinp = Tensor::zeros({4, 5});
    expect_error([&] { ops::matmul_backward(&dinp, nullptr, out, inp, weight); },
                 {"matmul_backward", "dinp: expected shape [4, 6], got [4, 5]"});
    expect_error([&] { ops::matmul_backward(nullptr, nullptr, Tensor::zeros({4, 6}), inp, weight); },
                 {"matmul_backward", "dout"});
}

// ---------------------------------------------------------------------------------------------
// embedding: out[N,D] = table[ids[n], :]

TEST(Embedding, ForwardMatchesReference) {
    struct Case { int64_t N, V, D; };
    for (const Case c : {Case{1, 1, 1}, Case{37, 257, 33}, Case{300, 13, 129}}) {
        SCOPED_TRACE(testing::Message() << "N=" << c.N << " V=" << c.V << " D=" << c.D);
        const Tensor table = random_normal({c.V, c.D}, DType::f32, 201);
        const std::vector<int32_t> ids = random_ids(c.N, int32_t(c.V), 202);
        Tensor out = nan_tensor({c.N, c.D}, DType::f32);
        ops::embedding_forward(out, ids, table);
        // A gather copies values: exact.
        EXPECT_EQ(relative_error(out, reference::embedding(ids, table.to(DType::f64))), 0.0);
    }
}

TEST(Embedding, BackwardMatchesFiniteDifferences) {
    // More ids than rows: repeated ids must sum their gradients.
    const int64_t N = 40, V = 13, D = 7;
    Tensor table = random_normal({V, D}, DType::f64, 211);
    const std::vector<int32_t> ids = random_ids(N, int32_t(V), 212);
    const Tensor direction = random_normal({N, D}, DType::f64, 213);
    Tensor out = Tensor::empty({N, D}, DType::f64);
    auto loss = [&] {
        ops::embedding_forward(out, ids, table);
        return testkit::dot(out, direction);
    };
    Tensor dtable = Tensor::zeros({V, D}, DType::f64);
    ops::embedding_backward(dtable, ids, direction);
    EXPECT_LT(gradient_check(loss, table, dtable, V * D), kFiniteDifferenceBound);
}

TEST(Embedding, BackwardF32MatchesF64AndAccumulates) {
    const int64_t N = 300, V = 50, D = 129;
    const std::vector<int32_t> ids = random_ids(N, int32_t(V), 221);
    const Tensor dout = random_normal({N, D}, DType::f64, 222);
    expect_f32_backward_matches_f64_and_accumulates({{V, D}}, [&](DType dtype, std::vector<Tensor>& grads) {
        ops::embedding_backward(grads[0], ids, dout.to(dtype));
    });
}

TEST(Embedding, BadInputsAreErrors) {
    const Tensor table = random_normal({10, 4}, DType::f32, 231);
    Tensor out = Tensor::zeros({3, 4});
    expect_error([&] { ops::embedding_forward(out, std::vector<int32_t>{1, 10, 2}, table); },
                 {"embedding_forward", "ids[1] = 10", "[0, 10)"});
    expect_error([&] { ops::embedding_forward(out, std::vector<int32_t>{1, 2, -1}, table); },
                 {"embedding_forward", "ids[2] = -1"});
    expect_error([&] { ops::embedding_forward(out, std::vector<int32_t>{1, 2}, table); },
                 {"embedding_forward", "out: expected shape [2, 4], got [3, 4]"});
    expect_error([&] { ops::embedding_forward(out, std::vector<int32_t>{1, 2, 3}, table.to(DType::f64)); },
                 {"embedding_forward", "out", "F32"});
    Tensor dtable = Tensor::zeros({10, 4});
    expect_error([&] { ops::embedding_backward(dtable, std::vector<int32_t>{0, 11, 2}, out); },
                 {"embedding_backward", "ids[1] = 11"});
    expect_error([&] { ops::embedding_backward(dtable, std::vector<int32_t>{0, 1, 2}, Tensor::zeros({3, 5})); },
                 {"embedding_backward", "dout: expected shape [3, 4], got [3, 5]"});
}

// ---------------------------------------------------------------------------------------------
// rmsnorm: out[N,D] = x / sqrt(mean(x²) + eps) · weight[D]

TEST(Rmsnorm, ForwardMatchesReference) {
    const double eps = 1e-5;
    // x_std = 0.01 makes mean(x²) ~ 1e-4, where eps = 1e-5 changes the output by ~5%.
    struct Case { int64_t N, D; double x_std; };
    for (const Case c : {Case{1, 1, 2.0}, Case{37, 129, 2.0}, Case{300, 64, 1.0}, Case{5, 1000, 0.01}}) {
        SCOPED_TRACE(testing::Message() << "N=" << c.N << " D=" << c.D << " x_std=" << c.x_std);
        const Tensor x = random_normal({c.N, c.D}, DType::f32, 301, c.x_std);
        const Tensor weight = testkit::random_uniform({c.D}, DType::f32, 302, 0.5, 1.5);
        Tensor out = nan_tensor({c.N, c.D}, DType::f32), rstd = nan_tensor({c.N}, DType::f32);
        ops::rmsnorm_forward(out, rstd, x, weight, eps);
        const auto ref = reference::rmsnorm(x.to(DType::f64), weight.to(DType::f64), eps);
        EXPECT_LT(relative_error(out, ref.out), kF32ForwardBound);
        EXPECT_LT(relative_error(rstd, ref.rstd), kF32ForwardBound);
    }
}

TEST(Rmsnorm, BackwardMatchesFiniteDifferences) {
    const double eps = 1e-5;
    struct Case { int64_t N, D; };
    for (const Case c : {Case{1, 7}, Case{37, 65}}) {
        SCOPED_TRACE(testing::Message() << "N=" << c.N << " D=" << c.D);
        Tensor x = random_normal({c.N, c.D}, DType::f64, 311);
        Tensor weight = random_normal({c.D}, DType::f64, 312);
        const Tensor direction = random_normal({c.N, c.D}, DType::f64, 313);
        Tensor out = Tensor::empty({c.N, c.D}, DType::f64), rstd = Tensor::empty({c.N}, DType::f64);
        auto loss = [&] {
            ops::rmsnorm_forward(out, rstd, x, weight, eps);
            return testkit::dot(out, direction);
        };
        loss();
        // One gradient per call: a null gradient is skipped.
        Tensor dx = Tensor::zeros({c.N, c.D}, DType::f64), dweight = Tensor::zeros({c.D}, DType::f64);
        ops::rmsnorm_backward(&dx, nullptr, direction, x, weight, rstd);
        ops::rmsnorm_backward(nullptr, &dweight, direction, x, weight, rstd);
        EXPECT_LT(gradient_check(loss, x, dx), kFiniteDifferenceBound);
        EXPECT_LT(gradient_check(loss, weight, dweight), kFiniteDifferenceBound);
    }
}

TEST(Rmsnorm, BackwardF32MatchesF64AndAccumulates) {
    const double eps = 1e-5;
    const int64_t N = 300, D = 129;
    const Tensor x = random_normal({N, D}, DType::f64, 321), weight = random_normal({D}, DType::f64, 322);
    const Tensor dout = random_normal({N, D}, DType::f64, 323);
    expect_f32_backward_matches_f64_and_accumulates({{N, D}, {D}}, [&](DType dtype, std::vector<Tensor>& grads) {
        const Tensor x_t = x.to(dtype), weight_t = weight.to(dtype);
        Tensor out = Tensor::empty({N, D}, dtype), rstd = Tensor::empty({N}, dtype);
        ops::rmsnorm_forward(out, rstd, x_t, weight_t, eps);
        ops::rmsnorm_backward(&grads[0], &grads[1], dout.to(dtype), x_t, weight_t, rstd);
    });
}

TEST(Rmsnorm, BadInputsAreErrors) {
    const Tensor x = random_normal({4, 64}, DType::f32, 331);
    Tensor out = Tensor::zeros({4, 64}), rstd = Tensor::zeros({4});
    expect_error([&] { ops::rmsnorm_forward(out, rstd, x, Tensor::zeros({32}), 1e-5); },
                 {"rmsnorm_forward: weight: expected shape [64], got [32]"});
    Tensor wrong_rstd = Tensor::zeros({4, 1});
    expect_error([&] { ops::rmsnorm_forward(out, wrong_rstd, x, Tensor::zeros({64}), 1e-5); },
                 {"rmsnorm_forward: rstd: expected shape [4], got [4, 1]"});
    expect_error([&] { ops::rmsnorm_forward(out, rstd, x, Tensor::zeros({64}, DType::f64), 1e-5); },
                 {"rmsnorm_forward", "weight", "F64"});
    Tensor dx = Tensor::zeros({4, 63});
    expect_error([&] { ops::rmsnorm_backward(&dx, nullptr, out, x, Tensor::zeros({64}), rstd); },
                 {"rmsnorm_backward: dx: expected shape [4, 64], got [4, 63]"});
}

// ---------------------------------------------------------------------------------------------
// GroupNorm: per group of D channels, (x − mean)/std · weight + bias

namespace {
// Float64 GroupNorm from its definition, one group at a time.
Tensor group_norm_definition(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t groups, double eps) {
    const int64_t N = x.size(0), C = x.size(1), D = C / groups;
    Tensor out = Tensor::empty({N, C}, DType::f64);
    for (int64_t n = 0; n < N; ++n)
        for (int64_t g = 0; g < groups; ++g) {
            long double mean = 0, var = 0;
            for (int64_t d = 0; d < D; ++d) mean += x.item({n, g * D + d});
            mean /= D;
            for (int64_t d = 0; d < D; ++d) var += (x.item({n, g * D + d}) - mean) * (x.item({n, g * D + d}) - mean);
            var /= D;
            for (int64_t d = 0; d < D; ++d) {
                const int64_t c = g * D + d;
                out.data<double>()[n * C + c] =
                    double((x.item({n, c}) - mean) / std::sqrt(var + eps) * weight.flat(c) + bias.flat(c));
            }
        }
    return out;
}
}  // namespace

TEST(GroupNorm, ForwardMatchesDefinitionAndBackwardFiniteDifferences) {
    const double eps = 1e-5;
    struct Case { int64_t N, groups, D; double offset; };
    // A large common offset checks that the variance is not computed as E[x²] − E[x]².
    // (Groups of 2 normalise to ±1 whatever x is: a flat function, no test of the gradient.)
    for (const Case c : {Case{1, 1, 3, 0.0}, Case{7, 3, 5, 0.0}, Case{33, 4, 16, 1e3}}) {
        SCOPED_TRACE(testing::Message() << "N=" << c.N << " groups=" << c.groups << " D=" << c.D);
        const int64_t C = c.groups * c.D;
        Tensor x = random_normal({c.N, C}, DType::f64, 341);
        for (int64_t i = 0; i < x.numel(); ++i) x.data<double>()[i] += c.offset;
        Tensor weight = random_normal({C}, DType::f64, 342), bias = random_normal({C}, DType::f64, 343);
        Tensor out = Tensor::empty({c.N, C}, DType::f64), mean = Tensor::empty({c.N * c.groups}, DType::f64),
               rstd = Tensor::empty({c.N * c.groups}, DType::f64);
        ops::group_norm_forward(out, mean, rstd, x, weight, bias, c.groups, eps);
        EXPECT_LT(relative_error(out, group_norm_definition(x, weight, bias, c.groups, eps)), 1e-12);
        Tensor out32 = Tensor::empty({c.N, C}), mean32 = Tensor::empty({c.N * c.groups}),
               rstd32 = Tensor::empty({c.N * c.groups});
        ops::group_norm_forward(out32, mean32, rstd32, x.to(DType::f32), weight.to(DType::f32), bias.to(DType::f32),
                                c.groups, eps);
        EXPECT_LT(relative_error(out32, out), c.offset > 0 ? 1e-3 : kF32ForwardBound);

        if (c.offset > 0) continue;  // finite differences at moderate inputs only
        const Tensor direction = random_normal({c.N, C}, DType::f64, 344);
        auto loss = [&] {
            ops::group_norm_forward(out, mean, rstd, x, weight, bias, c.groups, eps);
            return testkit::dot(out, direction);
        };
        loss();
        Tensor dx = Tensor::zeros({c.N, C}, DType::f64), dweight = Tensor::zeros({C}, DType::f64),
               dbias = Tensor::zeros({C}, DType::f64);
        ops::group_norm_backward(dx, dweight, dbias, direction, x, weight, mean, rstd, c.groups);
        EXPECT_LT(gradient_check(loss, x, dx), kFiniteDifferenceBound);
        EXPECT_LT(gradient_check(loss, weight, dweight), kFiniteDifferenceBound);
        EXPECT_LT(gradient_check(loss, bias, dbias), kFiniteDifferenceBound);
    }
    Tensor x = random_normal({2, 6}, DType::f64, 345), out = Tensor::empty({2, 6}, DType::f64);
    Tensor mean = Tensor::empty({8}, DType::f64), rstd = Tensor::empty({8}, DType::f64);
    expect_error(
        [&] {
            ops::group_norm_forward(out, mean, rstd, x, Tensor::zeros({6}, DType::f64), Tensor::zeros({6}, DType::f64),
                                    4, 1e-5);
        },
        {"group_norm_forward", "4 groups", "6 channels"});
}

// ---------------------------------------------------------------------------------------------
// SwiGLU: out = silu(gate) · up

TEST(Swiglu, ForwardMatchesReference) {
    for (const Shape& shape : {Shape{1}, Shape{37, 129}, Shape{300, 64}}) {
        SCOPED_TRACE(shape_string(shape));
        // Wide gates reach both saturated ends of the sigmoid.
        Tensor gate = random_normal(shape, DType::f32, 401, 4.0);
        const Tensor up = random_normal(shape, DType::f32, 402);
        Tensor out = nan_tensor(shape, DType::f32);
        ops::swiglu_forward(out, gate, up);
        EXPECT_LT(relative_error(out, reference::swiglu(gate.to(DType::f64), up.to(DType::f64))), kF32ForwardBound);
    }
}

TEST(Swiglu, BackwardMatchesFiniteDifferences) {
    const Shape shape{37, 29};
    Tensor gate = random_normal(shape, DType::f64, 411, 3.0);
    Tensor up = random_normal(shape, DType::f64, 412);
    const Tensor direction = random_normal(shape, DType::f64, 413);
    Tensor out = Tensor::empty(shape, DType::f64);
    auto loss = [&] {
        ops::swiglu_forward(out, gate, up);
        return testkit::dot(out, direction);
    };
    Tensor dgate = Tensor::zeros(shape, DType::f64), dup = Tensor::zeros(shape, DType::f64);
    ops::swiglu_backward(dgate, dup, direction, gate, up);
    EXPECT_LT(gradient_check(loss, gate, dgate), kFiniteDifferenceBound);
    EXPECT_LT(gradient_check(loss, up, dup), kFiniteDifferenceBound);
}

TEST(Swiglu, BackwardF32MatchesF64AndAccumulates) {
    const Shape shape{300, 65};
    const Tensor gate = random_normal(shape, DType::f64, 421, 3.0), up = random_normal(shape, DType::f64, 422);
    const Tensor dout = random_normal(shape, DType::f64, 423);
    expect_f32_backward_matches_f64_and_accumulates({shape, shape}, [&](DType dtype, std::vector<Tensor>& grads) {
        ops::swiglu_backward(grads[0], grads[1], dout.to(dtype), gate.to(dtype), up.to(dtype));
    });
}

TEST(Swiglu, BadInputsAreErrors) {
    const Tensor gate = random_normal({4, 8}, DType::f32, 431);
    Tensor out = Tensor::zeros({4, 8});
    expect_error([&] { ops::swiglu_forward(out, gate, Tensor::zeros({4, 9})); },
                 {"swiglu_forward: up: expected shape [4, 8], got [4, 9]"});
    expect_error([&] { ops::swiglu_forward(out, gate, Tensor::zeros({4, 8}, DType::f64)); },
                 {"swiglu_forward", "up", "F64"});
    Tensor dgate = Tensor::zeros({4, 8}), dup = Tensor::zeros({8, 4});
    expect_error([&] { ops::swiglu_backward(dgate, dup, out, gate, gate); },
                 {"swiglu_backward: dup: expected shape [4, 8], got [8, 4]"});
}

// ---------------------------------------------------------------------------------------------
// residual add, sum of squares, scaling

TEST(Elementwise, AddSumSquaresAndScaleMatchDefinitions) {
    for (const DType dtype : {DType::f32, DType::f64}) {
        SCOPED_TRACE(std::string(dtype_name(dtype)));
        const Shape shape{37, 257};
        const Tensor a = random_normal(shape, dtype, 501), b = random_normal(shape, dtype, 502);
        Tensor out = nan_tensor(shape, dtype);
        ops::add_forward(out, a, b);
        EXPECT_LT(relative_error(out, plus(a, b)), 1e-7);
        Tensor aliased = a.clone();
        ops::add_forward(aliased, aliased, b);  // out may alias a
        EXPECT_LT(relative_error(aliased, plus(a, b)), 1e-7);
        Tensor dst = a.clone();
        ops::add_into(dst, b);
        EXPECT_LT(relative_error(dst, plus(a, b)), 1e-7);

        // Σ x² over more elements than one partial-sum chunk.
        const Tensor x = random_normal({3, 5001}, dtype, 503);
        double expected = 0;
        for (int64_t i = 0; i < x.numel(); ++i) expected += x.flat(i) * x.flat(i);
        EXPECT_NEAR(ops::sum_squares(x), expected, 1e-12 * expected);
        // Of several tensors at once: the sum of theirs.
        const Tensor x2 = random_normal({17}, dtype, 505);
        const Tensor* both[] = {&x, &x2};
        EXPECT_EQ(ops::sum_squares(both), ops::sum_squares(x) + ops::sum_squares(x2));

        const double factor = testkit::random_uniform({1}, DType::f64, 504, 0.1, 2.0).flat(0);
        Tensor y = x.clone();
        ops::scale_inplace(y, factor);
        EXPECT_LT(relative_error(y, scaled(x, factor)), 1e-7);
    }
}

TEST(Elementwise, BadInputsAreErrors) {
    Tensor a = Tensor::zeros({3, 4});
    expect_error([&] { ops::add_forward(a, a, Tensor::zeros({4, 3})); },
                 {"add_forward: b: expected shape [3, 4], got [4, 3]"});
    expect_error([&] { ops::add_into(a, Tensor::zeros({3, 4}, DType::f64)); }, {"add_into", "src", "F64"});
    expect_error([&] { ops::sum_squares(Tensor::zeros({3}, DType::f16)); }, {"sum_squares", "x", "F16"});
    expect_error([&] { ops::sum_squares(a.transpose(0, 1)); }, {"sum_squares", "x", "contiguous"});
}

// ---------------------------------------------------------------------------------------------
// LM head + cross-entropy: logits = hidden[N,D] · weight[V,D]ᵀ, never stored whole

namespace {
struct LmHeadCase {
    int64_t N, D, V;
};
// N = 300 spans several row blocks and ends in a partial one; V = 257 is odd.
const LmHeadCase kLmHeadCases[] = {{1, 16, 257}, {37, 64, 257}, {300, 32, 100}};

// For expect_f32_backward_matches_f64_and_accumulates: the forward (for logsumexp), then the backward
// of the mean loss into dhidden, dweight; every gradient must be finite.
std::function<void(DType, std::vector<Tensor>&)> lm_head_backward(const Tensor& hidden, const Tensor& weight,
                                                                  const std::vector<int32_t>& targets) {
    return [&hidden, &weight, &targets](DType dtype, std::vector<Tensor>& grads) {
        const Tensor hidden_t = hidden.to(dtype), weight_t = weight.to(dtype);
        Tensor losses = Tensor::empty({hidden.size(0)}, dtype), lse = Tensor::empty({hidden.size(0)}, dtype);
        ops::lm_head_cross_entropy_forward(losses, lse, hidden_t, weight_t, targets);
        ops::lm_head_cross_entropy_backward(&grads[0], &grads[1], hidden_t, weight_t, targets, lse,
                                            1.0 / double(count_kept(targets)));
        EXPECT_EQ(count_non_finite(grads[0]), 0);
        EXPECT_EQ(count_non_finite(grads[1]), 0);
    };
}
}  // namespace

TEST(LmHeadCrossEntropy, ForwardMatchesReference) {
    for (const auto& c : kLmHeadCases) {
        SCOPED_TRACE(testing::Message() << "N=" << c.N << " D=" << c.D << " V=" << c.V);
        const Tensor hidden = random_normal({c.N, c.D}, DType::f32, 601);
        const Tensor weight = random_normal({c.V, c.D}, DType::f32, 602, 1.0 / std::sqrt(double(c.D)));
        // A single row is kept so the reference losses are not all zero.
        const auto targets = c.N == 1 ? random_ids(1, int32_t(c.V), 603) : targets_with_ignored(c.N, int32_t(c.V), 603);
        Tensor losses = nan_tensor({c.N}, DType::f32), lse = nan_tensor({c.N}, DType::f32);
        const double mean = ops::lm_head_cross_entropy_forward(losses, lse, hidden, weight, targets);
        const auto ref = reference::lm_head_cross_entropy(hidden.to(DType::f64), weight.to(DType::f64), targets);
        EXPECT_LT(relative_error(losses, ref.losses), kF32ForwardBound);
        EXPECT_LT(relative_error(lse, ref.logsumexp), kF32ForwardBound);
        EXPECT_LT(std::abs(mean - ref.mean_loss) / ref.mean_loss, kF32ForwardBound);

        Tensor logits = nan_tensor({c.N, c.V}, DType::f32);
        ops::lm_head_logits(logits, hidden, weight);
        EXPECT_LT(relative_error(logits, reference::matmul(hidden.to(DType::f64), weight.to(DType::f64))),
                  kF32ForwardBound);
    }
}

TEST(LmHeadCrossEntropy, MeanIsOverRowsNotIgnored) {
    const int64_t N = 300, D = 32, V = 257;
    const Tensor hidden = random_normal({N, D}, DType::f32, 611);
    const Tensor weight = random_normal({V, D}, DType::f32, 612, 0.3);
    const auto targets = targets_with_ignored(N, int32_t(V), 613);
    Tensor losses = nan_tensor({N}, DType::f32), lse = nan_tensor({N}, DType::f32);
    const double mean = ops::lm_head_cross_entropy_forward(losses, lse, hidden, weight, targets);
    double kept_sum = 0;
    for (int64_t n = 0; n < N; ++n) {
        if (targets[size_t(n)] < 0) {
            EXPECT_EQ(losses.flat(n), 0.0) << "ignored row " << n;
        } else {
            kept_sum += losses.flat(n);
        }
    }
    EXPECT_NEAR(mean, kept_sum / double(count_kept(targets)), 1e-12 * kept_sum);
    EXPECT_GT(mean, kept_sum / double(N));  // not diluted by the ignored rows

    // A batch with every row ignored has no loss and no gradient.
    const std::vector<int32_t> none(size_t(N), -1);
    EXPECT_EQ(ops::lm_head_cross_entropy_forward(losses, lse, hidden, weight, none), 0.0);
    Tensor dhidden = Tensor::zeros({N, D});
    ops::lm_head_cross_entropy_backward(&dhidden, nullptr, hidden, weight, none, lse, 1.0);
    EXPECT_EQ(ops::sum_squares(dhidden), 0.0);
}

TEST(LmHeadCrossEntropy, LargeLogitsStayFinite) {
    // Logits of standard deviation 50 (largest ~±200): exp(logit) overflows f32 past 88.7, so only
    // the max-subtracted softmax and logsumexp give finite losses and gradients.
    const int64_t N = 37, D = 64, V = 257;
    const Tensor hidden = random_normal({N, D}, DType::f32, 621);
    const Tensor weight = random_normal({V, D}, DType::f32, 622, 50.0 / std::sqrt(double(D)));
    const auto targets = targets_with_ignored(N, int32_t(V), 623);
    Tensor losses = nan_tensor({N}, DType::f32), lse = nan_tensor({N}, DType::f32);
    const double mean = ops::lm_head_cross_entropy_forward(losses, lse, hidden, weight, targets);
    const auto ref = reference::lm_head_cross_entropy(hidden.to(DType::f64), weight.to(DType::f64), targets);
    Tensor logits = Tensor::empty({N, V});
    ops::lm_head_logits(logits, hidden, weight);
    double max_abs_logit = 0;
    for (int64_t i = 0; i < logits.numel(); ++i) max_abs_logit = std::max(max_abs_logit, std::abs(logits.flat(i)));
    EXPECT_GT(max_abs_logit, 89.0);  // past expf's overflow threshold (88.7)
    EXPECT_TRUE(std::isfinite(mean));
    EXPECT_EQ(count_non_finite(losses), 0);
    EXPECT_LT(relative_error(losses, ref.losses), kF32ForwardBound);
    EXPECT_LT(relative_error(lse, ref.logsumexp), kF32ForwardBound);
    expect_f32_backward_matches_f64_and_accumulates({{N, D}, {V, D}}, lm_head_backward(hidden, weight, targets));
}

TEST(LmHeadCrossEntropy, BackwardMatchesFiniteDifferences) {
    // N = 300 crosses row-block boundaries with a partial last block.
    const LmHeadCase cases[] = {{37, 16, 29}, {300, 8, 13}};
    for (const auto& c : cases) {
        SCOPED_TRACE(testing::Message() << "N=" << c.N << " D=" << c.D << " V=" << c.V);
        Tensor hidden = random_normal({c.N, c.D}, DType::f64, 631);
        Tensor weight = random_normal({c.V, c.D}, DType::f64, 632, 1.0 / std::sqrt(double(c.D)));
        const auto targets = targets_with_ignored(c.N, int32_t(c.V), 633);
        Tensor losses = Tensor::empty({c.N}, DType::f64), lse = Tensor::empty({c.N}, DType::f64);
        // The mean loss is the returned value; its gradient is the backward with 1/count.
        auto loss = [&] { return ops::lm_head_cross_entropy_forward(losses, lse, hidden, weight, targets); };
        loss();
        // One gradient per call: a null gradient is skipped.
        const double scale = 1.0 / double(count_kept(targets));
        Tensor dhidden = Tensor::zeros({c.N, c.D}, DType::f64), dweight = Tensor::zeros({c.V, c.D}, DType::f64);
        ops::lm_head_cross_entropy_backward(&dhidden, nullptr, hidden, weight, targets, lse, scale);
        ops::lm_head_cross_entropy_backward(nullptr, &dweight, hidden, weight, targets, lse, scale);
        EXPECT_LT(gradient_check(loss, hidden, dhidden, 96), kFiniteDifferenceBound);
        EXPECT_LT(gradient_check(loss, weight, dweight, 96), kFiniteDifferenceBound);
        // Ignored rows get no gradient at all.
        for (int64_t n = 0; n < c.N; ++n) {
            if (targets[size_t(n)] >= 0) continue;
            for (int64_t d = 0; d < c.D; ++d) {
                ASSERT_EQ(dhidden.item({n, d}), 0.0) << "row " << n;
            }
        }
    }
}

TEST(LmHeadCrossEntropy, BackwardF32MatchesF64AndAccumulates) {
    const int64_t N = 300, D = 32, V = 257;
    const Tensor hidden = random_normal({N, D}, DType::f64, 641), weight = random_normal({V, D}, DType::f64, 642, 0.5);
    const auto targets = targets_with_ignored(N, int32_t(V), 643);
    expect_f32_backward_matches_f64_and_accumulates({{N, D}, {V, D}}, lm_head_backward(hidden, weight, targets));
}

TEST(LmHeadCrossEntropy, BadInputsAreErrors) {
    const int64_t N = 4, D = 8, V = 11;
    const Tensor hidden = random_normal({N, D}, DType::f32, 651);
    const Tensor weight = random_normal({V, D}, DType::f32, 652);
    Tensor losses = Tensor::zeros({N}), lse = Tensor::zeros({N});
    const std::vector<int32_t> targets{0, -1, 10, 3};
    expect_error(
        [&] { ops::lm_head_cross_entropy_forward(losses, lse, hidden, weight, std::vector<int32_t>{0, 11, 2, 3}); },
        {"lm_head_cross_entropy_forward", "targets[1] = 11", "[0, 11)"});
    expect_error(
        [&] { ops::lm_head_cross_entropy_forward(losses, lse, hidden, weight, std::vector<int32_t>{0, 1, 2}); },
        {"lm_head_cross_entropy_forward", "targets: expected 4 ids, got 3"});
    expect_error(
        [&] {
            ops::lm_head_cross_entropy_forward(losses, lse, hidden, random_normal({V, D + 1}, DType::f32, 653),
                                               targets);
        },
        {"lm_head_cross_entropy_forward: weight: expected shape [11, 8], got [11, 9]"});
    expect_error([&] { ops::lm_head_cross_entropy_forward(losses, lse, hidden, weight.to(DType::f64), targets); },
                 {"lm_head_cross_entropy_forward", "weight", "F64"});
    Tensor wrong_lse = Tensor::zeros({N + 1});
    expect_error([&] { ops::lm_head_cross_entropy_forward(losses, wrong_lse, hidden, weight, targets); },
                 {"lm_head_cross_entropy_forward: logsumexp: expected shape [4], got [5]"});
    Tensor dweight = Tensor::zeros({D, V});
    expect_error([&] { ops::lm_head_cross_entropy_backward(nullptr, &dweight, hidden, weight, targets, lse, 1.0); },
                 {"lm_head_cross_entropy_backward: dweight: expected shape [11, 8], got [8, 11]"});
    expect_error(
        [&] {
            ops::lm_head_cross_entropy_backward(nullptr, nullptr, hidden, weight, std::vector<int32_t>{0, 1, 2, 12},
                                                lse, 1.0);
        },
        {"lm_head_cross_entropy_backward", "targets[3] = 12"});
    Tensor logits = Tensor::zeros({N, V + 1});
    expect_error([&] { ops::lm_head_logits(logits, hidden, weight); },
                 {"lm_head_logits: logits: expected shape [4, 11], got [4, 12]"});
}

// ---------------------------------------------------------------------------------------------
// AdamW

namespace {
ops::AdamWParams adamw_params(int64_t step) {
    return ops::AdamWParams{.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1, .step = step};
}
}  // namespace

TEST(AdamW, MatchesReferenceOverSteps) {
    const Shape shape{37, 129};
    for (const DType dtype : {DType::f32, DType::f64}) {
        SCOPED_TRACE(std::string(dtype_name(dtype)));
        // f64 runs the same arithmetic as the reference; f32 rounds each update once or twice.
        const double bound = dtype == DType::f32 ? 1e-6 : 1e-13;
        Tensor param = random_normal(shape, dtype, 701);
        Tensor m = Tensor::zeros(shape, dtype), v = Tensor::zeros(shape, dtype);
        Tensor ref_param = param.to(DType::f64);
        Tensor ref_m = Tensor::zeros(shape, DType::f64), ref_v = Tensor::zeros(shape, DType::f64);
        for (int64_t step = 1; step <= 10; ++step) {
            SCOPED_TRACE(testing::Message() << "step " << step);
            const Tensor grad = random_normal(shape, dtype, 710 + uint64_t(step), 0.1 * double(step));
            ops::adamw_update(param, grad, m, v, adamw_params(step));
            reference::adamw_step(ref_param, grad.to(DType::f64), ref_m, ref_v, adamw_params(step));
            if (step == 1 || step == 10) {
                EXPECT_LT(relative_error(param, ref_param), bound);
                EXPECT_LT(relative_error(m, ref_m), bound);
                EXPECT_LT(relative_error(v, ref_v), bound);
            }
        }
    }
}

TEST(AdamW, FirstStepIsSignedLearningRatePlusDecay) {
    // At step 1 the bias corrections make m̂ = g and v̂ = g², so the update is lr·(g/(|g|+eps) + wd·p)
    // independently of the betas: a closed form that checks the correction without the reference.
    const Shape shape{1000};
    Tensor param = random_normal(shape, DType::f64, 721);
    const Tensor grad = random_normal(shape, DType::f64, 722);
    const Tensor before = param.clone();
    Tensor m = Tensor::zeros(shape, DType::f64), v = Tensor::zeros(shape, DType::f64);
    const auto hp = adamw_params(1);
    ops::adamw_update(param, grad, m, v, hp);
    Tensor expected = Tensor::empty(shape, DType::f64);
    for (int64_t i = 0; i < shape[0]; ++i) {
        const double p = before.flat(i), g = grad.flat(i);
        expected.data<double>()[i] = p - hp.lr * (g / (std::abs(g) + hp.eps) + hp.weight_decay * p);
    }
    EXPECT_LT(relative_error(param, expected), 1e-14);
}

TEST(AdamW, LaterStepFromExistingMomentsMatchesReference) {
    const Shape shape{513};
    for (const DType dtype : {DType::f32, DType::f64}) {
        SCOPED_TRACE(std::string(dtype_name(dtype)));
        const double bound = dtype == DType::f32 ? 1e-6 : 1e-13;
        Tensor param = random_normal(shape, dtype, 731);
        const Tensor grad = random_normal(shape, dtype, 732);
        Tensor m = random_normal(shape, dtype, 733, 0.1);
        Tensor v = testkit::random_uniform(shape, dtype, 734, 1e-4, 1e-2);
        Tensor ref_param = param.to(DType::f64), ref_m = m.to(DType::f64), ref_v = v.to(DType::f64);
        ops::adamw_update(param, grad, m, v, adamw_params(10));
        reference::adamw_step(ref_param, grad.to(DType::f64), ref_m, ref_v, adamw_params(10));
        EXPECT_LT(relative_error(param, ref_param), bound);
        EXPECT_LT(relative_error(m, ref_m), bound);
        EXPECT_LT(relative_error(v, ref_v), bound);
    }
}

TEST(AdamW, BadInputsAreErrors) {
    Tensor param = Tensor::zeros({8}), m = Tensor::zeros({8}), v = Tensor::zeros({8});
    const Tensor grad = random_normal({8}, DType::f32, 741);
    expect_error([&] { ops::adamw_update(param, grad, m, v, adamw_params(0)); }, {"adamw_update", "step"});
    Tensor short_v = Tensor::zeros({7});
    expect_error([&] { ops::adamw_update(param, grad, m, short_v, adamw_params(1)); },
                 {"adamw_update: v: expected shape [8], got [7]"});
    expect_error([&] { ops::adamw_update(param, grad.to(DType::f64), m, v, adamw_params(1)); },
                 {"adamw_update", "grad", "F64"});
}

// ---------------------------------------------------------------------------------------------

TEST(DenseOps, MixedDevicesAreRefused) {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no GPU: " << cuda::describe_device();
    // (The CUDA paths are checked against these CPU ones in test_cuda_dense.cpp.)
    const Tensor x = random_normal({4, 6}, DType::f32, 801).to(Device::cuda);
    const Tensor weight = random_normal({6}, DType::f32, 802), bias = random_normal({6}, DType::f32, 803);
    Tensor out = Tensor::zeros({4, 6}), mean = Tensor::zeros({8}), rstd = Tensor::zeros({8});
    expect_error([&] { ops::group_norm_forward(out, mean, rstd, x, weight, bias, 2, 1e-5); },
                 {"group_norm_forward", "weight is on cpu but x is on cuda (one device per call)"});
}
