// Float64 reference definition of second-order HLA (mixers.md §8): the explicit pairwise sums, O(T³)
// (masked) and O(T²) per head with plain loops and no BLAS, written independently of the recurrent and
// chunkwise fast paths that tests check against it.
#pragma once
#include <cstdint>
#include <span>

namespace linarch::reference {

// Per sequence and head, with initial moments S_0 [Dk,Dk], C_0, G_0 [Dk,Dv] (zeros if null):
//   masked   (((W Wᵀ) ⊙ L) V, W = L ⊙ Q Kᵀ, plus the initial moments):
//     o_t = scale [ q_tᵀ (S_0 C_0 − G_0) + Σ_{j≤t} (q_tᵀ S_0 q_j) v_j + Σ_{j≤t} Σ_{i≤j} (q_t·k_i)(q_j·k_i) v_j ]
//   unmasked (q_tᵀ S_t C_t expanded):
//     o_t = scale [ q_tᵀ S_0 C_0 + Σ_{j≤t} (q_tᵀ S_0 q_j) v_j + Σ_{i≤t} (q_t·k_i) k_iᵀ C_0
//                   + Σ_{i≤t} Σ_{j≤t} (q_t·k_i)(k_i·q_j) v_j ]
//   final moments: S = S_0 + Σ_i k_i k_iᵀ,  C = C_0 + Σ_j q_j v_jᵀ,
//                  G = G_0 + Σ_i k_i k_iᵀ C_0 + Σ_{j<i} (k_i·q_j) k_i v_jᵀ   (masked only)
// q,k [B,T,H,Dk]  v,out [B,T,H,Dv]  S [N,H,Dk,Dk]  C, G [N,H,Dk,Dv]; final pointers may be null (G is
// ignored when unmasked). Sequences: each batch row (N = B), or with cu_seqlens (B = 1) the packed spans
// [cu_seqlens[n], cu_seqlens[n+1]).
void higher_order_attention(double* out, double* final_key_moment, double* final_query_value_moment,
                            double* final_correction, const double* q, const double* k, const double* v,
                            const double* initial_key_moment, const double* initial_query_value_moment,
                            const double* initial_correction, bool masked, double scale, int64_t batch,
                            int64_t seq_len, int64_t heads, int64_t key_dim, int64_t value_dim,
                            std::span<const int64_t> cu_seqlens);

}  // namespace linarch::reference
