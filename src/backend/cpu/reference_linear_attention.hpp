// Float64 reference definitions of causal linear attention and the short causal conv, written
// straight from the parallel (attention-like) form with explicit loops and no BLAS, independently
// of the recurrent, parallel and chunkwise fast paths that tests check against them.
#pragma once
#include <cstdint>

namespace linarch::reference {

// Per (b,h), with γ = exp(log_decay[h]) (1 when log_decay is null) and S0 = initial_state (zeros if null):
//     O   = scale · ((Q Kᵀ) ⊙ D) V + scale · diag(γ^(t+1)) Q S0,    D_ts = γ^(t−s) for t ≥ s, else 0
//     S_T = γ^T S0 + Σ_s γ^(T−1−s) k_sᵀ v_s
// q,k [B,T,H,Dk]  v,out [B,T,H,Dv]  initial_state, final_state [B,H,Dk,Dv] (final_state may be null)
void linear_attention_parallel(double* out, double* final_state, const double* q, const double* k, const double* v,
                               const double* initial_state, const double* log_decay, double scale, int64_t batch,
                               int64_t seq_len, int64_t heads, int64_t key_dim, int64_t value_dim);

// The general member (mixers.md §3-4): per sequence and head, with per-step log decays g_u ≤ 0 (per key
// channel c; the same for every c unless the gate is a vector),
//     o_t[:] = scale · Σ_{s≤t} Σ_c q_tc k_sc exp(Σ_{s<u≤t} g_uc) v_s
//            + scale · Σ_c q_tc exp(Σ_{u≤t} g_uc) S0[c,:]
//     S[c,:] = exp(Σ_u g_uc) S0[c,:] + Σ_s exp(Σ_{u>s} g_uc) k_sc v_s
// with every sum over the sequence's own tokens and each decay summed directly (no cumsum differences).
// The decay is log_decay [H] (fixed), or log_gate [B,T,H] (gate_width 1) or [B,T,H,Dk] (gate_width Dk),
// or neither (both null). cu_seqlens (null, or num_seqs+1 offsets with batch 1) packs sequences along T;
// states are then [num_seqs,H,Dk,Dv], else [B,H,Dk,Dv].
struct LinearAttentionProblem {
    int64_t batch, seq_len, heads, key_dim, value_dim;
    const double* log_decay;
    const double* log_gate;
    int64_t gate_width;
    const int64_t* cu_seqlens;
    int64_t num_seqs;
    double scale;
};
void linear_attention(double* out, double* final_state, const double* q, const double* k, const double* v,
                      const double* initial_state, const LinearAttentionProblem& problem);

// out[b,t,c] = act(Σ_{j<K} weight[c,j] · x[b,t−K+1+j,c]), act = SiLU or identity; x, out [B,T,C], weight [C,K]
void short_conv(double* out, const double* x, const double* weight, bool silu, int64_t batch, int64_t seq_len,
                int64_t channels, int64_t kernel_size);

}  // namespace linarch::reference
