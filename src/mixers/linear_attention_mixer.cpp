#include "mixers/linear_attention_mixer.hpp"

#include <algorithm>
#include <cmath>
#include <span>

#include "core/rng.hpp"
#include "ops/dense.hpp"
#include "ops/recurrent_step.hpp"
#include "ops/rotary.hpp"

namespace linarch {

namespace {
std::vector<int64_t> positions_from(int64_t first, int64_t count) {
    std::vector<int64_t> positions(static_cast<size_t>(count));
    for (int64_t t = 0; t < count; ++t) positions[size_t(t)] = first + t;
    return positions;
}

// Fills a tensor of any dtype from float64 draws of `draw(rng)`, from the stream named after it.
template <typename Draw> void fill(Tensor& t, uint64_t seed, const std::string& name, Draw&& draw) {
    RngStream rng(seed, stream_id(name.c_str()));
    std::vector<double> values(static_cast<size_t>(t.numel()));
    for (double& v : values) v = draw(rng);
    t.copy_from(Tensor::from_vector(t.shape(), values, DType::f64));
}

void fill_normal(Parameter& p, uint64_t seed, double std) {
    fill(p.value, seed, p.name, [std](RngStream& rng) { return std * rng.normal(); });
}

// RetNet's multi-scale retention: γ_h = 1 − 2^(−5−h), in log space (mixers.md §2).
std::vector<double> retnet_log_decays(int64_t heads) {
    std::vector<double> log_decay(static_cast<size_t>(heads));
    for (int64_t h = 0; h < heads; ++h) log_decay[size_t(h)] = std::log1p(-std::exp2(-5.0 - double(h)));
    return log_decay;
}
}  // namespace

LinearAttentionMixer::LinearAttentionMixer(const ModelSpec& spec, const MixerSpec& mixer, ParameterStore& params,
                                           const std::string& prefix, int64_t layer)
    : dtype_(params.dtype()),
      device_(params.device()),
      heads_(spec.n_heads),
      key_dim_(mixer.key_dim(spec.head_dim)),
      value_dim_(mixer.value_dim(spec.head_dim)),
      key_width_(spec.n_heads * key_dim_),
      value_width_(spec.n_heads * value_dim_),
      conv_size_(mixer.conv_size),
      gate_low_rank_(mixer.gate_low_rank),
      feature_map_(ops::feature_map_from_name(mixer.feature_map)),
      l2_qk_(mixer.qk_norm == "l2"),
      delta_(mixer.update == "delta"),
      second_order_(mixer.order == 2),
      decay_(mixer.decay),
      decay_parameterization_(mixer.decay_parameterization),
      gate_temperature_(mixer.gate_temperature),
      decay_init_(mixer.decay_init),
      lower_bound_(double(layer) / double(spec.n_layers)),
      key_from_decay_(mixer.decay_sharing == "key"),
      q_proj_(params.add(prefix + ".q_proj.weight", {key_width_, spec.d_model})),
      k_proj_(key_from_decay_ ? nullptr : &params.add(prefix + ".k_proj.weight", {key_width_, spec.d_model})),
      v_proj_(params.add(prefix + ".v_proj.weight", {value_width_, spec.d_model})),
      rotation_(mixer, key_dim_, params, prefix) {
    if (conv_size_ > 0) {
        q_conv_ = &params.add(prefix + ".q_conv.weight", {key_width_, conv_size_}, false);
        if (!key_from_decay_) k_conv_ = &params.add(prefix + ".k_conv.weight", {key_width_, conv_size_}, false);
        v_conv_ = &params.add(prefix + ".v_conv.weight", {value_width_, conv_size_}, false);
    }
    if (decay_ == "scalar" || decay_ == "vector") {
        const int64_t channels = decay_ == "scalar" ? heads_ : key_width_;
        if (decay_parameterization_ == "constant") {
            // No projection: the decay is a trainable constant per channel.
        } else if (decay_ == "vector" && gate_low_rank_ > 0) {
            // GLA's low-rank gate projection (d → r → H·Dk), mixers.md §4.
            decay_down_ = &params.add(prefix + ".decay_down.weight", {gate_low_rank_, spec.d_model});
            decay_up_ = &params.add(prefix + ".decay_up.weight", {channels, gate_low_rank_});
        } else {
            decay_proj_ = &params.add(prefix + ".decay_proj.weight", {channels, spec.d_model});
        }
        if (decay_parameterization_ == "mamba2") {
            a_log_ = &params.add(prefix + ".a_log", {heads_}, false);
            dt_bias_ = &params.add(prefix + ".dt_bias", {heads_}, false);
        } else {
            decay_bias_ = &params.add(prefix + ".decay_bias", {channels}, false);
        }
    }
    if (decay_ == "spatial") {
        decay_row_logit_ = &params.add(prefix + ".decay_row_logit", {heads_}, false);
        decay_col_logit_ = &params.add(prefix + ".decay_col_logit", {heads_}, false);
        grid_height_ = mixer.grid_height;
        grid_width_ = mixer.grid_width;
    }
    if (delta_) beta_proj_ = &params.add(prefix + ".beta_proj.weight", {heads_, spec.d_model});
    output_ = std::make_unique<MixerOutput>(spec, mixer, params, prefix);
    args_.scale = 1.0 / std::sqrt(double(key_dim_));
    args_.chunk_size = mixer.chunk_size;
    hla_args_.masked = mixer.hla_masked;
    hla_args_.scale = args_.scale;
    hla_args_.chunk_size = mixer.chunk_size;
    if (decay_ == "fixed") args_.log_decay = Tensor::from_vector({heads_}, retnet_log_decays(heads_), dtype_).to(device_);
    hla_args_.log_decay = args_.log_decay;
}

void LinearAttentionMixer::initialize(uint64_t seed, double input_std, double output_std) {
    for (Parameter* p : {&q_proj_, k_proj_, &v_proj_})
        if (p) fill_normal(*p, seed, input_std);
    output_->initialize(seed, input_std, output_std);
    rotation_.initialize();
    // PyTorch's default Conv1d initialisation, U(−1/√K, 1/√K), as fla's short convolution uses.
    for (Parameter* p : {q_conv_, k_conv_, v_conv_})
        if (p) {
            const double bound = 1.0 / std::sqrt(double(conv_size_));
            fill(p->value, seed, p->name, [bound](RngStream& rng) { return bound * (2 * rng.uniform() - 1); });
        }
    for (Parameter* p : {decay_proj_, decay_down_, decay_up_, beta_proj_})
        if (p) fill_normal(*p, seed, input_std);
    const std::vector<double> retnet = retnet_log_decays(heads_);
    for (Parameter* p : {decay_row_logit_, decay_col_logit_}) {
        // Both axes start at RetNet's γ_h (logit γ_h, since γ = sigmoid(logit)).
        if (!p) continue;
        std::vector<double> logits(static_cast<size_t>(heads_));
        for (size_t h = 0; h < logits.size(); ++h) logits[h] = retnet[h] - std::log(-std::expm1(retnet[h]));
        p->value.copy_from(Tensor::from_vector({heads_}, logits, DType::f64));
    }
    if (decay_bias_) {
        if (decay_parameterization_ == "simple") {
            // Simple Decay: α = decay_init where the projection is 0.
            decay_bias_->value.fill(std::log(decay_init_ / (1 - decay_init_)));
        } else if (decay_parameterization_ == "constant") {
            // Start each head's channels at RetNet's γ_h (logit γ_h, since α = sigmoid(b)).
            const int64_t per_head = decay_bias_->value.numel() / heads_;
            std::vector<double> bias(size_t(decay_bias_->value.numel()));
            for (size_t c = 0; c < bias.size(); ++c) {
                const double log_gamma = retnet[c / size_t(per_head)];
                bias[c] = log_gamma - std::log(-std::expm1(log_gamma));
            }
            decay_bias_->value.copy_from(Tensor::from_vector(decay_bias_->value.shape(), bias, DType::f64));
        } else {
            decay_bias_->value.zero();  // logsigmoid: α = sigmoid(0)^(1/τ); hgrn2: α = λ + (1 − λ)/2
        }
    }
    if (a_log_) {
        // Mamba-2: A ~ U[1, 16], Δt log-uniform in [0.001, 0.1] stored through softplus⁻¹.
        fill(a_log_->value, seed, a_log_->name, [](RngStream& rng) { return std::log(1 + 15 * rng.uniform()); });
        fill(dt_bias_->value, seed, dt_bias_->name, [](RngStream& rng) {
            const double dt = std::exp(std::log(0.001) + rng.uniform() * (std::log(0.1) - std::log(0.001)));
            return dt + std::log(-std::expm1(-dt));
        });
    }
}

std::vector<int64_t> LinearAttentionMixer::token_positions(const Activations& a) const {
    return positions_from(a.first_position, a.seq_len);
}

Shape LinearAttentionMixer::key_shape(const Activations& a) const { return {a.batch, a.seq_len, heads_, key_dim_}; }

Shape LinearAttentionMixer::value_shape(const Activations& a) const {
    return {a.batch, a.seq_len, heads_, value_dim_};
}

ops::LinearAttentionArgs LinearAttentionMixer::attention_args(const Activations& a) const {
    ops::LinearAttentionArgs args = args_;
    if (a.log_gate.defined())
        args.log_gate = decay_ == "scalar" ? a.log_gate.view({a.batch, a.seq_len, heads_})
                                           : a.log_gate.view(key_shape(a));
    return args;
}

ops::HigherOrderAttentionArgs LinearAttentionMixer::hla_args(const Activations& a) const {
    ops::HigherOrderAttentionArgs args = hla_args_;
    if (a.log_gate.defined()) args.log_gate = a.log_gate.view({a.batch, a.seq_len, heads_});
    return args;
}

ops::SpatialDecayAttentionArgs LinearAttentionMixer::spatial_args() const {
    ops::SpatialDecayAttentionArgs args;
    args.grid_height = grid_height_;
    args.grid_width = grid_width_;
    args.scale = args_.scale;
    // Training's chunks are whole grid rows, about 4 · chunk_size tokens: the per-chunk work on the W
    // column states dominates thin chunks (32 × 64 grid, B=4, H=8, d=64, forward+backward: 1 row
    // 348 ms, 2 rows 222 ms, 4 rows 185 ms, 8 rows 252 ms, the whole grid 918 ms).
    args.chunk_rows = std::max<int64_t>(1, 4 * args_.chunk_size / grid_width_);
    args.log_decay_row = Tensor::empty({heads_}, dtype_, device_);
    args.log_decay_col = Tensor::empty({heads_}, dtype_, device_);
    ops::logsigmoid_decay_forward(args.log_decay_row, decay_row_logit_->value, 1.0);
    ops::logsigmoid_decay_forward(args.log_decay_col, decay_col_logit_->value, 1.0);
    return args;
}

ops::DeltaRuleArgs LinearAttentionMixer::delta_args(const Activations& a) const {
    ops::DeltaRuleArgs args;
    args.scale = args_.scale;
    args.chunk_size = args_.chunk_size;
    if (a.log_gate.defined()) args.log_gate = a.log_gate.view({a.batch, a.seq_len, heads_});
    return args;
}

void LinearAttentionMixer::make_beta(Activations& a) const {
    if (!delta_) return;
    const int64_t n = a.batch * a.seq_len;
    Tensor logits = Tensor::empty({n, heads_}, dtype_, device_);
    ops::matmul_forward(logits, a.x, beta_proj_->value);
    a.beta = Tensor::empty({n, heads_}, dtype_, device_);
    ops::sigmoid_forward(a.beta, logits);
}

void LinearAttentionMixer::attend(Activations& a) const {
    a.o = Tensor::empty(value_shape(a), dtype_, device_);
    if (second_order_)
        ops::higher_order_attention_chunkwise_forward(a.o, nullptr, a.rotated[0], a.rotated[1], a.convolved[2],
                                                      nullptr, hla_args(a));
    else if (decay_ == "spatial")
        ops::spatial_decay_attention_chunkwise_forward(a.o, a.rotated[0], a.rotated[1], a.convolved[2],
                                                       spatial_args());
    else if (delta_)
        ops::delta_rule_chunkwise_forward(a.o, nullptr, a.rotated[0], a.rotated[1], a.convolved[2],
                                          a.beta.view({a.batch, a.seq_len, heads_}), nullptr, delta_args(a));
    else
        ops::linear_attention_chunkwise_forward(a.o, nullptr, a.rotated[0], a.rotated[1], a.convolved[2], nullptr,
                                                attention_args(a));
}

void LinearAttentionMixer::project_and_convolve(Activations& a) const {
    const int64_t n = a.batch * a.seq_len;
    const Parameter* proj[3] = {&q_proj_, k_proj_, &v_proj_};
    const Parameter* conv[3] = {q_conv_, k_conv_, v_conv_};
    for (int i = 0; i < 3; ++i) {
        if (!projects(i)) continue;
        const Shape shape = i < 2 ? key_shape(a) : value_shape(a);
        a.projected[i] = Tensor::empty({n, width(i)}, dtype_, device_);
        ops::matmul_forward(a.projected[i], a.x, proj[i]->value);
        if (conv_size_ == 0) {
            a.convolved[i] = a.projected[i].view(shape);
            continue;
        }
        a.convolved[i] = Tensor::empty(shape, dtype_, device_);
        Tensor conv_out = a.convolved[i].view({a.batch, a.seq_len, width(i)});
        ops::short_conv_forward(conv_out, a.projected[i].view({a.batch, a.seq_len, width(i)}), conv[i]->value, true);
    }
}

void LinearAttentionMixer::derive_key(Activations& a) const {
    if (!key_from_decay_) return;
    a.convolved[1] = Tensor::empty(key_shape(a), dtype_, device_);
    ops::key_from_decay_forward(a.convolved[1], a.log_gate.view(key_shape(a)));
}

void LinearAttentionMixer::make_queries_and_keys(Activations& a) const {
    const int64_t rows = a.batch * a.seq_len * heads_;
    const Shape shape = key_shape(a);
    for (int i = 0; i < 2; ++i) {
        a.featured[i] = a.convolved[i];
        if (feature_map_ != ops::FeatureMap::identity) {
            a.featured[i] = Tensor::empty(shape, dtype_, device_);
            ops::feature_map_forward(a.featured[i], a.convolved[i], feature_map_);
        }
        a.normalized[i] = a.featured[i];
        if (l2_qk_) {
            a.normalized[i] = Tensor::empty(shape, dtype_, device_);
            a.inv_norm[i] = Tensor::empty({rows}, dtype_, device_);
            Tensor out = a.normalized[i].view({rows, key_dim_});
            ops::l2norm_forward(out, a.inv_norm[i], a.featured[i].view({rows, key_dim_}), 1e-6);
        }
        a.rotated[i] = a.normalized[i];
        if (rotation_.active()) {
            a.rotated[i] = Tensor::empty(shape, dtype_, device_);
            rotation_.forward(a.rotated[i], a.normalized[i], token_positions(a));
        }
    }
}

void LinearAttentionMixer::make_log_gate(Activations& a) const {
    if (decay_ != "scalar" && decay_ != "vector") return;
    const int64_t n = a.batch * a.seq_len;
    const int64_t channels = decay_ == "scalar" ? heads_ : key_width_;
    a.decay_input = Tensor::zeros({n, channels}, dtype_, device_);  // stays 0 for a constant decay
    if (decay_down_) {
        a.decay_hidden = Tensor::empty({n, gate_low_rank_}, dtype_, device_);
        ops::matmul_forward(a.decay_hidden, a.x, decay_down_->value);
        ops::matmul_forward(a.decay_input, a.decay_hidden, decay_up_->value);
    } else if (decay_proj_) {
        ops::matmul_forward(a.decay_input, a.x, decay_proj_->value);
    }
    a.log_gate = Tensor::empty({n, channels}, dtype_, device_);
    if (a_log_) {
        ops::mamba2_decay_forward(a.log_gate, a.decay_input, a_log_->value, dt_bias_->value);
        return;
    }
    Tensor biased = Tensor::empty({n, channels}, dtype_, device_);
    ops::add_bias_forward(biased, a.decay_input, decay_bias_->value);
    if (decay_parameterization_ == "hgrn2")
        ops::lower_bounded_decay_forward(a.log_gate, biased, lower_bound_);
    else
        ops::logsigmoid_decay_forward(a.log_gate, biased, decay_parameterization_ == "logsigmoid" ? gate_temperature_ : 1.0);
    a.decay_input = biased;  // backward needs the biased input
}

void LinearAttentionMixer::log_gate_backward(Tensor& dx, const Activations& a, const Tensor& d_log_gate) {
    const int64_t n = a.batch * a.seq_len, channels = a.log_gate.size(1);
    Tensor d_decay_input = Tensor::zeros({n, channels}, dtype_, device_);
    if (a_log_) {
        ops::mamba2_decay_backward(d_decay_input, a_log_->grad, dt_bias_->grad, d_log_gate, a.decay_input,
                                   a_log_->value, dt_bias_->value);
    } else {
        if (decay_parameterization_ == "hgrn2")
            ops::lower_bounded_decay_backward(d_decay_input, d_log_gate, a.decay_input, lower_bound_);
        else
            ops::logsigmoid_decay_backward(d_decay_input, d_log_gate, a.decay_input,
                                           decay_parameterization_ == "logsigmoid" ? gate_temperature_ : 1.0);
        ops::add_bias_backward(decay_bias_->grad, d_decay_input);
    }
    if (decay_down_) {
        Tensor d_hidden = Tensor::zeros({n, gate_low_rank_}, dtype_, device_);
        ops::matmul_backward(&d_hidden, &decay_up_->grad, d_decay_input, a.decay_hidden, decay_up_->value);
        ops::matmul_backward(&dx, &decay_down_->grad, d_hidden, a.x, decay_down_->value);
    } else if (decay_proj_) {
        ops::matmul_backward(&dx, &decay_proj_->grad, d_decay_input, a.x, decay_proj_->value);
    }
}

void LinearAttentionMixer::forward(Tensor& out, const Tensor& x, int64_t batch, int64_t seq_len) {
    Activations& a = cache_;
    a = Activations{};
    a.x = x;
    a.batch = batch;
    a.seq_len = seq_len;
    project_and_convolve(a);
    make_log_gate(a);
    derive_key(a);
    make_queries_and_keys(a);
    make_beta(a);
    attend(a);
    output_->forward(out, a.o, a.x, a.output);
}

void LinearAttentionMixer::backward(Tensor& dx, const Tensor& dout) {
    Activations& a = cache_;
    const int64_t n = a.batch * a.seq_len, rows = n * heads_;
    const Shape keys = key_shape(a), values = value_shape(a);
    const Tensor d_o = output_->backward(dx, dout, a.output).view(values);
    // Attention core.
    Tensor d_qk[2] = {Tensor::zeros(keys, dtype_, device_), Tensor::zeros(keys, dtype_, device_)};
    Tensor d_convolved[3];
    d_convolved[2] = Tensor::zeros(values, dtype_, device_);
    Tensor d_log_gate, d_log_gate_view;
    if (a.log_gate.defined()) {
        d_log_gate = Tensor::zeros(a.log_gate.shape(), dtype_, device_);
        d_log_gate_view = d_log_gate.view(attention_args(a).log_gate.shape());
    }
    Tensor* d_gate = a.log_gate.defined() ? &d_log_gate_view : nullptr;
    if (second_order_) {
        ops::higher_order_attention_chunkwise_backward(d_qk[0], d_qk[1], d_convolved[2], nullptr, d_o, nullptr,
                                                       a.rotated[0], a.rotated[1], a.convolved[2], nullptr,
                                                       hla_args(a), d_gate);
    } else if (decay_ == "spatial") {
        Tensor d_log_row = Tensor::zeros({heads_}, dtype_, device_), d_log_col = Tensor::zeros({heads_}, dtype_, device_);
        ops::spatial_decay_attention_chunkwise_backward(d_qk[0], d_qk[1], d_convolved[2], &d_log_row, &d_log_col, d_o,
                                                        a.rotated[0], a.rotated[1], a.convolved[2], spatial_args());
        ops::logsigmoid_decay_backward(decay_row_logit_->grad, d_log_row, decay_row_logit_->value, 1.0);
        ops::logsigmoid_decay_backward(decay_col_logit_->grad, d_log_col, decay_col_logit_->value, 1.0);
    } else if (delta_) {
        const Shape token_heads{a.batch, a.seq_len, heads_};
        Tensor d_beta = Tensor::zeros(token_heads, dtype_, device_);
        ops::delta_rule_chunkwise_backward(d_qk[0], d_qk[1], d_convolved[2], d_beta, d_gate, nullptr, d_o, nullptr,
                                           a.rotated[0], a.rotated[1], a.convolved[2], a.beta.view(token_heads),
                                           nullptr, delta_args(a));
        Tensor d_logits = Tensor::zeros({n, heads_}, dtype_, device_);
        ops::sigmoid_backward(d_logits, d_beta.view({n, heads_}), a.beta);
        ops::matmul_backward(&dx, &beta_proj_->grad, d_logits, a.x, beta_proj_->value);
    } else {
        ops::linear_attention_chunkwise_backward(d_qk[0], d_qk[1], d_convolved[2], nullptr, d_o, nullptr,
                                                 a.rotated[0], a.rotated[1], a.convolved[2], nullptr,
                                                 attention_args(a), d_gate);
    }
    // A key tied to the decay passes its gradient to the gate (its q/k pipeline is the identity).
    if (key_from_decay_) ops::key_from_decay_backward(d_log_gate, d_qk[1].view(d_log_gate.shape()), a.log_gate);
    if (a.log_gate.defined()) log_gate_backward(dx, a, d_log_gate);
    // q, k: rotation, L2 norm, then feature map.
    for (int i = 0; i < 2; ++i) {
        if (!projects(i)) continue;
        if (rotation_.active()) {
            Tensor d_normalized = Tensor::zeros(keys, dtype_, device_);
            rotation_.backward(d_normalized, d_qk[i], a.normalized[i], token_positions(a));
            d_qk[i] = d_normalized;
        }
        Tensor d_featured = d_qk[i];
        if (l2_qk_) {
            d_featured = Tensor::zeros(keys, dtype_, device_);
            Tensor d_rows = d_featured.view({rows, key_dim_});
            ops::l2norm_backward(d_rows, d_qk[i].view({rows, key_dim_}), a.normalized[i].view({rows, key_dim_}),
                                 a.inv_norm[i]);
        }
        d_convolved[i] = d_featured;
        if (feature_map_ != ops::FeatureMap::identity) {
            d_convolved[i] = Tensor::zeros(keys, dtype_, device_);
            ops::feature_map_backward(d_convolved[i], d_featured, a.convolved[i], feature_map_);
        }
    }
    // Short conv and input projections.
    Parameter* proj[3] = {&q_proj_, k_proj_, &v_proj_};
    Parameter* conv[3] = {q_conv_, k_conv_, v_conv_};
    for (int i = 0; i < 3; ++i) {
        if (!projects(i)) continue;
        Tensor d_projected = d_convolved[i].view({n, width(i)});
        if (conv_size_ > 0) {
            const Shape sequences{a.batch, a.seq_len, width(i)};
            d_projected = Tensor::zeros(sequences, dtype_, device_);
            ops::short_conv_backward(d_projected, conv[i]->grad, d_convolved[i].view(sequences),
                                     a.projected[i].view(sequences), conv[i]->value, true);
            d_projected = d_projected.view({n, width(i)});
        }
        ops::matmul_backward(&dx, &proj[i]->grad, d_projected, a.x, proj[i]->value);
    }
}

MixerState LinearAttentionMixer::new_state() const {
    MixerState state;
    if (decay_ != "spatial") state.attention = Tensor::zeros({1, heads_, key_dim_, value_dim_}, dtype_, device_);
    if (second_order_) {
        state.key_moment = Tensor::zeros({1, heads_, key_dim_, key_dim_}, dtype_, device_);
        if (hla_args_.masked) state.correction = Tensor::zeros({1, heads_, key_dim_, value_dim_}, dtype_, device_);
    }
    if (conv_size_ > 0)
        for (int i = 0; i < 3; ++i) state.conv_window[i] = Tensor::zeros({conv_size_, width(i)}, dtype_, device_);
    if (decay_ == "spatial")
        state.spatial = ops::spatial_decay_attention_initial_state(heads_, key_dim_, value_dim_, spatial_args(), dtype_);
    return state;
}

void LinearAttentionMixer::step(Tensor& out, const Tensor& x, MixerState& state) const {
    MixerState* states[1] = {&state};
    step_sequences(out, x, states);
}

namespace {
// The G sequences' [1, ...] state tensors as one [G, ...] tensor, and back.
Tensor stack_states(std::span<MixerState* const> states, Tensor MixerState::*member) {
    const Tensor& first = states[0]->*member;
    Shape shape = first.shape();
    shape[0] = static_cast<int64_t>(states.size());
    Tensor stacked = Tensor::empty(shape, first.dtype(), first.device());
    for (size_t g = 0; g < states.size(); ++g) stacked.narrow(0, int64_t(g), 1).copy_from(states[g]->*member);
    return stacked;
}

void unstack_states(std::span<MixerState* const> states, Tensor MixerState::*member, const Tensor& stacked) {
    for (size_t g = 0; g < states.size(); ++g) states[g]->*member = stacked.narrow(0, int64_t(g), 1).contiguous();
}
}  // namespace

void LinearAttentionMixer::step_sequences(Tensor& out, const Tensor& x, std::span<MixerState* const> states) const {
    const auto G = static_cast<int64_t>(states.size());
    LINARCH_CHECK(G >= 1 && x.size(0) % G == 0, "step_sequences: {} rows for {} sequences", x.size(0), G);
    const bool same_position = std::all_of(states.begin(), states.end(), [&](const MixerState* s) {
        return s->position == states[0]->position;
    });
    if (G > 1 && (!same_position || decay_ == "spatial")) return Mixer::step_sequences(out, x, states);
    Activations a;
    a.x = x;
    a.batch = G;
    a.seq_len = x.size(0) / G;
    a.first_position = states[0]->position;
    const int64_t n = a.seq_len, rows_total = G * n;
    const Parameter* proj[3] = {&q_proj_, k_proj_, &v_proj_};
    const Parameter* conv[3] = {q_conv_, k_conv_, v_conv_};
    for (int i = 0; i < 3; ++i) {
        if (!projects(i)) continue;
        const Shape shape = i < 2 ? key_shape(a) : value_shape(a);
        a.projected[i] = Tensor::empty({rows_total, width(i)}, dtype_, device_);
        ops::matmul_forward(a.projected[i], x, proj[i]->value);
        if (conv_size_ == 0) {
            a.convolved[i] = a.projected[i].view(shape);
            continue;
        }
        // The causal conv over [the window's last K rows; the new rows]: its last n output rows are
        // exactly the training-time conv outputs at these positions. The window keeps the last K rows.
        Tensor rows = Tensor::empty({G, conv_size_ + n, width(i)}, dtype_, device_);
        for (int64_t g = 0; g < G; ++g) {
            rows.select(0, g).narrow(0, 0, conv_size_).copy_from(states[size_t(g)]->conv_window[i]);
            rows.select(0, g).narrow(0, conv_size_, n).copy_from(a.projected[i].narrow(0, g * n, n));
        }
        Tensor conv_out = Tensor::empty({G, conv_size_ + n, width(i)}, dtype_, device_);
        ops::short_conv_forward(conv_out, rows, conv[i]->value, true);
        a.convolved[i] = conv_out.narrow(1, conv_size_, n).contiguous().view(shape);
        for (int64_t g = 0; g < G; ++g)
            states[size_t(g)]->conv_window[i].copy_from(rows.select(0, g).narrow(0, n, conv_size_));
    }
    make_log_gate(a);
    derive_key(a);
    make_queries_and_keys(a);
    make_beta(a);
    a.o = Tensor::empty(value_shape(a), dtype_, device_);
    // A few tokens (a decode step, a verification branch) take the recurrent form; a prompt the
    // chunkwise form, the state carried through. Both are exact; the switch is about speed only.
    const bool recurrent = n < std::max<int64_t>(2, args_.chunk_size / 4);
    if (decay_ == "spatial") {
        // The grid's column scan, one token at a time (its state is O(W·Dk·Dv), not a chunk carry).
        MixerState& state = *states[0];
        // One sequence: token t's output is row t of o as [n, H, Dv], a contiguous block on either device.
        Tensor rows = a.o.view({n, heads_, value_dim_});
        for (int64_t t = 0; t < n; ++t) {
            auto token = [&](const Tensor& v) { return v.narrow(1, t, 1).contiguous(); };
            Tensor o = Tensor::empty({1, 1, heads_, value_dim_}, dtype_, device_);
            ops::spatial_decay_attention_step(o, state.spatial, token(a.rotated[0]), token(a.rotated[1]),
                                              token(a.convolved[2]), state.position + t, spatial_args());
            rows.narrow(0, t, 1).copy_from(o.view({1, heads_, value_dim_}));
        }
    } else if (second_order_) {
        const ops::HigherOrderState current{stack_states(states, &MixerState::key_moment),
                                            stack_states(states, &MixerState::attention),
                                            hla_args_.masked ? stack_states(states, &MixerState::correction)
                                                             : Tensor()};
        ops::HigherOrderState next{Tensor::empty(current.key_moment.shape(), dtype_, device_),
                                   Tensor::empty(current.query_value_moment.shape(), dtype_, device_),
                                   current.correction.defined() ? Tensor::empty(current.correction.shape(), dtype_, device_)
                                                                : Tensor()};
        if (recurrent)
            ops::higher_order_attention_recurrent_forward(a.o, &next, a.rotated[0], a.rotated[1], a.convolved[2],
                                                          &current, hla_args(a));
        else
            ops::higher_order_attention_chunkwise_forward(a.o, &next, a.rotated[0], a.rotated[1], a.convolved[2],
                                                          &current, hla_args(a));
        unstack_states(states, &MixerState::key_moment, next.key_moment);
        unstack_states(states, &MixerState::attention, next.query_value_moment);
        if (next.correction.defined()) unstack_states(states, &MixerState::correction, next.correction);
    } else if (n == 1 && device_ == Device::cuda && !(delta_ && decay_ == "vector") &&
               ops::recurrent_step_takes(device_, key_dim_, value_dim_)) {
        // One token per sequence on the GPU: the decode step kernel updates the stacked states in place, in
        // one launch (the recurrent form would run the exact scan's several).
        Tensor state = stack_states(states, &MixerState::attention);
        const auto per_head = [&](const Tensor& t, int64_t width) { return t.contiguous().view({G, heads_, width}); };
        Tensor o = a.o.view({G, heads_, value_dim_});
        const Tensor q = per_head(a.rotated[0], key_dim_), k = per_head(a.rotated[1], key_dim_);
        const Tensor v = per_head(a.convolved[2], value_dim_);
        Tensor gate;
        if (a.log_gate.defined()) {
            gate = decay_ == "vector" ? a.log_gate.view({G, heads_, key_dim_}) : a.log_gate.view({G, heads_});
        } else if (args_.log_decay.defined()) {  // the fixed decay as the gate it equals
            gate = Tensor::empty({G, heads_}, dtype_, device_);
            for (int64_t g = 0; g < G; ++g) gate.narrow(0, g, 1).copy_from(args_.log_decay.view({1, heads_}));
        }
        if (delta_)
            ops::delta_rule_step(o, state, q, k, v, a.beta.view({G, heads_}), gate, args_.scale);
        else
            ops::linear_attention_step(o, state, q, k, v, gate, args_.scale);
        unstack_states(states, &MixerState::attention, state);
    } else {
        const Tensor current = stack_states(states, &MixerState::attention);
        Tensor next_state = Tensor::empty(current.shape(), dtype_, device_);
        if (delta_) {
            const Tensor beta = a.beta.view({G, n, heads_});
            if (recurrent)
                ops::delta_rule_recurrent_forward(a.o, &next_state, a.rotated[0], a.rotated[1], a.convolved[2], beta,
                                                  &current, delta_args(a));
            else
                ops::delta_rule_chunkwise_forward(a.o, &next_state, a.rotated[0], a.rotated[1], a.convolved[2], beta,
                                                  &current, delta_args(a));
        } else if (recurrent) {
            ops::linear_attention_recurrent_forward(a.o, &next_state, a.rotated[0], a.rotated[1], a.convolved[2],
                                                    &current, attention_args(a));
        } else {
            ops::linear_attention_chunkwise_forward(a.o, &next_state, a.rotated[0], a.rotated[1], a.convolved[2],
                                                    &current, attention_args(a));
        }
        unstack_states(states, &MixerState::attention, next_state);
    }
    for (MixerState* state : states) state->position += n;
    output_->forward(out, a.o, a.x, a.output);
}

double LinearAttentionMixer::core_flops_per_token(int64_t) const {
    // LASAD's column scan per head: the row scan, the read-out and the columns' update (2·Dk·Dv each).
    if (decay_ == "spatial") return double(heads_) * 6 * double(key_dim_) * double(value_dim_);
    // Chunkwise form per head: intra-chunk scores (2·C·Dk) and their product with V (2·C·Dv), half
    // masked but computed; the inter-chunk read q·S and the state update kᵀv (2·Dk·Dv each).
    const double dk = double(key_dim_), dv = double(value_dim_), chunk = double(args_.chunk_size);
    return double(heads_) * (2 * chunk * (dk + dv) + 4 * dk * dv);
}

}  // namespace linarch
