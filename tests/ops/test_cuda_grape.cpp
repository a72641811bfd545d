// GRAPE-M on CUDA (ops/grape.cpp's GPU path, backend/cuda/grape.cu) against the CPU op in float64 on the
// same f32 values: the forward (commuting planes and the low-rank mixture; positions 0..T−1, a decode
// offset and repeated, unordered positions; in place) and the backward (dx and every parameter's gradient,
// added into random starting values). Fresh random inputs each run; parameters well away from RoPE.
// Skipped (not passed) where no GPU is usable.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "core/tensor.hpp"
#include "ops/grape.hpp"
#include "support/gpu.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using ops::GrapeKind;

namespace {

// A basis turned well away from I and rates of O(1) radians per position (frequencies e^N(0, 0.3²)-
// perturbed RoPE ones, or a random mixing).
struct Parameters {
    GrapeKind kind;
    Tensor basis_generator, rates;  // f32 on the CPU

    Parameters(GrapeKind k, int64_t D, int64_t r, uint64_t stream) : kind(k) {
        basis_generator = testkit::random_normal({D, D}, DType::f32, stream, 0.2);
        if (kind == GrapeKind::commuting) {
            std::vector<double> log_frequencies = ops::grape_initial_log_frequencies(D, 10000.0, DType::f64).to_vector();
            const Tensor noise = testkit::random_normal({D / 2}, DType::f64, stream + 1, 0.3);
            for (int64_t i = 0; i < D / 2; ++i) log_frequencies[size_t(i)] += noise.flat(i);
            rates = Tensor::from_vector({D / 2}, log_frequencies, DType::f32);
        } else {
            rates = testkit::random_normal({r, r}, DType::f32, stream + 1, 0.5 / std::sqrt(double(r)));
        }
    }
    ops::GrapeRotation prepare(Device device, DType dtype) const {
        const Tensor a = basis_generator.to(dtype).to(device), w = rates.to(dtype).to(device);
        return kind == GrapeKind::commuting ? ops::grape_prepare_commuting(a, w) : ops::grape_prepare_mixture(a, w);
    }
};

struct Problem {
    int64_t batch, seq_len, heads, head_dim, rank;
    std::vector<int64_t> positions;  // empty: 0..T−1
};

const std::vector<Problem> kProblems = {
    {2, 37, 3, 16, 8, {}},
    {1, 5, 4, 32, 32, {}},                     // the mixture on the whole head
    {3, 1, 2, 16, 4, {4097}},                  // a decode step far along
    {2, 6, 2, 8, 4, {9, 3, 3, 100, 0, 41}},    // repeated and unordered positions
};

std::string describe(const Problem& p, GrapeKind kind) {
    return fmt::format("B={} T={} H={} D={} r={} positions={} {}", p.batch, p.seq_len, p.heads, p.head_dim, p.rank,
                       p.positions.size(), kind == GrapeKind::commuting ? "commuting" : "mixture");
}

}  // namespace

// Out of place and in place, within 1e-5 of the CPU's float64 rotation of the same values.
TEST(CudaGrape, ForwardMatchesTheCpu) {
    SKIP_WITHOUT_GPU();
    uint64_t stream = 100;
    for (const Problem& p : kProblems)
        for (GrapeKind kind : {GrapeKind::commuting, GrapeKind::mixture}) {
            SCOPED_TRACE(describe(p, kind));
            const Parameters params(kind, p.head_dim, p.rank, stream += 10);
            const Tensor x = testkit::random_normal({p.batch, p.seq_len, p.heads, p.head_dim}, DType::f32, stream + 5);
            Tensor want = Tensor::empty(x.shape(), DType::f64);
            ops::grape_forward(want, x.to(DType::f64), p.positions, params.prepare(Device::cpu, DType::f64));
            const ops::GrapeRotation rotation = params.prepare(Device::cuda, DType::f32);
            Tensor out = Tensor::empty(x.shape(), DType::f32, Device::cuda);
            ops::grape_forward(out, x.to(Device::cuda), p.positions, rotation);
            EXPECT_LT(testkit::relative_error(out.to(Device::cpu), want), 1e-5) << "out of place";
            Tensor in_place = x.to(Device::cuda);
            ops::grape_forward(in_place, in_place, p.positions, rotation);
            EXPECT_LT(testkit::relative_error(in_place.to(Device::cpu), want), 1e-5) << "in place";
        }
}

// dx, dbasis_generator and dlog_frequencies or dmixing within 1e-4 of the CPU's float64 backward.
TEST(CudaGrape, BackwardMatchesTheCpu) {
    SKIP_WITHOUT_GPU();
    uint64_t stream = 500;
    for (const Problem& p : kProblems)
        for (GrapeKind kind : {GrapeKind::commuting, GrapeKind::mixture}) {
            SCOPED_TRACE(describe(p, kind));
            const Parameters params(kind, p.head_dim, p.rank, stream += 10);
            const Shape shape{p.batch, p.seq_len, p.heads, p.head_dim};
            const Tensor x = testkit::random_normal(shape, DType::f32, stream + 5);
            const Tensor dout = testkit::random_normal(shape, DType::f32, stream + 6);
            const Tensor dx0 = testkit::random_normal(shape, DType::f32, stream + 7);
            const Tensor dbasis0 = testkit::random_normal(params.basis_generator.shape(), DType::f32, stream + 8);
            const Tensor drates0 = testkit::random_normal(params.rates.shape(), DType::f32, stream + 9);
            struct Grads {
                Tensor dx, dbasis, drates;
            };
            const auto run = [&](Device device, DType dtype) {
                const auto on = [&](const Tensor& t) { return t.to(dtype).to(device); };
                Grads g{on(dx0), on(dbasis0), on(drates0)};
                const bool commuting = kind == GrapeKind::commuting;
                ops::grape_backward(&g.dx, &g.dbasis, commuting ? &g.drates : nullptr, commuting ? nullptr : &g.drates,
                                    on(dout), on(x), p.positions, params.prepare(device, dtype));
                return g;
            };
            const Grads want = run(Device::cpu, DType::f64), got = run(Device::cuda, DType::f32);
            const auto close = [](const Tensor& gpu, const Tensor& cpu, const char* name) {
                EXPECT_LT(testkit::relative_error(gpu.to(Device::cpu).to(DType::f64), cpu), 1e-4) << name;
            };
            close(got.dx, want.dx, "dx");
            close(got.dbasis, want.dbasis, "dbasis_generator");
            close(got.drates, want.drates, kind == GrapeKind::commuting ? "dlog_frequencies" : "dmixing");
        }
}

// Rows on the GPU in another dtype than f32 are refused by name.
TEST(CudaGrape, RefusesOtherDtypesByName) {
    SKIP_WITHOUT_GPU();
    const Parameters params(GrapeKind::commuting, 8, 8, 900);
    const ops::GrapeRotation rotation = params.prepare(Device::cuda, DType::f64);
    const Tensor x = testkit::random_normal({1, 3, 2, 8}, DType::f64, 901).to(Device::cuda);
    Tensor out = Tensor::empty(x.shape(), DType::f64, Device::cuda);
    testkit::expect_error([&] { ops::grape_forward(out, x, {}, rotation); }, {"grape_forward", "x", "F32"});
}
