// The linear-attention token mixer as a layer (mixers.md §1-2, §12):
//   q,k,v = x·W_{q,k,v}ᵀ  →  short causal conv + SiLU (optional)  →  causal linear attention
//   (chunkwise in training, recurrent in decoding; fixed per-head decay optional)
//   →  per-head RMSNorm (optional)  →  ·W_oᵀ
// Parameters live in the model's ParameterStore under "<prefix>.*".
#pragma once
#include <string>

#include "core/parameter.hpp"
#include "core/spec.hpp"
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
    struct Cache {
        Tensor x, q_pre, k_pre, v_pre, q, k, v, o, o_norm, o_rstd;
        int64_t batch = 0, seq_len = 0;
    };
    DType dtype_;
    int64_t heads_, head_dim_, width_, conv_size_;
    bool output_norm_;
    double norm_eps_;
    ops::LinearAttentionArgs args_;
    Parameter &q_proj_, &k_proj_, &v_proj_, &o_proj_;
    Parameter *q_conv_ = nullptr, *k_conv_ = nullptr, *v_conv_ = nullptr, *out_norm_ = nullptr;
    Cache cache_;
};

}  // namespace linarch
