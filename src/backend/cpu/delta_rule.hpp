// CPU delta rule (DeltaNet) and gated delta rule (Gated DeltaNet), mixers.md §6. Raw pointers to
// contiguous row-major arrays; shapes were checked by ops/delta_rule.cpp.
//     q,k [B,T,H,Dk]   v,o [B,T,H,Dv]   beta, log_gate [B,T,H]   states [N,H,Dk,Dv]
// Per sequence and head, with g_t = log_gate (0 when null) and S_0 = initial_state (zeros if null):
//     S' = exp(g_t) S_{t−1};   u_t = β_t (v_t − k_t S');   S_t = S' + k_tᵀ u_t;   o_t = scale · q_t S_t
// Sequences: without cu_seqlens each batch row is one (N = B); with cu_seqlens (B = 1) the packed
// row holds N = cu_seqlens.size()−1 sequences [cu_seqlens[n], cu_seqlens[n+1]), each with its own
// state. Work is split over the (sequence, head) pairs with OpenMP.
#pragma once
#include <cstdint>
#include <span>

namespace linarch::cpu {

struct DeltaRuleDims {
    int64_t batch, seq_len, heads, key_dim, value_dim;
};

// Token by token (the decode path): O(T·Dk·Dv) per head, no BLAS.
template <typename T>
void delta_rule_recurrent_forward(T* out, T* final_state, const T* q, const T* k, const T* v, const T* beta,
                                  const T* log_gate, const T* initial_state, double scale, const DeltaRuleDims& dims,
                                  std::span<const int64_t> cu_seqlens);

// Chunks of chunk_size tokens with the WY/UT representation (mixers.md §6.1-6.2), as small GEMMs.
template <typename T>
void delta_rule_chunkwise_forward(T* out, T* final_state, const T* q, const T* k, const T* v, const T* beta,
                                  const T* log_gate, const T* initial_state, double scale, int64_t chunk_size,
                                  const DeltaRuleDims& dims, std::span<const int64_t> cu_seqlens);

// The UT closed form over each whole sequence (one chunk of length T), attention-like: the pseudo
// values u come from forward substitution on the T×T system, generated row by row, so memory is O(T·D)
// and work O(T²·(Dk+Dv)). A separate code path from the chunked one (no BLAS, no per-chunk state).
template <typename T>
void delta_rule_parallel_forward(T* out, T* final_state, const T* q, const T* k, const T* v, const T* beta,
                                 const T* log_gate, const T* initial_state, double scale, const DeltaRuleDims& dims,
                                 std::span<const int64_t> cu_seqlens);

// dq,dk [B,T,H,Dk] +=, dv [B,T,H,Dv] +=, dbeta [B,T,H] +=, dlog_gate [B,T,H] += (if non-null),
// dinitial_state [N,H,Dk,Dv] += (if non-null); dout [B,T,H,Dv]; dfinal_state [N,H,Dk,Dv] or null.
// Recomputes the per-chunk states, then walks the chunks backwards carrying dS.
template <typename T>
void delta_rule_chunkwise_backward(T* dq, T* dk, T* dv, T* dbeta, T* dlog_gate, T* dinitial_state, const T* dout,
                                   const T* dfinal_state, const T* q, const T* k, const T* v, const T* beta,
                                   const T* log_gate, const T* initial_state, double scale, int64_t chunk_size,
                                   const DeltaRuleDims& dims, std::span<const int64_t> cu_seqlens);

}  // namespace linarch::cpu
