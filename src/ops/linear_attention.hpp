// Causal linear attention, the plain member of the mixer family (mixers.md §1-2), with an optional
// fixed per-head decay (RetNet's γ_h, mixers.md §2). Per batch b and head h:
//     S_t = exp(log_decay[h]) · S_{t-1} + k_tᵀ v_t,      o_t = scale · q_t S_t
// with S_0 = initial_state (zeros if absent). Layout as flash-linear-attention: q,k [B,T,H,Dk],
// v,o [B,T,H,Dv], states [B,H,Dk,Dv], log_decay [H] (≤ 0) or undefined for no decay.
// Two exact forms: recurrent (token by token: the decode path) and chunkwise (chunks of
// chunk_size tokens: intra-chunk masked attention + inter-chunk state, mixers.md §1-2, as GEMMs).
// Forward and backward side by side; conventions as in ops/dense.hpp (backward adds into grads).
#pragma once
#include "core/tensor.hpp"

namespace linarch::ops {

struct LinearAttentionArgs {
    Tensor log_decay;      // [H] or undefined (no decay)
    double scale = 1.0;    // applied to q
    int64_t chunk_size = 64;
};

// o[B,T,H,Dv]; final_state [B,H,Dk,Dv] written if defined; initial_state used if defined.
void linear_attention_recurrent_forward(Tensor& o, Tensor* final_state, const Tensor& q, const Tensor& k,
                                        const Tensor& v, const Tensor* initial_state,
                                        const LinearAttentionArgs& args);
void linear_attention_chunkwise_forward(Tensor& o, Tensor* final_state, const Tensor& q, const Tensor& k,
                                        const Tensor& v, const Tensor* initial_state,
                                        const LinearAttentionArgs& args);
// dq, dk, dv (+= into); dinitial_state (+=) if non-null; dfinal_state (gradient flowing into the
// final state, e.g. from a later segment) may be null. log_decay is a constant (no gradient).
void linear_attention_chunkwise_backward(Tensor& dq, Tensor& dk, Tensor& dv, Tensor* dinitial_state,
                                         const Tensor& dout, const Tensor* dfinal_state, const Tensor& q,
                                         const Tensor& k, const Tensor& v, const Tensor* initial_state,
                                         const LinearAttentionArgs& args);

// Causal depthwise convolution over time (mixers.md §12), kernel K (1..8), optional SiLU after:
// out[b,t,c] = act(Σ_{j<K} weight[c,j] · x[b, t-K+1+j, c])   (x before the sequence start is 0)
// x, out [B,T,C]; weight [C,K].
void short_conv_forward(Tensor& out, const Tensor& x, const Tensor& weight, bool silu);
// dx [B,T,C] +=, dweight [C,K] += ; recomputes the pre-activation when silu.
void short_conv_backward(Tensor& dx, Tensor& dweight, const Tensor& dout, const Tensor& x, const Tensor& weight,
                         bool silu);

}  // namespace linarch::ops
