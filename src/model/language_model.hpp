// A decoder-only language model assembled from the spec (pre-norm residual blocks):
//   x = embed(tokens)
//   per layer:  x += mixer(rmsnorm(x));  x += W_down·(silu(W_gate·h) ⊙ W_up·h), h = rmsnorm(x)
//   loss = cross_entropy(rmsnorm(x) · embedᵀ, targets)        (tied LM head, fused)
// forward() keeps what backward() needs; step() is the O(1)-state decode path.
#pragma once
#include <memory>
#include <span>
#include <vector>

#include "core/parameter.hpp"
#include "core/spec.hpp"
#include "mixers/mixer.hpp"

namespace linarch {

class LanguageModel {
public:
    // dtype f32 trains; f64 gives the float64 reference model that gradient checks use. On CUDA the
    // parameters, gradients and activations live on the GPU (f32; training only: the decode path
    // below runs on the CPU).
    explicit LanguageModel(const ModelSpec& spec, DType dtype = DType::f32, Device device = Device::cpu);
    // Deterministic initialisation: each parameter draws from its own stream named after it.
    void initialize(uint64_t seed);

    // Mean cross-entropy (nats/token) over B sequences of T tokens; targets < 0 are ignored.
    double forward(std::span<const int32_t> inputs, std::span<const int32_t> targets, int64_t batch,
                   int64_t seq_len);
    // Adds loss_scale · ∂(Σ token losses)/∂θ of the last forward into the parameter gradients.
    void backward(double loss_scale);
    // Adds ∂(Σ of every logit of the last forward)/∂θ into the parameter gradients: SynFlow's
    // objective (a training-free proxy, search/zero_cost_proxies.hpp), the network's outputs summed
    // instead of a loss.
    void backward_logit_sum();
    // Activations of the last forward that activation-based proxies read, per layer: the MLP's gate
    // pre-activations W_gate·h and its hidden activations silu(gate) ⊙ up, both [B·T, mlp_hidden].
    const Tensor& mlp_gate(size_t layer) const { return blocks_.at(layer).gate; }
    const Tensor& mlp_hidden(size_t layer) const { return blocks_.at(layer).act; }
    size_t layer_count() const { return blocks_.size(); }
    // logits [B·T, V] of the last forward (on the model's device).
    void last_logits(Tensor& logits) const;
    // Tokens the last forward counted (targets ≥ 0).
    int64_t counted_tokens() const { return counted_tokens_; }

    struct DecodeState {
        std::vector<MixerState> layers;
        int64_t position = 0;
        // A deep copy: fork a sequence, or keep a snapshot to roll back to.
        DecodeState clone() const;
    };
    DecodeState new_decode_state() const;
    // Feeds the next tokens of the sequence (a prompt in the chunkwise form, or one decode token);
    // logits [1,V] receives the next-token logits after the last token, or [T,V] after each token.
    void step(DecodeState& state, std::span<const int32_t> tokens, Tensor& logits) const;
    // Feeds one token; logits [1,V] receives the next-token logits.
    void step(DecodeState& state, int32_t token, Tensor& logits) const;
    // One token for each of B sequences (continuous batching: any positions); logits [B,V].
    void step_batch(std::span<DecodeState* const> states, std::span<const int32_t> tokens, Tensor& logits) const;
    // step_batch without the LM head: hidden [B, d] receives the final normalised hidden states, the
    // input of the tied head whose weight is lm_head_weight() [V, d] (ops::lm_head_sample's operands:
    // sampling fused into the head never forms the [B, V] logits).
    void step_batch_hidden(std::span<DecodeState* const> states, std::span<const int32_t> tokens, Tensor& hidden) const;
    const Tensor& lm_head_weight() const { return embedding_.value; }
    // T tokens for each of G sequences (tokens[g·T, (g+1)·T) continue states[g]); logits [G·T, V] after
    // every token. Forks of one state (lookahead's verification branches) share the weight reads.
    void step_sequences(std::span<DecodeState* const> states, std::span<const int32_t> tokens, Tensor& logits) const;

    ParameterStore& parameters() { return params_; }
    const ParameterStore& parameters() const { return params_; }
    const ModelSpec& spec() const { return spec_; }
    int64_t mlp_hidden() const { return mlp_hidden_; }
    // Training FLOPs per token (forward + backward: 3× forward; matmuls 2 FLOPs per MAC).
    double train_flops_per_token() const;

private:
    // The backward from ∂/∂(final normalised hidden state) [B·T, d] down to the embedding.
    void backward_from_head(const Tensor& dh);
    // The blocks over G sequences' tokens (G·T rows, T each; T = 1 for step_batch); advances the
    // states and returns the residual stream [G·T, d].
    Tensor run_blocks(std::span<DecodeState* const> states, std::span<const int32_t> tokens) const;
    // The final norm of the residual stream x [rows, d].
    Tensor final_hidden(const Tensor& x) const;
    // logits [rows, V] from the residual stream x [rows, d]: final norm, tied LM head.
    void head(Tensor& logits, const Tensor& x) const;
    struct Block {
        Parameter &attn_norm, &mlp_norm, &gate_proj, &up_proj, &down_proj;
        std::unique_ptr<Mixer> mixer;
        // Activations of the last forward (N = B·T rows).
        Tensor x_in, h1, rstd1, x_mid, h2, rstd2, gate, up, act;
    };
    ModelSpec spec_;
    DType dtype_;
    Device device_;
    int64_t mlp_hidden_;
    ParameterStore params_;
    Parameter& embedding_;
    std::vector<Block> blocks_;
    Parameter& final_norm_;
    // Last forward.
    std::vector<int32_t> inputs_, targets_;
    int64_t batch_ = 0, seq_len_ = 0, counted_tokens_ = 0;
    Tensor x_final_, h_final_, rstd_final_, losses_, logsumexp_;
};

}  // namespace linarch
