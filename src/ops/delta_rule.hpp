// The delta rule (DeltaNet) and the gated delta rule (Gated DeltaNet), mixers.md §6. Per sequence and
// head, K-first state S [Dk,Dv], row vectors q_t, k_t, v_t, β_t ∈ [0,1], optional log gate g_t ≤ 0:
//     S_t = exp(g_t) · (I − β_t k_tᵀ k_t) S_{t−1} + β_t k_tᵀ v_t,      o_t = scale · q_t S_t
// (g_t = 0 without a gate: the plain delta rule), S_0 = initial_state (zeros if absent). Keys are
// usually L2-normalised by the layer beforehand; the op does not normalise.
// Layout as flash-linear-attention: q,k [B,T,H,Dk], v,o [B,T,H,Dv], beta and log_gate [B,T,H],
// states [N,H,Dk,Dv] with N = B, or with cu_seqlens (B = 1, offsets 0 = c_0 < … < c_N = T) N packed
// sequences [c_n, c_{n+1}), each with its own state; nothing crosses a sequence boundary.
// Three exact forms: recurrent (token by token: the decode path), chunkwise (WY/UT representation over
// chunks of chunk_size tokens: the training path) and parallel (the UT closed form over each whole
// sequence). Conventions as in ops/dense.hpp (backward adds into grads).
#pragma once
#include <vector>

#include "core/tensor.hpp"

namespace linarch::ops {

struct DeltaRuleArgs {
    Tensor log_gate;                   // [B,T,H] (≤ 0) or undefined: plain delta rule
    double scale = 1;                  // applied to q
    int64_t chunk_size = 64;           // chunkwise form only
    std::vector<int64_t> cu_seqlens;   // empty: off
};

// o [B,T,H,Dv]; final_state [N,H,Dk,Dv] written if non-null; initial_state used if non-null.
void delta_rule_recurrent_forward(Tensor& o, Tensor* final_state, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const Tensor& beta, const Tensor* initial_state,
                                  const DeltaRuleArgs& args);
void delta_rule_chunkwise_forward(Tensor& o, Tensor* final_state, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const Tensor& beta, const Tensor* initial_state,
                                  const DeltaRuleArgs& args);
// O(T²) work, O(T) memory per head: a reference form, not a fast path.
void delta_rule_parallel_forward(Tensor& o, Tensor* final_state, const Tensor& q, const Tensor& k,
                                 const Tensor& v, const Tensor& beta, const Tensor* initial_state,
                                 const DeltaRuleArgs& args);
// dq, dk [B,T,H,Dk], dv [B,T,H,Dv], dbeta [B,T,H] (+= into); dlog_gate [B,T,H] (+=) if non-null
// (must be null without a gate); dinitial_state [N,H,Dk,Dv] (+=) if non-null; dfinal_state (gradient
// flowing into the final state, e.g. from a later segment) may be null.
void delta_rule_chunkwise_backward(Tensor& dq, Tensor& dk, Tensor& dv, Tensor& dbeta, Tensor* dlog_gate,
                                   Tensor* dinitial_state, const Tensor& dout, const Tensor* dfinal_state,
                                   const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta,
                                   const Tensor* initial_state, const DeltaRuleArgs& args);

}  // namespace linarch::ops
