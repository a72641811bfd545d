// Causal softmax attention (scaled dot product), the exact member that hybrids interleave with the
// linear mixers, with the additive position biases of GRAPE-A (mixers.md §7.2, §11.2). Per batch b
// and head h, for query i and key j ≤ i (and i − j < window when a window is set):
//     logits_ij = scale · q_i·k_j + bias_ij,      o_i = Σ_j softmax_j(logits_i) v_j
//     bias_ij   = 0                                (none)
//               − m_h · (i − j)                   (ALiBi, Press et al. 2022; slopes m_h ≥ 0)
//               + Σ_{l=j+1..i} log_forget_l       (FoX forget gate, Lin et al. 2025; log_forget ≤ 0)
// (ALiBi and FoX may be combined: the biases add.) Layout as flash-attention/fla: q,k [B,T,H,Dk],
// v,o [B,T,H,Dv], logsumexp and log_forget [B,T,H]. With cu_seqlens (B == 1) the T tokens are
// packed sequences [cu_seqlens[s], cu_seqlens[s+1]) that never attend across boundaries; positions,
// windows and forget-gate sums restart at each sequence start.
// The output gate of gated attention (mixers.md §11.1) is the layer's job, not this op's.
// Forward and backward side by side; conventions as in ops/dense.hpp (backward adds into grads).
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.hpp"

namespace linarch::ops {

struct SoftmaxAttentionArgs {
    double scale;                   // usually 1/sqrt(Dk)
    int64_t window = 0;             // 0 = full causal; else query i sees keys i−window+1 .. i
    Tensor alibi_slopes;            // [H] or undefined (no ALiBi bias)
    Tensor log_forget;              // [B,T,H], every value ≤ 0, or undefined (no FoX bias)
    std::vector<int64_t> cu_seqlens;  // empty = off; else B == 1, 0 = cu[0] < cu[1] < … < cu[S] = T
};

// o[B,T,H,Dv]; logsumexp[B,T,H] = log Σ_j exp(logits_ij), saved for the backward. Flash-style:
// blocks of queries × blocks of keys, online softmax; memory O(T·block), never a T×T matrix.
void softmax_attention_forward(Tensor& o, Tensor& logsumexp, const Tensor& q, const Tensor& k, const Tensor& v,
                               const SoftmaxAttentionArgs& args);
// dq[B,T,H,Dk], dk[B,T,H,Dk], dv[B,T,H,Dv] += ; dlog_forget[B,T,H] += if non-null (only with FoX;
// ALiBi slopes are constants). Recomputes the probabilities blockwise from logsumexp
// (FlashAttention-2: D_i = dout_i·o_i, dS = P ⊙ (dP − D)).
void softmax_attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, Tensor* dlog_forget, const Tensor& dout,
                                const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                                const Tensor& logsumexp, const SoftmaxAttentionArgs& args);

// ALiBi's per-head slopes [H] (Press et al., reference code): 2^(−8h/H) for h = 1..H when H is a
// power of two; otherwise the slopes of the nearest smaller power of two P followed by every other
// slope of 2P, taking the first H − P of them.
Tensor alibi_slopes(int64_t heads, DType dtype = DType::f32);

}  // namespace linarch::ops

namespace linarch::ops {

// The recurrent (decode) form: one new query at position t = cached − 1 of one sequence against a
// KV cache of `cached` tokens, with the same biases and window as the forward.
// q [H,Dk]; keys [≥cached,H,Dk]; values [≥cached,H,Dv]; log_forget [≥cached,H] or undefined
// (FoX: log forget gate of each cached token); o [H,Dv]. args.log_forget and cu_seqlens are unused.
void softmax_attention_decode(Tensor& o, const Tensor& q, const Tensor& keys, const Tensor& values,
                              const Tensor& log_forget, int64_t cached, const SoftmaxAttentionArgs& args);

}  // namespace linarch::ops
