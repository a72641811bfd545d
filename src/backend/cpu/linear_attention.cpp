// CPU causal linear attention: recurrent form, chunkwise form and the chunkwise backward.
// Notation (mixers.md §2, per batch b and head h): chunk of L ≤ C rows starting at t0, position i in
// the chunk, γ = exp(log_decay[h]), S_prev the state before the chunk.
//     scores  P = scale · Q Kᵀ ⊙ D,   D_ij = γ^(i−j) for i ≥ j, else 0
//     output  O = P V + scale · diag(γ^(i+1)) Q S_prev
//     state   S = γ^L S_prev + Kᵀ diag(γ^(L−1−i)) V
// Every (b,h) slice of a [B,T,H,D] tensor is a [T,D] matrix with leading dimension H·D, so BLAS reads
// and writes the tensors in place: no gather into scratch is needed.
#include "backend/cpu/linear_attention.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

namespace linarch::cpu {
namespace {

// C[m,n] = alpha · op(A) · op(B) + beta · C on row-major arrays with leading dimensions. Called from
// inside our OpenMP region over (b,h) pairs, where the OpenMP build of OpenBLAS runs single-threaded
// (outside one, as for a single pair, it may use the pool itself).
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t depth, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
    const auto ta = trans_a ? CblasTrans : CblasNoTrans;
    const auto tb = trans_b ? CblasTrans : CblasNoTrans;
    if constexpr (std::is_same_v<T, float>)
        cblas_sgemm(CblasRowMajor, ta, tb, int(m), int(n), int(depth), alpha, a, int(lda), b, int(ldb), beta, c,
                    int(ldc));
    else
        cblas_dgemm(CblasRowMajor, ta, tb, int(m), int(n), int(depth), alpha, a, int(lda), b, int(ldb), beta, c,
                    int(ldc));
}

// powers[n] = γ^n for n = 0..count−1, as exp(n · log γ): one rounding per factor instead of the
// error (and underflow pattern) a repeated product would accumulate.
template <typename T> std::vector<T> decay_powers(const T* log_decay, int64_t head, int64_t count) {
    const double log_gamma = log_decay ? double(log_decay[head]) : 0.0;
    std::vector<T> powers(static_cast<size_t>(count));
    for (int64_t n = 0; n < count; ++n) powers[size_t(n)] = T(std::exp(log_gamma * double(n)));
    return powers;
}

// scores[L,L] (leading dim ld) ⊙= D: causal mask and decay γ^(i−j) in one pass.
template <typename T> void apply_decay_mask(T* scores, int64_t rows, int64_t ld, const T* powers) {
    for (int64_t i = 0; i < rows; ++i) {
        T* row = scores + i * ld;
        for (int64_t j = 0; j <= i; ++j) row[j] *= powers[i - j];
        for (int64_t j = i + 1; j < rows; ++j) row[j] = T(0);
    }
}

// dst[L,D] = diag(factor(i)) · src[L,D] (src leading dim ld_src, dst contiguous).
template <typename T, typename Factor>
void scale_rows(T* dst, const T* src, int64_t rows, int64_t cols, int64_t ld_src, Factor factor) {
    for (int64_t i = 0; i < rows; ++i) {
        const T f = factor(i);
        for (int64_t c = 0; c < cols; ++c) dst[i * cols + c] = f * src[i * ld_src + c];
    }
}

// A parallel region costs microseconds to open (far more when cores are shared): tiny problems,
// such as the ones finite-difference checks evaluate thousands of times, run on the calling thread.
inline bool worth_threads(const LinearAttentionDims& d) {
    return d.batch * d.heads > 1 && d.batch * d.heads * d.seq_len * d.key_dim * d.value_dim >= (int64_t(1) << 16);
}

// Offsets of the (b,h) slices: token rows of q/k and v/o, and the state matrix.
struct Slice {
    int64_t qk, vo, state;
};
inline Slice slice_of(const LinearAttentionDims& d, int64_t b, int64_t h) {
    return {(b * d.seq_len * d.heads + h) * d.key_dim, (b * d.seq_len * d.heads + h) * d.value_dim,
            (b * d.heads + h) * d.key_dim * d.value_dim};
}

// Per-thread scratch for one chunk, sized once per thread.
template <typename T> struct ChunkScratch {
    ChunkScratch(int64_t chunk, int64_t key_dim, int64_t value_dim)
        : scores(size_t(chunk * chunk)), dscores(size_t(chunk * chunk)), k_decayed(size_t(chunk * key_dim)),
          v_decayed(size_t(chunk * value_dim)), dout_decayed(size_t(chunk * value_dim)) {}
    std::vector<T> scores, dscores, k_decayed, v_decayed, dout_decayed;
};

// S[Dk,Dv] = γ^L S + k_cᵀ (v_c ⊙ γ^(L−1−i)): the state after a chunk of L rows (v_decayed is scratch).
// γ^(L−1−i) is how often row i's contribution decays before the chunk ends.
template <typename T>
void advance_state(T* state, const T* k_chunk, const T* v_chunk, int64_t rows, const LinearAttentionDims& d,
                   const std::vector<T>& powers, T* v_decayed) {
    scale_rows(v_decayed, v_chunk, rows, d.value_dim, d.heads * d.value_dim,
               [&](int64_t i) { return powers[size_t(rows - 1 - i)]; });
    gemm<T>(true, false, d.key_dim, d.value_dim, rows, T(1), k_chunk, d.heads * d.key_dim, v_decayed, d.value_dim,
            powers[size_t(rows)], state, d.value_dim);
}

}  // namespace

// q,k [B,T,H,Dk]  v,out [B,T,H,Dv]  states [B,H,Dk,Dv]  log_decay [H]
template <typename T>
void linear_attention_recurrent_forward(T* out, T* final_state, const T* q, const T* k, const T* v,
                                        const T* initial_state, const T* log_decay, double scale,
                                        const LinearAttentionDims& d) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim, q_ld = d.heads * Dk, v_ld = d.heads * Dv;
#pragma omp parallel for schedule(static) if (worth_threads(d))
    for (int64_t bh = 0; bh < d.batch * d.heads; ++bh) {
        const int64_t b = bh / d.heads, h = bh % d.heads;
        const Slice s = slice_of(d, b, h);
        const T gamma = T(std::exp(log_decay ? double(log_decay[h]) : 0.0));
        std::vector<T> state(size_t(Dk * Dv), T(0));
        if (initial_state) std::copy_n(initial_state + s.state, Dk * Dv, state.begin());
        for (int64_t t = 0; t < d.seq_len; ++t) {
            const T* qt = q + s.qk + t * q_ld;
            const T* kt = k + s.qk + t * q_ld;
            const T* vt = v + s.vo + t * v_ld;
            T* ot = out + s.vo + t * v_ld;
            std::fill_n(ot, Dv, T(0));
            // S = γ S + k_tᵀ v_t, then o_t = scale · q_t S, fused row by row of S.
            for (int64_t c = 0; c < Dk; ++c) {
                T* row = state.data() + c * Dv;
                const T kc = kt[c], qc = T(scale) * qt[c];
                for (int64_t j = 0; j < Dv; ++j) {
                    row[j] = gamma * row[j] + kc * vt[j];
                    ot[j] += qc * row[j];
                }
            }
        }
        if (final_state) std::copy_n(state.begin(), Dk * Dv, final_state + s.state);
    }
}

// q,k [B,T,H,Dk]  v,out [B,T,H,Dv]  states [B,H,Dk,Dv]  log_decay [H]
template <typename T>
void linear_attention_chunkwise_forward(T* out, T* final_state, const T* q, const T* k, const T* v,
                                        const T* initial_state, const T* log_decay, double scale,
                                        int64_t chunk_size, const LinearAttentionDims& d) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim, q_ld = d.heads * Dk, v_ld = d.heads * Dv;
    const int64_t C = std::min(chunk_size, d.seq_len);
#pragma omp parallel if (worth_threads(d))
    {
        ChunkScratch<T> scratch(C, Dk, Dv);
        std::vector<T> state(size_t(Dk * Dv));
#pragma omp for schedule(dynamic, 1)
        for (int64_t bh = 0; bh < d.batch * d.heads; ++bh) {
            const int64_t b = bh / d.heads, h = bh % d.heads;
            const Slice s = slice_of(d, b, h);
            const std::vector<T> powers = decay_powers(log_decay, h, C + 1);
            if (initial_state) std::copy_n(initial_state + s.state, Dk * Dv, state.begin());
            else std::fill(state.begin(), state.end(), T(0));
            for (int64_t t0 = 0; t0 < d.seq_len; t0 += C) {
                const int64_t L = std::min(C, d.seq_len - t0);
                const T* qc = q + s.qk + t0 * q_ld;
                const T* kc = k + s.qk + t0 * q_ld;
                const T* vc = v + s.vo + t0 * v_ld;
                T* oc = out + s.vo + t0 * v_ld;
                // Inter-chunk: O = scale · diag(γ^(i+1)) Q S_prev (row i has decayed i+1 times since S_prev).
                gemm<T>(false, false, L, Dv, Dk, T(scale), qc, q_ld, state.data(), Dv, T(0), oc, v_ld);
                for (int64_t i = 0; i < L; ++i)
                    for (int64_t j = 0; j < Dv; ++j) oc[i * v_ld + j] *= powers[size_t(i + 1)];
                // Intra-chunk: O += (scale · Q Kᵀ ⊙ D) V.
                T* scores = scratch.scores.data();
                gemm<T>(false, true, L, L, Dk, T(scale), qc, q_ld, kc, q_ld, T(0), scores, C);
                apply_decay_mask(scores, L, C, powers.data());
                gemm<T>(false, false, L, Dv, L, T(1), scores, C, vc, v_ld, T(1), oc, v_ld);
                advance_state(state.data(), kc, vc, L, d, powers, scratch.v_decayed.data());
            }
            if (final_state) std::copy_n(state.begin(), Dk * Dv, final_state + s.state);
        }
    }
}

// Gradients, per chunk walked from last to first with dS = ∂loss/∂S (state after the chunk):
//   dP = (dO Vᵀ) ⊙ D                       dV += Pᵀ dO + diag(γ^(L−1−i)) K dS
//   dQ += scale · (dP K + diag(γ^(i+1)) dO S_prevᵀ)
//   dK += scale · dPᵀ Q + diag(γ^(L−1−i)) V dSᵀ
//   dS_prev = γ^L dS + scale · Qᵀ diag(γ^(i+1)) dO
// The states S_prev are recomputed by a forward sweep and kept ([T/C, Dk, Dv] per thread), so the
// backward sweep is one pass with every term of a chunk together.
template <typename T>
void linear_attention_chunkwise_backward(T* dq, T* dk, T* dv, T* dinitial_state, const T* dout,
                                         const T* dfinal_state, const T* q, const T* k, const T* v,
                                         const T* initial_state, const T* log_decay, double scale,
                                         int64_t chunk_size, const LinearAttentionDims& d) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim, q_ld = d.heads * Dk, v_ld = d.heads * Dv;
    const int64_t C = std::min(chunk_size, d.seq_len);
    const int64_t num_chunks = (d.seq_len + C - 1) / C;
    const int64_t state_size = Dk * Dv;
#pragma omp parallel if (worth_threads(d))
    {
        ChunkScratch<T> scratch(C, Dk, Dv);
        std::vector<T> states(size_t(num_chunks * state_size));  // states[n] = S before chunk n
        std::vector<T> dstate(static_cast<size_t>(state_size));
        std::vector<T> state(static_cast<size_t>(state_size));
#pragma omp for schedule(dynamic, 1)
        for (int64_t bh = 0; bh < d.batch * d.heads; ++bh) {
            const int64_t b = bh / d.heads, h = bh % d.heads;
            const Slice s = slice_of(d, b, h);
            const std::vector<T> powers = decay_powers(log_decay, h, C + 1);

            // Forward sweep: the state each chunk reads.
            if (initial_state) std::copy_n(initial_state + s.state, state_size, state.begin());
            else std::fill(state.begin(), state.end(), T(0));
            for (int64_t n = 0; n < num_chunks; ++n) {
                const int64_t t0 = n * C, L = std::min(C, d.seq_len - t0);
                std::copy(state.begin(), state.end(), states.begin() + n * state_size);
                if (n + 1 < num_chunks)
                    advance_state(state.data(), k + s.qk + t0 * q_ld, v + s.vo + t0 * v_ld, L, d, powers,
                                  scratch.v_decayed.data());
            }

            // Backward sweep.
            if (dfinal_state) std::copy_n(dfinal_state + s.state, state_size, dstate.begin());
            else std::fill(dstate.begin(), dstate.end(), T(0));
            for (int64_t n = num_chunks - 1; n >= 0; --n) {
                const int64_t t0 = n * C, L = std::min(C, d.seq_len - t0);
                const T *qc = q + s.qk + t0 * q_ld, *kc = k + s.qk + t0 * q_ld;
                const T *vc = v + s.vo + t0 * v_ld, *doc = dout + s.vo + t0 * v_ld;
                T *dqc = dq + s.qk + t0 * q_ld, *dkc = dk + s.qk + t0 * q_ld, *dvc = dv + s.vo + t0 * v_ld;
                const T* state_prev = states.data() + n * state_size;
                T *scores = scratch.scores.data(), *dscores = scratch.dscores.data();

                // Intra-chunk term O = P V with P = scale · Q Kᵀ ⊙ D (recomputed, not stored).
                gemm<T>(false, true, L, L, Dk, T(scale), qc, q_ld, kc, q_ld, T(0), scores, C);
                apply_decay_mask(scores, L, C, powers.data());
                gemm<T>(false, true, L, L, Dv, T(1), doc, v_ld, vc, v_ld, T(0), dscores, C);
                apply_decay_mask(dscores, L, C, powers.data());
                gemm<T>(true, false, L, Dv, L, T(1), scores, C, doc, v_ld, T(1), dvc, v_ld);
                gemm<T>(false, false, L, Dk, L, T(scale), dscores, C, kc, q_ld, T(1), dqc, q_ld);
                gemm<T>(true, false, L, Dk, L, T(scale), dscores, C, qc, q_ld, T(1), dkc, q_ld);

                // State written by this chunk, S = γ^L S_prev + Kᵀ diag(γ^(L−1−i)) V: later chunks read
                // it, so its gradient dS flows back into this chunk's keys and values.
                const auto to_chunk_end = [&](int64_t i) { return powers[size_t(L - 1 - i)]; };
                T *k_decayed = scratch.k_decayed.data(), *v_decayed = scratch.v_decayed.data();
                scale_rows(k_decayed, kc, L, Dk, q_ld, to_chunk_end);
                scale_rows(v_decayed, vc, L, Dv, v_ld, to_chunk_end);
                gemm<T>(false, true, L, Dk, Dv, T(1), v_decayed, Dv, dstate.data(), Dv, T(1), dkc, q_ld);
                gemm<T>(false, false, L, Dv, Dk, T(1), k_decayed, Dk, dstate.data(), Dv, T(1), dvc, v_ld);

                // Inter-chunk term O = scale · diag(γ^(i+1)) Q S_prev: into dQ and into dS_prev, which
                // also receives dS through the γ^L carry (dstate is updated in place last).
                T* dout_decayed = scratch.dout_decayed.data();
                scale_rows(dout_decayed, doc, L, Dv, v_ld, [&](int64_t i) { return powers[size_t(i + 1)]; });
                gemm<T>(false, true, L, Dk, Dv, T(scale), dout_decayed, Dv, state_prev, Dv, T(1), dqc, q_ld);
                gemm<T>(true, false, Dk, Dv, L, T(scale), qc, q_ld, dout_decayed, Dv, powers[size_t(L)],
                        dstate.data(), Dv);
            }
            if (dinitial_state)
                for (int64_t i = 0; i < state_size; ++i) dinitial_state[s.state + i] += dstate[size_t(i)];
        }
    }
}

#define LINARCH_INSTANTIATE(T)                                                                              \
    template void linear_attention_recurrent_forward<T>(T*, T*, const T*, const T*, const T*, const T*,      \
                                                        const T*, double, const LinearAttentionDims&);      \
    template void linear_attention_chunkwise_forward<T>(T*, T*, const T*, const T*, const T*, const T*,      \
                                                        const T*, double, int64_t,                          \
                                                        const LinearAttentionDims&);                        \
    template void linear_attention_chunkwise_backward<T>(T*, T*, T*, T*, const T*, const T*, const T*,       \
                                                         const T*, const T*, const T*, const T*, double,     \
                                                         int64_t, const LinearAttentionDims&);
LINARCH_INSTANTIATE(float)
LINARCH_INSTANTIATE(double)
#undef LINARCH_INSTANTIATE

}  // namespace linarch::cpu
