// CPU causal linear attention with an optional decay (mixers.md §1-4, §10). Raw pointers to contiguous
// row-major arrays; shapes were checked by ops/linear_attention.cpp.
//     q,k [B,T,H,Dk]   v,o [B,T,H,Dv]   states [N,H,Dk,Dv]   (N = B, or the number of packed sequences)
//     S_t = Diag(exp(g_t)) S_{t-1} + k_tᵀ v_t,   o_t = scale · q_t S_t
// where the log decay g_t ≤ 0 is absent (0), fixed per head, a data-dependent scalar per head or a
// data-dependent vector per key channel (LogGate). initial_state / final_state may be null (zero start /
// not wanted). Work is split over the (sequence, head) pairs with OpenMP; the chunkwise form does its
// per-chunk work as small OpenBLAS GEMMs on strided views of the tensors.
#pragma once
#include <cstdint>

namespace linarch::cpu {

// With cu_seqlens (batch 1), the T axis packs num_seqs sequences: sequence n is the tokens
// [cu_seqlens[n], cu_seqlens[n+1]) and owns state n. Without (null), sequence n is batch row n.
struct LinearAttentionDims {
    int64_t batch, seq_len, heads, key_dim, value_dim;
    const int64_t* cu_seqlens;
    int64_t num_seqs;
};

enum class GateKind {
    none,    // g_t = 0
    fixed,   // g_t = log_decay[h]: values [H] (RetNet, mixers.md §2)
    scalar,  // g_t = log_gate[b,t,h]: values [B,T,H] (Mamba-2 / simple GLA, §3)
    vector,  // g_t = log_gate[b,t,h,:]: values [B,T,H,Dk], one decay per key channel (GLA, §4)
};

template <typename T> struct LogGate {
    GateKind kind;
    const T* values;  // null for none
};

// Token by token (the decode path): O(T·Dk·Dv) per head, no BLAS.
template <typename T>
void linear_attention_recurrent_forward(T* out, T* final_state, const T* q, const T* k, const T* v,
                                        const T* initial_state, const LogGate<T>& gate, double scale,
                                        const LinearAttentionDims& dims);

// The masked O(T²) form (mixers.md §3-4): o_i = scale · Σ_{j≤i} (Σ_c q_ic k_jc exp(G_ic − G_jc)) v_j
// + scale · (q_i ⊙ exp(G_i)) S_0 with G the cumulative log decay within the sequence (kept in double).
template <typename T>
void linear_attention_parallel_forward(T* out, T* final_state, const T* q, const T* k, const T* v,
                                       const T* initial_state, const LogGate<T>& gate, double scale,
                                       const LinearAttentionDims& dims);

// Chunks of chunk_size tokens: masked-decayed intra-chunk attention + inter-chunk state (mixers.md §2-4).
template <typename T>
void linear_attention_chunkwise_forward(T* out, T* final_state, const T* q, const T* k, const T* v,
                                        const T* initial_state, const LogGate<T>& gate, double scale,
                                        int64_t chunk_size, const LinearAttentionDims& dims);

// dq,dk [B,T,H,Dk] +=, dv [B,T,H,Dv] +=, dinitial_state [N,H,Dk,Dv] += (if non-null), dlog_gate (shape
// of the gate values, +=; only for scalar/vector gates, may be null); dout [B,T,H,Dv]; dfinal_state
// [N,H,Dk,Dv] or null. Recomputes the per-chunk states, then walks the chunks backwards.
template <typename T>
void linear_attention_chunkwise_backward(T* dq, T* dk, T* dv, T* dinitial_state, T* dlog_gate, const T* dout,
                                         const T* dfinal_state, const T* q, const T* k, const T* v,
                                         const T* initial_state, const LogGate<T>& gate, double scale,
                                         int64_t chunk_size, const LinearAttentionDims& dims);

}  // namespace linarch::cpu
