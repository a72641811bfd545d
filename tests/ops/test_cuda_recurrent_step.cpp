// The CUDA recurrent step (ops::linear_attention_step / ops::delta_rule_step on GPU tensors) against the
// same ops on the CPU in float64, over several consecutive steps carrying the state, for every decay and
// update kind; and its argument checks. Skipped (not passed) where no GPU is usable. (What one step costs
// the host: bench/decode_step.cpp.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#if LINARCH_HAS_CUDA
#include <cuda_runtime.h>
#endif

#include "backend/cuda/device.hpp"
#include "core/tensor.hpp"
#include "ops/recurrent_step.hpp"
#include "support/gpu.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using testkit::count_non_finite;
using testkit::expect_error;

namespace {

enum class Gate { none, scalar, vector };

struct Kind {
    bool delta;
    Gate gate;
    const char* name;
};
const Kind kKinds[] = {{false, Gate::none, "additive, no decay"},
                       {false, Gate::scalar, "additive, scalar gate"},
                       {false, Gate::vector, "additive, vector gate"},
                       {true, Gate::none, "delta rule"},
                       {true, Gate::scalar, "gated delta rule"}};


// One token per sequence, on the CPU: q, k [N,H,Dk] of unit rows and v [N,H,Dv] ~ N(0,1) in the io dtype;
// fp32 β ∈ [0,1) and Mamba-2 style log gates −a·softplus(x − 1), a ∈ [1/16, 1].
struct Token {
    Tensor q, k, v, beta, log_gate;

    Token(int64_t N, int64_t H, int64_t Dk, int64_t Dv, const Kind& kind, DType io, uint64_t stream) {
        q = testkit::random_unit_rows({N, H, Dk}, io, stream);
        k = testkit::random_unit_rows({N, H, Dk}, io, stream + 1);
        v = testkit::random_normal({N, H, Dv}, io, stream + 2);
        beta = testkit::random_uniform({N, H}, DType::f32, stream + 3, 0.0, 1.0);
        if (kind.gate != Gate::none) {
            const Shape shape = kind.gate == Gate::scalar ? Shape{N, H} : Shape{N, H, Dk};
            const Tensor x = testkit::random_normal(shape, DType::f64, stream + 4);
            const Tensor a = testkit::random_uniform(shape, DType::f64, stream + 5, 1.0 / 16, 1.0);
            std::vector<double> g(size_t(x.numel()));
            for (size_t i = 0; i < g.size(); ++i)
                g[i] = -a.flat(int64_t(i)) * std::log1p(std::exp(x.flat(int64_t(i)) - 1.0));
            log_gate = Tensor::from_vector(shape, g, DType::f32);
        }
    }
};

Tensor on(const Tensor& t, Device device) { return t.defined() ? t.to(device) : Tensor(); }
Tensor as(const Tensor& t, DType dtype) { return t.defined() ? t.to(dtype) : Tensor(); }

void step(const Kind& kind, Tensor& o, Tensor& state, const Tensor& q, const Tensor& k, const Tensor& v,
          const Tensor& beta, const Tensor& log_gate, double scale) {
    if (kind.delta) ops::delta_rule_step(o, state, q, k, v, beta, log_gate, scale);
    else ops::linear_attention_step(o, state, q, k, v, log_gate, scale);
}

}  // namespace

TEST(CudaRecurrentStep, StepsMatchF64OnTheCpu) {
    SKIP_WITHOUT_GPU();
    struct Case {
        int64_t N, H, Dk, Dv;
        DType io;
    };
    const std::vector<Case> cases = {
        {1, 16, 128, 128, DType::bf16}, {3, 2, 64, 64, DType::bf16},  {64, 4, 128, 128, DType::bf16},
        {2, 3, 64, 48, DType::bf16},    {3, 3, 64, 128, DType::bf16}, {3, 2, 128, 64, DType::bf16},
        {1, 2, 128, 96, DType::bf16},   {64, 8, 64, 64, DType::bf16}, {3, 2, 128, 128, DType::f32},
        {64, 4, 64, 128, DType::f32},
    };
    constexpr int kSteps = 3;
    uint64_t stream = 8000;
    for (const Case& c : cases)
        for (const Kind& kind : kKinds) {
            SCOPED_TRACE(fmt::format("{} N={} H={} Dk={} Dv={} {}", kind.name, c.N, c.H, c.Dk, c.Dv, dtype_name(c.io)));
            const double scale = 1.0 / std::sqrt(double(c.Dk));
            const Tensor initial = testkit::random_normal({c.N, c.H, c.Dk, c.Dv}, DType::f32, stream += 10, 0.5);
            Tensor state_gpu = initial.to(Device::cuda), state_ref = initial.to(DType::f64);
            for (int t = 0; t < kSteps; ++t) {
                const Token in(c.N, c.H, c.Dk, c.Dv, kind, c.io, stream += 10);
                Tensor o_gpu = Tensor::from_vector({c.N, c.H, c.Dv}, std::vector<double>(size_t(c.N * c.H * c.Dv), NAN),
                                                   c.io)
                                   .to(Device::cuda);
                step(kind, o_gpu, state_gpu, in.q.to(Device::cuda), in.k.to(Device::cuda), in.v.to(Device::cuda),
                     in.beta.to(Device::cuda), on(in.log_gate, Device::cuda), scale);
                // The CPU op in float64 on the same (rounded) inputs, carrying its own state.
                Tensor o_ref = Tensor::empty({c.N, c.H, c.Dv}, DType::f64);
                step(kind, o_ref, state_ref, in.q.to(DType::f64), in.k.to(DType::f64), in.v.to(DType::f64),
                     in.beta.to(DType::f64), as(in.log_gate, DType::f64), scale);
                const Tensor o = o_gpu.to(Device::cpu);
                EXPECT_EQ(count_non_finite(o), 0) << "step " << t;
                // bf16: o rounded to bf16 (a few 1e-3); fp32: fp32 arithmetic throughout.
                EXPECT_LT(testkit::relative_error(o, o_ref), c.io == DType::bf16 ? 1e-2 : 1e-5) << "step " << t;
            }
            const Tensor state = state_gpu.to(Device::cpu);
            EXPECT_EQ(count_non_finite(state), 0);
            // The state stays fp32 (never rounded to bf16).
            EXPECT_LT(testkit::relative_error(state, state_ref), 1e-5);
        }
}

TEST(CudaRecurrentStep, BadInputsAreErrors) {
    SKIP_WITHOUT_GPU();
    const int64_t N = 2, H = 3, Dk = 64, Dv = 64;
    const Token in(N, H, Dk, Dv, kKinds[4], DType::bf16, 8500);
    const Tensor q = in.q.to(Device::cuda), k = in.k.to(Device::cuda), v = in.v.to(Device::cuda);
    const Tensor beta = in.beta.to(Device::cuda), g = in.log_gate.to(Device::cuda);
    Tensor o = Tensor::empty({N, H, Dv}, DType::bf16, Device::cuda);
    Tensor state = Tensor::zeros({N, H, Dk, Dv}).to(Device::cuda);
    const char* la = "linear_attention_step";
    const char* dr = "delta_rule_step";
    expect_error([&] { ops::linear_attention_step(o, state, q, in.k, v, g, 1.0); },
                 {fmt::format("{}: k: tensor is on cpu, expected cuda like q", la)});
    Tensor state_bf16 = Tensor::zeros({N, H, Dk, Dv}, DType::bf16).to(Device::cuda);
    expect_error([&] { ops::linear_attention_step(o, state_bf16, q, k, v, g, 1.0); },
                 {fmt::format("{}: state: expected dtype F32 on cuda, got BF16", la)});
    const Tensor q64 = in.q.to(DType::f64).to(Device::cuda);
    expect_error([&] { ops::linear_attention_step(o, state, q64, k, v, g, 1.0); },
                 {fmt::format("{}: q: expected dtype BF16 or F32 on cuda, got F64", la)});
    const Tensor k32 = in.k.to(DType::f32).to(Device::cuda);
    expect_error([&] { ops::linear_attention_step(o, state, q, k32, v, g, 1.0); },
                 {fmt::format("{}: k: expected dtype BF16 on cuda, got F32", la)});
    Tensor o_bad = Tensor::empty({N, H, Dv + 1}, DType::bf16, Device::cuda);
    expect_error([&] { ops::linear_attention_step(o_bad, state, q, k, v, g, 1.0); },
                 {fmt::format("{}: o: expected shape [2, 3, 64], got [2, 3, 65]", la)});
    const Tensor g_vector_bad = Tensor::zeros({N, H, Dk + 1}).to(Device::cuda);
    expect_error([&] { ops::linear_attention_step(o, state, q, k, v, g_vector_bad, 1.0); },
                 {fmt::format("{}: log_gate: expected shape [2, 3, 64], got [2, 3, 65]", la)});
    const Tensor g_bf16 = in.log_gate.to(DType::bf16).to(Device::cuda);
    expect_error([&] { ops::linear_attention_step(o, state, q, k, v, g_bf16, 1.0); },
                 {fmt::format("{}: log_gate: expected dtype F32 on cuda, got BF16", la)});
    // A head size the kernel is not built for.
    const Tensor q_small = testkit::random_normal({N, H, 32}, DType::bf16, 8501).to(Device::cuda);
    Tensor state_small = Tensor::zeros({N, H, 32, Dv}).to(Device::cuda);
    expect_error(
        [&] { ops::linear_attention_step(o, state_small, q_small, q_small, v, Tensor(), 1.0); },
        {fmt::format("{}: the CUDA kernel is built for Dk 64 or 128 and Dv a multiple of 16, got Dk=32, Dv=64", la)});
    // The delta rule: β on the GPU in fp32, a per-head gate only.
    expect_error([&] { ops::delta_rule_step(o, state, q, k, v, in.beta, g, 1.0); },
                 {fmt::format("{}: beta: tensor is on cpu, expected cuda like q", dr)});
    const Tensor g_vector = Tensor::zeros({N, H, Dk}).to(Device::cuda);
    expect_error([&] { ops::delta_rule_step(o, state, q, k, v, beta, g_vector, 1.0); },
                 {fmt::format("{}: log_gate: expected shape [2, 3], got [2, 3, 64]", dr)});
    // Nothing above launched anything: the state is still zero.
    for (double x : state.to(Device::cpu).to_vector()) ASSERT_EQ(x, 0.0);
}

