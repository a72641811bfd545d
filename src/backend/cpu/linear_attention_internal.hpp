// Pieces shared by the CPU linear-attention files (linear_attention.cpp: recurrent, parallel and the
// scalar-decay chunkwise form; linear_attention_gated.cpp: the vector-gate chunkwise form). Not a
// public interface: ops code includes backend/cpu/linear_attention.hpp only.
#pragma once
#include <cblas.h>

#include <cstdint>
#include <type_traits>

#include "backend/cpu/linear_attention.hpp"

namespace linarch::cpu::detail {

// C[m,n] = alpha · op(A) · op(B) + beta · C on row-major arrays with leading dimensions. Called from
// inside our OpenMP region over (sequence, head) pairs, where the OpenMP build of OpenBLAS runs
// single-threaded (outside one, as for a single pair, it may use the pool itself).
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t depth, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
    if (m == 0 || n == 0) return;
    const auto ta = trans_a ? CblasTrans : CblasNoTrans;
    const auto tb = trans_b ? CblasTrans : CblasNoTrans;
    if constexpr (std::is_same_v<T, float>)
        cblas_sgemm(CblasRowMajor, ta, tb, int(m), int(n), int(depth), alpha, a, int(lda), b, int(ldb), beta, c,
                    int(ldc));
    else
        cblas_dgemm(CblasRowMajor, ta, tb, int(m), int(n), int(depth), alpha, a, int(lda), b, int(ldb), beta, c,
                    int(ldc));
}

// A parallel region costs microseconds to open (far more when cores are shared): tiny problems,
// such as the ones finite-difference checks evaluate thousands of times, run on the calling thread.
inline bool worth_threads(const LinearAttentionDims& d) {
    return d.num_seqs * d.heads > 1 && d.batch * d.heads * d.seq_len * d.key_dim * d.value_dim >= (int64_t(1) << 16);
}

// One (sequence, head) pair: its tokens are rows 0..length−1 of [length, D] matrices whose leading
// dimension is H·D (so BLAS reads the tensors in place), its state is one [Dk, Dv] matrix.
struct Slice {
    int64_t length;
    int64_t qk, vo, state;  // offsets of row 0 in q/k, v/o and of the state
    int64_t gate;           // offset of row 0 in the gate values: scalar [.,H] or vector [.,H,Dk]
    int64_t head;
};

// Pair index = sequence · H + head.
inline Slice slice_of(const LinearAttentionDims& d, int64_t pair, GateKind gate) {
    const int64_t n = pair / d.heads, h = pair % d.heads;
    const int64_t begin = d.cu_seqlens ? d.cu_seqlens[n] : n * d.seq_len;  // token row in the [B·T] axis
    const int64_t length = d.cu_seqlens ? d.cu_seqlens[n + 1] - begin : d.seq_len;
    const int64_t row = begin * d.heads + h;  // (token, head) row index
    return {length,
            row * d.key_dim,
            row * d.value_dim,
            pair * d.key_dim * d.value_dim,
            gate == GateKind::vector ? row * d.key_dim : row,
            h};
}

// Leading dimension of the gate rows of one head.
inline int64_t gate_ld(const LinearAttentionDims& d, GateKind gate) {
    return gate == GateKind::vector ? d.heads * d.key_dim : d.heads;
}

// Vector-gate (GLA) chunkwise form, linear_attention_gated.cpp; same contract as the public functions.
template <typename T>
void gated_chunkwise_forward(T* out, T* final_state, const T* q, const T* k, const T* v, const T* initial_state,
                             const T* log_gate, double scale, int64_t chunk_size, const LinearAttentionDims& dims);
template <typename T>
void gated_chunkwise_backward(T* dq, T* dk, T* dv, T* dinitial_state, T* dlog_gate, const T* dout,
                              const T* dfinal_state, const T* q, const T* k, const T* v, const T* initial_state,
                              const T* log_gate, double scale, int64_t chunk_size, const LinearAttentionDims& dims);

}  // namespace linarch::cpu::detail
