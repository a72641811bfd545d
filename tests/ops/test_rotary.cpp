// Rotary position embedding: the pairing convention on hand-computed values, the group properties
// (norms preserved, relative-position law, backward = inverse rotation), central finite
// differences, f32 against f64, and bad inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <string>
#include <vector>

#include "core/tensor.hpp"
#include "ops/rotary.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using testkit::expect_error;

namespace {

Tensor rope(const Tensor& x, std::span<const int64_t> positions, const Tensor& frequencies) {
    Tensor out = Tensor::empty(x.shape(), x.dtype());
    ops::rope_forward(out, x, positions, frequencies);
    return out;
}

// Σ over the last axis of a·b for the row (b, t, h).
double row_dot(const Tensor& a, int64_t ta, const Tensor& b, int64_t tb, int64_t head) {
    double sum = 0;
    for (int64_t c = 0; c < a.size(3); ++c) sum += a.item({0, ta, head, c}) * b.item({0, tb, head, c});
    return sum;
}

}  // namespace

// Interleaved pairs: (x0, x1) rotates by p·θ0 and (x2, x3) by p·θ1.
TEST(RopeForward, RotatesInterleavedPairs) {
    const double pi = std::numbers::pi;
    const Tensor frequencies = Tensor::from_vector({2}, {pi / 2, pi / 3}, DType::f64);
    const Tensor x = Tensor::from_vector({1, 2, 1, 4}, {1, 0, 0, 1, 0.5, 2, 3, -1}, DType::f64);
    const std::vector<int64_t> positions = {1, 3};
    const Tensor out = rope(x, positions, frequencies);
    // t=0, p=1: (1,0) by π/2 → (0,1);  (0,1) by π/3 → (−sin, cos)
    // t=1, p=3: (0.5,2) by 3π/2 → (2,−0.5);  (3,−1) by π → (−3,1)
    const std::vector<double> expected = {0, 1, -std::sin(pi / 3), std::cos(pi / 3), 2, -0.5, -3, 1};
    for (int64_t n = 0; n < 8; ++n) EXPECT_NEAR(out.flat(n), expected[size_t(n)], 1e-15) << "element " << n;
    // Empty positions mean 0..T−1.
    const Tensor y = testkit::random_normal({2, 5, 3, 8}, DType::f64, 100);
    const Tensor theta = ops::rope_frequencies(8, 10000.0, DType::f64);
    const std::vector<int64_t> counting = {0, 1, 2, 3, 4};
    EXPECT_EQ(testkit::relative_error(rope(y, {}, theta), rope(y, counting, theta)), 0.0);
    // Position 0 is the identity.
    const std::vector<int64_t> zeros(5, 0);
    EXPECT_EQ(testkit::relative_error(rope(y, zeros, theta), y), 0.0);
    // In place.
    Tensor in_place = y.clone();
    ops::rope_forward(in_place, in_place, counting, theta);
    EXPECT_EQ(testkit::relative_error(in_place, rope(y, counting, theta)), 0.0);
}

TEST(RopeForward, PreservesNorms) {
    for (DType dtype : {DType::f32, DType::f64}) {
        const Tensor x = testkit::random_normal({2, 7, 3, 16}, dtype, 200);
        const std::vector<int64_t> positions = {0, 5, 100, 4095, 70000, -3, 12};
        const Tensor out = rope(x, positions, ops::rope_frequencies(16, 10000.0, dtype));
        for (int64_t b = 0; b < 2; ++b)
            for (int64_t t = 0; t < 7; ++t)
                for (int64_t h = 0; h < 3; ++h) {
                    double before = 0, after = 0;
                    for (int64_t c = 0; c < 16; ++c) {
                        before += x.item({b, t, h, c}) * x.item({b, t, h, c});
                        after += out.item({b, t, h, c}) * out.item({b, t, h, c});
                    }
                    EXPECT_NEAR(std::sqrt(after), std::sqrt(before),
                                (dtype == DType::f32 ? 1e-6 : 1e-14) * std::sqrt(before));
                }
    }
}

// GRAPE's exact relative law (mixers.md §7.1): R(m)q · R(n)k = q · R(n−m)k, so shifting both
// positions by any s leaves the score unchanged.
TEST(RopeForward, ScoresDependOnlyOnRelativePosition) {
    const int64_t D = 32, H = 3;
    const Tensor frequencies = ops::rope_frequencies(D, 10000.0, DType::f64);
    // Row 0 holds q, row 1 holds k.
    const Tensor qk = testkit::random_normal({1, 2, H, D}, DType::f64, 300);
    const std::vector<std::pair<int64_t, int64_t>> pairs = {{0, 0}, {7, 3}, {3, 7}, {1000, 37}, {5, 4000}};
    for (auto [m, n] : pairs) {
        const std::vector<int64_t> at_mn = {m, n}, relative = {0, n - m};
        const Tensor rotated = rope(qk, at_mn, frequencies), rotated_relative = rope(qk, relative, frequencies);
        for (int64_t shift : {int64_t(1), int64_t(-5), int64_t(12345), int64_t(-777)}) {
            const std::vector<int64_t> shifted = {m + shift, n + shift};
            const Tensor rotated_shifted = rope(qk, shifted, frequencies);
            for (int64_t h = 0; h < H; ++h) {
                const double norms = std::sqrt(row_dot(qk, 0, qk, 0, h) * row_dot(qk, 1, qk, 1, h));
                const double score = row_dot(rotated, 0, rotated, 1, h);
                EXPECT_NEAR(row_dot(rotated_shifted, 0, rotated_shifted, 1, h), score, 1e-11 * norms)
                    << "m=" << m << " n=" << n << " shift=" << shift << " head " << h;
                EXPECT_NEAR(row_dot(qk, 0, rotated_relative, 1, h), score, 1e-11 * norms);
            }
        }
    }
}

// loss = dot(rope(x), R): central differences against rope_backward, which adds into dx.
TEST(RopeBackward, GradientsMatchFiniteDifferences) {
    Tensor x = testkit::random_normal({2, 5, 3, 6}, DType::f64, 400);
    const Tensor frequencies = ops::rope_frequencies(6, 500.0, DType::f64);
    const std::vector<int64_t> positions = {3, 0, 17, 9, 250};
    const Tensor r = testkit::random_normal(x.shape(), DType::f64, 401);
    auto loss = [&] { return testkit::dot(rope(x, positions, frequencies), r); };
    const Tensor start = testkit::random_normal(x.shape(), DType::f64, 402);
    Tensor dx = start.clone();
    ops::rope_backward(dx, r, positions, frequencies);
    Tensor added = dx.clone();
    for (int64_t n = 0; n < added.numel(); ++n) added.data<double>()[n] -= start.flat(n);
    EXPECT_LT(testkit::gradient_check(loss, x, added, 180), 1e-6);
    // The backward is the inverse rotation: it undoes the forward.
    Tensor undone = Tensor::zeros(x.shape(), DType::f64);
    ops::rope_backward(undone, rope(x, positions, frequencies), positions, frequencies);
    EXPECT_LT(testkit::relative_error(undone, x), 1e-14);
}

TEST(RopeForward, F32MatchesF64) {
    const Tensor x32 = testkit::random_normal({2, 9, 4, 64}, DType::f32, 500);
    const Tensor frequencies32 = ops::rope_frequencies(64, 10000.0, DType::f32);
    const Tensor x64 = x32.to(DType::f64), frequencies64 = frequencies32.to(DType::f64);
    const std::vector<int64_t> positions = {0, 1, 2, 63, 64, 1000, 4095, 8191, 100000};
    EXPECT_LT(testkit::relative_error(rope(x32, positions, frequencies32), rope(x64, positions, frequencies64)),
              1e-6);
    const Tensor dout32 = testkit::random_normal(x32.shape(), DType::f32, 501);
    Tensor dx32 = Tensor::zeros(x32.shape(), DType::f32), dx64 = Tensor::zeros(x32.shape(), DType::f64);
    ops::rope_backward(dx32, dout32, positions, frequencies32);
    ops::rope_backward(dx64, dout32.to(DType::f64), positions, frequencies64);
    EXPECT_LT(testkit::relative_error(dx32, dx64), 1e-6);
}

TEST(Rope, FrequenciesAreLogUniform) {
    const Tensor theta = ops::rope_frequencies(8, 10000.0, DType::f64);
    ASSERT_EQ(theta.shape(), Shape{4});
    const std::vector<double> expected = {1, 0.1, 0.01, 0.001};
    for (int64_t i = 0; i < 4; ++i) EXPECT_NEAR(theta.flat(i), expected[size_t(i)], 1e-15 * expected[size_t(i)]);
    EXPECT_EQ(ops::rope_frequencies(64).dtype(), DType::f32);
    // f32 storage: the float64 value rounded once (half an ulp, 2^−24 relative).
    const double last = std::pow(10000.0, -62.0 / 64.0);
    EXPECT_NEAR(ops::rope_frequencies(64).flat(31), last, std::ldexp(last, -24));
    expect_error([] { ops::rope_frequencies(7); },
                 {"rope_frequencies: head_dim: expected a positive even number, got 7"});
    expect_error([] { ops::rope_frequencies(8, 0.5); }, {"rope_frequencies: base: expected > 1, got 0.5"});
}

TEST(Rope, BadInputsAreErrors) {
    const Tensor x = testkit::random_normal({2, 3, 2, 8}, DType::f32, 600);
    const Tensor frequencies = ops::rope_frequencies(8);
    Tensor out = Tensor::empty(x.shape());
    const Tensor odd = testkit::random_normal({2, 3, 2, 7}, DType::f32, 601);
    Tensor odd_out = Tensor::empty(odd.shape());
    expect_error([&] { ops::rope_forward(odd_out, odd, {}, ops::rope_frequencies(8)); },
                 {"rope_forward: x: the head dim D = 7 must be even"});
    expect_error([&] { ops::rope_forward(out, x, {}, ops::rope_frequencies(6)); },
                 {"rope_forward: frequencies: expected shape [4] (D/2), got [3]"});
    expect_error([&] { ops::rope_forward(out, x, {}, ops::rope_frequencies(8, 10000.0, DType::f64)); },
                 {"rope_forward: frequencies: expected dtype F32"});
    const std::vector<int64_t> two = {0, 1};
    expect_error([&] { ops::rope_forward(out, x, two, frequencies); },
                 {"rope_forward: positions: expected T = 3 positions (or none for 0..T−1), got 2"});
    Tensor bad_out = Tensor::empty({2, 3, 2, 6});
    expect_error([&] { ops::rope_forward(bad_out, x, {}, frequencies); },
                 {"rope_forward: out: expected shape [2, 3, 2, 8], got [2, 3, 2, 6]"});
    const Tensor x3 = testkit::random_normal({3, 2, 8}, DType::f32, 602);
    expect_error([&] { ops::rope_forward(out, x3, {}, frequencies); },
                 {"rope_forward: x: expected a non-empty [B, T, H, D] tensor, got shape [3, 2, 8]"});
    expect_error([&] { ops::rope_forward(out, x.to(DType::bf16), {}, frequencies); },
                 {"rope_forward: x: expected dtype F32 or F64, got BF16"});
    Tensor dx64 = Tensor::zeros(x.shape(), DType::f64);
    expect_error([&] { ops::rope_backward(dx64, x, {}, frequencies); }, {"rope_backward: dx: expected dtype F32"});
    Tensor bad_dx = Tensor::zeros({2, 3, 2, 6});
    expect_error([&] { ops::rope_backward(bad_dx, x, {}, frequencies); },
                 {"rope_backward: dx: expected shape [2, 3, 2, 8], got [2, 3, 2, 6]"});
}
