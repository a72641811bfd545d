// The softmax-attention member (the exact layers of a hybrid; mixers.md §7, §11):
//   q,k,v = x·W_{q,k,v}ᵀ → position rotation on q,k (RoPE / GRAPE, optional) → causal softmax attention with an optional
//   ALiBi or FoX (learned forget gate, log f = logsigmoid(x·W_f + b_f)) bias and sliding window
//   → the shared output side (per-head RMSNorm, output gate — Qwen's gated attention — and ·W_oᵀ).
// Decoding keeps a KV cache (it grows with the sequence, unlike the linear mixers' state).
#pragma once
#include <memory>
#include <string>

#include "mixers/mixer.hpp"
#include "mixers/mixer_output.hpp"
#include "mixers/position_rotation.hpp"
#include "ops/softmax_attention.hpp"

namespace linarch {

class SoftmaxAttentionMixer : public Mixer {
public:
    SoftmaxAttentionMixer(const ModelSpec& model, const MixerSpec& mixer, ParameterStore& params,
                          const std::string& prefix);
    void initialize(uint64_t seed, double input_std, double output_std) override;
    void forward(Tensor& out, const Tensor& x, int64_t batch, int64_t seq_len) override;
    void backward(Tensor& dx, const Tensor& dout) override;
    MixerState new_state() const override;
    void step(Tensor& out, const Tensor& x, MixerState& state) const override;
    double core_flops_per_token(int64_t seq_len) const override;

private:
    struct Activations {
        Tensor x;
        int64_t batch = 0, seq_len = 0;
        Tensor projected[3];  // [N, width]
        Tensor rotated[2];    // q, k after the position rotation
        Tensor forget_input, log_forget;  // FoX: [N, H]
        Tensor o, logsumexp;
        MixerOutput::Cache output;
    };
    Shape heads_shape(int64_t batch, int64_t seq_len) const { return {batch, seq_len, heads_, head_dim_}; }
    ops::SoftmaxAttentionArgs attention_args(const Activations& a) const;
    void step_token(Tensor& out, const Tensor& x, MixerState& state) const;  // one token x[1,d]

    DType dtype_;
    Device device_;
    int64_t heads_, head_dim_, width_, window_;
    Tensor alibi_slopes_;      // undefined without ALiBi
    Parameter &q_proj_, &k_proj_, &v_proj_;
    PositionRotation rotation_;
    Parameter *forget_proj_ = nullptr, *forget_bias_ = nullptr;  // FoX
    std::unique_ptr<MixerOutput> output_;
    Activations cache_;
};

}  // namespace linarch
