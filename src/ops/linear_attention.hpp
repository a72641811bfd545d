// Causal linear attention, the additive member of the mixer family (mixers.md §1-4), with an optional
// decay in log space. Per sequence and head:
//     S_t = Diag(exp(g_t)) S_{t-1} + k_tᵀ v_t,      o_t = scale · q_t S_t
// with S_0 = initial_state (zeros if absent) and the log decay g_t ≤ 0 one of
//     none (g = 0, mixers.md §1);   fixed per head: log_decay [H] (RetNet, §2);
//     data-dependent per head: log_gate [B,T,H] (Mamba-2/SSD, simple GLA, §3);
//     data-dependent per key channel: log_gate [B,T,H,Dk] (GLA, §4).
// Layout as flash-linear-attention: q,k [B,T,H,Dk], v,o [B,T,H,Dv], states [N,H,Dk,Dv] with N = B, or
// with cu_seqlens (B = 1) N packed sequences, each starting from its own initial state.
// Three exact forms: recurrent (token by token: the decode path), parallel (the O(T²) masked form, a
// check) and chunkwise (chunks of chunk_size tokens: intra-chunk masked attention + inter-chunk state,
// as GEMMs). Forward and backward side by side; conventions as in ops/dense.hpp (backward adds into grads).
#pragma once
#include <vector>

#include "core/tensor.hpp"

namespace linarch::ops {

struct LinearAttentionArgs {
    Tensor log_decay;      // [H] or undefined; constant (no gradient)
    Tensor log_gate;       // [B,T,H] or [B,T,H,Dk] or undefined; at most one of log_decay / log_gate
    double scale = 1.0;    // applied to q
    int64_t chunk_size = 64;
    // Empty: every batch row is one sequence. Else offsets 0 = c_0 < c_1 < ... < c_N = T of N sequences
    // packed along T (FlashAttention / fla convention; B must be 1), and states have leading dim N.
    std::vector<int64_t> cu_seqlens;
};

// o[B,T,H,Dv]; final_state [N,H,Dk,Dv] written if defined; initial_state used if defined.
void linear_attention_recurrent_forward(Tensor& o, Tensor* final_state, const Tensor& q, const Tensor& k,
                                        const Tensor& v, const Tensor* initial_state,
                                        const LinearAttentionArgs& args);
void linear_attention_parallel_forward(Tensor& o, Tensor* final_state, const Tensor& q, const Tensor& k,
                                       const Tensor& v, const Tensor* initial_state,
                                       const LinearAttentionArgs& args);
void linear_attention_chunkwise_forward(Tensor& o, Tensor* final_state, const Tensor& q, const Tensor& k,
                                        const Tensor& v, const Tensor* initial_state,
                                        const LinearAttentionArgs& args);
// dq, dk, dv (+= into); dinitial_state (+=) if non-null; dfinal_state (gradient flowing into the
// final state, e.g. from a later segment) may be null; dlog_gate (+=, the shape of log_gate) if
// non-null and a log_gate is given. log_decay is a constant (no gradient).
void linear_attention_chunkwise_backward(Tensor& dq, Tensor& dk, Tensor& dv, Tensor* dinitial_state,
                                         const Tensor& dout, const Tensor* dfinal_state, const Tensor& q,
                                         const Tensor& k, const Tensor& v, const Tensor* initial_state,
                                         const LinearAttentionArgs& args, Tensor* dlog_gate = nullptr);

// Causal depthwise convolution over time (mixers.md §12), kernel K (1..8), optional SiLU after:
// out[b,t,c] = act(Σ_{j<K} weight[c,j] · x[b, t-K+1+j, c])   (x before the sequence start is 0)
// x, out [B,T,C]; weight [C,K].
void short_conv_forward(Tensor& out, const Tensor& x, const Tensor& weight, bool silu);
// dx [B,T,C] +=, dweight [C,K] += ; recomputes the pre-activation when silu.
void short_conv_backward(Tensor& dx, Tensor& dweight, const Tensor& dout, const Tensor& x, const Tensor& weight,
                         bool silu);

}  // namespace linarch::ops
