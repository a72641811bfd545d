// CPU (gated) delta rule: recurrent form, chunkwise WY/UT form, whole-sequence UT ("parallel") form and
// the chunkwise backward. Notation (mixers.md §6.2, per sequence and head): a chunk of L ≤ C rows,
// position i in the chunk, Γ_i = Σ_{m≤i} g_m (chunk-local, so every exponent below is ≤ 0),
// D_ij = exp(Γ_i − Γ_j) for j ≤ i (0 above the diagonal), S_prev the state before the chunk.
//     A   = strictly_lower(diag(β) (K Kᵀ ⊙ D)),   M⁻¹ = (I + A)⁻¹  (forward substitution)
//     W   = M⁻¹ diag(β e^Γ) K,   U = M⁻¹ diag(β) V − W S_prev            (pseudo values u_i)
//         computed as U = M⁻¹ (diag(β) V − diag(β e^Γ) K S_prev): the same WY product in the order that
//         never forms W (one GEMM fewer; a GPU forms W to make it independent of the state, a CPU walks
//         the chunks in order anyway), with M⁻¹ applied by a unit lower-triangular TRMM.
//     O   = scale · diag(e^Γ) Q S_prev + (scale · Q Kᵀ ⊙ D) U
//     S   = e^{Γ_L} S_prev + (diag(e^{Γ_L−Γ}) K)ᵀ U
// (u_i is the recurrent β_i (v_i − k_i S'_i): the rows solve (I + A) U = diag(β) V − diag(β e^Γ) K S_prev.)
// Every (sequence, head) slice of a [B,T,H,D] tensor is a [L,D] matrix with leading dimension H·D, so
// BLAS reads and writes the tensors in place.
#include "backend/cpu/delta_rule.hpp"
#include "backend/cpu/sequences.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

namespace linarch::cpu {
namespace {

// C[m,n] = alpha · op(A) · op(B) + beta · C on row-major arrays with leading dimensions. Called from
// inside our OpenMP region over (sequence, head) pairs, where OpenMP OpenBLAS runs single-threaded.
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

// B[m,n] ← op(A) · B in place, A [m,m] unit lower triangular (leading dim lda), B contiguous [m,n].
template <typename T> void unit_lower_trmm(bool trans_a, int64_t m, int64_t n, const T* a, int64_t lda, T* b) {
    const auto ta = trans_a ? CblasTrans : CblasNoTrans;
    if constexpr (std::is_same_v<T, float>)
        cblas_strmm(CblasRowMajor, CblasLeft, CblasLower, ta, CblasUnit, int(m), int(n), 1.0f, a, int(lda), b, int(n));
    else
        cblas_dtrmm(CblasRowMajor, CblasLeft, CblasLower, ta, CblasUnit, int(m), int(n), 1.0, a, int(lda), b, int(n));
}

template <typename T> T dot(const T* a, const T* b, int64_t n) {
    T sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
    return sum;
}

// A parallel region costs microseconds to open: tiny problems (finite-difference checks evaluate
// thousands of them) run on the calling thread.
inline bool worth_threads(int64_t pairs, const DeltaRuleDims& d) {
    return pairs > 1 && pairs * d.seq_len * d.key_dim * d.value_dim >= (int64_t(1) << 16);
}

// Pointers to one (sequence, head) slice; rows of q/k are q_ld apart, of v/o v_ld, of beta/gate H.
template <typename P> struct Slice {
    P q, k, v, beta, gate;  // gate null when there is none
};
struct SliceOffsets {
    int64_t qk, vo, scalar, state;
};
inline SliceOffsets offsets_of(const DeltaRuleDims& d, const Sequence& s, int64_t h) {
    return {(s.row0 * d.heads + h) * d.key_dim, (s.row0 * d.heads + h) * d.value_dim, s.row0 * d.heads + h,
            (s.state * d.heads + h) * d.key_dim * d.value_dim};
}

// Per-thread scratch for one chunk of up to C rows, sized once per thread.
template <typename T> struct ChunkScratch {
    ChunkScratch(int64_t chunk, int64_t key_dim, int64_t value_dim, bool backward) {
        const auto sized = [](std::vector<T>& buffer, int64_t count) { buffer.resize(static_cast<size_t>(count)); };
        for (auto* square : {&decay, &kk, &minv, &scores}) sized(*square, chunk * chunk);
        for (auto* column : {&decay_in, &decay_out}) sized(*column, chunk);
        for (auto* keys : {&kb, &k_decayed}) sized(*keys, chunk * key_dim);
        for (auto* values : {&vb, &u}) sized(*values, chunk * value_dim);
        gamma.resize(static_cast<size_t>(chunk));
        if (!backward) return;
        for (auto* square : {&dscores, &da}) sized(*square, chunk * chunk);
        for (auto* values : {&du, &dx, &dout_decayed}) sized(*values, chunk * value_dim);
        sized(k_buffer, chunk * key_dim);
        dgamma.resize(static_cast<size_t>(chunk));
    }
    // All [C,C] with leading dimension C; [C,D] matrices are contiguous.
    std::vector<T> decay, kk, minv, scores;
    std::vector<T> decay_in, decay_out;  // e^{Γ_i}, e^{Γ_L − Γ_i}
    T decay_all = 1;                     // e^{Γ_L}
    std::vector<T> kb, vb, u, k_decayed;
    std::vector<T> dscores, da, du, dx, dout_decayed, k_buffer;  // backward only
    std::vector<double> gamma, dgamma;  // Γ_i and ∂loss/∂Γ_i
};

// Everything of a chunk that does not depend on the incoming state: decays, K Kᵀ, M⁻¹ = (I + A)⁻¹,
// kb = diag(β e^Γ) K, vb = diag(β) V. L rows starting at the slice pointers.
template <typename T>
void prepare_chunk(ChunkScratch<T>& s, const Slice<const T*>& c, int64_t L, int64_t C, const DeltaRuleDims& d) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim, q_ld = d.heads * Dk, v_ld = d.heads * Dv, H = d.heads;
    // Γ in double: a chunk-local cumulative sum, so the differences Γ_i − Γ_j stay accurate.
    if (c.gate) {
        std::vector<double>& gamma = s.gamma;
        double sum = 0;
        for (int64_t i = 0; i < L; ++i) gamma[size_t(i)] = sum += double(c.gate[i * H]);
        for (int64_t i = 0; i < L; ++i) {
            T* row = s.decay.data() + i * C;
            // Only j ≤ i is exponentiated (exponent ≤ 0): masking first avoids exp of a positive number.
            for (int64_t j = 0; j <= i; ++j) row[j] = T(std::exp(gamma[size_t(i)] - gamma[size_t(j)]));
            for (int64_t j = i + 1; j < L; ++j) row[j] = T(0);
            s.decay_in[size_t(i)] = T(std::exp(gamma[size_t(i)]));
            s.decay_out[size_t(i)] = T(std::exp(gamma[size_t(L - 1)] - gamma[size_t(i)]));
        }
        s.decay_all = T(std::exp(gamma[size_t(L - 1)]));
    } else {
        for (int64_t i = 0; i < L; ++i) {
            T* row = s.decay.data() + i * C;
            std::fill(row, row + i + 1, T(1));
            std::fill(row + i + 1, row + L, T(0));
        }
        std::fill_n(s.decay_in.begin(), L, T(1));
        std::fill_n(s.decay_out.begin(), L, T(1));
        s.decay_all = T(1);
    }
    gemm<T>(false, true, L, L, Dk, T(1), c.k, q_ld, c.k, q_ld, T(0), s.kk.data(), C);
    // Forward substitution, row by row: row_i(M⁻¹) = e_i − Σ_{j<i} A_ij row_j(M⁻¹), where row j is
    // zero beyond column j.
    for (int64_t i = 0; i < L; ++i) {
        T* row = s.minv.data() + i * C;
        std::fill(row, row + L, T(0));
        row[i] = T(1);
        const T beta_i = c.beta[i * H];
        for (int64_t j = 0; j < i; ++j) {
            const T a = beta_i * s.decay[size_t(i * C + j)] * s.kk[size_t(i * C + j)];
            const T* row_j = s.minv.data() + j * C;
            for (int64_t col = 0; col <= j; ++col) row[col] -= a * row_j[col];
        }
    }
    for (int64_t i = 0; i < L; ++i) {
        const T beta_i = c.beta[i * H], kscale = beta_i * s.decay_in[size_t(i)];
        for (int64_t col = 0; col < Dk; ++col) s.kb[size_t(i * Dk + col)] = kscale * c.k[i * q_ld + col];
        for (int64_t col = 0; col < Dv; ++col) s.vb[size_t(i * Dv + col)] = beta_i * c.v[i * v_ld + col];
    }
}

// Given prepare_chunk's results and the state before the chunk: U = M⁻¹ (vb − kb S_prev) into s.u.
template <typename T>
void pseudo_values(ChunkScratch<T>& s, const T* state_prev, int64_t L, int64_t C, const DeltaRuleDims& d) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim;
    std::copy_n(s.vb.begin(), L * Dv, s.u.begin());
    gemm<T>(false, false, L, Dv, Dk, T(-1), s.kb.data(), Dk, state_prev, Dv, T(1), s.u.data(), Dv);
    unit_lower_trmm<T>(false, L, Dv, s.minv.data(), C, s.u.data());
}

// Given prepare_chunk's results: the pseudo values U, the chunk's output (if out is non-null) and the
// state update S ← e^{Γ_L} S + (diag(e^{Γ_L−Γ}) K)ᵀ U in place.
template <typename T>
void finish_chunk(ChunkScratch<T>& s, const Slice<const T*>& c, T* out, T* state, int64_t L, int64_t C,
                  double scale, const DeltaRuleDims& d) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim, q_ld = d.heads * Dk, v_ld = d.heads * Dv;
    pseudo_values(s, state, L, C, d);
    if (out) {
        // Inter-chunk: O = scale · diag(e^Γ) Q S_prev; intra-chunk: O += (scale · Q Kᵀ ⊙ D) U.
        gemm<T>(false, false, L, Dv, Dk, T(scale), c.q, q_ld, state, Dv, T(0), out, v_ld);
        for (int64_t i = 0; i < L; ++i)
            for (int64_t j = 0; j < Dv; ++j) out[i * v_ld + j] *= s.decay_in[size_t(i)];
        T* scores = s.scores.data();
        gemm<T>(false, true, L, L, Dk, T(scale), c.q, q_ld, c.k, q_ld, T(0), scores, C);
        for (int64_t i = 0; i < L; ++i)
            for (int64_t j = 0; j < L; ++j) scores[i * C + j] *= s.decay[size_t(i * C + j)];
        gemm<T>(false, false, L, Dv, L, T(1), scores, C, s.u.data(), Dv, T(1), out, v_ld);
    }
    for (int64_t i = 0; i < L; ++i)
        for (int64_t col = 0; col < Dk; ++col)
            s.k_decayed[size_t(i * Dk + col)] = s.decay_out[size_t(i)] * c.k[i * q_ld + col];
    gemm<T>(true, false, Dk, Dv, L, T(1), s.k_decayed.data(), Dk, s.u.data(), Dv, s.decay_all, state, Dv);
}

template <typename T>
Slice<const T*> chunk_at(const T* q, const T* k, const T* v, const T* beta, const T* log_gate,
                         const SliceOffsets& off, int64_t t0, const DeltaRuleDims& d) {
    const int64_t H = d.heads;
    return {q + off.qk + t0 * H * d.key_dim, k + off.qk + t0 * H * d.key_dim, v + off.vo + t0 * H * d.value_dim,
            beta + off.scalar + t0 * H, log_gate ? log_gate + off.scalar + t0 * H : nullptr};
}

}  // namespace

// q,k [B,T,H,Dk]  v,out [B,T,H,Dv]  beta, log_gate [B,T,H]  states [N,H,Dk,Dv]
template <typename T>
void delta_rule_recurrent_forward(T* out, T* final_state, const T* q, const T* k, const T* v, const T* beta,
                                  const T* log_gate, const T* initial_state, double scale, const DeltaRuleDims& d,
                                  std::span<const int64_t> cu_seqlens) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim, H = d.heads, q_ld = H * Dk, v_ld = H * Dv;
    const std::vector<Sequence> sequences = sequences_of(d.batch, d.seq_len, cu_seqlens);
    const int64_t pairs = int64_t(sequences.size()) * H;
#pragma omp parallel if (worth_threads(pairs, d))
    {
        std::vector<T> state(static_cast<size_t>(Dk * Dv)), recalled(static_cast<size_t>(Dv));
#pragma omp for schedule(dynamic, 1)
        for (int64_t pair = 0; pair < pairs; ++pair) {
            const Sequence& seq = sequences[size_t(pair / H)];
            const SliceOffsets off = offsets_of(d, seq, pair % H);
            if (initial_state) std::copy_n(initial_state + off.state, Dk * Dv, state.begin());
            else std::fill(state.begin(), state.end(), T(0));
            for (int64_t t = 0; t < seq.length; ++t) {
                const T *qt = q + off.qk + t * q_ld, *kt = k + off.qk + t * q_ld, *vt = v + off.vo + t * v_ld;
                const T beta_t = beta[off.scalar + t * H];
                T* ot = out + off.vo + t * v_ld;
                // S' = e^g S;  u = β (v − k S');  S = S' + kᵀ u;  o = scale · q S.
                const T alpha = log_gate ? T(std::exp(double(log_gate[off.scalar + t * H]))) : T(1);
                std::fill(recalled.begin(), recalled.end(), T(0));
                for (int64_t c = 0; c < Dk; ++c) {
                    T* row = state.data() + c * Dv;
                    const T kc = kt[c];
                    for (int64_t j = 0; j < Dv; ++j) recalled[size_t(j)] += kc * (row[j] *= alpha);
                }
                for (int64_t j = 0; j < Dv; ++j) recalled[size_t(j)] = beta_t * (vt[j] - recalled[size_t(j)]);
                std::fill_n(ot, Dv, T(0));
                for (int64_t c = 0; c < Dk; ++c) {
                    T* row = state.data() + c * Dv;
                    const T kc = kt[c], qc = T(scale) * qt[c];
                    for (int64_t j = 0; j < Dv; ++j) {
                        row[j] += kc * recalled[size_t(j)];
                        ot[j] += qc * row[j];
                    }
                }
            }
            if (final_state) std::copy_n(state.begin(), Dk * Dv, final_state + off.state);
        }
    }
}

// q,k [B,T,H,Dk]  v,out [B,T,H,Dv]  beta, log_gate [B,T,H]  states [N,H,Dk,Dv]
template <typename T>
void delta_rule_chunkwise_forward(T* out, T* final_state, const T* q, const T* k, const T* v, const T* beta,
                                  const T* log_gate, const T* initial_state, double scale, int64_t chunk_size,
                                  const DeltaRuleDims& d, std::span<const int64_t> cu_seqlens) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim, H = d.heads, v_ld = H * Dv;
    const std::vector<Sequence> sequences = sequences_of(d.batch, d.seq_len, cu_seqlens);
    const int64_t pairs = int64_t(sequences.size()) * H;
    const int64_t C = std::min(chunk_size, longest(sequences));
#pragma omp parallel if (worth_threads(pairs, d))
    {
        ChunkScratch<T> scratch(C, Dk, Dv, false);
        std::vector<T> state(static_cast<size_t>(Dk * Dv));
#pragma omp for schedule(dynamic, 1)
        for (int64_t pair = 0; pair < pairs; ++pair) {
            const Sequence& seq = sequences[size_t(pair / H)];
            const SliceOffsets off = offsets_of(d, seq, pair % H);
            if (initial_state) std::copy_n(initial_state + off.state, Dk * Dv, state.begin());
            else std::fill(state.begin(), state.end(), T(0));
            for (int64_t t0 = 0; t0 < seq.length; t0 += C) {
                const int64_t L = std::min(C, seq.length - t0);
                const Slice<const T*> chunk = chunk_at(q, k, v, beta, log_gate, off, t0, d);
                prepare_chunk(scratch, chunk, L, C, d);
                finish_chunk(scratch, chunk, out + off.vo + t0 * v_ld, state.data(), L, C, scale, d);
            }
            if (final_state) std::copy_n(state.begin(), Dk * Dv, final_state + off.state);
        }
    }
}

// The whole sequence as one chunk, written as the attention-like closed form (Γ from the sequence start,
// in double; only differences Γ_i − Γ_j with j ≤ i are exponentiated):
//     u_i = β_i v_i − β_i e^{Γ_i} k_i S_0 − Σ_{j<i} β_i e^{Γ_i−Γ_j} (k_i·k_j) u_j
//     o_i = scale · (e^{Γ_i} q_i S_0 + Σ_{j≤i} e^{Γ_i−Γ_j} (q_i·k_j) u_j)
//     S_T = e^{Γ_T} S_0 + Σ_j e^{Γ_T−Γ_j} k_jᵀ u_j
template <typename T>
void delta_rule_parallel_forward(T* out, T* final_state, const T* q, const T* k, const T* v, const T* beta,
                                 const T* log_gate, const T* initial_state, double scale, const DeltaRuleDims& d,
                                 std::span<const int64_t> cu_seqlens) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim, H = d.heads, q_ld = H * Dk, v_ld = H * Dv;
    const std::vector<Sequence> sequences = sequences_of(d.batch, d.seq_len, cu_seqlens);
    const int64_t pairs = int64_t(sequences.size()) * H;
#pragma omp parallel if (worth_threads(pairs, d))
    {
        std::vector<T> u, s0_rows(static_cast<size_t>(Dv));
        std::vector<double> gamma;
#pragma omp for schedule(dynamic, 1)
        for (int64_t pair = 0; pair < pairs; ++pair) {
            const Sequence& seq = sequences[size_t(pair / H)];
            const SliceOffsets off = offsets_of(d, seq, pair % H);
            const int64_t L = seq.length;
            const T* s0 = initial_state ? initial_state + off.state : nullptr;
            gamma.assign(static_cast<size_t>(L), 0.0);
            double sum = 0;
            for (int64_t i = 0; i < L; ++i)
                gamma[size_t(i)] = log_gate ? (sum += double(log_gate[off.scalar + i * H])) : 0.0;
            auto decay = [&](int64_t i, int64_t j) { return T(std::exp(gamma[size_t(i)] - gamma[size_t(j)])); };
            // x S_0 for a row x of length Dk, into s0_rows.
            auto times_s0 = [&](const T* x) {
                std::fill(s0_rows.begin(), s0_rows.end(), T(0));
                if (s0)
                    for (int64_t c = 0; c < Dk; ++c)
                        for (int64_t j = 0; j < Dv; ++j) s0_rows[size_t(j)] += x[c] * s0[c * Dv + j];
            };
            u.assign(static_cast<size_t>(L * Dv), T(0));
            for (int64_t i = 0; i < L; ++i) {
                const T *qi = q + off.qk + i * q_ld, *ki = k + off.qk + i * q_ld, *vi = v + off.vo + i * v_ld;
                const T beta_i = beta[off.scalar + i * H], start_decay = T(std::exp(gamma[size_t(i)]));
                T* ui = u.data() + i * Dv;
                // Forward substitution: row i of the unit lower-triangular system, generated on the fly.
                times_s0(ki);
                for (int64_t j = 0; j < Dv; ++j) ui[j] = beta_i * (vi[j] - start_decay * s0_rows[size_t(j)]);
                for (int64_t jrow = 0; jrow < i; ++jrow) {
                    const T a = beta_i * decay(i, jrow) * dot(ki, k + off.qk + jrow * q_ld, Dk);
                    const T* uj = u.data() + jrow * Dv;
                    for (int64_t j = 0; j < Dv; ++j) ui[j] -= a * uj[j];
                }
                T* oi = out + off.vo + i * v_ld;
                times_s0(qi);
                for (int64_t j = 0; j < Dv; ++j) oi[j] = start_decay * s0_rows[size_t(j)];
                for (int64_t jrow = 0; jrow <= i; ++jrow) {
                    const T p = decay(i, jrow) * dot(qi, k + off.qk + jrow * q_ld, Dk);
                    const T* uj = u.data() + jrow * Dv;
                    for (int64_t j = 0; j < Dv; ++j) oi[j] += p * uj[j];
                }
                for (int64_t j = 0; j < Dv; ++j) oi[j] *= T(scale);
            }
            if (final_state) {
                T* sT = final_state + off.state;
                const T all = T(std::exp(L > 0 ? gamma[size_t(L - 1)] : 0.0));
                for (int64_t c = 0; c < Dk * Dv; ++c) sT[c] = s0 ? all * s0[c] : T(0);
                for (int64_t jrow = 0; jrow < L; ++jrow) {
                    const T to_end = decay(L - 1, jrow);
                    const T *kj = k + off.qk + jrow * q_ld, *uj = u.data() + jrow * Dv;
                    for (int64_t c = 0; c < Dk; ++c)
                        for (int64_t j = 0; j < Dv; ++j) sT[c * Dv + j] += to_end * kj[c] * uj[j];
                }
            }
        }
    }
}

// Gradients per chunk, walked from last to first with dS = ∂loss/∂S (state after the chunk). With
// X = vb − kb S_prev (so U = M⁻¹ X) and P = scale · Q Kᵀ ⊙ D:
//   dU = Pᵀ dO + diag(e^{Γ_L−Γ}) K dS            dP = dO Uᵀ (lower incl. diagonal)
//   dQ += scale (dP ⊙ D) K + scale diag(e^Γ) dO S_prevᵀ
//   dK += scale (dP ⊙ D)ᵀ Q + diag(e^{Γ_L−Γ}) U dSᵀ
//   dX = M⁻ᵀ dU,  dA = −strictly_lower(dX Uᵀ)      (through the triangular solve)
//   dV += diag(β) dX;  dK += −diag(β e^Γ) dX S_prevᵀ + G K + Gᵀ K,  G_ij = dA_ij β_i D_ij
//   dβ_i += dX_i·(v_i − e^{Γ_i} k_i S_prev) + Σ_j dA_ij D_ij (k_i·k_j)
//   dS_prev = e^{Γ_L} dS + scale Qᵀ diag(e^Γ) dO − kbᵀ dX
// dΓ_i collects every term where e^{±Γ_i} appears; dg is its reverse cumulative sum within the chunk.
// The states S_prev are recomputed by a forward sweep and kept ([chunks, Dk, Dv] per thread).
template <typename T>
void delta_rule_chunkwise_backward(T* dq, T* dk, T* dv, T* dbeta, T* dlog_gate, T* dinitial_state, const T* dout,
                                   const T* dfinal_state, const T* q, const T* k, const T* v, const T* beta,
                                   const T* log_gate, const T* initial_state, double scale, int64_t chunk_size,
                                   const DeltaRuleDims& d, std::span<const int64_t> cu_seqlens) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim, H = d.heads, q_ld = H * Dk, v_ld = H * Dv;
    const std::vector<Sequence> sequences = sequences_of(d.batch, d.seq_len, cu_seqlens);
    const int64_t pairs = int64_t(sequences.size()) * H;
    const int64_t C = std::min(chunk_size, longest(sequences));
    const int64_t max_chunks = (longest(sequences) + C - 1) / C;
    const int64_t state_size = Dk * Dv;
#pragma omp parallel if (worth_threads(pairs, d))
    {
        ChunkScratch<T> s(C, Dk, Dv, true);
        std::vector<T> states(static_cast<size_t>(max_chunks * state_size));  // states[n] = S before chunk n
        const auto state_buffer = [&] { return std::vector<T>(static_cast<size_t>(state_size)); };
        std::vector<T> state = state_buffer(), dstate = state_buffer(), dstate_prev = state_buffer();
#pragma omp for schedule(dynamic, 1)
        for (int64_t pair = 0; pair < pairs; ++pair) {
            const Sequence& seq = sequences[size_t(pair / H)];
            const SliceOffsets off = offsets_of(d, seq, pair % H);
            const int64_t num_chunks = (seq.length + C - 1) / C;

            // Forward sweep: the state each chunk reads.
            if (initial_state) std::copy_n(initial_state + off.state, state_size, state.begin());
            else std::fill(state.begin(), state.end(), T(0));
            for (int64_t n = 0; n < num_chunks; ++n) {
                const int64_t t0 = n * C, L = std::min(C, seq.length - t0);
                std::copy(state.begin(), state.end(), states.begin() + n * state_size);
                if (n + 1 == num_chunks) break;
                const Slice<const T*> chunk = chunk_at(q, k, v, beta, log_gate, off, t0, d);
                prepare_chunk(s, chunk, L, C, d);
                finish_chunk(s, chunk, static_cast<T*>(nullptr), state.data(), L, C, scale, d);
            }

            // Backward sweep.
            if (dfinal_state) std::copy_n(dfinal_state + off.state, state_size, dstate.begin());
            else std::fill(dstate.begin(), dstate.end(), T(0));
            for (int64_t n = num_chunks - 1; n >= 0; --n) {
                const int64_t t0 = n * C, L = std::min(C, seq.length - t0);
                const Slice<const T*> c = chunk_at(q, k, v, beta, log_gate, off, t0, d);
                const T* doc = dout + off.vo + t0 * v_ld;
                T *dqc = dq + off.qk + t0 * q_ld, *dkc = dk + off.qk + t0 * q_ld, *dvc = dv + off.vo + t0 * v_ld;
                T* dbc = dbeta + off.scalar + t0 * H;
                const T* state_prev = states.data() + n * state_size;
                prepare_chunk(s, c, L, C, d);
                T *u = s.u.data(), *buf = s.k_buffer.data(), *scores = s.scores.data(), *dscores = s.dscores.data();
                T *du = s.du.data(), *dx = s.dx.data(), *da = s.da.data(), *dod = s.dout_decayed.data();
                std::fill_n(s.dgamma.begin(), L, 0.0);

                // U = M⁻¹ (vb − kb S_prev), P = scale · Q Kᵀ ⊙ D.
                pseudo_values(s, state_prev, L, C, d);
                gemm<T>(false, true, L, L, Dk, T(scale), c.q, q_ld, c.k, q_ld, T(0), scores, C);
                for (int64_t i = 0; i < L; ++i)
                    for (int64_t j = 0; j < L; ++j) scores[i * C + j] *= s.decay[size_t(i * C + j)];

                // dU from the output and from the state this chunk writes.
                for (int64_t i = 0; i < L; ++i)
                    for (int64_t col = 0; col < Dk; ++col)
                        s.k_decayed[size_t(i * Dk + col)] = s.decay_out[size_t(i)] * c.k[i * q_ld + col];
                gemm<T>(true, false, L, Dv, L, T(1), scores, C, doc, v_ld, T(0), du, Dv);
                gemm<T>(false, false, L, Dv, Dk, T(1), s.k_decayed.data(), Dk, dstate.data(), Dv, T(1), du, Dv);

                // Intra-chunk scores: dP = dO Uᵀ; dΓ from P's decay; dQ, dK from Q Kᵀ.
                gemm<T>(false, true, L, L, Dv, T(1), doc, v_ld, u, Dv, T(0), dscores, C);
                for (int64_t i = 0; i < L; ++i)
                    for (int64_t j = 0; j < L; ++j) {
                        T& dp = dscores[i * C + j];
                        if (j > i) {
                            dp = T(0);
                            continue;
                        }
                        const double z = double(dp) * double(scores[i * C + j]);
                        s.dgamma[size_t(i)] += z;
                        s.dgamma[size_t(j)] -= z;
                        dp *= T(scale) * s.decay[size_t(i * C + j)];
                    }
                gemm<T>(false, false, L, Dk, L, T(1), dscores, C, c.k, q_ld, T(1), dqc, q_ld);
                gemm<T>(true, false, L, Dk, L, T(1), dscores, C, c.q, q_ld, T(1), dkc, q_ld);

                // Inter-chunk output scale · diag(e^Γ) Q S_prev.
                for (int64_t i = 0; i < L; ++i)
                    for (int64_t j = 0; j < Dv; ++j) dod[i * Dv + j] = s.decay_in[size_t(i)] * doc[i * v_ld + j];
                gemm<T>(false, true, L, Dk, Dv, T(scale), dod, Dv, state_prev, Dv, T(0), buf, Dk);
                for (int64_t i = 0; i < L; ++i) {
                    s.dgamma[size_t(i)] += double(dot(c.q + i * q_ld, buf + i * Dk, Dk));
                    for (int64_t col = 0; col < Dk; ++col) dqc[i * q_ld + col] += buf[i * Dk + col];
                }
                std::copy(dstate.begin(), dstate.end(), dstate_prev.begin());
                gemm<T>(true, false, Dk, Dv, L, T(scale), c.q, q_ld, dod, Dv, s.decay_all, dstate_prev.data(), Dv);

                // State write e^{Γ_L} S_prev + Σ_j e^{Γ_L−Γ_j} k_jᵀ u_j: dK and dΓ.
                gemm<T>(false, true, L, Dk, Dv, T(1), u, Dv, dstate.data(), Dv, T(0), buf, Dk);
                double to_end_sum = 0;
                for (int64_t i = 0; i < L; ++i) {
                    const T to_end = s.decay_out[size_t(i)];
                    const double ci = double(to_end) * double(dot(c.k + i * q_ld, buf + i * Dk, Dk));
                    to_end_sum += ci;
                    s.dgamma[size_t(i)] -= ci;
                    for (int64_t col = 0; col < Dk; ++col) dkc[i * q_ld + col] += to_end * buf[i * Dk + col];
                }
                s.dgamma[size_t(L - 1)] +=
                    to_end_sum + double(s.decay_all) * double(dot(dstate.data(), state_prev, state_size));

                // Through the triangular solve: dX = M⁻ᵀ dU, then X = vb − kb S_prev.
                std::copy_n(du, L * Dv, dx);
                unit_lower_trmm<T>(true, L, Dv, s.minv.data(), C, dx);
                gemm<T>(false, true, L, Dk, Dv, T(-1), dx, Dv, state_prev, Dv, T(0), buf, Dk);  // dkb
                for (int64_t i = 0; i < L; ++i) {
                    const T beta_i = c.beta[i * H], e_in = s.decay_in[size_t(i)];
                    const T* ki = c.k + i * q_ld;
                    const T* dxi = dx + i * Dv;
                    const T kdkb = dot(ki, buf + i * Dk, Dk);
                    dbc[i * H] += dot(dxi, c.v + i * v_ld, Dv) + e_in * kdkb;
                    s.dgamma[size_t(i)] += double(beta_i) * double(e_in) * double(kdkb);
                    for (int64_t j = 0; j < Dv; ++j) dvc[i * v_ld + j] += beta_i * dxi[j];
                    for (int64_t col = 0; col < Dk; ++col) dkc[i * q_ld + col] += beta_i * e_in * buf[i * Dk + col];
                }
                gemm<T>(true, false, Dk, Dv, L, T(-1), s.kb.data(), Dk, dx, Dv, T(1), dstate_prev.data(), Dv);

                // A_ij = β_i D_ij (k_i·k_j), j < i: dA = −dX Uᵀ, then G_ij = dA_ij β_i D_ij, and k_i·k_j
                // sends G to both keys: dK += (G + Gᵀ) K, one GEMM on the symmetrised matrix.
                gemm<T>(false, true, L, L, Dv, T(-1), dx, Dv, u, Dv, T(0), da, C);
                for (int64_t i = 0; i < L; ++i) {
                    const T beta_i = c.beta[i * H];
                    double dbeta_i = 0;
                    for (int64_t j = 0; j < i; ++j) {
                        T& g = da[i * C + j];
                        const T decay_kk = s.decay[size_t(i * C + j)] * s.kk[size_t(i * C + j)];
                        dbeta_i += double(g) * double(decay_kk);
                        const double z = double(g) * double(beta_i) * double(decay_kk);
                        s.dgamma[size_t(i)] += z;
                        s.dgamma[size_t(j)] -= z;
                        g *= beta_i * s.decay[size_t(i * C + j)];
                    }
                    dbc[i * H] += T(dbeta_i);
                }
                for (int64_t i = 0; i < L; ++i) {
                    da[i * C + i] = T(0);
                    for (int64_t j = 0; j < i; ++j) da[j * C + i] = da[i * C + j];
                }
                gemm<T>(false, false, L, Dk, L, T(1), da, C, c.k, q_ld, T(1), dkc, q_ld);

                // Γ_i = Σ_{m≤i} g_m:  dg_m = Σ_{i≥m} dΓ_i.
                if (dlog_gate && log_gate) {
                    T* dgc = dlog_gate + off.scalar + t0 * H;
                    double suffix = 0;
                    for (int64_t i = L - 1; i >= 0; --i) dgc[i * H] += T(suffix += s.dgamma[size_t(i)]);
                }
                std::swap(dstate, dstate_prev);
            }
            if (dinitial_state)
                for (int64_t i = 0; i < state_size; ++i) dinitial_state[off.state + i] += dstate[size_t(i)];
        }
    }
}

#define LINARCH_INSTANTIATE(T)                                                                                  \
    template void delta_rule_recurrent_forward<T>(T*, T*, const T*, const T*, const T*, const T*, const T*,     \
                                                  const T*, double, const DeltaRuleDims&,                       \
                                                  std::span<const int64_t>);                                    \
    template void delta_rule_chunkwise_forward<T>(T*, T*, const T*, const T*, const T*, const T*, const T*,     \
                                                  const T*, double, int64_t, const DeltaRuleDims&,              \
                                                  std::span<const int64_t>);                                    \
    template void delta_rule_parallel_forward<T>(T*, T*, const T*, const T*, const T*, const T*, const T*,      \
                                                 const T*, double, const DeltaRuleDims&,                        \
                                                 std::span<const int64_t>);                                     \
    template void delta_rule_chunkwise_backward<T>(T*, T*, T*, T*, T*, T*, const T*, const T*, const T*,        \
                                                   const T*, const T*, const T*, const T*, const T*, double,    \
                                                   int64_t, const DeltaRuleDims&, std::span<const int64_t>);
LINARCH_INSTANTIATE(float)
LINARCH_INSTANTIATE(double)
#undef LINARCH_INSTANTIATE

}  // namespace linarch::cpu
