// CPU causal softmax attention (ops/softmax_attention.hpp), FlashAttention-2 style: per (sequence,
// head), blocks of queries × blocks of keys as OpenBLAS GEMMs with an online softmax. Raw pointers
// to contiguous row-major arrays; shapes were checked by ops/softmax_attention.cpp.
//     q,k [B,T,H,Dk]   v,out [B,T,H,Dv]   logsumexp, log_forget [B,T,H]   alibi_slopes [H]
// Work is split over the (sequence, head) pairs with OpenMP.
#pragma once
#include <cstdint>
#include <span>

namespace linarch::cpu {

struct SoftmaxAttentionDims {
    int64_t batch, seq_len, heads, key_dim, value_dim;
};

// What decides which keys a query sees and with which bias. Null pointers: no such bias.
template <typename T> struct SoftmaxAttentionBias {
    double scale;
    int64_t window;                       // 0 = full causal
    const T* alibi_slopes;                // [H] or null
    const T* log_forget;                  // [B,T,H] or null
    std::span<const int64_t> cu_seqlens;  // empty, or the packed sequences' bounds (batch == 1)
};

// out [B,T,H,Dv] =, logsumexp [B,T,H] =
template <typename T>
void softmax_attention_forward(T* out, T* logsumexp, const T* q, const T* k, const T* v,
                               const SoftmaxAttentionBias<T>& bias, const SoftmaxAttentionDims& dims);

// dq,dk [B,T,H,Dk] +=, dv [B,T,H,Dv] +=, dlog_forget [B,T,H] += (if non-null)
template <typename T>
void softmax_attention_backward(T* dq, T* dk, T* dv, T* dlog_forget, const T* dout, const T* q, const T* k,
                                const T* v, const T* out, const T* logsumexp, const SoftmaxAttentionBias<T>& bias,
                                const SoftmaxAttentionDims& dims);

}  // namespace linarch::cpu
