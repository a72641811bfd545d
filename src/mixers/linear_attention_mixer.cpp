#include "mixers/linear_attention_mixer.hpp"

#include <cmath>

#include "core/rng.hpp"
#include "ops/dense.hpp"

namespace linarch {

namespace {
void fill_normal(Tensor& t, uint64_t seed, const std::string& name, double std) {
    RngStream rng(seed, stream_id(name.c_str()));
    std::vector<double> values(size_t(t.numel()));
    for (double& v : values) v = std * rng.normal();
    t.copy_from(Tensor::from_vector(t.shape(), values, DType::f64));
}

// PyTorch's default Conv1d initialisation, U(−1/√K, 1/√K), as fla's short convolution uses.
void fill_conv(Tensor& t, uint64_t seed, const std::string& name) {
    RngStream rng(seed, stream_id(name.c_str()));
    const double bound = 1.0 / std::sqrt(double(t.size(1)));
    std::vector<double> values(size_t(t.numel()));
    for (double& v : values) v = bound * (2 * rng.uniform() - 1);
    t.copy_from(Tensor::from_vector(t.shape(), values, DType::f64));
}
}  // namespace

LinearAttentionMixer::LinearAttentionMixer(const ModelSpec& spec, ParameterStore& params, const std::string& prefix)
    : dtype_(params.dtype()),
      heads_(spec.n_heads),
      head_dim_(spec.head_dim),
      width_(spec.n_heads * spec.head_dim),
      conv_size_(spec.mixer.conv_size),
      output_norm_(spec.mixer.output_norm),
      norm_eps_(spec.norm_eps),
      q_proj_(params.add(prefix + ".q_proj.weight", {width_, spec.d_model})),
      k_proj_(params.add(prefix + ".k_proj.weight", {width_, spec.d_model})),
      v_proj_(params.add(prefix + ".v_proj.weight", {width_, spec.d_model})),
      o_proj_(params.add(prefix + ".o_proj.weight", {spec.d_model, width_})) {
    if (conv_size_ > 0) {
        q_conv_ = &params.add(prefix + ".q_conv.weight", {width_, conv_size_}, false);
        k_conv_ = &params.add(prefix + ".k_conv.weight", {width_, conv_size_}, false);
        v_conv_ = &params.add(prefix + ".v_conv.weight", {width_, conv_size_}, false);
    }
    if (output_norm_) out_norm_ = &params.add(prefix + ".out_norm.weight", {head_dim_}, false);
    args_.scale = 1.0 / std::sqrt(double(head_dim_));
    args_.chunk_size = spec.mixer.chunk_size;
    if (spec.mixer.decay == "fixed") {
        // RetNet's multi-scale retention: γ_h = 1 − 2^(−5−h), kept in log space (mixers.md §2).
        std::vector<double> log_decay(static_cast<size_t>(heads_));
        for (int64_t h = 0; h < heads_; ++h) log_decay[size_t(h)] = std::log1p(-std::exp2(-5.0 - double(h)));
        args_.log_decay = Tensor::from_vector({heads_}, log_decay, dtype_);
    }
}

void LinearAttentionMixer::initialize(uint64_t seed, double input_std, double output_std) {
    for (Parameter* p : {&q_proj_, &k_proj_, &v_proj_}) fill_normal(p->value, seed, p->name, input_std);
    fill_normal(o_proj_.value, seed, o_proj_.name, output_std);
    for (Parameter* p : {q_conv_, k_conv_, v_conv_})
        if (p) fill_conv(p->value, seed, p->name);
    if (out_norm_) out_norm_->value.fill(1.0);
}

void LinearAttentionMixer::forward(Tensor& out, const Tensor& x, int64_t batch, int64_t seq_len) {
    const int64_t n = batch * seq_len;
    Cache& c = cache_;
    c.x = x;
    c.batch = batch;
    c.seq_len = seq_len;
    const Shape heads_shape{batch, seq_len, heads_, head_dim_};
    Tensor* pre[3] = {&c.q_pre, &c.k_pre, &c.v_pre};
    Tensor* post[3] = {&c.q, &c.k, &c.v};
    Parameter* proj[3] = {&q_proj_, &k_proj_, &v_proj_};
    Parameter* conv[3] = {q_conv_, k_conv_, v_conv_};
    for (int i = 0; i < 3; ++i) {
        *pre[i] = Tensor::empty({n, width_}, dtype_);
        ops::matmul_forward(*pre[i], x, proj[i]->value);
        if (conv_size_ > 0) {
            *post[i] = Tensor::empty(heads_shape, dtype_);
            Tensor conv_out = post[i]->view({batch, seq_len, width_});
            ops::short_conv_forward(conv_out, pre[i]->view({batch, seq_len, width_}), conv[i]->value, true);
        } else {
            *post[i] = pre[i]->view(heads_shape);
        }
    }
    c.o = Tensor::empty(heads_shape, dtype_);
    ops::linear_attention_chunkwise_forward(c.o, nullptr, c.q, c.k, c.v, nullptr, args_);
    if (output_norm_) {
        c.o_norm = Tensor::empty({n * heads_, head_dim_}, dtype_);
        c.o_rstd = Tensor::empty({n * heads_}, dtype_);
        ops::rmsnorm_forward(c.o_norm, c.o_rstd, c.o.view({n * heads_, head_dim_}), out_norm_->value, norm_eps_);
    } else {
        c.o_norm = c.o;
    }
    ops::matmul_forward(out, c.o_norm.view({n, width_}), o_proj_.value);
}

void LinearAttentionMixer::backward(Tensor& dx, const Tensor& dout) {
    Cache& c = cache_;
    const int64_t n = c.batch * c.seq_len;
    const Shape heads_shape{c.batch, c.seq_len, heads_, head_dim_};
    Tensor d_o_norm = Tensor::zeros({n, width_}, dtype_);
    ops::matmul_backward(&d_o_norm, &o_proj_.grad, dout, c.o_norm.view({n, width_}), o_proj_.value);
    Tensor d_o = d_o_norm;
    if (output_norm_) {
        d_o = Tensor::zeros({n * heads_, head_dim_}, dtype_);
        ops::rmsnorm_backward(&d_o, &out_norm_->grad, d_o_norm.view({n * heads_, head_dim_}),
                              c.o.view({n * heads_, head_dim_}), out_norm_->value, c.o_rstd);
    }
    Tensor dq = Tensor::zeros(heads_shape, dtype_), dk = Tensor::zeros(heads_shape, dtype_), dv = Tensor::zeros(heads_shape, dtype_);
    ops::linear_attention_chunkwise_backward(dq, dk, dv, nullptr, d_o.view(heads_shape), nullptr, c.q, c.k, c.v,
                                             nullptr, args_);
    Tensor* d_post[3] = {&dq, &dk, &dv};
    const Tensor* pre[3] = {&c.q_pre, &c.k_pre, &c.v_pre};
    Parameter* proj[3] = {&q_proj_, &k_proj_, &v_proj_};
    Parameter* conv[3] = {q_conv_, k_conv_, v_conv_};
    for (int i = 0; i < 3; ++i) {
        Tensor d_pre = d_post[i]->view({n, width_});
        if (conv_size_ > 0) {
            d_pre = Tensor::zeros({c.batch, c.seq_len, width_}, dtype_);
            ops::short_conv_backward(d_pre, conv[i]->grad, d_post[i]->view({c.batch, c.seq_len, width_}),
                                     pre[i]->view({c.batch, c.seq_len, width_}), conv[i]->value, true);
            d_pre = d_pre.view({n, width_});
        }
        ops::matmul_backward(&dx, &proj[i]->grad, d_pre, c.x, proj[i]->value);
    }
}

LinearAttentionMixer::State LinearAttentionMixer::new_state() const {
    State state;
    state.attention = Tensor::zeros({1, heads_, head_dim_, head_dim_}, dtype_);
    if (conv_size_ > 0) state.conv_window = Tensor::zeros({3, conv_size_, width_}, dtype_);
    return state;
}

void LinearAttentionMixer::step(Tensor& out, const Tensor& x, State& state) const {
    const Shape token_shape{1, 1, heads_, head_dim_};
    const Parameter* proj[3] = {&q_proj_, &k_proj_, &v_proj_};
    const Parameter* conv[3] = {q_conv_, k_conv_, v_conv_};
    Tensor qkv[3];
    for (int i = 0; i < 3; ++i) {
        Tensor projected = Tensor::empty({1, width_}, dtype_);
        ops::matmul_forward(projected, x, proj[i]->value);
        if (conv_size_ == 0) {
            qkv[i] = projected.view(token_shape);
            continue;
        }
        // Slide the window by one row and run the causal conv over it: its last output row is
        // exactly the training-time conv output at this position.
        Tensor window = state.conv_window.select(0, i);
        const Tensor older = window.narrow(0, 1, conv_size_ - 1).clone();
        window.narrow(0, 0, conv_size_ - 1).copy_from(older);
        window.narrow(0, conv_size_ - 1, 1).copy_from(projected);
        Tensor conv_out = Tensor::empty({1, conv_size_, width_}, dtype_);
        ops::short_conv_forward(conv_out, window.view({1, conv_size_, width_}), conv[i]->value, true);
        qkv[i] = conv_out.narrow(1, conv_size_ - 1, 1).contiguous().view(token_shape);
    }
    Tensor o = Tensor::empty(token_shape, dtype_);
    Tensor next_state = Tensor::empty(state.attention.shape(), dtype_);
    ops::linear_attention_recurrent_forward(o, &next_state, qkv[0], qkv[1], qkv[2], &state.attention, args_);
    state.attention = next_state;
    Tensor o_norm = o.view({heads_, head_dim_});
    if (output_norm_) {
        o_norm = Tensor::empty({heads_, head_dim_}, dtype_);
        Tensor rstd = Tensor::empty({heads_}, dtype_);
        ops::rmsnorm_forward(o_norm, rstd, o.view({heads_, head_dim_}), out_norm_->value, norm_eps_);
    }
    ops::matmul_forward(out, o_norm.view({1, width_}), o_proj_.value);
}

double LinearAttentionMixer::attention_flops_per_token() const {
    // Chunkwise form per head: intra-chunk scores and their product with V (~2·C·d each, half
    // masked but computed), the inter-chunk read q·S and the state update kᵀv (2·d² each).
    const double d = double(head_dim_), chunk = double(args_.chunk_size);
    return double(heads_) * (4 * chunk * d + 4 * d * d);
}

}  // namespace linarch
