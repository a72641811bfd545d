// The linear-attention token mixer as a layer (mixers.md §1-5, §12):
//   q,k,v = x·W_{q,k,v}ᵀ → short causal conv + SiLU (optional) → feature map φ on q,k → L2 norm of
//   q,k (optional) → causal linear attention with decay none | fixed per head | data-dependent
//   scalar (Mamba-2) | data-dependent vector (GLA), chunkwise in training and recurrent in decoding
//   → per-head RMSNorm (optional) → output gate act(x·W_gᵀ) (optional) → ·W_oᵀ
// Parameters live in the model's ParameterStore under "<prefix>.*".
#pragma once
#include <string>

#include "core/parameter.hpp"
#include "core/spec.hpp"
#include "ops/elementwise.hpp"
#include "ops/linear_attention.hpp"

namespace linarch {

class LinearAttentionMixer {
public:
    LinearAttentionMixer(const ModelSpec& spec, ParameterStore& params, const std::string& prefix);
    void initialize(uint64_t seed, double input_std, double output_std);

    // out[N,d] = mixer(x[N,d]) over B sequences of T tokens (N = B·T); keeps what backward needs.
    void forward(Tensor& out, const Tensor& x, int64_t batch, int64_t seq_len);
    // dx[N,d] += ∂/∂x, parameter grads +=, for the last forward's inputs.
    void backward(Tensor& dx, const Tensor& dout);

    // Streaming state of one sequence: the attention state and the conv's last inputs.
    struct State {
        Tensor attention;    // [1,H,Dk,Dv]
        Tensor conv_window;  // [3, K, H·head_dim]: last K pre-conv q,k,v rows (zeros before the start)
    };
    State new_state() const;
    // out[1,d] for one token x[1,d], advancing state (recurrent form).
    void step(Tensor& out, const Tensor& x, State& state) const;

    // Forward FLOPs of the attention core per token (projections are counted by the model).
    double attention_flops_per_token() const;

private:
    // Intermediates of one forward (the training cache, or one decode step's scratch).
    struct Activations {
        Tensor x;
        int64_t batch = 0, seq_len = 0;
        Tensor projected[3];  // [N, width]: x·W_{q,k,v}ᵀ
        Tensor convolved[3];  // [B,T,H,D]: after the short conv (the projections when there is none)
        Tensor featured[2];   // q, k after φ
        Tensor normalized[2]; // q, k after the L2 norm: what attention reads
        Tensor inv_norm[2];
        Tensor decay_hidden, decay_input, log_gate;  // data-dependent decay path
        Tensor o, o_norm, o_rstd, gate_input, gated;
    };
    void project_and_convolve(Activations& a) const;  // training path (whole sequences)
    void make_queries_and_keys(Activations& a) const;
    void make_log_gate(Activations& a) const;
    void finish_output(Activations& a, Tensor& out) const;
    ops::LinearAttentionArgs attention_args(const Activations& a) const;
    Shape heads_shape(const Activations& a) const;

    DType dtype_;
    int64_t heads_, head_dim_, width_, conv_size_, gate_low_rank_;
    ops::FeatureMap feature_map_;
    bool l2_qk_, output_norm_;
    std::string decay_, decay_parameterization_, output_gate_;
    double norm_eps_, gate_temperature_;
    ops::LinearAttentionArgs args_;  // scale, chunk size, fixed log decay
    Parameter &q_proj_, &k_proj_, &v_proj_, &o_proj_;
    Parameter *q_conv_ = nullptr, *k_conv_ = nullptr, *v_conv_ = nullptr, *out_norm_ = nullptr;
    // Data-dependent decay: decay_proj [C,d] (or decay_down [r,d] then decay_up [C,r]) with
    // C = H (scalar) or H·Dk (vector), then decay_bias [C] (logsigmoid) or a_log, dt_bias [H] (mamba2).
    Parameter *decay_proj_ = nullptr, *decay_down_ = nullptr, *decay_up_ = nullptr, *decay_bias_ = nullptr;
    Parameter *a_log_ = nullptr, *dt_bias_ = nullptr;
    Parameter* out_gate_proj_ = nullptr;
    Activations cache_;
};

}  // namespace linarch
