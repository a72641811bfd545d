#include "mixers/linear_attention_mixer.hpp"

#include <cmath>

#include "core/rng.hpp"
#include "ops/dense.hpp"
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
}  // namespace

LinearAttentionMixer::LinearAttentionMixer(const ModelSpec& spec, const MixerSpec& mixer, ParameterStore& params,
                                           const std::string& prefix)
    : dtype_(params.dtype()),
      heads_(spec.n_heads),
      head_dim_(spec.head_dim),
      width_(spec.n_heads * spec.head_dim),
      conv_size_(mixer.conv_size),
      gate_low_rank_(mixer.gate_low_rank),
      feature_map_(ops::feature_map_from_name(mixer.feature_map)),
      l2_qk_(mixer.qk_norm == "l2"),
      delta_(mixer.update == "delta"),
      second_order_(mixer.order == 2),
      decay_(mixer.decay),
      decay_parameterization_(mixer.decay_parameterization),
      gate_temperature_(mixer.gate_temperature),
      key_from_decay_(mixer.decay_sharing == "key"),
      q_proj_(params.add(prefix + ".q_proj.weight", {width_, spec.d_model})),
      k_proj_(key_from_decay_ ? nullptr : &params.add(prefix + ".k_proj.weight", {width_, spec.d_model})),
      v_proj_(params.add(prefix + ".v_proj.weight", {width_, spec.d_model})) {
    if (conv_size_ > 0) {
        q_conv_ = &params.add(prefix + ".q_conv.weight", {width_, conv_size_}, false);
        if (!key_from_decay_) k_conv_ = &params.add(prefix + ".k_conv.weight", {width_, conv_size_}, false);
        v_conv_ = &params.add(prefix + ".v_conv.weight", {width_, conv_size_}, false);
    }
    if (decay_ == "scalar" || decay_ == "vector") {
        const int64_t channels = decay_ == "scalar" ? heads_ : width_;
        if (decay_ == "vector" && gate_low_rank_ > 0) {
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
    if (delta_) beta_proj_ = &params.add(prefix + ".beta_proj.weight", {heads_, spec.d_model});
    output_ = std::make_unique<MixerOutput>(spec, mixer, params, prefix);
    if (mixer.rope) rope_frequencies_ = ops::rope_frequencies(head_dim_, mixer.rope_base, dtype_);
    args_.scale = 1.0 / std::sqrt(double(head_dim_));
    args_.chunk_size = mixer.chunk_size;
    hla_args_.masked = mixer.hla_masked;
    hla_args_.scale = args_.scale;
    hla_args_.chunk_size = mixer.chunk_size;
    if (decay_ == "fixed") {
        // RetNet's multi-scale retention: γ_h = 1 − 2^(−5−h), kept in log space (mixers.md §2).
        std::vector<double> log_decay(static_cast<size_t>(heads_));
        for (int64_t h = 0; h < heads_; ++h) log_decay[size_t(h)] = std::log1p(-std::exp2(-5.0 - double(h)));
        args_.log_decay = Tensor::from_vector({heads_}, log_decay, dtype_);
    }
}

void LinearAttentionMixer::initialize(uint64_t seed, double input_std, double output_std) {
    for (Parameter* p : {&q_proj_, k_proj_, &v_proj_})
        if (p) fill_normal(*p, seed, input_std);
    output_->initialize(seed, input_std, output_std);
    // PyTorch's default Conv1d initialisation, U(−1/√K, 1/√K), as fla's short convolution uses.
    for (Parameter* p : {q_conv_, k_conv_, v_conv_})
        if (p) {
            const double bound = 1.0 / std::sqrt(double(conv_size_));
            fill(p->value, seed, p->name, [bound](RngStream& rng) { return bound * (2 * rng.uniform() - 1); });
        }
    for (Parameter* p : {decay_proj_, decay_down_, decay_up_, beta_proj_})
        if (p) fill_normal(*p, seed, input_std);
    if (decay_bias_) decay_bias_->value.zero();  // α = sigmoid(0)^(1/τ) at initialisation
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

Shape LinearAttentionMixer::heads_shape(const Activations& a) const {
    return {a.batch, a.seq_len, heads_, head_dim_};
}

ops::LinearAttentionArgs LinearAttentionMixer::attention_args(const Activations& a) const {
    ops::LinearAttentionArgs args = args_;
    if (a.log_gate.defined())
        args.log_gate = decay_ == "scalar" ? a.log_gate.view({a.batch, a.seq_len, heads_})
                                           : a.log_gate.view(heads_shape(a));
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
    Tensor logits = Tensor::empty({n, heads_}, dtype_);
    ops::matmul_forward(logits, a.x, beta_proj_->value);
    a.beta = Tensor::empty({n, heads_}, dtype_);
    ops::sigmoid_forward(a.beta, logits);
}

void LinearAttentionMixer::attend(Activations& a) const {
    a.o = Tensor::empty(heads_shape(a), dtype_);
    if (second_order_)
        ops::higher_order_attention_chunkwise_forward(a.o, nullptr, a.rotated[0], a.rotated[1], a.convolved[2],
                                                      nullptr, hla_args_);
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
        a.projected[i] = Tensor::empty({n, width_}, dtype_);
        ops::matmul_forward(a.projected[i], a.x, proj[i]->value);
        if (conv_size_ == 0) {
            a.convolved[i] = a.projected[i].view(heads_shape(a));
            continue;
        }
        a.convolved[i] = Tensor::empty(heads_shape(a), dtype_);
        Tensor conv_out = a.convolved[i].view({a.batch, a.seq_len, width_});
        ops::short_conv_forward(conv_out, a.projected[i].view({a.batch, a.seq_len, width_}), conv[i]->value, true);
    }
}

void LinearAttentionMixer::derive_key(Activations& a) const {
    if (!key_from_decay_) return;
    a.convolved[1] = Tensor::empty(heads_shape(a), dtype_);
    ops::key_from_decay_forward(a.convolved[1], a.log_gate.view(heads_shape(a)));
}

void LinearAttentionMixer::make_queries_and_keys(Activations& a) const {
    const int64_t rows = a.batch * a.seq_len * heads_;
    for (int i = 0; i < 2; ++i) {
        a.featured[i] = a.convolved[i];
        if (feature_map_ != ops::FeatureMap::identity) {
            a.featured[i] = Tensor::empty(heads_shape(a), dtype_);
            ops::feature_map_forward(a.featured[i], a.convolved[i], feature_map_);
        }
        a.normalized[i] = a.featured[i];
        if (l2_qk_) {
            a.normalized[i] = Tensor::empty(heads_shape(a), dtype_);
            a.inv_norm[i] = Tensor::empty({rows}, dtype_);
            Tensor out = a.normalized[i].view({rows, head_dim_});
            ops::l2norm_forward(out, a.inv_norm[i], a.featured[i].view({rows, head_dim_}), 1e-6);
        }
        a.rotated[i] = a.normalized[i];
        if (rope_frequencies_.defined()) {
            a.rotated[i] = Tensor::empty(heads_shape(a), dtype_);
            const auto positions = token_positions(a);
            ops::rope_forward(a.rotated[i], a.normalized[i], positions, rope_frequencies_);
        }
    }
}

void LinearAttentionMixer::make_log_gate(Activations& a) const {
    if (decay_ != "scalar" && decay_ != "vector") return;
    const int64_t n = a.batch * a.seq_len;
    const int64_t channels = decay_ == "scalar" ? heads_ : width_;
    a.decay_input = Tensor::empty({n, channels}, dtype_);
    if (decay_down_) {
        a.decay_hidden = Tensor::empty({n, gate_low_rank_}, dtype_);
        ops::matmul_forward(a.decay_hidden, a.x, decay_down_->value);
        ops::matmul_forward(a.decay_input, a.decay_hidden, decay_up_->value);
    } else {
        ops::matmul_forward(a.decay_input, a.x, decay_proj_->value);
    }
    a.log_gate = Tensor::empty({n, channels}, dtype_);
    if (a_log_) {
        ops::mamba2_decay_forward(a.log_gate, a.decay_input, a_log_->value, dt_bias_->value);
    } else {
        Tensor biased = Tensor::empty({n, channels}, dtype_);
        ops::add_bias_forward(biased, a.decay_input, decay_bias_->value);
        ops::logsigmoid_decay_forward(a.log_gate, biased, gate_temperature_);
        a.decay_input = biased;  // backward needs the biased input
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
    const Shape shape = heads_shape(a);
    const Tensor d_o = output_->backward(dx, dout, a.output).view(shape);
    // Attention core.
    Tensor d_qk[2] = {Tensor::zeros(shape, dtype_), Tensor::zeros(shape, dtype_)};
    Tensor d_convolved[3];
    d_convolved[2] = Tensor::zeros(shape, dtype_);
    Tensor d_log_gate;
    if (a.log_gate.defined()) d_log_gate = Tensor::zeros(a.log_gate.shape(), dtype_);
    Tensor d_log_gate_view;
    if (a.log_gate.defined()) d_log_gate_view = d_log_gate.view(attention_args(a).log_gate.shape());
    Tensor* d_gate = a.log_gate.defined() ? &d_log_gate_view : nullptr;
    if (second_order_) {
        ops::higher_order_attention_chunkwise_backward(d_qk[0], d_qk[1], d_convolved[2], nullptr, d_o, nullptr,
                                                       a.rotated[0], a.rotated[1], a.convolved[2], nullptr,
                                                       hla_args_);
    } else if (delta_) {
        const Shape token_heads{a.batch, a.seq_len, heads_};
        Tensor d_beta = Tensor::zeros(token_heads, dtype_);
        ops::delta_rule_chunkwise_backward(d_qk[0], d_qk[1], d_convolved[2], d_beta, d_gate, nullptr, d_o, nullptr,
                                           a.rotated[0], a.rotated[1], a.convolved[2], a.beta.view(token_heads),
                                           nullptr, delta_args(a));
        Tensor d_logits = Tensor::zeros({n, heads_}, dtype_);
        ops::sigmoid_backward(d_logits, d_beta.view({n, heads_}), a.beta);
        ops::matmul_backward(&dx, &beta_proj_->grad, d_logits, a.x, beta_proj_->value);
    } else {
        ops::linear_attention_chunkwise_backward(d_qk[0], d_qk[1], d_convolved[2], nullptr, d_o, nullptr,
                                                 a.rotated[0], a.rotated[1], a.convolved[2], nullptr,
                                                 attention_args(a), d_gate);
    }
    // A key tied to the decay passes its gradient to the gate (its q/k pipeline is the identity).
    if (key_from_decay_) ops::key_from_decay_backward(d_log_gate, d_qk[1].view(d_log_gate.shape()), a.log_gate);
    // Decay path.
    if (a.log_gate.defined()) {
        const int64_t channels = a.log_gate.size(1);
        Tensor d_decay_input = Tensor::zeros({n, channels}, dtype_);
        if (a_log_) {
            ops::mamba2_decay_backward(d_decay_input, a_log_->grad, dt_bias_->grad, d_log_gate, a.decay_input,
                                       a_log_->value, dt_bias_->value);
        } else {
            ops::logsigmoid_decay_backward(d_decay_input, d_log_gate, a.decay_input, gate_temperature_);
            ops::add_bias_backward(decay_bias_->grad, d_decay_input);
        }
        if (decay_down_) {
            Tensor d_hidden = Tensor::zeros({n, gate_low_rank_}, dtype_);
            ops::matmul_backward(&d_hidden, &decay_up_->grad, d_decay_input, a.decay_hidden, decay_up_->value);
            ops::matmul_backward(&dx, &decay_down_->grad, d_hidden, a.x, decay_down_->value);
        } else {
            ops::matmul_backward(&dx, &decay_proj_->grad, d_decay_input, a.x, decay_proj_->value);
        }
    }
    // q, k: RoPE, L2 norm, then feature map.
    for (int i = 0; i < 2; ++i) {
        if (!projects(i)) continue;
        if (rope_frequencies_.defined()) {
            Tensor d_normalized = Tensor::zeros(shape, dtype_);
            ops::rope_backward(d_normalized, d_qk[i], token_positions(a), rope_frequencies_);
            d_qk[i] = d_normalized;
        }
        Tensor d_featured = d_qk[i];
        if (l2_qk_) {
            d_featured = Tensor::zeros(shape, dtype_);
            Tensor d_rows = d_featured.view({rows, head_dim_});
            ops::l2norm_backward(d_rows, d_qk[i].view({rows, head_dim_}), a.normalized[i].view({rows, head_dim_}),
                                 a.inv_norm[i]);
        }
        d_convolved[i] = d_featured;
        if (feature_map_ != ops::FeatureMap::identity) {
            d_convolved[i] = Tensor::zeros(shape, dtype_);
            ops::feature_map_backward(d_convolved[i], d_featured, a.convolved[i], feature_map_);
        }
    }
    // Short conv and input projections.
    Parameter* proj[3] = {&q_proj_, k_proj_, &v_proj_};
    Parameter* conv[3] = {q_conv_, k_conv_, v_conv_};
    for (int i = 0; i < 3; ++i) {
        if (!projects(i)) continue;
        Tensor d_projected = d_convolved[i].view({n, width_});
        if (conv_size_ > 0) {
            d_projected = Tensor::zeros({a.batch, a.seq_len, width_}, dtype_);
            ops::short_conv_backward(d_projected, conv[i]->grad, d_convolved[i].view({a.batch, a.seq_len, width_}),
                                     a.projected[i].view({a.batch, a.seq_len, width_}), conv[i]->value, true);
            d_projected = d_projected.view({n, width_});
        }
        ops::matmul_backward(&dx, &proj[i]->grad, d_projected, a.x, proj[i]->value);
    }
}

MixerState LinearAttentionMixer::new_state() const {
    MixerState state;
    state.attention = Tensor::zeros({1, heads_, head_dim_, head_dim_}, dtype_);
    if (second_order_) {
        state.key_moment = Tensor::zeros({1, heads_, head_dim_, head_dim_}, dtype_);
        if (hla_args_.masked) state.correction = Tensor::zeros({1, heads_, head_dim_, head_dim_}, dtype_);
    }
    if (conv_size_ > 0) state.conv_window = Tensor::zeros({3, conv_size_, width_}, dtype_);
    return state;
}

void LinearAttentionMixer::step(Tensor& out, const Tensor& x, MixerState& state) const {
    Activations a;
    a.x = x;
    a.batch = 1;
    a.seq_len = 1;
    a.first_position = state.position;
    const Parameter* proj[3] = {&q_proj_, k_proj_, &v_proj_};
    const Parameter* conv[3] = {q_conv_, k_conv_, v_conv_};
    for (int i = 0; i < 3; ++i) {
        if (!projects(i)) continue;
        a.projected[i] = Tensor::empty({1, width_}, dtype_);
        ops::matmul_forward(a.projected[i], x, proj[i]->value);
        if (conv_size_ == 0) {
            a.convolved[i] = a.projected[i].view(heads_shape(a));
            continue;
        }
        // Slide the window by one row and run the causal conv over it: its last output row is
        // exactly the training-time conv output at this position.
        Tensor window = state.conv_window.select(0, i);
        const Tensor older = window.narrow(0, 1, conv_size_ - 1).clone();
        window.narrow(0, 0, conv_size_ - 1).copy_from(older);
        window.narrow(0, conv_size_ - 1, 1).copy_from(a.projected[i]);
        Tensor conv_out = Tensor::empty({1, conv_size_, width_}, dtype_);
        ops::short_conv_forward(conv_out, window.view({1, conv_size_, width_}), conv[i]->value, true);
        a.convolved[i] = conv_out.narrow(1, conv_size_ - 1, 1).contiguous().view(heads_shape(a));
    }
    make_log_gate(a);
    derive_key(a);
    make_queries_and_keys(a);
    make_beta(a);
    a.o = Tensor::empty(heads_shape(a), dtype_);
    Tensor next_state = Tensor::empty(state.attention.shape(), dtype_);
    if (second_order_) {
        const ops::HigherOrderState current{state.key_moment, state.attention, state.correction};
        ops::HigherOrderState next{Tensor::empty(state.key_moment.shape(), dtype_), next_state,
                                   state.correction.defined() ? Tensor::empty(state.correction.shape(), dtype_)
                                                              : Tensor()};
        ops::higher_order_attention_recurrent_forward(a.o, &next, a.rotated[0], a.rotated[1], a.convolved[2], &current,
                                                      hla_args_);
        state.key_moment = next.key_moment;
        state.correction = next.correction;
    } else if (delta_)
        ops::delta_rule_recurrent_forward(a.o, &next_state, a.rotated[0], a.rotated[1], a.convolved[2],
                                          a.beta.view({1, 1, heads_}), &state.attention, delta_args(a));
    else
        ops::linear_attention_recurrent_forward(a.o, &next_state, a.rotated[0], a.rotated[1], a.convolved[2],
                                                &state.attention, attention_args(a));
    state.attention = next_state;
    ++state.position;
    output_->forward(out, a.o, a.x, a.output);
}

double LinearAttentionMixer::core_flops_per_token(int64_t) const {
    // Chunkwise form per head: intra-chunk scores and their product with V (~2·C·d each, half
    // masked but computed), the inter-chunk read q·S and the state update kᵀv (2·d² each).
    const double d = double(head_dim_), chunk = double(args_.chunk_size);
    return double(heads_) * (4 * chunk * d + 4 * d * d);
}

}  // namespace linarch
