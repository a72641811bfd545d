// LASAD spatial-decay attention (mixers.md §9): the parallel, recurrent (column-state scan) and chunkwise
// forms against the float64 reference on square, single-row and non-square grids; the 1 × T grid against
// 1-D linear attention with a fixed decay; weights that follow 2-D, not 1-D, distance; the backwards
// (decay gradients included) against central finite differences and each other; the chunkwise form over
// chunk sizes, and under very strong and very weak decay; bad inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "backend/cpu/reference_spatial_decay_attention.hpp"
#include "core/tensor.hpp"
#include "ops/linear_attention.hpp"
#include "ops/spatial_decay_attention.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using testkit::expect_error;

namespace {

struct Grid {
    int64_t batch, height, width, heads, key_dim, value_dim;
    int64_t seq_len() const { return height * width; }
};

std::string describe(const Grid& g) {
    return fmt::format("B={} grid={}x{} H={} Dk={} Dv={}", g.batch, g.height, g.width, g.heads, g.key_dim,
                       g.value_dim);
}

// q,k,v ~ N(0,1), scale 1/sqrt(Dk), log decays in [−0.7, −0.01]: away from 0 so a finite-difference
// step keeps them ≤ 0, and strong enough that distances matter.
struct Inputs {
    Tensor q, k, v;
    ops::SpatialDecayAttentionArgs args;

    Inputs(const Grid& g, DType dtype, uint64_t stream) {
        const int64_t B = g.batch, T = g.seq_len(), H = g.heads;
        q = testkit::random_normal({B, T, H, g.key_dim}, dtype, stream);
        k = testkit::random_normal({B, T, H, g.key_dim}, dtype, stream + 1);
        v = testkit::random_normal({B, T, H, g.value_dim}, dtype, stream + 2);
        args.grid_height = g.height;
        args.grid_width = g.width;
        args.log_decay_row = testkit::random_uniform({H}, dtype, stream + 3, -0.7, -0.01);
        args.log_decay_col = testkit::random_uniform({H}, dtype, stream + 4, -0.7, -0.01);
        args.scale = 1.0 / std::sqrt(double(g.key_dim));
    }
    Inputs to(DType dtype) const {
        Inputs out = *this;
        out.q = q.to(dtype);
        out.k = k.to(dtype);
        out.v = v.to(dtype);
        out.args.log_decay_row = args.log_decay_row.to(dtype);
        out.args.log_decay_col = args.log_decay_col.to(dtype);
        return out;
    }
};

using Forward = void (*)(Tensor&, const Tensor&, const Tensor&, const Tensor&, const ops::SpatialDecayAttentionArgs&);
using Backward = void (*)(Tensor&, Tensor&, Tensor&, Tensor*, Tensor*, const Tensor&, const Tensor&, const Tensor&,
                          const Tensor&, const ops::SpatialDecayAttentionArgs&);
// Every form, the chunkwise one with the inputs' chunk_rows (1 unless a test sets it).
constexpr Forward kForwards[] = {&ops::spatial_decay_attention_parallel_forward,
                                 &ops::spatial_decay_attention_recurrent_forward,
                                 &ops::spatial_decay_attention_chunkwise_forward};
constexpr Backward kBackwards[] = {&ops::spatial_decay_attention_parallel_backward,
                                   &ops::spatial_decay_attention_recurrent_backward,
                                   &ops::spatial_decay_attention_chunkwise_backward};
constexpr const char* kFormNames[] = {"parallel", "recurrent", "chunkwise"};

Tensor run_forward(Forward forward, const Inputs& in) {
    Tensor o = Tensor::empty({in.v.size(0), in.v.size(1), in.v.size(2), in.v.size(3)}, in.q.dtype());
    forward(o, in.q, in.k, in.v, in.args);
    return o;
}

// The float64 reference on the same (possibly f32-rounded) inputs.
Tensor run_reference(const Grid& g, const Inputs& in32) {
    const Inputs in = in32.to(DType::f64);
    Tensor o = Tensor::empty({g.batch, g.seq_len(), g.heads, g.value_dim}, DType::f64);
    reference::spatial_decay_attention(o.data<double>(), in.q.data<double>(), in.k.data<double>(),
                                       in.v.data<double>(),
                                       {g.batch, g.height, g.width, g.heads, g.key_dim, g.value_dim,
                                        in.args.log_decay_row.data<double>(), in.args.log_decay_col.data<double>(),
                                        in.args.scale});
    return o;
}

struct Gradients {
    Tensor dq, dk, dv, dlog_decay_row, dlog_decay_col;
};

// Backward of loss = dot(o, dout) into zeroed gradients.
Gradients run_backward(Backward backward, const Inputs& in, const Tensor& dout) {
    const DType dtype = in.q.dtype();
    Gradients g{Tensor::zeros(in.q.shape(), dtype), Tensor::zeros(in.k.shape(), dtype),
                Tensor::zeros(in.v.shape(), dtype), Tensor::zeros(in.args.log_decay_row.shape(), dtype),
                Tensor::zeros(in.args.log_decay_col.shape(), dtype)};
    backward(g.dq, g.dk, g.dv, &g.dlog_decay_row, &g.dlog_decay_col, dout, in.q, in.k, in.v, in.args);
    return g;
}

const std::vector<Grid> kGrids = {
    {2, 4, 4, 2, 8, 5},     // square, B > 1, Dk ≠ Dv
    {1, 1, 12, 3, 4, 6},    // one row: the 1-D case
    {2, 5, 7, 3, 6, 9},     // non-square, wider than tall
    {1, 7, 5, 2, 5, 3},     // taller than wide
    {1, 9, 1, 2, 4, 4},     // one column
    {2, 1, 1, 1, 3, 2},     // a single token
    {2, 12, 10, 2, 16, 24}  // large enough for the threaded path
};

}  // namespace

TEST(SpatialDecayForward, FormsMatchF64Reference) {
    uint64_t stream = 40000;
    for (const Grid& g : kGrids) {
        SCOPED_TRACE(describe(g));
        const Inputs in(g, DType::f64, stream += 10);
        const Tensor ref = run_reference(g, in);
        for (size_t f = 0; f < std::size(kForwards); ++f) {
            SCOPED_TRACE(kFormNames[f]);
            EXPECT_LT(testkit::relative_error(run_forward(kForwards[f], in), ref), 1e-10);
        }
    }
}

TEST(SpatialDecayForward, F32MatchesF64Reference) {
    uint64_t stream = 41000;
    for (const Grid& g : kGrids) {
        SCOPED_TRACE(describe(g));
        const Inputs in(g, DType::f32, stream += 10);
        const Tensor ref = run_reference(g, in);
        for (size_t f = 0; f < std::size(kForwards); ++f) {
            SCOPED_TRACE(kFormNames[f]);
            EXPECT_LT(testkit::relative_error(run_forward(kForwards[f], in), ref), 1e-4);
        }
    }
}

// Decoding: one token at a time through the step op reproduces the whole-grid forward, row by row,
// in f64 and f32, for every grid shape; past the grid's last cell the step is an error.
TEST(SpatialDecayStep, TokenByTokenEqualsTheWholeGrid) {
    uint64_t stream = 41500;
    for (const DType dtype : {DType::f64, DType::f32}) {
        for (const Grid& g : kGrids) {
            SCOPED_TRACE(describe(g) + (dtype == DType::f64 ? " f64" : " f32"));
            const Inputs in(g, dtype, stream += 10);
            const Tensor whole = run_reference(g, in);
            for (int64_t b = 0; b < g.batch; ++b) {
                ops::SpatialDecayState state =
                    ops::spatial_decay_attention_initial_state(g.heads, g.key_dim, g.value_dim, in.args, dtype);
                Tensor stepped = Tensor::empty({1, g.seq_len(), g.heads, g.value_dim}, dtype);
                for (int64_t t = 0; t < g.seq_len(); ++t) {
                    auto token = [&](const Tensor& x) { return x.select(0, b).narrow(0, t, 1).contiguous().view({1, 1, g.heads, x.size(3)}); };
                    Tensor o = Tensor::empty({1, 1, g.heads, g.value_dim}, dtype);
                    ops::spatial_decay_attention_step(o, state, token(in.q), token(in.k), token(in.v), t, in.args);
                    stepped.select(0, 0).narrow(0, t, 1).copy_from(o.view({1, g.heads, g.value_dim}));
                }
                const Tensor expected = whole.select(0, b).contiguous().view({1, g.seq_len(), g.heads, g.value_dim});
                EXPECT_LT(testkit::relative_error(stepped, expected), dtype == DType::f64 ? 1e-12 : 1e-5);
                if (b == 0) {
                    Tensor o = Tensor::empty({1, 1, g.heads, g.value_dim}, dtype);
                    const Tensor q = in.q.narrow(1, 0, 1).contiguous(), k = in.k.narrow(1, 0, 1).contiguous(),
                                 v = in.v.narrow(1, 0, 1).contiguous();
                    EXPECT_THROW(ops::spatial_decay_attention_step(o, state, q.narrow(0, 0, 1).contiguous(),
                                                                   k.narrow(0, 0, 1).contiguous(),
                                                                   v.narrow(0, 0, 1).contiguous(), g.seq_len(), in.args),
                                 Error);
                }
            }
        }
    }
}

// A 1 × T grid has no row distance and its column distance is i − j: exactly 1-D linear attention with
// RetNet's fixed decay γ_c (a T × 1 grid likewise with γ_r). Checked against the 1-D op's parallel form.
TEST(SpatialDecayForward, SingleRowOrColumnIsOneDimensionalFixedDecay) {
    uint64_t stream = 42000;
    for (bool row : {true, false}) {
        const Grid g = row ? Grid{2, 1, 23, 3, 6, 5} : Grid{2, 23, 1, 3, 6, 5};
        SCOPED_TRACE(describe(g));
        const Inputs in(g, DType::f64, stream += 10);
        ops::LinearAttentionArgs one_d;
        one_d.log_decay = row ? in.args.log_decay_col : in.args.log_decay_row;
        one_d.scale = in.args.scale;
        Tensor expected = Tensor::empty(in.v.shape(), DType::f64);
        ops::linear_attention_parallel_forward(expected, nullptr, in.q, in.k, in.v, nullptr, one_d);
        for (size_t f = 0; f < std::size(kForwards); ++f) {
            SCOPED_TRACE(kFormNames[f]);
            EXPECT_LT(testkit::relative_error(run_forward(kForwards[f], in), expected), 1e-12);
        }
        // The other axis's rate plays no part.
        Inputs other = in;
        (row ? other.args.log_decay_row : other.args.log_decay_col) =
            Tensor::from_vector({g.heads}, std::vector<double>(size_t(g.heads), -3.0), DType::f64);
        EXPECT_LT(testkit::relative_error(run_forward(kForwards[1], other), expected), 1e-12);
    }
}

// The weight of key j in query i's output, measured through the op: o_i is linear in v_j with slope
// scale · (q_i·k_j) · D_ij, so perturbing v_j by δ moves o_i by scale · (q_i·k_j) · D_ij · δ.
TEST(SpatialDecayForward, WeightsFollowTwoDimensionalDistance) {
    const Grid g{1, 4, 4, 1, 5, 3};
    const double log_row = -0.3, log_col = -0.2;
    Inputs in(g, DType::f64, 43000);
    in.args.log_decay_row = Tensor::from_vector({1}, {log_row}, DType::f64);
    in.args.log_decay_col = Tensor::from_vector({1}, {log_col}, DType::f64);
    const Tensor delta = testkit::random_normal({g.value_dim}, DType::f64, 43010);
    auto weight = [&](Forward forward, int64_t i, int64_t j) {
        const Tensor base = run_forward(forward, in);
        Inputs moved = in;
        moved.v = in.v.clone();
        for (int64_t e = 0; e < g.value_dim; ++e) moved.v.data<double>()[j * g.value_dim + e] += delta.flat(e);
        const Tensor shifted = run_forward(forward, moved);
        double qk = 0;
        for (int64_t c = 0; c < g.key_dim; ++c) qk += in.q.flat(i * g.key_dim + c) * in.k.flat(j * g.key_dim + c);
        // Least squares over the Dv components of the move.
        double num = 0, den = 0;
        for (int64_t e = 0; e < g.value_dim; ++e) {
            const double slope = in.args.scale * qk * delta.flat(e);
            num += (shifted.flat(i * g.value_dim + e) - base.flat(i * g.value_dim + e)) * slope;
            den += slope * slope;
        }
        return num / den;
    };
    for (size_t f = 0; f < std::size(kForwards); ++f) {
        SCOPED_TRACE(kFormNames[f]);
        // Both pairs are 1 apart in raster order: token 7 = (1, 3) ends the row above token 8 = (2, 0),
        // token 9 = (2, 1) is the left neighbour of token 10 = (2, 2).
        const double across_rows = weight(kForwards[f], 8, 7), same_row = weight(kForwards[f], 10, 9);
        EXPECT_NEAR(across_rows, std::exp(log_row + 3 * log_col), 1e-9);
        EXPECT_NEAR(same_row, std::exp(log_col), 1e-9);
        EXPECT_GT(same_row - across_rows, 0.3);
        // 4 apart in raster order but directly above: one row step, no column step.
        EXPECT_NEAR(weight(kForwards[f], 9, 5), std::exp(log_row), 1e-9);
        // A later row's cell to the right of the query column: |Δc| counts, not c_i − c_j.
        EXPECT_NEAR(weight(kForwards[f], 12, 3), std::exp(3 * log_row + 3 * log_col), 1e-9);
        // Causal in raster order: a later token has no weight, the token itself weight 1.
        EXPECT_EQ(weight(kForwards[f], 8, 9), 0.0);
        EXPECT_NEAR(weight(kForwards[f], 6, 6), 1.0, 1e-9);
    }
}

namespace {

// after − start: what a backward added into a gradient that did not start at zero.
Tensor added(const Tensor& after, const Tensor& start) {
    Tensor diff = after.clone();
    for (int64_t i = 0; i < diff.numel(); ++i) diff.data<double>()[i] -= start.flat(i);
    return diff;
}

double max_abs(const Tensor& t) {
    double m = 0;
    for (double x : t.to_vector()) m = std::max(m, std::abs(x));
    return m;
}

}  // namespace

// loss = dot(o, R); each backward must match central differences for q, k, v and both decays, adding
// into gradients that start from random values. A grid axis of size 1 has no distances along it: that
// decay's gradient must be exactly 0 (and the finite difference is 0 too, so a ratio would be 0/0).
TEST(SpatialDecayBackward, GradientsMatchFiniteDifferences) {
    const std::vector<Grid> grids = {{1, 3, 4, 2, 3, 4}, {2, 2, 3, 1, 4, 3}, {1, 1, 5, 2, 3, 2}, {1, 4, 1, 1, 2, 3},
                                     {1, 4, 3, 1, 3, 2}};
    uint64_t stream = 44000;
    for (const Grid& g : grids)
        for (size_t f = 0; f < std::size(kForwards); ++f) {
            SCOPED_TRACE(describe(g) + " " + kFormNames[f]);
            Inputs in(g, DType::f64, stream += 20);
            const Tensor r = testkit::random_normal(in.v.shape(), DType::f64, stream + 5);
            auto loss = [&] { return testkit::dot(run_forward(kForwards[f], in), r); };
            Gradients grads{testkit::random_normal(in.q.shape(), DType::f64, stream + 6),
                            testkit::random_normal(in.k.shape(), DType::f64, stream + 7),
                            testkit::random_normal(in.v.shape(), DType::f64, stream + 8),
                            testkit::random_normal({g.heads}, DType::f64, stream + 9),
                            testkit::random_normal({g.heads}, DType::f64, stream + 10)};
            const Gradients before{grads.dq.clone(), grads.dk.clone(), grads.dv.clone(),
                                   grads.dlog_decay_row.clone(), grads.dlog_decay_col.clone()};
            kBackwards[f](grads.dq, grads.dk, grads.dv, &grads.dlog_decay_row, &grads.dlog_decay_col, r, in.q, in.k,
                          in.v, in.args);
            EXPECT_LT(testkit::gradient_check(loss, in.q, added(grads.dq, before.dq)), 1e-6) << "dq";
            EXPECT_LT(testkit::gradient_check(loss, in.k, added(grads.dk, before.dk)), 1e-6) << "dk";
            EXPECT_LT(testkit::gradient_check(loss, in.v, added(grads.dv, before.dv)), 1e-6) << "dv";
            const Tensor drow = added(grads.dlog_decay_row, before.dlog_decay_row);
            const Tensor dcol = added(grads.dlog_decay_col, before.dlog_decay_col);
            if (g.height > 1) {
                EXPECT_LT(testkit::gradient_check(loss, in.args.log_decay_row, drow), 1e-6) << "dlog_decay_row";
            } else {
                EXPECT_EQ(max_abs(drow), 0.0) << "dlog_decay_row";
            }
            if (g.width > 1) {
                EXPECT_LT(testkit::gradient_check(loss, in.args.log_decay_col, dcol), 1e-6) << "dlog_decay_col";
            } else {
                EXPECT_EQ(max_abs(dcol), 0.0) << "dlog_decay_col";
            }
        }
}

// The two backwards on larger grids: equal in f64 to rounding, and each f32 backward close to the f64
// parallel one. Without decay gradients (null) the rest is unchanged.
TEST(SpatialDecayBackward, FormsAgreeAndF32MatchesF64) {
    const std::vector<Grid> grids = {{2, 6, 6, 2, 8, 5}, {1, 5, 7, 3, 6, 9}, {2, 12, 10, 2, 16, 24}};
    uint64_t stream = 45000;
    for (const Grid& g : grids) {
        SCOPED_TRACE(describe(g));
        const Inputs in32(g, DType::f32, stream += 10);
        const Inputs in64 = in32.to(DType::f64);
        const Tensor r32 = testkit::random_normal(in32.v.shape(), DType::f32, stream + 5);
        const Tensor r64 = r32.to(DType::f64);
        const Gradients ref = run_backward(kBackwards[0], in64, r64);
        for (size_t f = 0; f < std::size(kBackwards); ++f) {
            SCOPED_TRACE(kFormNames[f]);
            const Gradients g64 = run_backward(kBackwards[f], in64, r64);
            const Gradients g32 = run_backward(kBackwards[f], in32, r32);
            for (auto [mine, theirs, bound] :
                 {std::tuple{&g64, &ref, 1e-10}, std::tuple{&g32, &ref, 1e-4}}) {
                EXPECT_LT(testkit::relative_error(mine->dq, theirs->dq), bound);
                EXPECT_LT(testkit::relative_error(mine->dk, theirs->dk), bound);
                EXPECT_LT(testkit::relative_error(mine->dv, theirs->dv), bound);
                EXPECT_LT(testkit::relative_error(mine->dlog_decay_row, theirs->dlog_decay_row), bound);
                EXPECT_LT(testkit::relative_error(mine->dlog_decay_col, theirs->dlog_decay_col), bound);
            }
            Gradients plain{Tensor::zeros(in64.q.shape(), DType::f64), Tensor::zeros(in64.k.shape(), DType::f64),
                            Tensor::zeros(in64.v.shape(), DType::f64), Tensor(), Tensor()};
            kBackwards[f](plain.dq, plain.dk, plain.dv, nullptr, nullptr, r64, in64.q, in64.k, in64.v, in64.args);
            EXPECT_EQ(testkit::relative_error(plain.dq, g64.dq), 0.0);
            EXPECT_EQ(testkit::relative_error(plain.dk, g64.dk), 0.0);
            EXPECT_EQ(testkit::relative_error(plain.dv, g64.dv), 0.0);
        }
    }
}

namespace {

// Chunk sizes of a grid with `height` rows: one row, two, three (short last chunks on most grids), the
// whole grid, and more rows than the grid has.
std::vector<int64_t> chunk_sizes(int64_t height) { return {1, 2, 3, height, height + 2}; }

const std::vector<Grid> kChunkGrids = {
    {3, 1, 7, 2, 4, 6},    // one row
    {2, 5, 3, 3, 6, 4},    // taller than wide
    {2, 8, 8, 2, 8, 5},    // square
    {2, 6, 13, 2, 16, 24}  // wide, large enough for the threaded path
};

// Gradients that start from random values (the backwards add into them), and what was added.
struct Accumulated {
    Gradients start, after;
    Accumulated(const Inputs& in, uint64_t stream) {
        const DType dtype = in.q.dtype();
        start = {testkit::random_normal(in.q.shape(), dtype, stream),
                 testkit::random_normal(in.k.shape(), dtype, stream + 1),
                 testkit::random_normal(in.v.shape(), dtype, stream + 2),
                 testkit::random_normal(in.args.log_decay_row.shape(), dtype, stream + 3),
                 testkit::random_normal(in.args.log_decay_col.shape(), dtype, stream + 4)};
        after = {start.dq.clone(), start.dk.clone(), start.dv.clone(), start.dlog_decay_row.clone(),
                 start.dlog_decay_col.clone()};
    }
    Gradients added_f64() const {
        auto diff = [](const Tensor& a, const Tensor& b) { return added(a.to(DType::f64), b.to(DType::f64)); };
        return {diff(after.dq, start.dq), diff(after.dk, start.dk), diff(after.dv, start.dv),
                diff(after.dlog_decay_row, start.dlog_decay_row), diff(after.dlog_decay_col, start.dlog_decay_col)};
    }
};

// A grid axis of size 1 has no distances along it: its decay's gradient is exactly 0 in both.
void expect_gradients_near(const Gradients& mine, const Gradients& ref, double bound) {
    EXPECT_LT(testkit::relative_error(mine.dq, ref.dq), bound) << "dq";
    EXPECT_LT(testkit::relative_error(mine.dk, ref.dk), bound) << "dk";
    EXPECT_LT(testkit::relative_error(mine.dv, ref.dv), bound) << "dv";
    for (auto [name, a, b] : {std::tuple{"dlog_decay_row", &mine.dlog_decay_row, &ref.dlog_decay_row},
                              std::tuple{"dlog_decay_col", &mine.dlog_decay_col, &ref.dlog_decay_col}}) {
        if (max_abs(*b) == 0) {
            EXPECT_EQ(max_abs(*a), 0.0) << name;
        } else {
            EXPECT_LT(testkit::relative_error(*a, *b), bound) << name;
        }
    }
}

}  // namespace

// chunkwise == parallel == recurrent for every chunk size: f64 to 1e-10, f32 to 1e-4 of the f64 result.
TEST(SpatialDecayChunkwise, ForwardMatchesParallelAndRecurrentForEveryChunkSize) {
    uint64_t stream = 47000;
    for (const Grid& g : kChunkGrids) {
        const Inputs in32(g, DType::f32, stream += 10);
        Inputs in64 = in32.to(DType::f64);
        const Tensor parallel = run_forward(kForwards[0], in64), recurrent = run_forward(kForwards[1], in64);
        EXPECT_LT(testkit::relative_error(recurrent, parallel), 1e-10);
        for (int64_t rows : chunk_sizes(g.height)) {
            SCOPED_TRACE(describe(g) + fmt::format(" chunk_rows={}", rows));
            in64.args.chunk_rows = rows;
            Inputs chunked32 = in32;
            chunked32.args.chunk_rows = rows;
            const Tensor chunkwise = run_forward(&ops::spatial_decay_attention_chunkwise_forward, in64);
            EXPECT_LT(testkit::relative_error(chunkwise, parallel), 1e-10);
            EXPECT_LT(testkit::relative_error(chunkwise, recurrent), 1e-10);
            EXPECT_LT(testkit::relative_error(run_forward(&ops::spatial_decay_attention_chunkwise_forward, chunked32),
                                              parallel),
                      1e-4);
        }
    }
}

// The chunkwise backward, adding into random gradients, against the parallel one in f64 (1e-10) and
// from f32 inputs (1e-4); without decay gradients the rest is unchanged.
TEST(SpatialDecayChunkwise, BackwardMatchesParallelForEveryChunkSize) {
    uint64_t stream = 48000;
    for (const Grid& g : kChunkGrids) {
        const Inputs in32(g, DType::f32, stream += 20);
        Inputs in64 = in32.to(DType::f64);
        const Tensor r32 = testkit::random_normal(in32.v.shape(), DType::f32, stream + 5);
        const Tensor r64 = r32.to(DType::f64);
        const Gradients ref = run_backward(kBackwards[0], in64, r64);
        for (int64_t rows : chunk_sizes(g.height)) {
            SCOPED_TRACE(describe(g) + fmt::format(" chunk_rows={}", rows));
            in64.args.chunk_rows = rows;
            Inputs chunked32 = in32;
            chunked32.args.chunk_rows = rows;
            for (const Inputs* in : {&in64, &chunked32}) {
                const bool f64 = in->q.dtype() == DType::f64;
                SCOPED_TRACE(f64 ? "f64" : "f32");
                Accumulated grads(*in, stream + 10);
                Gradients& a = grads.after;
                ops::spatial_decay_attention_chunkwise_backward(a.dq, a.dk, a.dv, &a.dlog_decay_row,
                                                                &a.dlog_decay_col, f64 ? r64 : r32, in->q, in->k,
                                                                in->v, in->args);
                expect_gradients_near(grads.added_f64(), ref, f64 ? 1e-10 : 1e-4);
            }
            Gradients plain{Tensor::zeros(in64.q.shape(), DType::f64), Tensor::zeros(in64.k.shape(), DType::f64),
                            Tensor::zeros(in64.v.shape(), DType::f64), Tensor(), Tensor()};
            ops::spatial_decay_attention_chunkwise_backward(plain.dq, plain.dk, plain.dv, nullptr, nullptr, r64, in64.q,
                                                            in64.k, in64.v, in64.args);
            EXPECT_LT(testkit::relative_error(plain.dq, ref.dq), 1e-10);
            EXPECT_LT(testkit::relative_error(plain.dk, ref.dk), 1e-10);
            EXPECT_LT(testkit::relative_error(plain.dv, ref.dv), 1e-10);
        }
    }
}

// Central finite differences of loss = dot(o, R) through the chunkwise forward, for every input and both
// decays, at chunk sizes that split the grid evenly, unevenly and not at all.
TEST(SpatialDecayChunkwise, GradientsMatchFiniteDifferences) {
    const std::vector<Grid> grids = {{2, 5, 3, 2, 3, 4}, {1, 4, 4, 1, 4, 2}, {1, 7, 2, 2, 2, 3}};
    uint64_t stream = 49000;
    for (const Grid& g : grids)
        for (int64_t rows : {int64_t(1), int64_t(2), int64_t(3), g.height}) {
            SCOPED_TRACE(describe(g) + fmt::format(" chunk_rows={}", rows));
            Inputs in(g, DType::f64, stream += 20);
            in.args.chunk_rows = rows;
            const Tensor r = testkit::random_normal(in.v.shape(), DType::f64, stream + 5);
            auto loss = [&] {
                return testkit::dot(run_forward(&ops::spatial_decay_attention_chunkwise_forward, in), r);
            };
            const Gradients grads = run_backward(&ops::spatial_decay_attention_chunkwise_backward, in, r);
            EXPECT_LT(testkit::gradient_check(loss, in.q, grads.dq), 1e-6) << "dq";
            EXPECT_LT(testkit::gradient_check(loss, in.k, grads.dk), 1e-6) << "dk";
            EXPECT_LT(testkit::gradient_check(loss, in.v, grads.dv), 1e-6) << "dv";
            EXPECT_LT(testkit::gradient_check(loss, in.args.log_decay_row, grads.dlog_decay_row), 1e-6)
                << "dlog_decay_row";
            EXPECT_LT(testkit::gradient_check(loss, in.args.log_decay_col, grads.dlog_decay_col), 1e-6)
                << "dlog_decay_col";
        }
}

// Rates of 1e-6 and 1 − 1e-7 on either axis (one head per combination) over a 64 × 64 grid (T = 4096):
// the chunkwise forward and backward stay finite and match the recurrent form (f64: 1e-10; f32: 1e-4 of
// the f64 result); on an 8 × 8 grid they match the parallel form too.
TEST(SpatialDecayChunkwise, StrongAndWeakDecayStayFiniteAndMatch) {
    const double strong = std::log(1e-6), weak = std::log1p(-1e-7);
    uint64_t stream = 50000;
    for (const int64_t side : {int64_t(8), int64_t(64)}) {
        const Grid g{1, side, side, 4, 4, 3};
        Inputs in64(g, DType::f64, stream += 20);
        in64.args.log_decay_row = Tensor::from_vector({4}, {strong, strong, weak, weak}, DType::f64);
        in64.args.log_decay_col = Tensor::from_vector({4}, {strong, weak, strong, weak}, DType::f64);
        const Tensor r64 = testkit::random_normal(in64.v.shape(), DType::f64, stream + 5);
        const Forward ref_forward = side <= 8 ? kForwards[0] : kForwards[1];
        const Backward ref_backward = side <= 8 ? kBackwards[0] : kBackwards[1];
        const Tensor ref = run_forward(ref_forward, in64);
        const Gradients ref_grads = run_backward(ref_backward, in64, r64);
        for (int64_t rows : {int64_t(1), int64_t(3), side / 4 + 2}) {
            SCOPED_TRACE(describe(g) + fmt::format(" chunk_rows={}", rows));
            in64.args.chunk_rows = rows;
            const Inputs in32 = in64.to(DType::f32);
            for (const Inputs* in : {static_cast<const Inputs*>(&in64), &in32}) {
                const bool f64 = in->q.dtype() == DType::f64;
                SCOPED_TRACE(f64 ? "f64" : "f32");
                const double bound = f64 ? 1e-10 : 1e-4;
                const Tensor o = run_forward(&ops::spatial_decay_attention_chunkwise_forward, *in);
                const Gradients grads = run_backward(&ops::spatial_decay_attention_chunkwise_backward, *in,
                                                     f64 ? r64 : r64.to(DType::f32));
                for (const Tensor* t :
                     {&o, &grads.dq, &grads.dk, &grads.dv, &grads.dlog_decay_row, &grads.dlog_decay_col})
                    for (double x : t->to_vector()) ASSERT_TRUE(std::isfinite(x));
                EXPECT_LT(testkit::relative_error(o.to(DType::f64), ref), bound);
                const Gradients as_f64{grads.dq.to(DType::f64), grads.dk.to(DType::f64), grads.dv.to(DType::f64),
                                       grads.dlog_decay_row.to(DType::f64), grads.dlog_decay_col.to(DType::f64)};
                expect_gradients_near(as_f64, ref_grads, bound);
            }
        }
    }
}

TEST(SpatialDecayErrors, BadInputsNameOpAndField) {
    const Grid g{2, 3, 4, 2, 5, 6};
    const Inputs in(g, DType::f32, 46000);
    Tensor o = Tensor::empty({2, 12, 2, 6});
    const char* fwd = "spatial_decay_attention_recurrent_forward";
    auto forward = [&](const ops::SpatialDecayAttentionArgs& args) {
        ops::spatial_decay_attention_recurrent_forward(o, in.q, in.k, in.v, args);
    };
    ops::SpatialDecayAttentionArgs args = in.args;
    args.grid_width = 5;
    expect_error([&] { forward(args); },
                 {fmt::format("{}: grid_height, grid_width: the grid of 3 × 5 = 15 cells must hold the sequence "
                              "length T = 12",
                              fwd)});
    expect_error([&] { ops::spatial_decay_attention_parallel_forward(o, in.q, in.k, in.v, args); },
                 {"spatial_decay_attention_parallel_forward: grid_height, grid_width: the grid of 3 × 5"});
    args = in.args;
    args.chunk_rows = 0;
    expect_error([&] { ops::spatial_decay_attention_chunkwise_forward(o, in.q, in.k, in.v, args); },
                 {"spatial_decay_attention_chunkwise_forward: chunk_rows: expected ≥ 1, got 0"});
    args = in.args;
    args.grid_height = -3;
    args.grid_width = -4;
    expect_error([&] { forward(args); },
                 {fmt::format("{}: grid_height, grid_width: expected both ≥ 1, got -3 × -4", fwd)});

    args = in.args;
    args.log_decay_row = Tensor::from_vector({2}, {-0.1, 0.25});
    expect_error([&] { forward(args); },
                 {fmt::format("{}: log_decay_row: expected every value finite and ≤ 0 (a decay rate in (0, 1]), got "
                              "0.25 at head 1",
                              fwd)});
    args = in.args;
    args.log_decay_col = Tensor::from_vector({2}, {NAN, -0.1});
    expect_error([&] { forward(args); }, {fmt::format("{}: log_decay_col: expected every value finite and ≤ 0", fwd)});
    args.log_decay_col = Tensor::from_vector({2}, {-INFINITY, -0.1});
    expect_error([&] { forward(args); }, {fmt::format("{}: log_decay_col: expected every value finite and ≤ 0", fwd)});
    args.log_decay_col = Tensor::from_vector({3}, {-0.1, -0.1, -0.1});
    expect_error([&] { forward(args); }, {fmt::format("{}: log_decay_col: expected shape [2], got [3]", fwd)});
    args.log_decay_col = Tensor();
    expect_error([&] { forward(args); }, {fmt::format("{}: log_decay_col: tensor is not defined", fwd)});
    args.log_decay_col = in.args.log_decay_col.to(DType::f64);
    expect_error([&] { forward(args); }, {fmt::format("{}: log_decay_col: expected dtype F32", fwd)});

    const Tensor k64 = in.k.to(DType::f64);
    expect_error([&] { ops::spatial_decay_attention_recurrent_forward(o, in.q, k64, in.v, in.args); },
                 {fmt::format("{}: k: expected dtype F32", fwd)});
    const Tensor v_short = Tensor::zeros({2, 11, 2, 6});
    expect_error([&] { ops::spatial_decay_attention_recurrent_forward(o, in.q, in.k, v_short, in.args); },
                 {fmt::format("{}: v: expected shape [2, 12, 2, Dv], got [2, 11, 2, 6]", fwd)});
    Tensor o_wrong = Tensor::empty({2, 12, 2, 5});
    expect_error([&] { ops::spatial_decay_attention_recurrent_forward(o_wrong, in.q, in.k, in.v, in.args); },
                 {fmt::format("{}: o: expected shape [2, 12, 2, 6], got [2, 12, 2, 5]", fwd)});

    const char* bwd = "spatial_decay_attention_recurrent_backward";
    Tensor dq = Tensor::zeros(in.q.shape()), dk = Tensor::zeros(in.k.shape()), dv = Tensor::zeros(in.v.shape());
    Tensor ddecay = Tensor::zeros({3});
    const Tensor dout = testkit::random_normal(in.v.shape(), DType::f32, 46010);
    expect_error(
        [&] {
            ops::spatial_decay_attention_recurrent_backward(dq, dk, dv, &ddecay, nullptr, dout, in.q, in.k, in.v,
                                                            in.args);
        },
        {fmt::format("{}: dlog_decay_row: expected shape [2], got [3]", bwd)});
    Tensor dk_wrong = Tensor::zeros({2, 12, 2, 4});
    expect_error(
        [&] {
            ops::spatial_decay_attention_parallel_backward(dq, dk_wrong, dv, nullptr, nullptr, dout, in.q, in.k, in.v,
                                                           in.args);
        },
        {"spatial_decay_attention_parallel_backward: dk: expected shape [2, 12, 2, 5], got [2, 12, 2, 4]"});
    args = in.args;
    args.grid_height = 4;
    expect_error(
        [&] {
            ops::spatial_decay_attention_recurrent_backward(dq, dk, dv, nullptr, nullptr, dout, in.q, in.k, in.v,
                                                            args);
        },
        {fmt::format("{}: grid_height, grid_width: the grid of 4 × 4 = 16 cells", bwd)});
}
