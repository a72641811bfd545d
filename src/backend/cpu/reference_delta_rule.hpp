// Float64 reference definition of the (gated) delta rule (mixers.md §6): the token-by-token recurrence
// written with plain loops and no BLAS, independently of the recurrent, chunkwise and parallel fast
// paths that tests check against it.
#pragma once
#include <cstdint>
#include <span>

namespace linarch::reference {

// Per sequence and head, with g_t = log_gate (0 when null) and S = initial_state (zeros if null):
//     S ← exp(g_t) S;   u = β_t (v_t − k_t S);   S ← S + k_tᵀ u;   o_t = scale · q_t S
// q,k [B,T,H,Dk]  v,out [B,T,H,Dv]  beta, log_gate [B,T,H]  initial_state, final_state [N,H,Dk,Dv]
// (final_state may be null). Sequences: each batch row (N = B), or with cu_seqlens (B = 1) the
// packed spans [cu_seqlens[n], cu_seqlens[n+1]).
void delta_rule_recurrent(double* out, double* final_state, const double* q, const double* k, const double* v,
                          const double* beta, const double* log_gate, const double* initial_state, double scale,
                          int64_t batch, int64_t seq_len, int64_t heads, int64_t key_dim, int64_t value_dim,
                          std::span<const int64_t> cu_seqlens);

}  // namespace linarch::reference
