#include "mixers/softmax_attention_mixer.hpp"

#include <cmath>

#include "core/rng.hpp"
#include "ops/dense.hpp"
#include "ops/elementwise.hpp"

namespace linarch {

namespace {
void fill_normal(Parameter& p, uint64_t seed, double std) {
    RngStream rng(seed, stream_id(p.name.c_str()));
    std::vector<double> values(static_cast<size_t>(p.value.numel()));
    for (double& v : values) v = std * rng.normal();
    p.value.copy_from(Tensor::from_vector(p.value.shape(), values, DType::f64));
}

std::vector<int64_t> positions_from(int64_t first, int64_t count) {
    std::vector<int64_t> positions(static_cast<size_t>(count));
    for (int64_t t = 0; t < count; ++t) positions[size_t(t)] = first + t;
    return positions;
}
}  // namespace

SoftmaxAttentionMixer::SoftmaxAttentionMixer(const ModelSpec& model, const MixerSpec& mixer, ParameterStore& params,
                                             const std::string& prefix)
    : dtype_(params.dtype()),
      device_(params.device()),
      heads_(model.n_heads),
      head_dim_(model.head_dim),
      width_(model.n_heads * model.head_dim),
      window_(mixer.window),
      q_proj_(params.add(prefix + ".q_proj.weight", {width_, model.d_model})),
      k_proj_(params.add(prefix + ".k_proj.weight", {width_, model.d_model})),
      v_proj_(params.add(prefix + ".v_proj.weight", {width_, model.d_model})),
      rotation_(mixer, head_dim_, params, prefix) {
    if (mixer.position_bias == "alibi") alibi_slopes_ = ops::alibi_slopes(heads_, dtype_).to(device_);
    if (mixer.position_bias == "fox") {
        forget_proj_ = &params.add(prefix + ".forget_proj.weight", {heads_, model.d_model});
        forget_bias_ = &params.add(prefix + ".forget_bias", {heads_}, false);
    }
    output_ = std::make_unique<MixerOutput>(model, mixer, params, prefix);
}

void SoftmaxAttentionMixer::initialize(uint64_t seed, double input_std, double output_std) {
    for (Parameter* p : {&q_proj_, &k_proj_, &v_proj_}) fill_normal(*p, seed, input_std);
    if (forget_proj_) {
        fill_normal(*forget_proj_, seed, input_std);
        // FoX starts close to no forgetting: sigmoid(3) ≈ 0.95 per step.
        forget_bias_->value.fill(3.0);
    }
    output_->initialize(seed, input_std, output_std);
    rotation_.initialize();
}

ops::SoftmaxAttentionArgs SoftmaxAttentionMixer::attention_args(const Activations& a) const {
    ops::SoftmaxAttentionArgs args;
    args.scale = 1.0 / std::sqrt(double(head_dim_));
    args.window = window_;
    args.alibi_slopes = alibi_slopes_;
    if (a.log_forget.defined()) args.log_forget = a.log_forget.view({a.batch, a.seq_len, heads_});
    return args;
}

void SoftmaxAttentionMixer::forward(Tensor& out, const Tensor& x, int64_t batch, int64_t seq_len) {
    Activations& a = cache_;
    a = Activations{};
    a.x = x;
    a.batch = batch;
    a.seq_len = seq_len;
    const int64_t n = batch * seq_len;
    const Shape shape = heads_shape(batch, seq_len);
    const Parameter* proj[3] = {&q_proj_, &k_proj_, &v_proj_};
    for (int i = 0; i < 3; ++i) {
        a.projected[i] = Tensor::empty({n, width_}, dtype_, device_);
        ops::matmul_forward(a.projected[i], x, proj[i]->value);
    }
    for (int i = 0; i < 2; ++i) {
        a.rotated[i] = a.projected[i].view(shape);
        if (rotation_.active()) {
            a.rotated[i] = Tensor::empty(shape, dtype_, device_);
            rotation_.forward(a.rotated[i], a.projected[i].view(shape), positions_from(0, seq_len));
        }
    }
    if (forget_proj_) {
        Tensor raw = Tensor::empty({n, heads_}, dtype_, device_);
        ops::matmul_forward(raw, x, forget_proj_->value);
        a.forget_input = Tensor::empty({n, heads_}, dtype_, device_);
        ops::add_bias_forward(a.forget_input, raw, forget_bias_->value);
        a.log_forget = Tensor::empty({n, heads_}, dtype_, device_);
        ops::logsigmoid_decay_forward(a.log_forget, a.forget_input, 1.0);
    }
    a.o = Tensor::empty(shape, dtype_, device_);
    a.logsumexp = Tensor::empty({batch, seq_len, heads_}, dtype_, device_);
    ops::softmax_attention_forward(a.o, a.logsumexp, a.rotated[0], a.rotated[1], a.projected[2].view(shape),
                                   attention_args(a));
    output_->forward(out, a.o, x, a.output);
}

void SoftmaxAttentionMixer::backward(Tensor& dx, const Tensor& dout) {
    Activations& a = cache_;
    const int64_t n = a.batch * a.seq_len;
    const Shape shape = heads_shape(a.batch, a.seq_len);
    const Tensor d_o = output_->backward(dx, dout, a.output).view(shape);
    Tensor d_rotated[2] = {Tensor::zeros(shape, dtype_, device_), Tensor::zeros(shape, dtype_, device_)};
    Tensor d_v = Tensor::zeros(shape, dtype_, device_);
    Tensor d_log_forget;
    if (a.log_forget.defined()) d_log_forget = Tensor::zeros({a.batch, a.seq_len, heads_}, dtype_, device_);
    ops::softmax_attention_backward(d_rotated[0], d_rotated[1], d_v, a.log_forget.defined() ? &d_log_forget : nullptr,
                                    d_o, a.rotated[0], a.rotated[1], a.projected[2].view(shape), a.o, a.logsumexp,
                                    attention_args(a));
    if (forget_proj_) {
        Tensor d_forget_input = Tensor::zeros({n, heads_}, dtype_, device_);
        ops::logsigmoid_decay_backward(d_forget_input, d_log_forget.view({n, heads_}), a.forget_input, 1.0);
        ops::add_bias_backward(forget_bias_->grad, d_forget_input);
        ops::matmul_backward(&dx, &forget_proj_->grad, d_forget_input, a.x, forget_proj_->value);
    }
    Tensor d_projected[3];
    for (int i = 0; i < 2; ++i) {
        d_projected[i] = d_rotated[i];
        if (rotation_.active()) {
            d_projected[i] = Tensor::zeros(shape, dtype_, device_);
            rotation_.backward(d_projected[i], d_rotated[i], a.projected[i].view(shape), positions_from(0, a.seq_len));
        }
    }
    d_projected[2] = d_v;
    Parameter* proj[3] = {&q_proj_, &k_proj_, &v_proj_};
    for (int i = 0; i < 3; ++i)
        ops::matmul_backward(&dx, &proj[i]->grad, d_projected[i].view({n, width_}), a.x, proj[i]->value);
}

MixerState SoftmaxAttentionMixer::new_state() const {
    MixerState state;
    const int64_t capacity = 64;
    state.keys = Tensor::zeros({capacity, heads_, head_dim_}, dtype_, device_);
    state.values = Tensor::zeros({capacity, heads_, head_dim_}, dtype_, device_);
    if (forget_proj_) state.log_forget = Tensor::zeros({capacity, heads_}, dtype_, device_);
    return state;
}

void SoftmaxAttentionMixer::step(Tensor& out, const Tensor& x, MixerState& state) const {
    // A prompt is appended to the KV cache token by token (each token attends to the cache).
    for (int64_t t = 0; t < x.size(0); ++t) {
        Tensor row = out.narrow(0, t, 1).contiguous();
        step_token(row, x.narrow(0, t, 1).contiguous(), state);
        out.narrow(0, t, 1).copy_from(row);
    }
}

void SoftmaxAttentionMixer::step_token(Tensor& out, const Tensor& x, MixerState& state) const {
    const int64_t t = state.position;
    if (t == state.keys.size(0)) {
        // Double the cache: amortised O(1) per token.
        auto grow = [&](Tensor& cache) {
            if (!cache.defined()) return;
            Shape shape = cache.shape();
            shape[0] *= 2;
            Tensor bigger = Tensor::zeros(shape, dtype_, device_);
            bigger.narrow(0, 0, t).copy_from(cache);
            cache = bigger;
        };
        grow(state.keys);
        grow(state.values);
        grow(state.log_forget);
    }
    const Shape token_shape = heads_shape(1, 1);
    const Parameter* proj[3] = {&q_proj_, &k_proj_, &v_proj_};
    Tensor qkv[3];
    for (int i = 0; i < 3; ++i) {
        qkv[i] = Tensor::empty({1, width_}, dtype_, device_);
        ops::matmul_forward(qkv[i], x, proj[i]->value);
        if (i < 2 && rotation_.active()) {
            Tensor rotated = Tensor::empty(token_shape, dtype_, device_);
            rotation_.forward(rotated, qkv[i].view(token_shape), positions_from(t, 1));
            qkv[i] = rotated.view({1, width_});
        }
    }
    state.keys.select(0, t).copy_from(qkv[1].view({heads_, head_dim_}));
    state.values.select(0, t).copy_from(qkv[2].view({heads_, head_dim_}));
    if (forget_proj_) {
        Tensor raw = Tensor::empty({1, heads_}, dtype_, device_), biased = Tensor::empty({1, heads_}, dtype_, device_);
        ops::matmul_forward(raw, x, forget_proj_->value);
        ops::add_bias_forward(biased, raw, forget_bias_->value);
        Tensor log_forget = Tensor::empty({1, heads_}, dtype_, device_);
        ops::logsigmoid_decay_forward(log_forget, biased, 1.0);
        state.log_forget.select(0, t).copy_from(log_forget.view({heads_}));
    }
    ++state.position;
    Activations a;
    a.batch = a.seq_len = 1;
    Tensor o = Tensor::empty({heads_, head_dim_}, dtype_, device_);
    ops::softmax_attention_decode(o, qkv[0].view({heads_, head_dim_}), state.keys, state.values, state.log_forget,
                                  state.position, attention_args(a));
    MixerOutput::Cache scratch;
    output_->forward(out, o.view({1, width_}), x, scratch);
}

double SoftmaxAttentionMixer::core_flops_per_token(int64_t seq_len) const {
    // Causal attention: on average (T+1)/2 keys per query (fewer with a window), QKᵀ and PV.
    const double keys = window_ > 0 ? std::min<double>(double(window_), double(seq_len + 1) / 2)
                                    : double(seq_len + 1) / 2;
    return double(heads_) * 4 * keys * double(head_dim_);
}

}  // namespace linarch
