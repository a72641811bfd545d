// Element-wise mixer ops: forward against formulas evaluated here in float64, backward against
// finite differences in float64, float32 against float64.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "ops/elementwise.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using namespace linarch::testkit;

namespace {
// Builds the float64 expected output of a per-element formula.
Tensor expected_values(const Tensor& x, const std::function<double(double)>& f) {
    Tensor out = Tensor::empty(x.shape(), DType::f64);
    for (int64_t i = 0; i < x.numel(); ++i) out.data<double>()[i] = f(x.flat(i));
    return out;
}
double sigmoid(double x) { return 1 / (1 + std::exp(-x)); }
}  // namespace

TEST(FeatureMap, ForwardBackwardEveryMap) {
    const Shape shape{3, 5, 7};
    struct Case {
        const char* name;
        std::function<double(double)> f;
    };
    const std::vector<Case> cases = {{"identity", [](double v) { return v; }},
                                     {"elu1", [](double v) { return v > 0 ? v + 1 : std::exp(v); }},
                                     {"relu", [](double v) { return v > 0 ? v : 0.0; }}};
    for (const auto& [name, f] : cases) {
        const auto map = ops::feature_map_from_name(name);
        Tensor x = random_normal(shape, DType::f64, 1);
        Tensor out = Tensor::empty(shape, DType::f64);
        ops::feature_map_forward(out, x, map);
        EXPECT_LT(relative_error(out, expected_values(x, f)), 1e-15) << name;
        Tensor x32 = x.to(DType::f32), out32 = Tensor::empty(shape);
        ops::feature_map_forward(out32, x32, map);
        EXPECT_LT(relative_error(out32, out), 1e-6) << name;
        const Tensor r = random_normal(shape, DType::f64, 2);
        Tensor dx = Tensor::zeros(shape, DType::f64);
        ops::feature_map_backward(dx, r, x, map);
        auto loss = [&] {
            ops::feature_map_forward(out, x, map);
            return dot(out, r);
        };
        EXPECT_LT(gradient_check(loss, x, dx), 1e-7) << name;
    }
    EXPECT_THROW(ops::feature_map_from_name("tanh"), Error);
}

TEST(FeatureMap, SoftmaxOverFeaturesPerRow) {
    for (const Shape& shape : {Shape{4, 3, 5}, Shape{2, 1, 64}, Shape{1, 1}}) {
        SCOPED_TRACE(shape_string(shape));
        const int64_t dim = shape.back(), rows = Tensor::empty(shape, DType::f64).numel() / dim;
        // Large inputs: the row maximum must be subtracted for exp not to overflow.
        Tensor x = random_normal(shape, DType::f64, 11, 30.0);
        Tensor out = Tensor::empty(shape, DType::f64), expected = Tensor::empty(shape, DType::f64);
        ops::feature_map_forward(out, x, ops::FeatureMap::softmax);
        for (int64_t r = 0; r < rows; ++r) {
            long double max = -1e300L, sum = 0;
            for (int64_t d = 0; d < dim; ++d) max = std::max<long double>(max, x.flat(r * dim + d));
            for (int64_t d = 0; d < dim; ++d) sum += std::exp((long double)x.flat(r * dim + d) - max);
            for (int64_t d = 0; d < dim; ++d)
                expected.data<double>()[r * dim + d] = double(std::exp((long double)x.flat(r * dim + d) - max) / sum);
        }
        EXPECT_LT(relative_error(out, expected), 1e-14);
        Tensor x32 = x.to(DType::f32), out32 = Tensor::empty(shape);
        ops::feature_map_forward(out32, x32, ops::FeatureMap::softmax);
        EXPECT_LT(relative_error(out32, out), 1e-5);
        // Gradients at moderate inputs (saturated softmax has vanishing, FD-unfriendly slopes).
        Tensor xs = random_normal(shape, DType::f64, 12);
        const Tensor r = random_normal(shape, DType::f64, 13);
        Tensor dx = Tensor::zeros(shape, DType::f64);
        ops::feature_map_backward(dx, r, xs, ops::FeatureMap::softmax);
        auto loss = [&] {
            ops::feature_map_forward(out, xs, ops::FeatureMap::softmax);
            return dot(out, r);
        };
        if (dim > 1) {
            EXPECT_LT(gradient_check(loss, xs, dx), 1e-7);
        }
    }
}

TEST(L2Norm, RowsHaveUnitNormAndGradientsMatch) {
    Tensor x = random_normal({6, 9}, DType::f64, 3, 2.0);
    Tensor out = Tensor::empty({6, 9}, DType::f64), inv = Tensor::empty({6}, DType::f64);
    ops::l2norm_forward(out, inv, x, 1e-12);
    for (int64_t r = 0; r < 6; ++r) {
        double norm = 0;
        for (int64_t d = 0; d < 9; ++d) norm += out.item({r, d}) * out.item({r, d});
        EXPECT_NEAR(norm, 1.0, 1e-12);
    }
    const Tensor r = random_normal({6, 9}, DType::f64, 4);
    Tensor dx = Tensor::zeros({6, 9}, DType::f64);
    ops::l2norm_backward(dx, r, out, inv);
    auto loss = [&] {
        ops::l2norm_forward(out, inv, x, 1e-12);
        return dot(out, r);
    };
    EXPECT_LT(gradient_check(loss, x, dx, 54), 1e-7);
    Tensor bad = Tensor::empty({5}, DType::f64);
    EXPECT_THROW(ops::l2norm_forward(out, bad, x, 1e-12), Error);
}

TEST(DecayGates, Mamba2AndLogsigmoidAreNonPositiveAndGradientsMatch) {
    const int64_t rows = 7, heads = 3;
    Tensor x = random_normal({rows, heads}, DType::f64, 5, 2.0);
    Tensor a_log = random_normal({heads}, DType::f64, 6, 0.5), dt_bias = random_normal({heads}, DType::f64, 7);
    Tensor g = Tensor::empty({rows, heads}, DType::f64);
    ops::mamba2_decay_forward(g, x, a_log, dt_bias);
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t h = 0; h < heads; ++h) {
            const double u = x.item({r, h}) + dt_bias.flat(h);
            EXPECT_NEAR(g.item({r, h}), -std::exp(a_log.flat(h)) * std::log1p(std::exp(u)), 1e-14);
            EXPECT_LE(g.item({r, h}), 0.0);
        }
    const Tensor rg = random_normal({rows, heads}, DType::f64, 8);
    Tensor dx = Tensor::zeros({rows, heads}, DType::f64), da = Tensor::zeros({heads}, DType::f64),
           db = Tensor::zeros({heads}, DType::f64);
    ops::mamba2_decay_backward(dx, da, db, rg, x, a_log, dt_bias);
    auto loss = [&] {
        ops::mamba2_decay_forward(g, x, a_log, dt_bias);
        return dot(g, rg);
    };
    EXPECT_LT(gradient_check(loss, x, dx), 1e-7);
    EXPECT_LT(gradient_check(loss, a_log, da), 1e-7);
    EXPECT_LT(gradient_check(loss, dt_bias, db), 1e-7);

    Tensor z = random_normal({rows, 8}, DType::f64, 9, 5.0), lg = Tensor::empty({rows, 8}, DType::f64);
    ops::logsigmoid_decay_forward(lg, z, 16.0);
    // log σ(v) = −log(1 + e^{−v}) in the form that keeps its relative precision on both sides (the
    // naive log(σ(v)) loses it for large v, where the value is tiny).
    const auto log_sigmoid = [](double v) { return v >= 0 ? -std::log1p(std::exp(-v)) : v - std::log1p(std::exp(v)); };
    EXPECT_LT(relative_error(lg, expected_values(z, [&](double v) { return log_sigmoid(v) / 16.0; })), 1e-12);
    const Tensor rz = random_normal({rows, 8}, DType::f64, 10);
    Tensor dz = Tensor::zeros({rows, 8}, DType::f64);
    ops::logsigmoid_decay_backward(dz, rz, z, 16.0);
    auto loss_z = [&] {
        ops::logsigmoid_decay_forward(lg, z, 16.0);
        return dot(lg, rz);
    };
    EXPECT_LT(gradient_check(loss_z, z, dz), 1e-7);
    // Extreme inputs stay finite: logsigmoid(−1000) = −1000, logsigmoid(1000) = 0.
    Tensor extreme = Tensor::from_vector({2}, {-1000.0, 1000.0}, DType::f32), out = Tensor::empty({2});
    ops::logsigmoid_decay_forward(out, extreme, 1.0);
    EXPECT_NEAR(out.flat(0), -1000.0, 1e-3);
    EXPECT_NEAR(out.flat(1), 0.0, 1e-6);
    Tensor wrong = Tensor::empty({heads + 1}, DType::f64);
    EXPECT_THROW(ops::mamba2_decay_forward(g, x, wrong, dt_bias), Error);
}

TEST(DecayGates, LowerBoundedGateStaysAboveItsBoundAndGradientsMatch) {
    const int64_t rows = 9, channels = 6;
    for (const double lower_bound : {0.0, 0.25, 0.9}) {
        SCOPED_TRACE(lower_bound);
        Tensor x = random_normal({rows, channels}, DType::f64, 14, 4.0);
        Tensor g = Tensor::empty({rows, channels}, DType::f64);
        ops::lower_bounded_decay_forward(g, x, lower_bound);
        EXPECT_LT(relative_error(g, expected_values(x, [&](double v) {
                      return std::log(lower_bound + (1 - lower_bound) * sigmoid(v));
                  })),
                  1e-13);
        for (int64_t i = 0; i < g.numel(); ++i) {
            EXPECT_LE(g.flat(i), 0.0);
            EXPECT_GE(g.flat(i), lower_bound > 0 ? std::log(lower_bound) - 1e-15 : -1e300);
        }
        const Tensor r = random_normal({rows, channels}, DType::f64, 15);
        Tensor dx = Tensor::zeros({rows, channels}, DType::f64);
        ops::lower_bounded_decay_backward(dx, r, x, lower_bound);
        auto loss = [&] {
            ops::lower_bounded_decay_forward(g, x, lower_bound);
            return dot(g, r);
        };
        EXPECT_LT(gradient_check(loss, x, dx), 1e-7);
        // Saturated inputs stay finite and exact: α → 1 (log α ≈ −(1−λ)e^(−x)) and α → λ.
        Tensor extreme = Tensor::from_vector({2}, {60.0, -1000.0}, DType::f32), out = Tensor::empty({2});
        ops::lower_bounded_decay_forward(out, extreme, lower_bound);
        EXPECT_NEAR(out.flat(0) / (-(1 - lower_bound) * std::exp(-60.0)), 1.0, 1e-5);
        EXPECT_NEAR(out.flat(1), lower_bound > 0 ? std::log(lower_bound) : -1000.0, 1e-3);
    }
    Tensor x = random_normal({2, 2}, DType::f64, 16), g = Tensor::empty({2, 2}, DType::f64);
    EXPECT_THROW(ops::lower_bounded_decay_forward(g, x, 1.0), Error);
}

TEST(OutputGate, SigmoidAndSwishForwardBackward) {
    for (const char* name : {"sigmoid", "swish"}) {
        const auto act = ops::gate_activation_from_name(name);
        Tensor y = random_normal({4, 6}, DType::f64, 11), z = random_normal({4, 6}, DType::f64, 12, 2.0);
        Tensor out = Tensor::empty({4, 6}, DType::f64);
        ops::output_gate_forward(out, y, z, act);
        Tensor expected = Tensor::empty({4, 6}, DType::f64);
        for (int64_t i = 0; i < 24; ++i) {
            const double s = sigmoid(z.flat(i));
            expected.data<double>()[i] = y.flat(i) * (act == ops::GateActivation::sigmoid ? s : z.flat(i) * s);
        }
        EXPECT_LT(relative_error(out, expected), 1e-14) << name;
        const Tensor r = random_normal({4, 6}, DType::f64, 13);
        Tensor dy = Tensor::zeros({4, 6}, DType::f64), dz = Tensor::zeros({4, 6}, DType::f64);
        ops::output_gate_backward(dy, dz, r, y, z, act);
        auto loss = [&] {
            ops::output_gate_forward(out, y, z, act);
            return dot(out, r);
        };
        EXPECT_LT(gradient_check(loss, y, dy), 1e-7) << name;
        EXPECT_LT(gradient_check(loss, z, dz), 1e-7) << name;
    }
}

TEST(BiasAndSigmoid, ForwardBackwardAndMixedDtypesRejected) {
    Tensor x = random_normal({5, 4}, DType::f64, 14), bias = random_normal({4}, DType::f64, 15);
    Tensor out = Tensor::empty({5, 4}, DType::f64);
    ops::add_bias_forward(out, x, bias);
    EXPECT_NEAR(out.item({3, 2}), x.item({3, 2}) + bias.flat(2), 1e-15);
    const Tensor r = random_normal({5, 4}, DType::f64, 16);
    Tensor dbias = Tensor::zeros({4}, DType::f64);
    ops::add_bias_backward(dbias, r);
    auto loss = [&] {
        ops::add_bias_forward(out, x, bias);
        return dot(out, r);
    };
    EXPECT_LT(gradient_check(loss, bias, dbias), 1e-7);
    Tensor s = Tensor::empty({5, 4}, DType::f64), dx = Tensor::zeros({5, 4}, DType::f64);
    ops::sigmoid_forward(s, x);
    ops::sigmoid_backward(dx, r, s);
    auto loss_s = [&] {
        ops::sigmoid_forward(s, x);
        return dot(s, r);
    };
    EXPECT_LT(gradient_check(loss_s, x, dx), 1e-7);
    Tensor x32 = x.to(DType::f32);
    try {
        ops::sigmoid_forward(s, x32);
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("sigmoid_forward"), std::string::npos) << e.what();
    }
}

TEST(KeyFromDecay, OneMinusAlphaAndGradient) {
    Tensor g = random_uniform({5, 12}, DType::f64, 17, -3.0, -1e-4);
    Tensor key = Tensor::empty({5, 12}, DType::f64);
    ops::key_from_decay_forward(key, g);
    EXPECT_LT(relative_error(key, expected_values(g, [](double v) { return 1 - std::exp(v); })), 1e-14);
    const Tensor r = random_normal({5, 12}, DType::f64, 18);
    Tensor dg = Tensor::zeros({5, 12}, DType::f64);
    ops::key_from_decay_backward(dg, r, g);
    auto loss = [&] {
        ops::key_from_decay_forward(key, g);
        return dot(key, r);
    };
    EXPECT_LT(gradient_check(loss, g, dg), 1e-7);
}
