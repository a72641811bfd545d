// GRAPE-M (learned commuting planes and the low-rank non-commuting mixture): RoPE at initialisation,
// the group properties (orthogonal G(n), G(n+m) = G(n) G(m), the relative law), the forward against
// the float64 dense-generator reference in backend/cpu/reference_grape, central finite differences for
// x and every parameter, decode against the whole sequence (also after a 16k-long chain of powers),
// f32 against f64, and bad inputs. Inputs are fresh random draws each run (seed printed by testkit).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "backend/cpu/reference_grape.hpp"
#include "core/tensor.hpp"
#include "ops/grape.hpp"
#include "ops/rotary.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using testkit::expect_error;
using ops::GrapeKind;

namespace {

const char* kind_name(GrapeKind kind) { return kind == GrapeKind::commuting ? "commuting" : "mixture"; }

// The learned parameters of one rotation: basis_generator A [D,D] and log_frequencies [D/2]
// (commuting) or mixing W [r,r] (mixture).
struct Parameters {
    GrapeKind kind;
    Tensor basis_generator, rates;

    ops::GrapeRotation prepare() const {
        return kind == GrapeKind::commuting ? ops::grape_prepare_commuting(basis_generator, rates)
                                            : ops::grape_prepare_mixture(basis_generator, rates);
    }
    Parameters to(DType dtype) const { return {kind, basis_generator.to(dtype), rates.to(dtype)}; }
    int64_t head_dim() const { return basis_generator.size(0); }
};

// Random parameters away from initialisation: a basis turned well away from I, RoPE's frequencies
// perturbed by e^N(0, 0.3²), and a mixture whose rotation rates are O(1) radians per position.
Parameters random_parameters(GrapeKind kind, int64_t D, int64_t r, DType dtype, uint64_t stream) {
    Parameters p{kind, testkit::random_normal({D, D}, dtype, stream, 0.2), {}};
    if (kind == GrapeKind::commuting) {
        const Tensor noise = testkit::random_normal({D / 2}, DType::f64, stream + 1, 0.3);
        std::vector<double> log_frequencies = ops::grape_initial_log_frequencies(D, 10000.0, DType::f64).to_vector();
        for (int64_t i = 0; i < D / 2; ++i) log_frequencies[size_t(i)] += noise.flat(i);
        p.rates = Tensor::from_vector({D / 2}, log_frequencies, dtype);
    } else {
        p.rates = testkit::random_normal({r, r}, dtype, stream + 1, 0.5 / std::sqrt(double(r)));
    }
    return p;
}

Tensor grape(const Tensor& x, std::span<const int64_t> positions, const ops::GrapeRotation& rotation) {
    Tensor out = Tensor::empty(x.shape(), x.dtype());
    ops::grape_forward(out, x, positions, rotation);
    return out;
}

// The dense-generator reference on the same (possibly f32-rounded) parameters and inputs, in float64.
Tensor reference_grape(const Tensor& x, std::span<const int64_t> positions, const Parameters& p) {
    const Parameters p64 = p.to(DType::f64);
    const int64_t D = p.head_dim();
    const std::vector<double> generator =
        p.kind == GrapeKind::commuting
            ? reference::grape_commuting_generator(p64.basis_generator.data<double>(), p64.rates.data<double>(), D)
            : reference::grape_mixture_generator(p64.basis_generator.data<double>(), p64.rates.data<double>(), D,
                                                 p.rates.size(0));
    const Tensor x64 = x.to(DType::f64);
    Tensor out = Tensor::empty(x.shape(), DType::f64);
    reference::grape_apply(out.data<double>(), x64.data<double>(), positions, generator, x.size(0), x.size(1),
                           x.size(2), D);
    return out;
}

// G(n) as a row-major [D,D] matrix, read off the op: heads share G, so D heads holding e_0 … e_{D−1}
// come back as its columns.
std::vector<double> rotation_matrix(const ops::GrapeRotation& rotation, int64_t position) {
    const int64_t D = rotation.head_dim;
    Tensor basis_vectors = Tensor::zeros({1, 1, D, D}, DType::f64);
    for (int64_t h = 0; h < D; ++h) basis_vectors.data<double>()[h * D + h] = 1.0;
    const std::vector<int64_t> at = {position};
    const Tensor columns = grape(basis_vectors, at, rotation);
    std::vector<double> G(size_t(D * D));
    for (int64_t i = 0; i < D; ++i)
        for (int64_t j = 0; j < D; ++j) G[size_t(i * D + j)] = columns.flat(j * D + i);
    return G;
}

std::vector<double> multiply(const std::vector<double>& a, const std::vector<double>& b, int64_t n, bool transpose_a) {
    std::vector<double> c(size_t(n * n), 0.0);
    for (int64_t i = 0; i < n; ++i)
        for (int64_t k = 0; k < n; ++k)
            for (int64_t j = 0; j < n; ++j) {
                const double a_ik = transpose_a ? a[size_t(k * n + i)] : a[size_t(i * n + k)];
                c[size_t(i * n + j)] += a_ik * b[size_t(k * n + j)];
            }
    return c;
}

double max_difference(const std::vector<double>& a, const std::vector<double>& b) {
    double largest = 0;
    for (size_t i = 0; i < a.size(); ++i) largest = std::max(largest, std::abs(a[i] - b[i]));
    return largest;
}

std::vector<double> identity(int64_t n) {
    std::vector<double> eye(size_t(n * n), 0.0);
    for (int64_t i = 0; i < n; ++i) eye[size_t(i * n + i)] = 1.0;
    return eye;
}

// Σ over the last axis of a·b for the row (0, ta, head) of a and (0, tb, head) of b.
double row_dot(const Tensor& a, int64_t ta, const Tensor& b, int64_t tb, int64_t head) {
    double sum = 0;
    for (int64_t c = 0; c < a.size(3); ++c) sum += a.item({0, ta, head, c}) * b.item({0, tb, head, c});
    return sum;
}

// (kind, D, r) cases: r is the mixture's rank (unused for commuting).
struct Case {
    GrapeKind kind;
    int64_t head_dim, rank;
};
const std::vector<Case> kCases = {{GrapeKind::commuting, 8, 0},  {GrapeKind::commuting, 16, 0},
                                  {GrapeKind::commuting, 64, 0}, {GrapeKind::mixture, 8, 2},
                                  {GrapeKind::mixture, 8, 8},    {GrapeKind::mixture, 16, 6},
                                  {GrapeKind::mixture, 64, 32}};

std::string describe(const Case& c) {
    return fmt::format("{} D={} r={}", kind_name(c.kind), c.head_dim, c.rank);
}

// Absolute positions: counting (empty), out of order with a repeat, a gap and a negative, and a
// single decode position.
const std::vector<int64_t> kScattered = {3, 0, 17, 9, 250, -4, 17};

}  // namespace

// With A = 0 (Q = I) and log ω = log θ, the commuting kind is RoPE, forward and backward.
TEST(GrapeCommuting, EqualsRopeAtInitialisation) {
    for (int64_t D : {8, 16, 64}) {
        const ops::GrapeRotation rotation = ops::grape_prepare_commuting(
            Tensor::zeros({D, D}, DType::f64), ops::grape_initial_log_frequencies(D, 10000.0, DType::f64));
        const Tensor theta = ops::rope_frequencies(D, 10000.0, DType::f64);
        const Tensor x = testkit::random_normal({2, 7, 3, D}, DType::f64, 100);
        for (std::span<const int64_t> positions : {std::span<const int64_t>{}, std::span<const int64_t>(kScattered)}) {
            Tensor rope = Tensor::empty(x.shape(), DType::f64);
            ops::rope_forward(rope, x, positions, theta);
            EXPECT_LT(testkit::relative_error(grape(x, positions, rotation), rope), 1e-12) << "D=" << D;
            Tensor dx = Tensor::zeros(x.shape(), DType::f64), rope_dx = Tensor::zeros(x.shape(), DType::f64);
            ops::grape_backward(&dx, nullptr, nullptr, nullptr, x, x, positions, rotation);
            ops::rope_backward(rope_dx, x, positions, theta);
            EXPECT_LT(testkit::relative_error(dx, rope_dx), 1e-12) << "D=" << D;
        }
    }
}

// With A = 0 (E = the first r coordinates) and grape_initial_mixing, the mixture is RoPE with a head of
// size r on the first r coordinates and leaves the other D − r alone.
TEST(GrapeMixture, IsPartialRopeAtInitialisation) {
    for (auto [D, r] : {std::pair<int64_t, int64_t>{8, 4}, {16, 16}, {64, 32}}) {
        const ops::GrapeRotation rotation = ops::grape_prepare_mixture(
            Tensor::zeros({D, D}, DType::f64), ops::grape_initial_mixing(r, 10000.0, DType::f64));
        const Tensor x = testkit::random_normal({2, 7, 3, D}, DType::f64, 200);
        const Tensor out = grape(x, kScattered, rotation);
        Tensor rope = Tensor::empty({2, 7, 3, r}, DType::f64);
        ops::rope_forward(rope, x.narrow(3, 0, r).contiguous(), kScattered,
                          ops::rope_frequencies(r, 10000.0, DType::f64));
        EXPECT_LT(testkit::relative_error(out.narrow(3, 0, r).contiguous(), rope), 1e-12) << "D=" << D << " r=" << r;
        if (r < D) {
            EXPECT_EQ(testkit::relative_error(out.narrow(3, r, D - r).contiguous(), x.narrow(3, r, D - r).contiguous()),
                      0.0);
        }
    }
}

TEST(Grape, InitialParameters) {
    const Tensor log_frequencies = ops::grape_initial_log_frequencies(8, 10000.0, DType::f64);
    ASSERT_EQ(log_frequencies.shape(), Shape{4});
    for (int64_t i = 0; i < 4; ++i) EXPECT_NEAR(log_frequencies.flat(i), -double(i) * std::log(10.0), 1e-14);
    const Tensor mixing = ops::grape_initial_mixing(4, 100.0, DType::f64);
    ASSERT_EQ(mixing.shape(), (Shape{4, 4}));
    const std::vector<double> expected = {0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.1, 0};
    for (int64_t n = 0; n < 16; ++n) EXPECT_NEAR(mixing.flat(n), expected[size_t(n)], 1e-16) << "entry " << n;
    EXPECT_EQ(ops::grape_initial_log_frequencies(64).dtype(), DType::f32);
    expect_error([] { ops::grape_initial_log_frequencies(7); },
                 {"grape_initial_log_frequencies: head_dim: expected a positive even number, got 7"});
    expect_error([] { ops::grape_initial_mixing(5); },
                 {"grape_initial_mixing: rank: expected a positive even number, got 5"});
    expect_error([] { ops::grape_initial_mixing(4, 1.0); }, {"grape_initial_mixing: base: expected > 1, got 1"});
}

// GRAPE's group law (mixers.md §7): each G(n) is orthogonal, G(0) = I, G(n+m) = G(n) G(m), hence
// ⟨G(i) q, G(j) k⟩ = ⟨q, G(j−i) k⟩ for every pair of positions.
TEST(Grape, RotationsFormAOneParameterSubgroupOfSO) {
    for (const Case& c : kCases) {
        const int64_t D = c.head_dim;
        const ops::GrapeRotation rotation = random_parameters(c.kind, D, c.rank, DType::f64, 300).prepare();
        EXPECT_LT(max_difference(rotation_matrix(rotation, 0), identity(D)), 1e-13) << describe(c);
        for (int64_t n : {1, 7, -3, 250}) {
            const std::vector<double> G = rotation_matrix(rotation, n);
            EXPECT_LT(max_difference(multiply(G, G, D, true), identity(D)), 1e-12) << describe(c) << " n=" << n;
        }
        for (auto [n, m] : {std::pair<int64_t, int64_t>{1, 1}, {3, 5}, {-4, 9}, {100, 37}}) {
            const std::vector<double> product =
                multiply(rotation_matrix(rotation, n), rotation_matrix(rotation, m), D, false);
            EXPECT_LT(max_difference(rotation_matrix(rotation, n + m), product), 1e-12)
                << describe(c) << " n=" << n << " m=" << m;
        }
        // Row 0 holds q, row 1 holds k.
        const int64_t H = 3;
        const Tensor qk = testkit::random_normal({1, 2, H, D}, DType::f64, 301);
        for (auto [i, j] : {std::pair<int64_t, int64_t>{0, 0}, {7, 3}, {3, 7}, {250, 37}, {-5, 40}}) {
            const std::vector<int64_t> at_ij = {i, j}, relative = {0, j - i};
            const Tensor rotated = grape(qk, at_ij, rotation), rotated_relative = grape(qk, relative, rotation);
            for (int64_t h = 0; h < H; ++h) {
                const double norms = std::sqrt(row_dot(qk, 0, qk, 0, h) * row_dot(qk, 1, qk, 1, h));
                EXPECT_NEAR(row_dot(rotated, 0, rotated, 1, h), row_dot(qk, 0, rotated_relative, 1, h), 1e-12 * norms)
                    << describe(c) << " i=" << i << " j=" << j << " head " << h;
            }
        }
    }
}

// The fast path (basis GEMMs, plane angles or the chain of powers) against G(n) = exp(n·L) formed
// directly from the dense generator.
TEST(Grape, ForwardMatchesDenseGeneratorReference) {
    const std::vector<int64_t> decode = {1234};
    for (const Case& c : kCases) {
        for (DType dtype : {DType::f64, DType::f32}) {
            const Parameters p = random_parameters(c.kind, c.head_dim, c.rank, dtype, 400);
            const ops::GrapeRotation rotation = p.prepare();
            const double tolerance = dtype == DType::f64 ? 1e-10 : 1e-5;
            const Tensor x = testkit::random_normal({2, 7, 3, c.head_dim}, dtype, 401);
            const Tensor one = testkit::random_normal({3, 1, 2, c.head_dim}, dtype, 402);
            EXPECT_LT(testkit::relative_error(grape(x, {}, rotation), reference_grape(x, {}, p)), tolerance)
                << describe(c) << " " << dtype_name(dtype);
            EXPECT_LT(testkit::relative_error(grape(x, kScattered, rotation), reference_grape(x, kScattered, p)),
                      tolerance)
                << describe(c) << " " << dtype_name(dtype) << " scattered";
            EXPECT_LT(testkit::relative_error(grape(one, decode, rotation), reference_grape(one, decode, p)), tolerance)
                << describe(c) << " " << dtype_name(dtype) << " T=1";
            // In place.
            Tensor in_place = x.clone();
            ops::grape_forward(in_place, in_place, kScattered, rotation);
            EXPECT_EQ(testkit::relative_error(in_place, grape(x, kScattered, rotation)), 0.0) << describe(c);
        }
    }
}

// loss = dot(grape(x), R) re-prepared from the parameters on every evaluation: central differences
// for x, A, log_frequencies and W against grape_backward, which adds into what it is given.
TEST(Grape, BackwardMatchesFiniteDifferences) {
    const std::vector<int64_t> counting = {}, decode = {37};
    const std::vector<Case> cases = {{GrapeKind::commuting, 8, 0}, {GrapeKind::commuting, 16, 0},
                                     {GrapeKind::mixture, 8, 2},   {GrapeKind::mixture, 8, 8},
                                     {GrapeKind::mixture, 16, 6}};
    for (const Case& c : cases)
        for (const std::vector<int64_t>& positions : {counting, kScattered, decode}) {
            const int64_t D = c.head_dim, T = positions.empty() ? 5 : int64_t(positions.size());
            Parameters p = random_parameters(c.kind, D, c.rank, DType::f64, 500);
            Tensor x = testkit::random_normal({2, T, 3, D}, DType::f64, 501);
            const Tensor r = testkit::random_normal(x.shape(), DType::f64, 502);
            auto loss = [&] { return testkit::dot(grape(x, positions, p.prepare()), r); };
            // Start from nonzero gradients: the backward must add.
            const Tensor dx_start = testkit::random_normal(x.shape(), DType::f64, 503);
            const Tensor dbasis_start = testkit::random_normal(p.basis_generator.shape(), DType::f64, 504);
            const Tensor drates_start = testkit::random_normal(p.rates.shape(), DType::f64, 505);
            Tensor dx = dx_start.clone(), dbasis = dbasis_start.clone(), drates = drates_start.clone();
            const bool commuting = c.kind == GrapeKind::commuting;
            ops::grape_backward(&dx, &dbasis, commuting ? &drates : nullptr, commuting ? nullptr : &drates, r, x,
                                positions, p.prepare());
            auto added = [](const Tensor& total, const Tensor& start) {
                Tensor difference = total.clone();
                for (int64_t n = 0; n < difference.numel(); ++n) difference.data<double>()[n] -= start.flat(n);
                return difference;
            };
            const std::string what = describe(c) + " T=" + std::to_string(T);
            // Central differences at the default step carry rounding ∝ 1/step: up to ~1e-5 relative on the
            // smallest entries here (seed 2911873575771671678: 1.3e-5 on basis_generator, falling to 1.5e-6 at
            // step 1e-5, so rounding, not the backward); a wrong backward term is O(1e-2) or more.
            constexpr double kBound = 1e-4;
            EXPECT_LT(testkit::gradient_check(loss, x, added(dx, dx_start), 80), kBound) << what << " x";
            EXPECT_LT(testkit::gradient_check(loss, p.basis_generator, added(dbasis, dbasis_start), 80), kBound)
                << what << " basis_generator";
            EXPECT_LT(testkit::gradient_check(loss, p.rates, added(drates, drates_start), 80), kBound)
                << what << (commuting ? " log_frequencies" : " mixing");
            // dx alone is G(n)ᵀ dout: the backward of the forward gives x back.
            Tensor undone = Tensor::zeros(x.shape(), DType::f64);
            ops::grape_backward(&undone, nullptr, nullptr, nullptr, grape(x, positions, p.prepare()), x, positions,
                                p.prepare());
            EXPECT_LT(testkit::relative_error(undone, x), 1e-13) << what;
        }
}

// Decode (one token at position p) equals row p of the whole sequence; for the mixture the whole
// sequence's G(p) comes from a chain of p products of exp(L_r) and the decode's from one exp(p L_r),
// so a 16k-long sequence bounds the chain's drift.
TEST(Grape, DecodeMatchesWholeSequence) {
    for (const Case& c : kCases) {
        const ops::GrapeRotation rotation = random_parameters(c.kind, c.head_dim, c.rank, DType::f64, 600).prepare();
        const Tensor x = testkit::random_normal({2, 9, 3, c.head_dim}, DType::f64, 601);
        const Tensor whole = grape(x, {}, rotation);
        for (int64_t p = 0; p < 9; ++p) {
            const std::vector<int64_t> at = {p};
            const Tensor step = grape(x.narrow(1, p, 1).contiguous(), at, rotation);
            EXPECT_LT(testkit::relative_error(step, whole.narrow(1, p, 1).contiguous()), 1e-13)
                << describe(c) << " p=" << p;
        }
    }
    const int64_t T = 16384, D = 32, r = 16;
    // Rates of O(1) rad per position, so the 16k-th power has turned thousands of times.
    const ops::GrapeRotation rotation = random_parameters(GrapeKind::mixture, D, r, DType::f64, 610).prepare();
    const Tensor x = testkit::random_normal({1, T, 2, D}, DType::f64, 611);
    const Tensor whole = grape(x, {}, rotation);
    for (int64_t p : {int64_t(4095), T - 1}) {
        const std::vector<int64_t> at = {p};
        const Tensor step = grape(x.narrow(1, p, 1).contiguous(), at, rotation);
        EXPECT_LT(testkit::relative_error(step, whole.narrow(1, p, 1).contiguous()), 1e-10) << "p=" << p;
    }
}

TEST(Grape, F32MatchesF64) {
    for (const Case& c : kCases) {
        const Parameters p32 = random_parameters(c.kind, c.head_dim, c.rank, DType::f32, 700), p64 = p32.to(DType::f64);
        const Tensor x32 = testkit::random_normal({2, 7, 3, c.head_dim}, DType::f32, 701), x64 = x32.to(DType::f64);
        const Tensor dout32 = testkit::random_normal(x32.shape(), DType::f32, 702), dout64 = dout32.to(DType::f64);
        const ops::GrapeRotation rotation32 = p32.prepare(), rotation64 = p64.prepare();
        EXPECT_LT(testkit::relative_error(grape(x32, kScattered, rotation32), grape(x64, kScattered, rotation64)), 1e-6)
            << describe(c);
        const bool commuting = c.kind == GrapeKind::commuting;
        auto gradients = [&](const Tensor& dout, const Tensor& x, const Parameters& p,
                             const ops::GrapeRotation& rotation) {
            std::vector<Tensor> grads = {Tensor::zeros(x.shape(), x.dtype()),
                                         Tensor::zeros(p.basis_generator.shape(), x.dtype()),
                                         Tensor::zeros(p.rates.shape(), x.dtype())};
            ops::grape_backward(&grads[0], &grads[1], commuting ? &grads[2] : nullptr, commuting ? nullptr : &grads[2],
                                dout, x, kScattered, rotation);
            return grads;
        };
        const std::vector<Tensor> grads32 = gradients(dout32, x32, p32, rotation32),
                                  grads64 = gradients(dout64, x64, p64, rotation64);
        EXPECT_LT(testkit::relative_error(grads32[0], grads64[0]), 1e-5) << describe(c) << " dx";
        // A parameter gradient is a sum over all B·T·H rows whose terms largely cancel; a vector as short
        // as dlog_frequencies or a rank-2 dmixing (one number) can come out near zero, and then f32
        // rounding of its terms is large relative to it. Compared as one vector with dbasis_generator
        // (D² entries), the parameter gradients keep a scale that rounding cannot cancel.
        auto parameters = [](const std::vector<Tensor>& grads) {
            std::vector<double> joined = grads[1].to_vector(), rates = grads[2].to_vector();
            joined.insert(joined.end(), rates.begin(), rates.end());
            return Tensor::from_vector({int64_t(joined.size())}, joined, DType::f64);
        };
        EXPECT_LT(testkit::relative_error(parameters(grads32), parameters(grads64)), 1e-5)
            << describe(c) << " dbasis_generator, dlog_frequencies or dmixing";
    }
}

TEST(Grape, BadInputsAreErrors) {
    const Tensor A = Tensor::zeros({8, 8}), log_frequencies = ops::grape_initial_log_frequencies(8);
    expect_error([] { ops::grape_prepare_commuting(Tensor::zeros({7, 7}), ops::grape_initial_log_frequencies(8)); },
                 {"grape_prepare_commuting: basis_generator: the head dim D = 7 must be even"});
    expect_error([] { ops::grape_prepare_commuting(Tensor::zeros({8, 6}), ops::grape_initial_log_frequencies(8)); },
                 {"grape_prepare_commuting: basis_generator: expected a square [D, D] tensor, got shape [8, 6]"});
    expect_error([&] { ops::grape_prepare_commuting(A, ops::grape_initial_log_frequencies(6)); },
                 {"grape_prepare_commuting: log_frequencies: expected shape [4], got [3]"});
    expect_error([&] { ops::grape_prepare_commuting(A, log_frequencies.to(DType::f64)); },
                 {"grape_prepare_commuting: log_frequencies: expected dtype F32"});
    expect_error([&] { ops::grape_prepare_mixture(A, Tensor::zeros({10, 10})); },
                 {"grape_prepare_mixture: mixing: the rank r = 10 must be even and in [2, D = 8]"});
    expect_error([&] { ops::grape_prepare_mixture(A, Tensor::zeros({3, 3})); },
                 {"grape_prepare_mixture: mixing: the rank r = 3 must be even"});
    expect_error([&] { ops::grape_prepare_mixture(A, Tensor::zeros({4, 2})); },
                 {"grape_prepare_mixture: mixing: expected a square [r, r] tensor, got shape [4, 2]"});
    expect_error([&] { ops::grape_prepare_mixture(A.to(DType::bf16), Tensor::zeros({4, 4})); },
                 {"grape_prepare_mixture: basis_generator: expected dtype F32 or F64, got BF16"});

    const ops::GrapeRotation rotation = ops::grape_prepare_commuting(A, log_frequencies);
    const Tensor x = testkit::random_normal({2, 3, 2, 8}, DType::f32, 800);
    Tensor out = Tensor::empty(x.shape());
    const Tensor narrow = testkit::random_normal({2, 3, 2, 6}, DType::f32, 801);
    Tensor narrow_out = Tensor::empty(narrow.shape());
    expect_error([&] { ops::grape_forward(narrow_out, narrow, {}, rotation); },
                 {"grape_forward: x: expected head dim D = 8 (the rotation's), got 6"});
    expect_error([&] { ops::grape_forward(out, x.to(DType::f64), {}, rotation); },
                 {"grape_forward: x: expected dtype F32 (the dtype of the GRAPE parameters), got F64"});
    const std::vector<int64_t> two = {0, 1};
    expect_error([&] { ops::grape_forward(out, x, two, rotation); },
                 {"grape_forward: positions: expected T = 3 positions (or none for 0..T−1), got 2"});
    Tensor bad_out = Tensor::empty({2, 3, 2, 6});
    expect_error([&] { ops::grape_forward(bad_out, x, {}, rotation); },
                 {"grape_forward: out: expected shape [2, 3, 2, 8], got [2, 3, 2, 6]"});
    const Tensor x3 = testkit::random_normal({3, 2, 8}, DType::f32, 802);
    expect_error([&] { ops::grape_forward(out, x3, {}, rotation); },
                 {"grape_forward: x: expected a non-empty [B, T, H, D] tensor, got shape [3, 2, 8]"});
    expect_error([&] { ops::grape_forward(out, x, {}, ops::GrapeRotation{}); },
                 {"grape_forward: rotation: not prepared"});

    Tensor dx = Tensor::zeros(x.shape()), dmixing = Tensor::zeros({4, 4}), dA = Tensor::zeros({6, 6});
    expect_error([&] { ops::grape_backward(&dx, nullptr, nullptr, &dmixing, x, x, {}, rotation); },
                 {"grape_backward: dmixing: a commuting rotation has no mixing parameter"});
    expect_error([&] { ops::grape_backward(&dx, &dA, nullptr, nullptr, x, x, {}, rotation); },
                 {"grape_backward: dbasis_generator: expected shape [8, 8], got [6, 6]"});
    const Tensor short_x = x.narrow(1, 0, 2).contiguous();
    expect_error([&] { ops::grape_backward(&dx, nullptr, nullptr, nullptr, x, short_x, {}, rotation); },
                 {"grape_backward: x: expected shape [2, 3, 2, 8], got [2, 2, 2, 8]"});
    const ops::GrapeRotation mixture = ops::grape_prepare_mixture(A, ops::grape_initial_mixing(4));
    Tensor dlog_frequencies = Tensor::zeros({4});
    expect_error([&] { ops::grape_backward(&dx, nullptr, &dlog_frequencies, nullptr, x, x, {}, mixture); },
                 {"grape_backward: dlog_frequencies: a mixture rotation has no log_frequencies"});
    Tensor bad_dmixing = Tensor::zeros({2, 2});
    expect_error([&] { ops::grape_backward(&dx, nullptr, nullptr, &bad_dmixing, x, x, {}, mixture); },
                 {"grape_backward: dmixing: expected shape [4, 4], got [2, 2]"});
}
