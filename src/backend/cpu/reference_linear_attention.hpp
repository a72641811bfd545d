// Float64 reference definitions of causal linear attention and the short causal conv, written
// straight from the parallel (attention-like) form with explicit loops and no BLAS, independently
// of the recurrent and chunkwise fast paths that tests check against them.
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

// out[b,t,c] = act(Σ_{j<K} weight[c,j] · x[b,t−K+1+j,c]), act = SiLU or identity; x, out [B,T,C], weight [C,K]
void short_conv(double* out, const double* x, const double* weight, bool silu, int64_t batch, int64_t seq_len,
                int64_t channels, int64_t kernel_size);

}  // namespace linarch::reference
