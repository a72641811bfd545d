#include "model/language_model.hpp"

#include <cmath>

#include "core/rng.hpp"
#include "ops/dense.hpp"

namespace linarch {

namespace {
int64_t default_mlp_hidden(const ModelSpec& spec) {
    if (spec.mlp_hidden > 0) return spec.mlp_hidden;
    // LLaMA's choice: 8/3·d keeps a SwiGLU MLP at the FLOPs of a 4·d GELU MLP; round to 64.
    return (8 * spec.d_model / 3 + 63) / 64 * 64;
}

void fill_normal(Parameter& p, uint64_t seed, double std) {
    RngStream rng(seed, stream_id(p.name.c_str()));
    std::vector<double> values(size_t(p.value.numel()));
    for (double& v : values) v = std * rng.normal();
    p.value.copy_from(Tensor::from_vector(p.value.shape(), values, DType::f64));
}

std::string layer_prefix(size_t layer) { return "layers." + std::to_string(layer); }
}  // namespace

LanguageModel::LanguageModel(const ModelSpec& spec, DType dtype, Device device)
    : spec_(spec),
      dtype_(dtype),
      device_(device),
      mlp_hidden_(default_mlp_hidden(spec)),
      params_(dtype, device),
      embedding_(params_.add("embedding.weight", {spec.vocab_size, spec.d_model})),
      final_norm_([this]() -> Parameter& {
          for (int64_t l = 0; l < spec_.n_layers; ++l) {
              const std::string prefix = layer_prefix(size_t(l));
              Parameter& attn_norm = params_.add(prefix + ".attn_norm.weight", {spec_.d_model}, false);
              auto mixer = make_mixer(spec_, spec_.mixer_of_layer(l), params_, prefix + ".mixer", l);
              Parameter& mlp_norm = params_.add(prefix + ".mlp_norm.weight", {spec_.d_model}, false);
              Parameter& gate = params_.add(prefix + ".mlp.gate_proj.weight", {mlp_hidden_, spec_.d_model});
              Parameter& up = params_.add(prefix + ".mlp.up_proj.weight", {mlp_hidden_, spec_.d_model});
              Parameter& down = params_.add(prefix + ".mlp.down_proj.weight", {spec_.d_model, mlp_hidden_});
              blocks_.push_back(Block{attn_norm, mlp_norm, gate, up, down, std::move(mixer), {}, {}, {}, {}, {}, {},
                                      {}, {}, {}});
          }
          return params_.add("final_norm.weight", {spec_.d_model}, false);
      }()) {}

void LanguageModel::initialize(uint64_t seed) {
    const double std = spec_.init_std;
    // Residual-branch outputs shrink with depth so the residual stream's variance stays O(1)
    // at initialisation (GPT-2's 1/√(2L)).
    const double output_std = std / std::sqrt(2.0 * double(spec_.n_layers));
    fill_normal(embedding_, seed, std);
    for (Block& block : blocks_) {
        block.attn_norm.value.fill(1.0);
        block.mlp_norm.value.fill(1.0);
        fill_normal(block.gate_proj, seed, std);
        fill_normal(block.up_proj, seed, std);
        fill_normal(block.down_proj, seed, output_std);
        block.mixer->initialize(seed, std, output_std);
    }
    final_norm_.value.fill(1.0);
}

double LanguageModel::forward(std::span<const int32_t> inputs, std::span<const int32_t> targets, int64_t batch,
                              int64_t seq_len) {
    const int64_t n = batch * seq_len, d = spec_.d_model;
    LINARCH_CHECK(int64_t(inputs.size()) == n && int64_t(targets.size()) == n,
                  "model forward: {} inputs and {} targets for batch {} × seq_len {}", inputs.size(), targets.size(),
                  batch, seq_len);
    inputs_.assign(inputs.begin(), inputs.end());
    targets_.assign(targets.begin(), targets.end());
    batch_ = batch;
    seq_len_ = seq_len;
    Tensor x = Tensor::empty({n, d}, dtype_, device_);
    ops::embedding_forward(x, inputs_, embedding_.value);
    for (Block& b : blocks_) {
        b.x_in = x;
        b.h1 = Tensor::empty({n, d}, dtype_, device_);
        b.rstd1 = Tensor::empty({n}, dtype_, device_);
        ops::rmsnorm_forward(b.h1, b.rstd1, x, b.attn_norm.value, spec_.norm_eps);
        Tensor mixed = Tensor::empty({n, d}, dtype_, device_);
        b.mixer->forward(mixed, b.h1, batch, seq_len);
        b.x_mid = Tensor::empty({n, d}, dtype_, device_);
        ops::add_forward(b.x_mid, x, mixed);
        b.h2 = Tensor::empty({n, d}, dtype_, device_);
        b.rstd2 = Tensor::empty({n}, dtype_, device_);
        ops::rmsnorm_forward(b.h2, b.rstd2, b.x_mid, b.mlp_norm.value, spec_.norm_eps);
        b.gate = Tensor::empty({n, mlp_hidden_}, dtype_, device_);
        b.up = Tensor::empty({n, mlp_hidden_}, dtype_, device_);
        ops::matmul_forward(b.gate, b.h2, b.gate_proj.value);
        ops::matmul_forward(b.up, b.h2, b.up_proj.value);
        b.act = Tensor::empty({n, mlp_hidden_}, dtype_, device_);
        ops::swiglu_forward(b.act, b.gate, b.up);
        x = Tensor::empty({n, d}, dtype_, device_);
        ops::matmul_forward(x, b.act, b.down_proj.value);
        ops::add_forward(x, x, b.x_mid);
    }
    x_final_ = x;
    h_final_ = Tensor::empty({n, d}, dtype_, device_);
    rstd_final_ = Tensor::empty({n}, dtype_, device_);
    ops::rmsnorm_forward(h_final_, rstd_final_, x, final_norm_.value, spec_.norm_eps);
    losses_ = Tensor::empty({n}, dtype_, device_);
    logsumexp_ = Tensor::empty({n}, dtype_, device_);
    const double mean = ops::lm_head_cross_entropy_forward(losses_, logsumexp_, h_final_, embedding_.value, targets_);
    counted_tokens_ = 0;
    for (int32_t t : targets_) counted_tokens_ += t >= 0;
    return mean;
}

void LanguageModel::backward(double loss_scale) {
    const int64_t n = batch_ * seq_len_, d = spec_.d_model;
    Tensor dh = Tensor::zeros({n, d}, dtype_, device_);
    ops::lm_head_cross_entropy_backward(&dh, &embedding_.grad, h_final_, embedding_.value, targets_, logsumexp_,
                                        loss_scale);
    backward_from_head(dh);
}

namespace {
// SynFlow's head: for R = Σ_{n,v} h_n · E_v, ∂R/∂h_n = Σ_v E_v for every row and ∂R/∂E_v = Σ_n h_n
// for every vocabulary row (added into dE).
template <typename T>
void logit_sum_backward(Tensor& dh, Tensor& dembedding, const Tensor& h, const Tensor& embedding) {
    const int64_t n = h.shape()[0], d = h.shape()[1], V = embedding.shape()[0];
    std::vector<double> embedding_sum(static_cast<size_t>(d)), row_sum(static_cast<size_t>(d));
    const T* e = embedding.data<T>();
    const T* x = h.data<T>();
    for (int64_t v = 0; v < V; ++v)
        for (int64_t j = 0; j < d; ++j) embedding_sum[size_t(j)] += double(e[v * d + j]);
    for (int64_t r = 0; r < n; ++r)
        for (int64_t j = 0; j < d; ++j) row_sum[size_t(j)] += double(x[r * d + j]);
    T* dx = dh.data<T>();
    T* de = dembedding.data<T>();
    for (int64_t r = 0; r < n; ++r)
        for (int64_t j = 0; j < d; ++j) dx[r * d + j] += T(embedding_sum[size_t(j)]);
    for (int64_t v = 0; v < V; ++v)
        for (int64_t j = 0; j < d; ++j) de[v * d + j] += T(row_sum[size_t(j)]);
}
}  // namespace

void LanguageModel::backward_logit_sum() {
    Tensor dh = Tensor::zeros({batch_ * seq_len_, spec_.d_model}, dtype_, device_);
    if (dtype_ == DType::f64)
        logit_sum_backward<double>(dh, embedding_.grad, h_final_, embedding_.value);
    else
        logit_sum_backward<float>(dh, embedding_.grad, h_final_, embedding_.value);
    backward_from_head(dh);
}

void LanguageModel::backward_from_head(const Tensor& dh) {
    const int64_t n = batch_ * seq_len_, d = spec_.d_model;
    // dx carries ∂loss/∂(residual stream); every branch adds into it.
    Tensor dx = Tensor::zeros({n, d}, dtype_, device_);
    ops::rmsnorm_backward(&dx, &final_norm_.grad, dh, x_final_, final_norm_.value, rstd_final_);
    for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) {
        Block& b = *it;
        Tensor d_act = Tensor::zeros({n, mlp_hidden_}, dtype_, device_);
        ops::matmul_backward(&d_act, &b.down_proj.grad, dx, b.act, b.down_proj.value);
        Tensor d_gate = Tensor::zeros({n, mlp_hidden_}, dtype_, device_), d_up = Tensor::zeros({n, mlp_hidden_}, dtype_, device_);
        ops::swiglu_backward(d_gate, d_up, d_act, b.gate, b.up);
        Tensor dh2 = Tensor::zeros({n, d}, dtype_, device_);
        ops::matmul_backward(&dh2, &b.gate_proj.grad, d_gate, b.h2, b.gate_proj.value);
        ops::matmul_backward(&dh2, &b.up_proj.grad, d_up, b.h2, b.up_proj.value);
        ops::rmsnorm_backward(&dx, &b.mlp_norm.grad, dh2, b.x_mid, b.mlp_norm.value, b.rstd2);
        Tensor dh1 = Tensor::zeros({n, d}, dtype_, device_);
        b.mixer->backward(dh1, dx);
        ops::rmsnorm_backward(&dx, &b.attn_norm.grad, dh1, b.x_in, b.attn_norm.value, b.rstd1);
    }
    ops::embedding_backward(embedding_.grad, inputs_, dx);
}

LanguageModel::DecodeState LanguageModel::new_decode_state() const {
    DecodeState state;
    for (const Block& b : blocks_) state.layers.push_back(b.mixer->new_state());
    return state;
}

Tensor LanguageModel::run_blocks(std::span<DecodeState* const> states, std::span<const int32_t> tokens) const {
    const int64_t n = int64_t(tokens.size()), d = spec_.d_model, G = int64_t(states.size());
    // The dense parts run on all G·T rows at once; each mixer advances its G states.
    Tensor x = Tensor::empty({n, d}, dtype_, device_);
    ops::embedding_forward(x, tokens, embedding_.value);
    Tensor h = Tensor::empty({n, d}, dtype_, device_), rstd = Tensor::empty({n}, dtype_, device_), branch = Tensor::empty({n, d}, dtype_, device_);
    Tensor gate = Tensor::empty({n, mlp_hidden_}, dtype_, device_), up = Tensor::empty({n, mlp_hidden_}, dtype_, device_),
           act = Tensor::empty({n, mlp_hidden_}, dtype_, device_);
    std::vector<MixerState*> layer_states(static_cast<size_t>(G));
    for (size_t l = 0; l < blocks_.size(); ++l) {
        const Block& b = blocks_[l];
        for (size_t g = 0; g < layer_states.size(); ++g) layer_states[g] = &states[g]->layers[l];
        ops::rmsnorm_forward(h, rstd, x, b.attn_norm.value, spec_.norm_eps);
        b.mixer->step_sequences(branch, h, layer_states);
        ops::add_forward(x, x, branch);
        ops::rmsnorm_forward(h, rstd, x, b.mlp_norm.value, spec_.norm_eps);
        ops::matmul_forward(gate, h, b.gate_proj.value);
        ops::matmul_forward(up, h, b.up_proj.value);
        ops::swiglu_forward(act, gate, up);
        ops::matmul_forward(branch, act, b.down_proj.value);
        ops::add_forward(x, x, branch);
    }
    for (DecodeState* state : states) state->position += n / G;
    return x;
}

Tensor LanguageModel::final_hidden(const Tensor& x) const {
    Tensor h = Tensor::empty(x.shape(), dtype_, device_), rstd = Tensor::empty({x.size(0)}, dtype_, device_);
    ops::rmsnorm_forward(h, rstd, x, final_norm_.value, spec_.norm_eps);
    return h;
}

void LanguageModel::last_logits(Tensor& logits) const {
    LINARCH_CHECK(h_final_.defined(), "last_logits: no forward has run");
    ops::lm_head_logits(logits, h_final_, embedding_.value);
}

void LanguageModel::head(Tensor& logits, const Tensor& x) const {
    ops::lm_head_logits(logits, final_hidden(x), embedding_.value);
}

void LanguageModel::step(DecodeState& state, std::span<const int32_t> tokens, Tensor& logits) const {
    const int64_t n = int64_t(tokens.size());
    LINARCH_CHECK(n >= 1, "model step: no tokens given");
    LINARCH_CHECK(logits.dim() == 2 && (logits.size(0) == 1 || logits.size(0) == n) &&
                      logits.size(1) == spec_.vocab_size,
                  "model step: logits must be [1, {}] (last token) or [{}, {}] (every token), got {}", spec_.vocab_size,
                  n, spec_.vocab_size, shape_string(logits.shape()));
    DecodeState* states[1] = {&state};
    const Tensor x = run_blocks(states, tokens);
    const int64_t rows = logits.size(0);
    head(logits, x.narrow(0, n - rows, rows).contiguous());
}

void LanguageModel::step(DecodeState& state, int32_t token, Tensor& logits) const {
    const int32_t ids[1] = {token};
    step(state, ids, logits);
}

LanguageModel::DecodeState LanguageModel::DecodeState::clone() const {
    DecodeState copy;
    copy.position = position;
    for (const MixerState& layer : layers) copy.layers.push_back(layer.clone());
    return copy;
}

void LanguageModel::step_batch(std::span<DecodeState* const> states, std::span<const int32_t> tokens,
                               Tensor& logits) const {
    const int64_t n = int64_t(tokens.size());
    LINARCH_CHECK(n >= 1 && int64_t(states.size()) == n, "model step_batch: {} tokens for {} sequences", n,
                  states.size());
    check_shape(logits, {n, spec_.vocab_size}, "model step_batch: logits");
    head(logits, run_blocks(states, tokens));
}

void LanguageModel::step_batch_hidden(std::span<DecodeState* const> states, std::span<const int32_t> tokens,
                                      Tensor& hidden) const {
    const int64_t n = int64_t(tokens.size());
    LINARCH_CHECK(n >= 1 && int64_t(states.size()) == n, "model step_batch_hidden: {} tokens for {} sequences", n,
                  states.size());
    check_shape(hidden, {n, spec_.d_model}, "model step_batch_hidden: hidden");
    hidden.copy_from(final_hidden(run_blocks(states, tokens)));
}

void LanguageModel::step_sequences(std::span<DecodeState* const> states, std::span<const int32_t> tokens,
                                   Tensor& logits) const {
    const auto G = int64_t(states.size()), n = int64_t(tokens.size());
    LINARCH_CHECK(G >= 1 && n >= G && n % G == 0, "model step_sequences: {} tokens for {} sequences", n, G);
    check_shape(logits, {n, spec_.vocab_size}, "model step_sequences: logits");
    head(logits, run_blocks(states, tokens));
}

double LanguageModel::train_flops_per_token() const {
    double matmul_params = double(spec_.vocab_size * spec_.d_model);  // LM head (tied embedding)
    for (const Parameter& p : params_.all())
        if (p.value.dim() == 2 && p.name != "embedding.weight" && p.name.find("conv") == std::string::npos)
            matmul_params += double(p.value.numel());
    double attention = 0;
    for (const Block& b : blocks_) attention += b.mixer->core_flops_per_token(seq_len_ > 0 ? seq_len_ : 512);
    return 3.0 * (2.0 * matmul_params + attention);
}

}  // namespace linarch
