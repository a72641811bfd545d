// LASAD (spatial-decay attention) on CUDA: every form runs the masked parallel form on the GPU
// (ops/spatial_decay_attention.cpp, backend/cuda/spatial_decay_attention.cu). Against the CPU on the same f32
// values in float64: the forward of the three forms, the backward (dq, dk, dv and both rates' gradients,
// added into random starting values), and decode steps (run on the host from GPU tensors) against the
// whole grid. Grids 1 × T (RetNet's decay), T × 1, square and wide; fresh random inputs each run. Skipped
// (not passed) where no GPU is usable.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include <fmt/format.h>

#include "core/tensor.hpp"
#include "ops/spatial_decay_attention.hpp"
#include "support/gpu.hpp"
#include "support/testkit.hpp"

using namespace linarch;

namespace {

struct Grid {
    int64_t batch, height, width, heads, key_dim, value_dim;
};

const std::vector<Grid> kGrids = {{2, 1, 20, 3, 8, 12}, {1, 17, 1, 2, 16, 8}, {2, 6, 6, 2, 16, 16}, {1, 5, 13, 4, 32, 24}};

// q, k, v ~ N(0,1) and log rates uniform in [−0.7, −0.01], f32 on the CPU.
struct Inputs {
    Tensor q, k, v;
    ops::SpatialDecayAttentionArgs args;

    Inputs(const Grid& g, uint64_t stream) {
        const int64_t T = g.height * g.width;
        q = testkit::random_normal({g.batch, T, g.heads, g.key_dim}, DType::f32, stream);
        k = testkit::random_normal({g.batch, T, g.heads, g.key_dim}, DType::f32, stream + 1);
        v = testkit::random_normal({g.batch, T, g.heads, g.value_dim}, DType::f32, stream + 2);
        args.grid_height = g.height;
        args.grid_width = g.width;
        args.scale = 0.3;
        args.chunk_rows = 2;
        args.log_decay_row = testkit::random_uniform({g.heads}, DType::f32, stream + 3, -0.7, -0.01);
        args.log_decay_col = testkit::random_uniform({g.heads}, DType::f32, stream + 4, -0.7, -0.01);
    }
    ops::SpatialDecayAttentionArgs args_on(Device device, DType dtype) const {
        ops::SpatialDecayAttentionArgs out = args;
        out.log_decay_row = args.log_decay_row.to(dtype).to(device);
        out.log_decay_col = args.log_decay_col.to(dtype).to(device);
        return out;
    }
};

std::string describe(const Grid& g) {
    return fmt::format("B={} grid {}x{} H={} Dk={} Dv={}", g.batch, g.height, g.width, g.heads, g.key_dim, g.value_dim);
}

// The CPU's f64 parallel form on the inputs' values.
Tensor reference(const Inputs& in) {
    Tensor o = Tensor::empty(in.v.shape(), DType::f64);
    ops::spatial_decay_attention_parallel_forward(o, in.q.to(DType::f64), in.k.to(DType::f64), in.v.to(DType::f64),
                                                  in.args_on(Device::cpu, DType::f64));
    return o;
}

}  // namespace

TEST(CudaSpatialDecay, EveryFormMatchesTheCpu) {
    SKIP_WITHOUT_GPU();
    using Forward = void (*)(Tensor&, const Tensor&, const Tensor&, const Tensor&, const ops::SpatialDecayAttentionArgs&);
    const std::pair<const char*, Forward> forms[] = {{"parallel", &ops::spatial_decay_attention_parallel_forward},
                                                     {"recurrent", &ops::spatial_decay_attention_recurrent_forward},
                                                     {"chunkwise", &ops::spatial_decay_attention_chunkwise_forward}};
    uint64_t stream = 100;
    for (const Grid& g : kGrids) {
        SCOPED_TRACE(describe(g));
        const Inputs in(g, stream += 10);
        const Tensor want = reference(in);
        for (auto [name, forward] : forms) {
            Tensor o = Tensor::empty(in.v.shape(), DType::f32, Device::cuda);
            forward(o, in.q.to(Device::cuda), in.k.to(Device::cuda), in.v.to(Device::cuda),
                    in.args_on(Device::cuda, DType::f32));
            EXPECT_LT(testkit::relative_error(o.to(Device::cpu), want), 1e-5) << name;
        }
    }
}

TEST(CudaSpatialDecay, BackwardMatchesTheCpu) {
    SKIP_WITHOUT_GPU();
    uint64_t stream = 500;
    for (const Grid& g : kGrids) {
        SCOPED_TRACE(describe(g));
        const Inputs in(g, stream += 10);
        const Tensor dout = testkit::random_normal(in.v.shape(), DType::f32, stream + 5);
        const Tensor dq0 = testkit::random_normal(in.q.shape(), DType::f32, stream + 6);
        const Tensor dk0 = testkit::random_normal(in.k.shape(), DType::f32, stream + 7);
        const Tensor dv0 = testkit::random_normal(in.v.shape(), DType::f32, stream + 8);
        const Tensor drow0 = testkit::random_normal({g.heads}, DType::f32, stream + 9);
        const Tensor dcol0 = testkit::random_normal({g.heads}, DType::f32, stream + 10);
        struct Grads {
            Tensor dq, dk, dv, drow, dcol;
        };
        const auto run = [&](Device device, DType dtype) {
            const auto on = [&](const Tensor& t) { return t.to(dtype).to(device); };
            Grads r{on(dq0), on(dk0), on(dv0), on(drow0), on(dcol0)};
            ops::spatial_decay_attention_chunkwise_backward(r.dq, r.dk, r.dv, &r.drow, &r.dcol, on(dout), on(in.q),
                                                            on(in.k), on(in.v), in.args_on(device, dtype));
            return r;
        };
        const Grads want = run(Device::cpu, DType::f64), got = run(Device::cuda, DType::f32);
        for (auto [name, a, b] : {std::tuple{"dq", &got.dq, &want.dq}, std::tuple{"dk", &got.dk, &want.dk},
                                  std::tuple{"dv", &got.dv, &want.dv}, std::tuple{"dlog_decay_row", &got.drow, &want.drow},
                                  std::tuple{"dlog_decay_col", &got.dcol, &want.dcol}})
            EXPECT_LT(testkit::relative_error(a->to(Device::cpu).to(DType::f64), *b), 1e-4) << name;
    }
}

// Token by token from GPU tensors (the state on the host) gives the whole grid's rows.
TEST(CudaSpatialDecay, DecodeStepsGiveTheWholeGrid) {
    SKIP_WITHOUT_GPU();
    const Grid g{1, 4, 5, 2, 8, 6};
    const Inputs in(g, 900);
    const Tensor want = reference(in);
    const ops::SpatialDecayAttentionArgs args = in.args_on(Device::cuda, DType::f32);
    ops::SpatialDecayState state = ops::spatial_decay_attention_initial_state(g.heads, g.key_dim, g.value_dim, args,
                                                                              DType::f32);
    Tensor got = Tensor::empty(in.v.shape(), DType::f32);
    for (int64_t t = 0; t < g.height * g.width; ++t) {
        const auto token = [&](const Tensor& x) { return x.narrow(1, t, 1).contiguous().to(Device::cuda); };
        Tensor o = Tensor::empty({1, 1, g.heads, g.value_dim}, DType::f32, Device::cuda);
        ops::spatial_decay_attention_step(o, state, token(in.q), token(in.k), token(in.v), t, args);
        got.narrow(1, t, 1).copy_from(o.to(Device::cpu));
    }
    EXPECT_LT(testkit::relative_error(got, want), 1e-5);
}
