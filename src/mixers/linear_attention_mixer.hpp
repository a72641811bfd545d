// The linear-attention token mixer as a layer (mixers.md §1-5, §12):
//   q,k,v = x·W_{q,k,v}ᵀ → short causal conv + SiLU (optional) → feature map φ on q,k → L2 norm of
//   q,k (optional) → position rotation (RoPE / GRAPE, optional) → causal linear attention with decay
//   none | fixed per head | 2-D spatial (LASAD, learned row and column rates) | scalar or vector (Mamba-2, GLA, Simple Decay, HGRN2 or trainable constant
//   parameterisations), additive or delta-rule update (DeltaNet, Gated DeltaNet), or second order
//   (HLA); chunkwise in training and recurrent in decoding
//   → the shared output side (MixerOutput: per-head norm, output gate, ·W_oᵀ)
// Heads have d_k = head_dim·expand_k key and d_v = head_dim·expand_v value features.
// Parameters live in the model's ParameterStore under "<prefix>.*".
#pragma once
#include <string>

#include <memory>

#include "mixers/mixer.hpp"
#include "mixers/mixer_output.hpp"
#include "mixers/position_rotation.hpp"
#include "ops/delta_rule.hpp"
#include "ops/elementwise.hpp"
#include "ops/higher_order_attention.hpp"
#include "ops/linear_attention.hpp"

namespace linarch {

class LinearAttentionMixer : public Mixer {
public:
    // layer: this mixer's depth (0-based; HGRN2's lower bound grows with it).
    LinearAttentionMixer(const ModelSpec& model, const MixerSpec& mixer, ParameterStore& params,
                         const std::string& prefix, int64_t layer);
    void initialize(uint64_t seed, double input_std, double output_std) override;
    void forward(Tensor& out, const Tensor& x, int64_t batch, int64_t seq_len) override;
    void backward(Tensor& dx, const Tensor& dout) override;
    MixerState new_state() const override;
    // The recurrent form (one token) or the chunkwise form with the state carried (a prompt).
    void step(Tensor& out, const Tensor& x, MixerState& state) const override;
    // Sequences at one position (forks of one state) share every projection and one call of the
    // recurrence with their states stacked; others (and LASAD's column scan) go one by one.
    void step_sequences(Tensor& out, const Tensor& x, std::span<MixerState* const> states) const override;
    double core_flops_per_token(int64_t seq_len) const override;

private:
    // Intermediates of one forward (the training cache, or one decode step's scratch).
    struct Activations {
        Tensor x;
        int64_t batch = 0, seq_len = 0;
        Tensor projected[3];  // [N, width]: x·W_{q,k,v}ᵀ
        Tensor convolved[3];  // [B,T,H,Dk|Dv]: after the short conv (the projections when there is none)
        Tensor featured[2];   // q, k after φ
        Tensor normalized[2]; // q, k after the L2 norm
        Tensor rotated[2];    // q, k after the position rotation: what attention reads
        int64_t first_position = 0;
        Tensor inv_norm[2];
        Tensor decay_hidden, decay_input, log_gate;  // data-dependent decay path
        Tensor beta;                                 // delta rule: sigmoid(x·W_βᵀ) [N,H]
        Tensor o;
        MixerOutput::Cache output;
    };
    void project_and_convolve(Activations& a) const;  // training path (whole sequences)
    void make_queries_and_keys(Activations& a) const;
    void make_log_gate(Activations& a) const;
    void log_gate_backward(Tensor& dx, const Activations& a, const Tensor& d_log_gate);
    ops::LinearAttentionArgs attention_args(const Activations& a) const;
    ops::SpatialDecayAttentionArgs spatial_args() const;  // LASAD: rates from their logits
    ops::HigherOrderAttentionArgs hla_args(const Activations& a) const;  // with the step's decays
    ops::DeltaRuleArgs delta_args(const Activations& a) const;
    void make_beta(Activations& a) const;
    // The attention core in its chunkwise (training) form, and its backward.
    void attend(Activations& a) const;
    std::vector<int64_t> token_positions(const Activations& a) const;
    Shape key_shape(const Activations& a) const;    // [B,T,H,Dk]
    Shape value_shape(const Activations& a) const;  // [B,T,H,Dv]
    int64_t width(int i) const { return i < 2 ? key_width_ : value_width_; }  // of q, k, v
    // Whether input i (0 q, 1 k, 2 v) has its own projection (the key may be tied to the decay).
    bool projects(int i) const { return i != 1 || !key_from_decay_; }
    void derive_key(Activations& a) const;

    DType dtype_;
    Device device_;
    int64_t heads_, key_dim_, value_dim_, key_width_, value_width_, conv_size_, gate_low_rank_;
    ops::FeatureMap feature_map_;
    bool l2_qk_, delta_;
    ops::HigherOrderAttentionArgs hla_args_;  // used when second_order_ (fixed decay included)
    bool second_order_;
    std::string decay_, decay_parameterization_;
    double gate_temperature_, decay_init_;
    double lower_bound_;  // HGRN2: λ_l = l / n_layers
    ops::LinearAttentionArgs args_;  // scale, chunk size, fixed log decay
    bool key_from_decay_;  // decay_sharing = "key": k = 1 − α, no k projection or conv
    Parameter& q_proj_;
    Parameter* k_proj_;
    Parameter& v_proj_;
    Parameter *q_conv_ = nullptr, *k_conv_ = nullptr, *v_conv_ = nullptr;
    PositionRotation rotation_;
    // Scalar/vector decay over C = H (scalar) or H·Dk (vector) channels: decay_proj [C,d] (or
    // decay_down [r,d] then decay_up [C,r]; none for "constant") and decay_bias [C], or a_log,
    // dt_bias [H] (mamba2).
    Parameter *decay_proj_ = nullptr, *decay_down_ = nullptr, *decay_up_ = nullptr, *decay_bias_ = nullptr;
    Parameter *a_log_ = nullptr, *dt_bias_ = nullptr;
    // LASAD (decay = "spatial"): log γ_r = logsigmoid(row logit), log γ_c = logsigmoid(column logit) [H].
    Parameter *decay_row_logit_ = nullptr, *decay_col_logit_ = nullptr;
    int64_t grid_height_ = 0, grid_width_ = 0;
    Parameter* beta_proj_ = nullptr;  // delta rule: [H, d]
    std::unique_ptr<MixerOutput> output_;
    Activations cache_;
};

}  // namespace linarch
