// CPU causal linear attention with an optional fixed per-head log decay (mixers.md §1-2, §10).
// Raw pointers to contiguous row-major arrays; shapes were checked by ops/linear_attention.cpp.
//     q,k [B,T,H,Dk]   v,o [B,T,H,Dv]   states [B,H,Dk,Dv]   log_decay [H] (≤ 0) or null (no decay)
// S_t = γ_h S_{t-1} + k_tᵀ v_t,  o_t = scale · q_t S_t,  γ_h = exp(log_decay[h]).
// initial_state / final_state may be null (zero start / not wanted). Work is split over the B·H
// (batch, head) pairs with OpenMP; the chunkwise form does its per-chunk work as small OpenBLAS GEMMs.
#pragma once
#include <cstdint>

namespace linarch::cpu {

struct LinearAttentionDims {
    int64_t batch, seq_len, heads, key_dim, value_dim;
};

// Token by token (the decode path): O(T·Dk·Dv) per head, no BLAS.
template <typename T>
void linear_attention_recurrent_forward(T* out, T* final_state, const T* q, const T* k, const T* v,
                                        const T* initial_state, const T* log_decay, double scale,
                                        const LinearAttentionDims& dims);

// Chunks of chunk_size tokens: masked-decayed intra-chunk attention + inter-chunk state (mixers.md §2).
template <typename T>
void linear_attention_chunkwise_forward(T* out, T* final_state, const T* q, const T* k, const T* v,
                                        const T* initial_state, const T* log_decay, double scale,
                                        int64_t chunk_size, const LinearAttentionDims& dims);

// dq,dk [B,T,H,Dk] +=, dv [B,T,H,Dv] +=, dinitial_state [B,H,Dk,Dv] += (if non-null); dout [B,T,H,Dv];
// dfinal_state [B,H,Dk,Dv] or null. Recomputes the per-chunk states, then walks the chunks backwards.
template <typename T>
void linear_attention_chunkwise_backward(T* dq, T* dk, T* dv, T* dinitial_state, const T* dout,
                                         const T* dfinal_state, const T* q, const T* k, const T* v,
                                         const T* initial_state, const T* log_decay, double scale,
                                         int64_t chunk_size, const LinearAttentionDims& dims);

}  // namespace linarch::cpu
