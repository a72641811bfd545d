// Whole-model checks: the decode path agrees with the training path, gradients agree with finite
// differences, and training fits a small pattern.
#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.hpp"
#include "core/spec.hpp"
#include "model/language_model.hpp"
#include "ops/dense.hpp"
#include "support/testkit.hpp"
#include "train/optimizer.hpp"

using namespace linarch;
using namespace linarch::testkit;

namespace {
ModelSpec small_spec(const std::string& decay, int64_t conv_size) {
    ModelSpec spec;
    spec.vocab_size = 256;
    spec.d_model = 24;
    spec.n_layers = 2;
    spec.n_heads = 3;
    spec.head_dim = 8;
    spec.mlp_hidden = 40;
    spec.init_std = 0.2;  // larger than default so every path carries signal
    spec.mixer.decay = decay;
    spec.mixer.conv_size = conv_size;
    spec.mixer.chunk_size = 5;  // sequences below are not multiples of it
    return spec;
}

// One mixer configuration per case, as the spec overrides (`--set` syntax) that make it from a small
// base: decay kinds and parameterisations, feature maps, norms, gates, conv, rotations, head
// expansions, update rules, orders, hybrids and per-layer overrides.
struct MixerCase {
    const char* name;
    std::vector<std::string> overrides;
};

constexpr const char* kSmallModel = R"(
[model]
vocab_size = 256
d_model = 24
n_layers = 2
n_heads = 3
head_dim = 8
mlp_hidden = 40
init_std = 0.2        # larger than default so every path carries signal
[model.mixer]
chunk_size = 5        # sequences below are not multiples of it
gate_temperature = 4.0
gate_low_rank = 0
conv_size = 0
)";

class ModelVariants : public ::testing::TestWithParam<MixerCase> {
protected:
    Spec full_spec() const { return parse_spec(kSmallModel, GetParam().name, GetParam().overrides); }
    ModelSpec spec() const { return full_spec().model; }
    // The test's sequence length, unless a LASAD grid fixes it (data.seq_len = its cells).
    int64_t length(int64_t usual) const {
        const Spec s = full_spec();
        return s.model.mixer.decay == "spatial" ? s.data.seq_len : usual;
    }
};
}  // namespace

TEST_P(ModelVariants, DecodeStepsMatchTheTrainingForward) {
    LanguageModel model(spec());
    model.initialize(test_seed());
    const int64_t seq_len = length(13);
    const auto tokens = random_ids(seq_len + 1, 256, 21);
    std::vector<int32_t> inputs(tokens.begin(), tokens.end() - 1), targets(tokens.begin() + 1, tokens.end());
    model.forward(inputs, targets, 1, seq_len);
    // The training forward's per-token losses, recomputed from decode-step logits.
    auto state = model.new_decode_state();
    Tensor logits = Tensor::empty({1, 256});
    double worst = 0, total = 0;
    for (int64_t t = 0; t < seq_len; ++t) {
        model.step(state, inputs[size_t(t)], logits);
        double max_logit = -1e300, sum = 0;
        for (int v = 0; v < 256; ++v) max_logit = std::max(max_logit, logits.flat(v));
        for (int v = 0; v < 256; ++v) sum += std::exp(logits.flat(v) - max_logit);
        const double loss = std::log(sum) + max_logit - logits.flat(targets[size_t(t)]);
        total += loss;
        worst = std::max(worst, std::abs(loss));
    }
    const double forward_mean = model.forward(inputs, targets, 1, seq_len);
    EXPECT_NEAR(total / double(seq_len), forward_mean, 1e-5 * worst);
}

// Sequences stepped together (forks of one state, as lookahead verifies them; or sequences at
// different positions) give each sequence's own logits and leave each state as stepping it alone would.
TEST_P(ModelVariants, SequencesSteppedTogetherMatchEachAlone) {
    LanguageModel model(spec(), DType::f64);
    model.initialize(test_seed() + 5);
    const int64_t seq_len = length(13), prompt = seq_len / 2, T = 3;
    const auto tokens = random_ids(seq_len, 256, 24);
    auto base = model.new_decode_state();
    Tensor last = Tensor::empty({1, 256}, DType::f64);
    model.step(base, std::span(tokens).first(size_t(prompt)), last);
    // Three forks at one position, then two sequences at different positions.
    auto ahead = base.clone();
    model.step(ahead, tokens[size_t(prompt)], last);
    for (const bool same_position : {true, false}) {
        std::vector<LanguageModel::DecodeState> together, alone;
        const int64_t G = same_position ? 3 : 2;
        for (int64_t g = 0; g < G; ++g) {
            const auto& from = !same_position && g == 1 ? ahead : base;
            together.push_back(from.clone());
            alone.push_back(from.clone());
        }
        const auto branch_tokens = random_ids(G * T, 256, 25 + same_position);
        std::vector<LanguageModel::DecodeState*> states;
        for (auto& s : together) states.push_back(&s);
        Tensor logits = Tensor::empty({G * T, 256}, DType::f64);
        model.step_sequences(states, branch_tokens, logits);
        for (int64_t g = 0; g < G; ++g) {
            Tensor expected = Tensor::empty({T, 256}, DType::f64);
            model.step(alone[size_t(g)], std::span(branch_tokens).subspan(size_t(g * T), size_t(T)), expected);
            EXPECT_LT(relative_error(logits.narrow(0, g * T, T).contiguous(), expected), 1e-12) << g;
            EXPECT_EQ(together[size_t(g)].position, alone[size_t(g)].position);
            // The states agree: one more token gives the same logits.
            Tensor a = Tensor::empty({1, 256}, DType::f64), b = Tensor::empty({1, 256}, DType::f64);
            model.step(together[size_t(g)], tokens[0], a);
            model.step(alone[size_t(g)], tokens[0], b);
            EXPECT_LT(relative_error(a, b), 1e-12) << g;
        }
    }
}

// A prompt fed in pieces (chunkwise with the state carried, then single tokens) gives the training
// forward's logits at every position.
TEST_P(ModelVariants, PrefillInPiecesMatchesTheTrainingForward) {
    LanguageModel model(spec(), DType::f64);
    model.initialize(test_seed() + 3);
    const int64_t seq_len = length(13);
    const auto tokens = random_ids(seq_len, 256, 22);
    // The training path's logits: rebuilt from its per-token losses against every possible target is
    // costly, so compare through the losses of random targets instead.
    const auto targets = random_ids(seq_len, 256, 23);
    model.forward(tokens, targets, 1, seq_len);
    std::vector<double> expected(static_cast<size_t>(seq_len));
    for (int64_t t = 0; t < seq_len; ++t) {
        std::vector<int32_t> only(static_cast<size_t>(seq_len), -1);
        only[size_t(t)] = targets[size_t(t)];
        expected[size_t(t)] = model.forward(tokens, only, 1, seq_len);
    }
    auto state = model.new_decode_state();
    const int64_t first = seq_len / 2 + 1, second = seq_len - first - 1;
    std::vector<double> got;
    auto feed = [&](int64_t start, int64_t count) {
        Tensor logits = Tensor::empty({count, 256}, DType::f64);
        model.step(state, std::span(tokens).subspan(size_t(start), size_t(count)), logits);
        for (int64_t r = 0; r < count; ++r) {
            double max_logit = -1e300, sum = 0;
            for (int v = 0; v < 256; ++v) max_logit = std::max(max_logit, logits.item({r, v}));
            for (int v = 0; v < 256; ++v) sum += std::exp(logits.item({r, v}) - max_logit);
            got.push_back(std::log(sum) + max_logit - logits.item({r, targets[size_t(start + r)]}));
        }
    };
    feed(0, first);
    feed(first, second);
    feed(first + second, 1);
    ASSERT_EQ(got.size(), expected.size());
    for (size_t t = 0; t < got.size(); ++t) EXPECT_NEAR(got[t], expected[t], 1e-9 * std::max(1.0, expected[t])) << t;
    EXPECT_EQ(state.position, seq_len);
}

TEST_P(ModelVariants, Float64GradientsMatchFiniteDifferences) {
    LanguageModel model(spec(), DType::f64);
    model.initialize(test_seed() + 1);
    const int64_t batch = 2, seq_len = length(11);
    const auto tokens = random_ids(batch * seq_len, 256, 31);
    auto targets = random_ids(batch * seq_len, 256, 32);
    targets[3] = -1;  // an ignored position
    auto& params = model.parameters();
    params.zero_grad();
    model.forward(tokens, targets, batch, seq_len);
    model.backward(1.0 / double(model.counted_tokens()));
    const auto loss = [&] { return model.forward(tokens, targets, batch, seq_len); };
    // Central differences of a loss near 5.5 with step 1e-6 carry ~1e-9 of rounding — up to ~3e-5 of the
    // smallest gradients here (seen over many seeds); a wrong backward term shows up as O(1e-2) or more.
    for (Parameter& p : params.all())
        EXPECT_LT(gradient_check(loss, p.value, p.grad, 24, 1e-6, /*extrapolate=*/true), 1e-4) << p.name;
}

// SynFlow's objective: the sum of every logit, here summed from the decode path's logits so the
// check also ties backward_logit_sum to what the model outputs.
TEST_P(ModelVariants, LogitSumGradientsMatchFiniteDifferences) {
    LanguageModel model(spec(), DType::f64);
    model.initialize(test_seed() + 5);
    const int64_t batch = 2, seq_len = length(7), vocab = spec().vocab_size;
    const auto tokens = random_ids(batch * seq_len, 256, 35), targets = random_ids(batch * seq_len, 256, 36);
    auto& params = model.parameters();
    params.zero_grad();
    model.forward(tokens, targets, batch, seq_len);
    model.backward_logit_sum();
    const auto logit_sum = [&] {
        double sum = 0;
        for (int64_t row = 0; row < batch; ++row) {
            auto state = model.new_decode_state();
            Tensor logits = Tensor::empty({seq_len, vocab}, DType::f64);
            model.step(state, std::span(tokens).subspan(size_t(row * seq_len), size_t(seq_len)), logits);
            for (double value : logits.to_vector()) sum += value;
        }
        return sum;
    };
    for (Parameter& p : params.all())
        EXPECT_LT(gradient_check(logit_sum, p.value, p.grad, 16, 1e-6, /*extrapolate=*/true), 1e-4) << p.name;
}

TEST_P(ModelVariants, Float32GradientsMatchFloat64) {
    const int64_t batch = 2, seq_len = length(11);
    const auto tokens = random_ids(batch * seq_len, 256, 33), targets = random_ids(batch * seq_len, 256, 34);
    std::vector<Tensor> grads[2];
    int which = 0;
    for (DType dtype : {DType::f32, DType::f64}) {
        LanguageModel model(spec(), dtype);
        model.initialize(test_seed() + 2);  // the same draws in both precisions
        model.parameters().zero_grad();
        model.forward(tokens, targets, batch, seq_len);
        model.backward(1.0 / double(model.counted_tokens()));
        for (auto& p : model.parameters().all()) grads[which].push_back(p.grad);
        ++which;
    }
    for (size_t i = 0; i < grads[0].size(); ++i) EXPECT_LT(relative_error(grads[0][i], grads[1][i]), 1e-3) << i;
}

INSTANTIATE_TEST_SUITE_P(
    Mixers, ModelVariants,
    ::testing::Values(
        MixerCase{"plain", {}},
        MixerCase{"retnet_conv", {"model.mixer.decay=fixed", "model.mixer.conv_size=4"}},
        MixerCase{"retnet_groupnorm_wide_values",
                  {"model.mixer.decay=fixed", "model.mixer.output_norm=groupnorm", "model.mixer.expand_v=2",
                   "model.mixer.output_gate=swish"}},
        MixerCase{"retnet_no_norm", {"model.mixer.decay=fixed", "model.mixer.conv_size=2", "model.mixer.output_norm=none"}},
        MixerCase{"mamba2",
                  {"model.mixer.decay=scalar", "model.mixer.decay_parameterization=mamba2", "model.mixer.conv_size=4",
                   "model.mixer.qk_norm=l2", "model.mixer.output_gate=swish"}},
        MixerCase{"gla_narrow_keys",
                  {"model.mixer.decay=vector", "model.mixer.gate_low_rank=4", "model.mixer.expand_k=0.5",
                   "model.mixer.output_gate=swish"}},
        MixerCase{"scalar_elu",
                  {"model.mixer.decay=scalar", "model.mixer.conv_size=3", "model.mixer.feature_map=elu1",
                   "model.mixer.qk_norm=l2", "model.mixer.output_gate=sigmoid"}},
        MixerCase{"vector_relu_full_rank",
                  {"model.mixer.decay=vector", "model.mixer.conv_size=2", "model.mixer.feature_map=relu",
                   "model.mixer.output_norm=none", "model.mixer.output_gate=sigmoid"}},
        MixerCase{"softmax_features_simple_decay",
                  {"model.mixer.decay=vector", "model.mixer.decay_parameterization=simple",
                   "model.mixer.feature_map=softmax", "model.mixer.gate_low_rank=4"}},
        MixerCase{"scalar_constant_decay",
                  {"model.mixer.decay=scalar", "model.mixer.decay_parameterization=constant", "model.mixer.conv_size=2"}},
        MixerCase{"vector_constant_decay",
                  {"model.mixer.decay=vector", "model.mixer.decay_parameterization=constant", "model.mixer.expand_v=0.5"}},
        MixerCase{"rope_linear", {"model.mixer.decay=fixed", "model.mixer.qk_norm=l2", "model.mixer.rotation=rope"}},
        MixerCase{"grape_planes_linear",
                  {"model.mixer.decay=scalar", "model.mixer.rotation=grape_planes", "model.mixer.conv_size=2"}},
        MixerCase{"hybrid_grape_mixture",
                  {"model.mixer.decay=fixed", "model.mixer.rotation=grape_mixture", "model.mixer.grape_rank=4",
                   "model.hybrid_every=2", "model.hybrid_mixer.rotation=grape_mixture",
                   "model.hybrid_mixer.grape_rank=6"}},
        MixerCase{"hybrid_gated_attention",
                  {"model.mixer.decay=scalar", "model.mixer.decay_parameterization=mamba2", "model.mixer.conv_size=4",
                   "model.mixer.qk_norm=l2", "model.mixer.output_gate=swish", "model.hybrid_every=2"}},
        MixerCase{"hybrid_fox",
                  {"model.mixer.decay=fixed", "model.hybrid_every=1", "model.hybrid_mixer.position_bias=fox",
                   "model.hybrid_mixer.rotation=none"}},
        MixerCase{"hybrid_alibi_window",
                  {"model.mixer.conv_size=3", "model.mixer.feature_map=elu1", "model.hybrid_every=2",
                   "model.hybrid_mixer.position_bias=alibi", "model.hybrid_mixer.window=4",
                   "model.hybrid_mixer.rotation=none"}},
        MixerCase{"deltanet", {"model.mixer.update=delta", "model.mixer.conv_size=4", "model.mixer.qk_norm=l2"}},
        MixerCase{"gated_deltanet_hybrid",
                  {"model.mixer.update=delta", "model.mixer.decay=scalar", "model.mixer.decay_parameterization=mamba2",
                   "model.mixer.conv_size=3", "model.mixer.qk_norm=l2", "model.mixer.output_gate=swish",
                   "model.hybrid_every=2"}},
        MixerCase{"hgrn2_key_from_decay",
                  {"model.mixer.decay=vector", "model.mixer.decay_sharing=key", "model.mixer.gate_low_rank=4",
                   "model.mixer.decay_parameterization=hgrn2", "model.mixer.conv_size=2",
                   "model.mixer.output_gate=swish"}},
        MixerCase{"hla_masked", {"model.mixer.order=2", "model.mixer.conv_size=3", "model.mixer.qk_norm=l2"}},
        MixerCase{"hla_fixed_decay", {"model.mixer.order=2", "model.mixer.decay=fixed", "model.mixer.qk_norm=l2"}},
        MixerCase{"hla_unmasked_gated",
                  {"model.mixer.order=2", "model.mixer.hla_masked=false", "model.mixer.decay=scalar",
                   "model.mixer.decay_parameterization=mamba2", "model.mixer.qk_norm=l2", "model.mixer.conv_size=2"}},
        MixerCase{"hla_unmasked_wide_values",
                  {"model.mixer.order=2", "model.mixer.hla_masked=false", "model.mixer.qk_norm=l2",
                   "model.mixer.output_gate=sigmoid", "model.mixer.rotation=rope", "model.mixer.expand_v=1.5"}},
        MixerCase{"lasad_grid",
                  {"model.mixer.decay=spatial", "model.mixer.grid_height=3", "model.mixer.grid_width=4",
                   "data.seq_len=12", "model.mixer.conv_size=2", "model.mixer.rotation=rope",
                   "model.mixer.expand_v=0.5"}},
        // Layer 0 a GLA layer, layer 1 a DeltaNet layer: per-layer overrides on one model.
        MixerCase{"per_layer_overrides",
                  {"model.layers.0.decay=vector", "model.layers.0.gate_low_rank=4", "model.layers.1.update=delta",
                   "model.layers.1.qk_norm=l2", "model.layers.1.conv_size=2"}}),
    [](const ::testing::TestParamInfo<MixerCase>& info) { return std::string(info.param.name); });

TEST(LanguageModel, TrainingFitsARepeatingPattern) {
    auto spec = small_spec("fixed", 3);
    spec.init_std = 0.02;
    LanguageModel model(spec);
    model.initialize(test_seed());
    OptimSpec optim;
    optim.lr = 1e-2;
    optim.warmup_steps = 5;
    AdamW adam(optim, model.parameters());
    const std::string pattern = "abcabdabe";
    std::vector<int32_t> tokens;
    for (int i = 0; i < 4 * 40 + 1; ++i) tokens.push_back(pattern[size_t(i) % pattern.size()]);
    std::vector<int32_t> inputs(tokens.begin(), tokens.end() - 1), targets(tokens.begin() + 1, tokens.end());
    double first = 0, last = 0;
    for (int step = 0; step < 300; ++step) {
        model.parameters().zero_grad();
        last = model.forward(inputs, targets, 4, 40);
        if (step == 0) first = last;
        model.backward(1.0 / double(model.counted_tokens()));
        clip_grad_norm(model.parameters(), 1.0);
        adam.step(model.parameters(), learning_rate(optim, step, 300));
    }
    EXPECT_NEAR(first, std::log(256.0), 0.5);
    // The pattern is deterministic except after "ab" (c, d or e): ~3 of 9 positions carry log 3.
    EXPECT_LT(last, 0.6);
}

TEST(Schedule, WarmupThenCosineToTheFloor) {
    OptimSpec optim;
    optim.lr = 1.0;
    optim.warmup_steps = 10;
    optim.min_lr_ratio = 0.1;
    EXPECT_NEAR(learning_rate(optim, 0, 100), 0.1, 1e-12);
    EXPECT_NEAR(learning_rate(optim, 9, 100), 1.0, 1e-12);
    EXPECT_NEAR(learning_rate(optim, 99, 100), 0.1, 1e-12);
    const double mid = learning_rate(optim, 10 + 89 / 2, 100);
    EXPECT_NEAR(mid, 0.55, 0.02);
    for (int s = 10; s < 99; ++s) EXPECT_GE(learning_rate(optim, s, 100), learning_rate(optim, s + 1, 100));
}

TEST(Clipping, ScalesToTheMaximumNorm) {
    ParameterStore params;
    Parameter& a = params.add("a", {3, 4});
    Parameter& b = params.add("b", {5});
    a.grad.copy_from(random_normal({3, 4}, DType::f32, 1, 3.0));
    b.grad.copy_from(random_normal({5}, DType::f32, 2, 3.0));
    const double norm = std::sqrt(ops::sum_squares(a.grad) + ops::sum_squares(b.grad));
    EXPECT_NEAR(clip_grad_norm(params, 0.5), norm, 1e-6 * norm);
    EXPECT_NEAR(std::sqrt(ops::sum_squares(a.grad) + ops::sum_squares(b.grad)), 0.5, 1e-6);
    EXPECT_NEAR(clip_grad_norm(params, 10.0), 0.5, 1e-6);  // under the limit: unchanged
}

TEST(LanguageModel, GradientAccumulationEqualsOneLargeBatch) {
    LanguageModel model(small_spec("fixed", 3));
    model.initialize(test_seed());
    const int64_t seq_len = 9;
    const auto inputs = random_ids(4 * seq_len, 256, 41), targets = random_ids(4 * seq_len, 256, 42);
    auto& params = model.parameters();
    params.zero_grad();
    model.forward(inputs, targets, 4, seq_len);
    model.backward(1.0 / double(4 * seq_len));
    std::vector<Tensor> whole;
    for (auto& p : params.all()) whole.push_back(p.grad.clone());
    params.zero_grad();
    for (int half = 0; half < 2; ++half) {
        const auto offset = size_t(half * 2 * seq_len), count = size_t(2 * seq_len);
        model.forward(std::span(inputs).subspan(offset, count), std::span(targets).subspan(offset, count), 2, seq_len);
        model.backward(1.0 / double(4 * seq_len));
    }
    // float32 sums in a different order differ by ~1e-5 on small gradients (1.2e-5 seen on k_proj); a
    // micro-batch dropped, counted twice or scaled wrongly is off by O(1).
    size_t i = 0;
    for (auto& p : params.all()) EXPECT_LT(relative_error(p.grad, whole[i++]), 1e-4) << p.name;
}
