// Float64 reference definition of causal softmax attention with ALiBi / FoX biases, a window and
// packed sequences: per (sequence, head) the whole T×T logit matrix, masked, then a row softmax.
// Written from the formula in ops/softmax_attention.hpp with explicit loops and no BLAS,
// independently of the flash-style fast path that tests check against it.
#pragma once
#include <cstdint>
#include <span>

namespace linarch::reference {

// out [B,T,H,Dv], logsumexp [B,T,H]; q,k [B,T,H,Dk], v [B,T,H,Dv]; alibi_slopes [H] or null;
// log_forget [B,T,H] or null; window 0 = full causal; cu_seqlens empty or the packed bounds (B == 1).
void softmax_attention(double* out, double* logsumexp, const double* q, const double* k, const double* v,
                       const double* alibi_slopes, const double* log_forget, double scale, int64_t window,
                       std::span<const int64_t> cu_seqlens, int64_t batch, int64_t seq_len, int64_t heads,
                       int64_t key_dim, int64_t value_dim);

}  // namespace linarch::reference
