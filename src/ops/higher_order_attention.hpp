// Second-order HLA (Higher-order Linear Attention, Zhang, Qin, Wang, Gu, arXiv 2510.27258), mixers.md §8.
// Per sequence and head, column vectors q_t, k_t ∈ R^Dk, v_t ∈ R^Dv, and the prefix moments
//     S_t = S_0 + Σ_{i≤t} k_i k_iᵀ [Dk,Dk]     C_t = C_0 + Σ_{i≤t} q_i v_iᵀ [Dk,Dv]
//     G_t = G_0 + Σ_{i≤t} k_i k_iᵀ C_{i−1} [Dk,Dv]                        (masked variant only)
//     unmasked:  o_t = scale · q_tᵀ S_t C_t                                        (§8.1)
//     masked:    o_t = scale · q_tᵀ (S_t C_t − G_t)                                (§8.2)
// Masked (the strictly causal form, Theorem 3.1) with S_0 = C_0 = G_0 = 0 is o = scale ((W Wᵀ) ⊙ L) V
// with W = L ⊙ (Q Kᵀ): o_t = scale Σ_{j≤t} Σ_{i≤j} (q_t·k_i)(q_j·k_i) v_j. The unmasked form pairs q_j
// with keys later than j (S_t holds every key up to t). `scale` multiplies the output (the query read
// out), not the q inside C, so the state does not depend on it. Unnormalised (§8's default); the
// normalised variant, ridge and decay are not implemented.
// Layout as flash-linear-attention: q,k [B,T,H,Dk], v,o [B,T,H,Dv]; state tensors have leading dim N = B,
// or with cu_seqlens (B = 1, offsets 0 = c_0 < … < c_N = T) N packed sequences [c_n, c_{n+1}), each
// with its own state; nothing crosses a sequence boundary.
// Two fast forms: recurrent (token by token, constant-size state: the decode path) and chunkwise (chunks of
// chunk_size tokens combined with the §8.3 semidirect-product rule: the training path). The float64
// definition they are checked against is reference::higher_order_attention (backend/cpu). Conventions as
// in ops/dense.hpp (backward adds into grads).
#pragma once
#include <vector>

#include "core/tensor.hpp"

namespace linarch::ops {

// The prefix moments after a sequence (or before it, as initial state). All f32 or all f64, contiguous.
struct HigherOrderState {
    Tensor key_moment;          // S [N,H,Dk,Dk]
    Tensor query_value_moment;  // C [N,H,Dk,Dv]
    Tensor correction;          // G [N,H,Dk,Dv]; masked only (undefined when masked = false)
};

struct HigherOrderAttentionArgs {
    bool masked = true;               // strictly causal second order (§8.2); false: prefix form (§8.1)
    double scale = 1;                 // multiplies o
    int64_t chunk_size = 64;          // chunkwise form only
    std::vector<int64_t> cu_seqlens;  // empty: off
};

// o [B,T,H,Dv]; final_state written if non-null; initial_state (zeros if null) used if non-null.
void higher_order_attention_recurrent_forward(Tensor& o, HigherOrderState* final_state, const Tensor& q,
                                              const Tensor& k, const Tensor& v,
                                              const HigherOrderState* initial_state,
                                              const HigherOrderAttentionArgs& args);
void higher_order_attention_chunkwise_forward(Tensor& o, HigherOrderState* final_state, const Tensor& q,
                                              const Tensor& k, const Tensor& v,
                                              const HigherOrderState* initial_state,
                                              const HigherOrderAttentionArgs& args);
// dq, dk [B,T,H,Dk], dv [B,T,H,Dv] (+= into); dinitial_state (+= into each moment) if non-null;
// dfinal_state (gradient flowing into the final moments, e.g. from a later segment) may be null.
void higher_order_attention_chunkwise_backward(Tensor& dq, Tensor& dk, Tensor& dv,
                                               HigherOrderState* dinitial_state, const Tensor& dout,
                                               const HigherOrderState* dfinal_state, const Tensor& q,
                                               const Tensor& k, const Tensor& v,
                                               const HigherOrderState* initial_state,
                                               const HigherOrderAttentionArgs& args);

}  // namespace linarch::ops
