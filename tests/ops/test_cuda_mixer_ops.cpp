// The CUDA mixer ops on fp32 device tensors: the element-wise and per-row ops and the short conv
// (backend/cuda/mixer_elementwise.cu) and the exact fp32 recurrent scan behind linear attention and the
// (gated) delta rule (backend/cuda/recurrent_scan.cu), against the CPU ops in float64 on fresh random
// inputs: odd lengths that cross the scan's checkpoint chunks, head sizes that are not multiples of a
// warp, every decay kind, initial and final states, packed sequences, and backward passes adding into
// nonzero gradients. Skipped (not passed) where no GPU is usable.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "backend/cuda/device.hpp"
#include "core/error.hpp"
#include "core/tensor.hpp"
#include "ops/delta_rule.hpp"
#include "ops/elementwise.hpp"
#include "ops/linear_attention.hpp"
#include "ops/precision.hpp"
#include "ops/rotary.hpp"
#include "support/gpu.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using testkit::random_normal;
using testkit::random_uniform;
using testkit::relative_error;

namespace {

// Element-wise fp32 against float64: rounding of one or two operations (~1e-7), sums of a row (~1e-6).
constexpr double kElementwiseTolerance = 1e-5;
// The scan: fp32 sums over up to ~100 tokens of Dk-long dot products against float64.
constexpr double kScanTolerance = 1e-4;

Tensor gpu(const Tensor& t) { return t.to(Device::cuda); }
Tensor f64(const Tensor& t) { return t.to(DType::f64); }
Tensor host(const Tensor& t) { return t.to(Device::cpu); }

}  // namespace

TEST(CudaMixerOps, ElementwiseOpsMatchF64) {
    SKIP_WITHOUT_GPU();
    const int64_t rows = 301, cols = 37;
    uint64_t stream = 3000;
    const Tensor x = random_normal({rows, cols}, DType::f32, stream++, 2.0);
    const Tensor dout = random_normal({rows, cols}, DType::f32, stream++);
    const Tensor prior = random_normal({rows, cols}, DType::f32, stream++);
    const Tensor bias = random_normal({cols}, DType::f32, stream++);
    const Tensor negative = random_uniform({rows, cols}, DType::f32, stream++, -4.0, -0.01);
    // Each case runs an op on float64 CPU tensors and on fp32 GPU copies of the same inputs and compares
    // every output; outputs start from `prior` (backward ops add into them).
    using Op = std::function<void(std::vector<Tensor>&, const std::vector<Tensor>&)>;
    struct Case {
        std::string name;
        std::vector<Tensor> inputs;
        std::vector<Shape> outputs;
        Op op;
    };
    const Shape full{rows, cols};
    std::vector<Case> cases;
    for (auto [map, name] : {std::pair{ops::FeatureMap::elu_plus_one, "elu1"}, {ops::FeatureMap::relu, "relu"},
                             {ops::FeatureMap::softmax, "softmax"}, {ops::FeatureMap::identity, "identity"}}) {
        cases.push_back({std::string("feature_map_forward ") + name, {x}, {full},
                         [map](auto& o, const auto& i) { ops::feature_map_forward(o[0], i[0], map); }});
        cases.push_back({std::string("feature_map_backward ") + name, {dout, x}, {full},
                         [map](auto& o, const auto& i) { ops::feature_map_backward(o[0], i[0], i[1], map); }});
    }
    cases.push_back({"l2norm", {x, dout}, {full, {rows}, full}, [](auto& o, const auto& i) {
                         ops::l2norm_forward(o[0], o[1], i[0], 1e-6);
                         ops::l2norm_backward(o[2], i[1], o[0], o[1]);
                     }});
    cases.push_back({"add_bias", {x, bias, dout}, {full, {cols}}, [](auto& o, const auto& i) {
                         ops::add_bias_forward(o[0], i[0], i[1]);
                         ops::add_bias_backward(o[1], i[2]);
                     }});
    const Tensor a_log = random_uniform({cols}, DType::f32, stream++, 0.0, 2.7);
    const Tensor dt_bias = random_normal({cols}, DType::f32, stream++);
    cases.push_back({"mamba2_decay", {x, a_log, dt_bias, dout}, {full, full, {cols}, {cols}},
                     [](auto& o, const auto& i) {
                         ops::mamba2_decay_forward(o[0], i[0], i[1], i[2]);
                         ops::mamba2_decay_backward(o[1], o[2], o[3], i[3], i[0], i[1], i[2]);
                     }});
    cases.push_back({"logsigmoid_decay", {x, dout}, {full, full}, [](auto& o, const auto& i) {
                         ops::logsigmoid_decay_forward(o[0], i[0], 16.0);
                         ops::logsigmoid_decay_backward(o[1], i[1], i[0], 16.0);
                     }});
    for (double lower_bound : {0.0, 0.25})
        cases.push_back({"lower_bounded_decay " + std::to_string(lower_bound), {x, dout}, {full, full},
                         [lower_bound](auto& o, const auto& i) {
                             ops::lower_bounded_decay_forward(o[0], i[0], lower_bound);
                             ops::lower_bounded_decay_backward(o[1], i[1], i[0], lower_bound);
                         }});
    cases.push_back({"key_from_decay", {negative, dout}, {full, full}, [](auto& o, const auto& i) {
                         ops::key_from_decay_forward(o[0], i[0]);
                         ops::key_from_decay_backward(o[1], i[1], i[0]);
                     }});
    for (auto [act, name] : {std::pair{ops::GateActivation::sigmoid, "sigmoid"}, {ops::GateActivation::swish, "swish"}})
        cases.push_back({std::string("output_gate ") + name, {x, dout, prior}, {full, full, full},
                         [act](auto& o, const auto& i) {
                             ops::output_gate_forward(o[0], i[0], i[2], act);
                             ops::output_gate_backward(o[1], o[2], i[1], i[0], i[2], act);
                         }});
    cases.push_back({"sigmoid", {x, dout}, {full, full}, [](auto& o, const auto& i) {
                         ops::sigmoid_forward(o[0], i[0]);
                         ops::sigmoid_backward(o[1], i[1], o[0]);
                     }});
    for (Case& c : cases) {
        SCOPED_TRACE(c.name);
        std::vector<Tensor> ref_in, gpu_in, ref_out, gpu_out;
        for (const Tensor& t : c.inputs) {
            ref_in.push_back(f64(t));
            gpu_in.push_back(gpu(t));
        }
        for (size_t n = 0; n < c.outputs.size(); ++n) {
            const Tensor start = random_normal(c.outputs[n], DType::f32, stream++);
            ref_out.push_back(f64(start));
            gpu_out.push_back(gpu(start));
        }
        c.op(ref_out, ref_in);
        c.op(gpu_out, gpu_in);
        for (size_t n = 0; n < ref_out.size(); ++n)
            EXPECT_LT(relative_error(host(gpu_out[n]), ref_out[n]), kElementwiseTolerance) << "output " << n;
    }
}

TEST(CudaMixerOps, ShortConvMatchesF64) {
    SKIP_WITHOUT_GPU();
    uint64_t stream = 3100;
    // Taps 1 to 8 (the kernels' compile-time cases); 29 tokens put sequence starts inside the kernels'
    // 16-row stretches; 3 tokens is shorter than the taps; 3 × 300 tokens span several blocks of rows,
    // whose weight-gradient partials are then summed.
    for (const auto& [K, T] : {std::pair<int64_t, int64_t>{1, 29}, {3, 29}, {4, 29}, {8, 29}, {4, 3}, {4, 300}}) {
        for (bool silu : {false, true}) {
            SCOPED_TRACE(::testing::Message() << "K=" << K << " T=" << T << " silu=" << silu);
            const int64_t B = 3, C = 70;
            const Tensor x = random_normal({B, T, C}, DType::f32, stream++);
            const Tensor w = random_normal({C, K}, DType::f32, stream++);
            const Tensor dout = random_normal({B, T, C}, DType::f32, stream++);
            const Tensor dx0 = random_normal({B, T, C}, DType::f32, stream++);
            const Tensor dw0 = random_normal({C, K}, DType::f32, stream++);
            Tensor ref = Tensor::zeros({B, T, C}, DType::f64), out = gpu(Tensor::zeros({B, T, C}));
            ops::short_conv_forward(ref, f64(x), f64(w), silu);
            ops::short_conv_forward(out, gpu(x), gpu(w), silu);
            EXPECT_LT(relative_error(host(out), ref), kElementwiseTolerance);
            Tensor dx_ref = f64(dx0), dw_ref = f64(dw0), dx = gpu(dx0), dw = gpu(dw0);
            ops::short_conv_backward(dx_ref, dw_ref, f64(dout), f64(x), f64(w), silu);
            ops::short_conv_backward(dx, dw, gpu(dout), gpu(x), gpu(w), silu);
            EXPECT_LT(relative_error(host(dx), dx_ref), kElementwiseTolerance);
            EXPECT_LT(relative_error(host(dw), dw_ref), kElementwiseTolerance);
        }
    }
}

TEST(CudaMixerOps, RopeMatchesF64AtLongPositions) {
    SKIP_WITHOUT_GPU();
    const int64_t B = 2, T = 23, H = 3, D = 36;
    const Tensor x = random_normal({B, T, H, D}, DType::f32, 3150), dout = random_normal({B, T, H, D}, DType::f32, 3151);
    const Tensor dx0 = random_normal({B, T, H, D}, DType::f32, 3152);
    std::vector<int64_t> far(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) far[size_t(t)] = 100000 + 7 * t;  // f32 angles would lose digits here
    for (const std::vector<int64_t>& positions : {std::vector<int64_t>{}, far}) {
        SCOPED_TRACE(positions.empty() ? "positions 0..T-1" : "positions from 100000");
        // The same f32 frequencies on both sides: at position 1e5 the rounding of θ alone moves an angle by
        // ~1e-2, which is the spec's choice of dtype, not the kernel's error.
        const Tensor freq32 = ops::rope_frequencies(D, 10000.0, DType::f32);
        const Tensor freq64 = f64(freq32), freq = gpu(freq32);
        Tensor ref = Tensor::zeros({B, T, H, D}, DType::f64), out = gpu(Tensor::zeros({B, T, H, D}));
        ops::rope_forward(ref, f64(x), positions, freq64);
        ops::rope_forward(out, gpu(x), positions, freq);
        EXPECT_LT(relative_error(host(out), ref), kElementwiseTolerance);
        Tensor dx_ref = f64(dx0), dx = gpu(dx0);
        ops::rope_backward(dx_ref, f64(dout), positions, freq64);
        ops::rope_backward(dx, gpu(dout), positions, freq);
        EXPECT_LT(relative_error(host(dx), dx_ref), kElementwiseTolerance);
    }
}

namespace {

enum class Decay { none, fixed, scalar, vector };

struct ScanCase {
    const char* name;
    bool delta;
    Decay decay;
    int64_t B, T, H, Dk, Dv;
    std::vector<int64_t> cu_seqlens;
    bool states;  // initial state in, final state out, gradient into the final state
};

// Forward and backward of one case on float64 CPU tensors (the chunkwise form: a different algorithm
// from the GPU's recurrence) and on fp32 GPU tensors; every output and gradient compared.
void check_scan(const ScanCase& c, uint64_t stream) {
    SCOPED_TRACE(c.name);
    const int64_t B = c.B, T = c.T, H = c.H, Dk = c.Dk, Dv = c.Dv;
    const int64_t N = c.cu_seqlens.empty() ? B : int64_t(c.cu_seqlens.size()) - 1;
    const Shape keys{B, T, H, Dk}, values{B, T, H, Dv}, heads{B, T, H}, state{N, H, Dk, Dv};
    const Tensor q = random_normal(keys, DType::f32, stream++, 0.5);
    const Tensor k = random_normal(keys, DType::f32, stream++, 0.5);
    const Tensor v = random_normal(values, DType::f32, stream++);
    // Keys of the delta rule are unit rows in the layers (L2-normalised); β in (0, 1).
    Tensor k_used = k;
    if (c.delta) {
        Tensor unit = Tensor::empty(keys), inv = Tensor::empty({B * T * H});
        Tensor rows = unit.view({B * T * H, Dk});
        ops::l2norm_forward(rows, inv, k.view({B * T * H, Dk}), 1e-6);
        k_used = unit;
    }
    const Tensor beta = random_uniform(heads, DType::f32, stream++, 0.05, 0.95);
    Tensor log_gate, log_decay;
    if (c.decay == Decay::scalar) log_gate = random_uniform(heads, DType::f32, stream++, -0.5, -0.001);
    if (c.decay == Decay::vector) log_gate = random_uniform(keys, DType::f32, stream++, -0.5, -0.001);
    if (c.decay == Decay::fixed) log_decay = random_uniform({H}, DType::f32, stream++, -0.3, -0.01);
    const Tensor s0 = random_normal(state, DType::f32, stream++), dsT = random_normal(state, DType::f32, stream++);
    const Tensor dout = random_normal(values, DType::f32, stream++);
    // Gradients start nonzero: the backward adds into them.
    const Tensor dq0 = random_normal(keys, DType::f32, stream++), dk0 = random_normal(keys, DType::f32, stream++);
    const Tensor dv0 = random_normal(values, DType::f32, stream++), dbeta0 = random_normal(heads, DType::f32, stream++);
    const Tensor dgate0 = log_gate.defined() ? random_normal(log_gate.shape(), DType::f32, stream++) : Tensor();
    const Tensor ds00 = random_normal(state, DType::f32, stream++);

    struct Run {
        Tensor o, final_state, dq, dk, dv, dbeta, dgate, ds0;
    };
    auto run = [&](auto&& put) {
        Run r;
        const Tensor q_ = put(q), k_ = put(k_used), v_ = put(v), beta_ = put(beta), s0_ = put(s0);
        r.o = put(Tensor::zeros(values));
        r.final_state = put(Tensor::zeros(state));
        r.dq = put(dq0), r.dk = put(dk0), r.dv = put(dv0), r.dbeta = put(dbeta0), r.ds0 = put(ds00);
        if (dgate0.defined()) r.dgate = put(dgate0);
        const Tensor dout_ = put(dout), dsT_ = put(dsT);
        Tensor* final_state = c.states ? &r.final_state : nullptr;
        const Tensor* initial = c.states ? &s0_ : nullptr;
        Tensor* ds0 = c.states ? &r.ds0 : nullptr;
        const Tensor* dfinal = c.states ? &dsT_ : nullptr;
        Tensor* dgate = r.dgate.defined() ? &r.dgate : nullptr;
        if (c.delta) {
            ops::DeltaRuleArgs args;
            args.scale = 1 / std::sqrt(double(Dk));
            args.chunk_size = 16;
            args.cu_seqlens = c.cu_seqlens;
            if (log_gate.defined()) args.log_gate = put(log_gate);
            ops::delta_rule_chunkwise_forward(r.o, final_state, q_, k_, v_, beta_, initial, args);
            ops::delta_rule_chunkwise_backward(r.dq, r.dk, r.dv, r.dbeta, dgate, ds0, dout_, dfinal, q_, k_, v_,
                                               beta_, initial, args);
        } else {
            ops::LinearAttentionArgs args;
            args.scale = 1 / std::sqrt(double(Dk));
            args.chunk_size = 16;
            args.cu_seqlens = c.cu_seqlens;
            if (log_gate.defined()) args.log_gate = put(log_gate);
            if (log_decay.defined()) args.log_decay = put(log_decay);
            ops::linear_attention_chunkwise_forward(r.o, final_state, q_, k_, v_, initial, args);
            ops::linear_attention_chunkwise_backward(r.dq, r.dk, r.dv, ds0, dout_, dfinal, q_, k_, v_, initial, args,
                                                     dgate);
        }
        return r;
    };
    const Run ref = run([](const Tensor& t) { return f64(t); });
    const Run out = run([](const Tensor& t) { return gpu(t); });
    EXPECT_LT(relative_error(host(out.o), ref.o), kScanTolerance) << "o";
    if (c.states) {
        EXPECT_LT(relative_error(host(out.final_state), ref.final_state), kScanTolerance) << "final_state";
        EXPECT_LT(relative_error(host(out.ds0), ref.ds0), kScanTolerance) << "dinitial_state";
    }
    EXPECT_LT(relative_error(host(out.dq), ref.dq), kScanTolerance) << "dq";
    EXPECT_LT(relative_error(host(out.dk), ref.dk), kScanTolerance) << "dk";
    EXPECT_LT(relative_error(host(out.dv), ref.dv), kScanTolerance) << "dv";
    if (c.delta) {
        EXPECT_LT(relative_error(host(out.dbeta), ref.dbeta), kScanTolerance) << "dbeta";
    }
    if (ref.dgate.defined()) {
        EXPECT_LT(relative_error(host(out.dgate), ref.dgate), kScanTolerance) << "dlog_gate";
    }
}

}  // namespace

TEST(CudaMixerOps, RecurrentScanMatchesF64ChunkwiseForEveryDecay) {
    SKIP_WITHOUT_GPU();
    const std::vector<ScanCase> cases = {
        {"linear, no decay, Dk 64, Dv 64", false, Decay::none, 2, 70, 3, 64, 64, {}, false},
        {"linear, fixed decay, states, Dv 48", false, Decay::fixed, 2, 37, 2, 32, 48, {}, true},
        {"linear, scalar gate, states, Dk 128", false, Decay::scalar, 1, 97, 2, 128, 64, {}, true},
        {"linear, vector gate (GLA), Dk 16, Dv 100", false, Decay::vector, 3, 45, 2, 16, 100, {}, true},
        {"linear, scalar gate, packed sequences", false, Decay::scalar, 1, 90, 2, 32, 32, {0, 5, 41, 90}, true},
        {"delta rule, Dk 64", true, Decay::none, 2, 66, 2, 64, 64, {}, true},
        {"gated delta rule, Dk 32, Dv 80", true, Decay::scalar, 2, 51, 3, 32, 80, {}, true},
        {"gated delta rule, packed sequences", true, Decay::scalar, 1, 77, 2, 64, 32, {0, 33, 34, 77}, true},
    };
    uint64_t stream = 3200;
    for (const ScanCase& c : cases) {
        check_scan(c, stream);
        stream += 100;
    }
}

TEST(CudaMixerOps, RecurrentScanRefusesWhatItCannotHold) {
    SKIP_WITHOUT_GPU();
    const Tensor q = gpu(random_normal({1, 4, 1, 256}, DType::f32, 3300));
    const Tensor v = gpu(random_normal({1, 4, 1, 8}, DType::f32, 3301));
    Tensor o = gpu(Tensor::zeros({1, 4, 1, 8}));
    try {
        ops::linear_attention_chunkwise_forward(o, nullptr, q, q, v, nullptr, {});
        FAIL() << "a 256-wide key was accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("Dk = 256"), std::string::npos) << e.what();
    }
    const Tensor small_q = gpu(random_normal({1, 4, 1, 8}, DType::f32, 3302));
    const Tensor cpu_v = random_normal({1, 4, 1, 8}, DType::f32, 3303);
    try {
        ops::linear_attention_chunkwise_forward(o, nullptr, small_q, small_q, cpu_v, nullptr, {});
        FAIL() << "a CPU v was accepted with GPU q";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("v: tensor is on cpu"), std::string::npos) << e.what();
    }
}

TEST(CudaMixerOps, MixedPrecisionLinearAttentionTakesTheBf16Kernels) {
    SKIP_WITHOUT_GPU();
    const int64_t B = 2, T = 100, H = 2, D = 64;
    const Shape shape{B, T, H, D};
    for (bool gated : {false, true}) {
        SCOPED_TRACE(gated ? "scalar gate" : "no decay");
        const Tensor q = random_normal(shape, DType::f32, 3400, 0.5), k = random_normal(shape, DType::f32, 3401, 0.5);
        const Tensor v = random_normal(shape, DType::f32, 3402), dout = random_normal(shape, DType::f32, 3403);
        const Tensor gate = random_uniform({B, T, H}, DType::f32, 3404, -0.3, -0.001);
        const Tensor dq0 = random_normal(shape, DType::f32, 3405), dgate0 = random_normal({B, T, H}, DType::f32, 3406);
        auto run = [&](auto&& put, Tensor& o, Tensor& dq, Tensor& dgate) {
            ops::LinearAttentionArgs args;
            args.scale = 0.125;
            if (gated) args.log_gate = put(gate);
            o = put(Tensor::zeros(shape));
            dq = put(dq0);
            Tensor dk = put(Tensor::zeros(shape)), dv = put(Tensor::zeros(shape));
            dgate = put(dgate0);
            const Tensor q_ = put(q), k_ = put(k), v_ = put(v);
            ops::linear_attention_chunkwise_forward(o, nullptr, q_, k_, v_, nullptr, args);
            ops::linear_attention_chunkwise_backward(dq, dk, dv, nullptr, put(dout), nullptr, q_, k_, v_, nullptr, args,
                                                     gated ? &dgate : nullptr);
        };
        Tensor o_ref, dq_ref, dgate_ref, o, dq, dgate;
        run([](const Tensor& t) { return f64(t); }, o_ref, dq_ref, dgate_ref);
        {
            const ops::ScopedPrecision bf16(ops::Precision::bf16);
            run([](const Tensor& t) { return gpu(t); }, o, dq, dgate);
        }
        // bf16 operands (2⁻⁹ relative) through sums of ~100 tokens: ~1e-2.
        for (const auto& [name, got, want] : {std::tuple{"o", &o, &o_ref}, {"dq", &dq, &dq_ref}}) {
            const double error = relative_error(host(*got), *want);
            EXPECT_LT(error, 3e-2) << name;
            EXPECT_GT(error, 1e-5) << name << ": as exact as fp32, so the bf16 kernels did not run";
        }
        if (gated) {
            EXPECT_LT(relative_error(host(dgate), dgate_ref), 3e-2) << "dlog_gate";
        }
    }
}
