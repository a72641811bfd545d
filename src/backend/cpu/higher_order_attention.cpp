// CPU second-order HLA: recurrent form, chunkwise form and the chunkwise backward (mixers.md §8).
// Chunk step (§8.3, derived from the semidirect-product rule and checked against the float64 reference):
// for a chunk of L ≤ C rows Q, K [L,Dk], V [L,Dv] with carry A = (S, C, G) from the tokens before it,
// W = (Q Kᵀ) ⊙ L (lower incl. diagonal), X = (K Qᵀ) ⊙ strictly lower,
//     masked:    O = scale [ Q (S C − G) + ((Q S Qᵀ + W Wᵀ) ⊙ L) V ]
//     unmasked:  O = scale [ Q (S C) + W (K C) + ((Q S Qᵀ + W K Qᵀ) ⊙ L) V ]
// (q_tᵀ S_t C_t − q_tᵀ G_t expanded with S_t = S + S_{B,t}, C_t = C + C_{B,t}, G_t = G + G_{B,t} + S_{B,t} C:
// the carry's keys never meet in-chunk queries through G, which is what makes the form strictly causal.)
// Carry update: G ← G + Kᵀ (X V) + (Kᵀ K) C (masked only, with the old C), S ← S + Kᵀ K, C ← C + Qᵀ V.
// Every (sequence, head) slice of a [B,T,H,D] tensor is an [L,D] matrix with leading dimension H·D, so
// BLAS reads and writes the tensors in place.
#include "backend/cpu/higher_order_attention.hpp"
#include "backend/cpu/sequences.hpp"

#include <cblas.h>

#include <algorithm>
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

// Keeps the lower triangle of an [L,L] matrix (leading dim ld): with the diagonal, or strictly below it.
template <typename T> void keep_lower(T* a, int64_t L, int64_t ld, bool with_diagonal) {
    for (int64_t i = 0; i < L; ++i) std::fill(a + i * ld + (with_diagonal ? i + 1 : i), a + i * ld + L, T(0));
}

// A parallel region costs microseconds to open: tiny problems (finite-difference checks evaluate
// thousands of them) run on the calling thread.
inline bool worth_threads(int64_t pairs, const HigherOrderDims& d) {
    return pairs > 1 && pairs * d.seq_len * d.key_dim * (d.key_dim + d.value_dim) >= (int64_t(1) << 16);
}

// Offsets of one (sequence, head) slice: token rows (q/k and v/o) and the moments S and C/G.
struct SliceOffsets {
    int64_t qk, vo, key_moment, value_moment;
};
inline SliceOffsets offsets_of(const HigherOrderDims& d, const Sequence& s, int64_t h) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim, pair = s.state * d.heads + h;
    return {(s.row0 * d.heads + h) * Dk, (s.row0 * d.heads + h) * Dv, pair * Dk * Dk, pair * Dk * Dv};
}

// The carry of one (sequence, head) pair: S [Dk,Dk], C and G [Dk,Dv] (G unused when unmasked).
template <typename T> struct Carry {
    Carry(int64_t key_dim, int64_t value_dim)
        : S(static_cast<size_t>(key_dim * key_dim)), C(static_cast<size_t>(key_dim * value_dim)), G(C.size()) {}
    std::vector<T> S, C, G;

    void load(Moments<const T*> from, const SliceOffsets& off) {
        const auto take = [](std::vector<T>& dst, const T* src) {
            if (src) std::copy_n(src, dst.size(), dst.begin());
            else std::fill(dst.begin(), dst.end(), T(0));
        };
        take(S, from.key_moment ? from.key_moment + off.key_moment : nullptr);
        take(C, from.query_value_moment ? from.query_value_moment + off.value_moment : nullptr);
        take(G, from.correction ? from.correction + off.value_moment : nullptr);
    }
    void store(Moments<T*> to, const SliceOffsets& off) const {
        if (to.key_moment) std::copy(S.begin(), S.end(), to.key_moment + off.key_moment);
        if (to.query_value_moment) std::copy(C.begin(), C.end(), to.query_value_moment + off.value_moment);
        if (to.correction) std::copy(G.begin(), G.end(), to.correction + off.value_moment);
    }
    void add_to(Moments<T*> to, const SliceOffsets& off) const {
        const auto add = [](const std::vector<T>& src, T* dst) {
            if (dst)
                for (size_t i = 0; i < src.size(); ++i) dst[i] += src[i];
        };
        add(S, to.key_moment ? to.key_moment + off.key_moment : nullptr);
        add(C, to.query_value_moment ? to.query_value_moment + off.value_moment : nullptr);
        add(G, to.correction ? to.correction + off.value_moment : nullptr);
    }
};

// One chunk of one (sequence, head) slice: L rows from q, k (row stride q_ld) and v (row stride v_ld).
template <typename T> struct Chunk {
    const T *q, *k, *v;
    int64_t L;
};

// Per-thread scratch for one chunk of up to C rows, sized once per thread.
template <typename T> struct ChunkScratch {
    ChunkScratch(int64_t chunk, int64_t key_dim, int64_t value_dim, bool backward) {
        const auto sized = [](std::vector<T>& buffer, int64_t count) { buffer.resize(static_cast<size_t>(count)); };
        for (auto* square : {&w, &scores, &kq}) sized(*square, chunk * chunk);
        sized(qs, chunk * key_dim);
        sized(kc, chunk * value_dim);
        sized(readout, key_dim * value_dim);
        sized(key_gram, key_dim * key_dim);
        if (!backward) return;
        for (auto* square : {&dscores, &dw, &dkq}) sized(*square, chunk * chunk);
        sized(key_buffer, chunk * key_dim);
        for (auto* values : {&dout_scaled, &dkey_read}) sized(*values, chunk * value_dim);
        sized(dreadout, key_dim * value_dim);
        sized(dkey_gram, key_dim * key_dim);
    }
    // [C,C] matrices with leading dimension C; the others contiguous.
    std::vector<T> w, scores, kq;  // W = QKᵀ ⊙ L; P; K Qᵀ (strictly lower when masked)
    std::vector<T> qs, kc;         // Q S [L,Dk]; K C [L,Dv] (X V when masked)
    std::vector<T> readout;        // S C − G (masked) or S C [Dk,Dv]
    std::vector<T> key_gram;       // Kᵀ K [Dk,Dk]
    // Backward only: dP, dW, d(K Qᵀ); [L,Dk] scratch; scale·dO; d(K C) or d(X V); dR; d(Kᵀ K).
    std::vector<T> dscores, dw, dkq, key_buffer, dout_scaled, dkey_read, dreadout, dkey_gram;
};

// W, P and the read-out matrix of a chunk given the carry before it (the forward's intermediates).
template <typename T>
void chunk_scores(ChunkScratch<T>& s, const Chunk<T>& c, const Carry<T>& a, bool masked, int64_t C,
                  const HigherOrderDims& d) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim, q_ld = d.heads * Dk, L = c.L;
    gemm<T>(false, false, Dk, Dv, Dk, T(1), a.S.data(), Dk, a.C.data(), Dv, T(0), s.readout.data(), Dv);
    if (masked)
        for (size_t i = 0; i < s.readout.size(); ++i) s.readout[i] -= a.G[i];
    gemm<T>(false, false, L, Dk, Dk, T(1), c.q, q_ld, a.S.data(), Dk, T(0), s.qs.data(), Dk);
    gemm<T>(false, true, L, L, Dk, T(1), s.qs.data(), Dk, c.q, q_ld, T(0), s.scores.data(), C);
    gemm<T>(false, true, L, L, Dk, T(1), c.q, q_ld, c.k, q_ld, T(0), s.w.data(), C);
    keep_lower(s.w.data(), L, C, true);
    if (masked) {
        // (W Wᵀ)_tj = Σ_{i ≤ min(t,j)} (q_t·k_i)(q_j·k_i): the in-chunk second-order term.
        gemm<T>(false, true, L, L, L, T(1), s.w.data(), C, s.w.data(), C, T(1), s.scores.data(), C);
    } else {
        // (W K Qᵀ)_tj = Σ_{i ≤ t} (q_t·k_i)(k_i·q_j).
        gemm<T>(false, true, L, L, Dk, T(1), c.k, q_ld, c.q, q_ld, T(0), s.kq.data(), C);
        gemm<T>(false, false, L, L, L, T(1), s.w.data(), C, s.kq.data(), C, T(1), s.scores.data(), C);
        gemm<T>(false, false, L, Dv, Dk, T(1), c.k, q_ld, a.C.data(), Dv, T(0), s.kc.data(), Dv);
    }
    keep_lower(s.scores.data(), L, C, true);
}

// The chunk's output into out (row stride v_ld).
template <typename T>
void chunk_output(ChunkScratch<T>& s, const Chunk<T>& c, T* out, bool masked, double scale, int64_t C,
                  const HigherOrderDims& d) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim, q_ld = d.heads * Dk, v_ld = d.heads * Dv, L = c.L;
    gemm<T>(false, false, L, Dv, Dk, T(scale), c.q, q_ld, s.readout.data(), Dv, T(0), out, v_ld);
    gemm<T>(false, false, L, Dv, L, T(scale), s.scores.data(), C, c.v, v_ld, T(1), out, v_ld);
    if (!masked) gemm<T>(false, false, L, Dv, L, T(scale), s.w.data(), C, s.kc.data(), Dv, T(1), out, v_ld);
}

// The carry after the chunk, in place: G first (it reads the old C), then S and C.
template <typename T>
void advance_carry(ChunkScratch<T>& s, const Chunk<T>& c, Carry<T>& a, bool masked, int64_t C,
                   const HigherOrderDims& d) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim, q_ld = d.heads * Dk, v_ld = d.heads * Dv, L = c.L;
    gemm<T>(true, false, Dk, Dk, L, T(1), c.k, q_ld, c.k, q_ld, T(0), s.key_gram.data(), Dk);
    if (masked) {
        // G_B = Σ_i k_i k_iᵀ C_{B,i−1} = Kᵀ (X V), X = (K Qᵀ) strictly lower; the carry's C adds (Kᵀ K) C.
        gemm<T>(false, true, L, L, Dk, T(1), c.k, q_ld, c.q, q_ld, T(0), s.kq.data(), C);
        keep_lower(s.kq.data(), L, C, false);
        gemm<T>(false, false, L, Dv, L, T(1), s.kq.data(), C, c.v, v_ld, T(0), s.kc.data(), Dv);
        gemm<T>(true, false, Dk, Dv, L, T(1), c.k, q_ld, s.kc.data(), Dv, T(1), a.G.data(), Dv);
        gemm<T>(false, false, Dk, Dv, Dk, T(1), s.key_gram.data(), Dk, a.C.data(), Dv, T(1), a.G.data(), Dv);
    }
    for (size_t i = 0; i < a.S.size(); ++i) a.S[i] += s.key_gram[i];
    gemm<T>(true, false, Dk, Dv, L, T(1), c.q, q_ld, c.v, v_ld, T(1), a.C.data(), Dv);
}

}  // namespace

template <typename T>
void higher_order_attention_recurrent_forward(T* out, Moments<T*> final_state, const T* q, const T* k, const T* v,
                                              Moments<const T*> initial_state, bool masked, double scale,
                                              const HigherOrderDims& d, std::span<const int64_t> cu_seqlens) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim, H = d.heads, q_ld = H * Dk, v_ld = H * Dv;
    const std::vector<Sequence> sequences = sequences_of(d.batch, d.seq_len, cu_seqlens);
    const int64_t pairs = int64_t(sequences.size()) * H;
#pragma omp parallel if (worth_threads(pairs, d))
    {
        Carry<T> a(Dk, Dv);
        std::vector<T> key_read(static_cast<size_t>(Dv)), query_s(static_cast<size_t>(Dk));
#pragma omp for schedule(dynamic, 1)
        for (int64_t pair = 0; pair < pairs; ++pair) {
            const Sequence& seq = sequences[size_t(pair / H)];
            const SliceOffsets off = offsets_of(d, seq, pair % H);
            a.load(initial_state, off);
            T *S = a.S.data(), *Cm = a.C.data(), *G = a.G.data();
            for (int64_t t = 0; t < seq.length; ++t) {
                const T *qt = q + off.qk + t * q_ld, *kt = k + off.qk + t * q_ld, *vt = v + off.vo + t * v_ld;
                // §8.2 order: G reads C_{t−1}, so it is updated before C.
                if (masked) {
                    std::fill(key_read.begin(), key_read.end(), T(0));  // k_tᵀ C_{t−1}
                    for (int64_t r = 0; r < Dk; ++r)
                        for (int64_t j = 0; j < Dv; ++j) key_read[size_t(j)] += kt[r] * Cm[r * Dv + j];
                    for (int64_t r = 0; r < Dk; ++r)
                        for (int64_t j = 0; j < Dv; ++j) G[r * Dv + j] += kt[r] * key_read[size_t(j)];
                }
                for (int64_t r = 0; r < Dk; ++r)
                    for (int64_t c = 0; c < Dk; ++c) S[r * Dk + c] += kt[r] * kt[c];
                for (int64_t r = 0; r < Dk; ++r)
                    for (int64_t j = 0; j < Dv; ++j) Cm[r * Dv + j] += qt[r] * vt[j];
                // o = (q_tᵀ S) C − q_tᵀ G: never form S C (O(Dk²·Dv)).
                std::fill(query_s.begin(), query_s.end(), T(0));
                for (int64_t r = 0; r < Dk; ++r)
                    for (int64_t c = 0; c < Dk; ++c) query_s[size_t(c)] += qt[r] * S[r * Dk + c];
                T* ot = out + off.vo + t * v_ld;
                std::fill(ot, ot + Dv, T(0));
                for (int64_t r = 0; r < Dk; ++r)
                    for (int64_t j = 0; j < Dv; ++j) ot[j] += query_s[size_t(r)] * Cm[r * Dv + j];
                if (masked)
                    for (int64_t r = 0; r < Dk; ++r)
                        for (int64_t j = 0; j < Dv; ++j) ot[j] -= qt[r] * G[r * Dv + j];
                for (int64_t j = 0; j < Dv; ++j) ot[j] *= T(scale);
            }
            a.store(final_state, off);
        }
    }
}

template <typename T>
void higher_order_attention_chunkwise_forward(T* out, Moments<T*> final_state, const T* q, const T* k, const T* v,
                                              Moments<const T*> initial_state, bool masked, double scale,
                                              int64_t chunk_size, const HigherOrderDims& d,
                                              std::span<const int64_t> cu_seqlens) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim, H = d.heads, q_ld = H * Dk, v_ld = H * Dv;
    const std::vector<Sequence> sequences = sequences_of(d.batch, d.seq_len, cu_seqlens);
    const int64_t pairs = int64_t(sequences.size()) * H;
    const int64_t C = std::min(chunk_size, longest(sequences));
#pragma omp parallel if (worth_threads(pairs, d))
    {
        Carry<T> a(Dk, Dv);
        ChunkScratch<T> s(C, Dk, Dv, false);
#pragma omp for schedule(dynamic, 1)
        for (int64_t pair = 0; pair < pairs; ++pair) {
            const Sequence& seq = sequences[size_t(pair / H)];
            const SliceOffsets off = offsets_of(d, seq, pair % H);
            a.load(initial_state, off);
            for (int64_t t0 = 0; t0 < seq.length; t0 += C) {
                const Chunk<T> c{q + off.qk + t0 * q_ld, k + off.qk + t0 * q_ld, v + off.vo + t0 * v_ld,
                                 std::min(C, seq.length - t0)};
                chunk_scores(s, c, a, masked, C, d);
                chunk_output(s, c, out + off.vo + t0 * v_ld, masked, scale, C, d);
                advance_carry(s, c, a, masked, C, d);
            }
            a.store(final_state, off);
        }
    }
}

// Gradients per chunk, walked from last to first with (dS, dC, dG) = ∂loss/∂(carry after the chunk) and
// dO' = scale · dO, dP = (dO' Vᵀ) ⊙ L, R = S C − G (masked) or S C:
//   output Q R:        dQ += dO' Rᵀ;  dR = Qᵀ dO' → dS_A += dR Cᵀ, dC_A += Sᵀ dR, dG_A −= dR (masked)
//   scores P V:        dV += Pᵀ dO'
//   Q S Qᵀ:            dQ += dP (Q Sᵀ) + dPᵀ (Q S);  dS_A += Qᵀ dP Q
//   masked W Wᵀ:       dW = (dP + dPᵀ) W
//   unmasked W (KQᵀ):  dW = dP (K Qᵀ)ᵀ + dO' (K C)ᵀ; d(KQᵀ) = Wᵀ dP → dK += · Q, dQ += ·ᵀ K;
//                      d(K C) = Wᵀ dO' → dK += · Cᵀ, dC_A += Kᵀ ·
//   W = QKᵀ ⊙ L:       dQ += (dW ⊙ L) K;  dK += (dW ⊙ L)ᵀ Q
//   carry update:      dS_A += dS, dC_A += dC, dG_A += dG;  dQ += V dCᵀ, dV += Q dC;
//                      S_B = Kᵀ K with dS_B = dS + dG Cᵀ (masked): dK += K (dS_B + dS_Bᵀ);
//                      masked: dC_A += S_B dG;  Y = X V: dK += Y dGᵀ, dY = K dG, dV += Xᵀ dY,
//                      dX = (dY Vᵀ) ⊙ strictly lower: dK += dX Q, dQ += dXᵀ K.
// The carries before every chunk are recomputed by a forward sweep and kept (per thread).
template <typename T>
void higher_order_attention_chunkwise_backward(T* dq, T* dk, T* dv, Moments<T*> dinitial_state, const T* dout,
                                               Moments<const T*> dfinal_state, const T* q, const T* k, const T* v,
                                               Moments<const T*> initial_state, bool masked, double scale,
                                               int64_t chunk_size, const HigherOrderDims& d,
                                               std::span<const int64_t> cu_seqlens) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim, H = d.heads, q_ld = H * Dk, v_ld = H * Dv;
    const std::vector<Sequence> sequences = sequences_of(d.batch, d.seq_len, cu_seqlens);
    const int64_t pairs = int64_t(sequences.size()) * H;
    const int64_t C = std::min(chunk_size, longest(sequences));
    const int64_t max_chunks = (longest(sequences) + C - 1) / C;
#pragma omp parallel if (worth_threads(pairs, d))
    {
        ChunkScratch<T> s(C, Dk, Dv, true);
        std::vector<Carry<T>> carries(static_cast<size_t>(max_chunks), Carry<T>(Dk, Dv));  // before chunk n
        Carry<T> a(Dk, Dv), adjoint(Dk, Dv), adjoint_prev(Dk, Dv);
#pragma omp for schedule(dynamic, 1)
        for (int64_t pair = 0; pair < pairs; ++pair) {
            const Sequence& seq = sequences[size_t(pair / H)];
            const SliceOffsets off = offsets_of(d, seq, pair % H);
            const int64_t num_chunks = (seq.length + C - 1) / C;
            const auto chunk_at = [&](int64_t n) {
                const int64_t t0 = n * C;
                return Chunk<T>{q + off.qk + t0 * q_ld, k + off.qk + t0 * q_ld, v + off.vo + t0 * v_ld,
                                std::min(C, seq.length - t0)};
            };

            a.load(initial_state, off);
            for (int64_t n = 0; n < num_chunks; ++n) {
                carries[size_t(n)] = a;
                if (n + 1 < num_chunks) advance_carry(s, chunk_at(n), a, masked, C, d);
            }

            adjoint.load(dfinal_state, off);
            for (int64_t n = num_chunks - 1; n >= 0; --n) {
                const Chunk<T> c = chunk_at(n);
                const int64_t t0 = n * C, L = c.L;
                const Carry<T>& carry = carries[size_t(n)];
                T *dqc = dq + off.qk + t0 * q_ld, *dkc = dk + off.qk + t0 * q_ld, *dvc = dv + off.vo + t0 * v_ld;
                T *dos = s.dout_scaled.data(), *dp = s.dscores.data(), *dw = s.dw.data(), *kb = s.key_buffer.data();
                chunk_scores(s, c, carry, masked, C, d);
                for (int64_t i = 0; i < L; ++i)
                    for (int64_t j = 0; j < Dv; ++j) dos[i * Dv + j] = T(scale) * dout[off.vo + (t0 + i) * v_ld + j];
                adjoint_prev = adjoint;  // dS_A += dS, dC_A += dC, dG_A += dG

                // Output through the read-out matrix R.
                gemm<T>(false, true, L, Dk, Dv, T(1), dos, Dv, s.readout.data(), Dv, T(1), dqc, q_ld);
                gemm<T>(true, false, Dk, Dv, L, T(1), c.q, q_ld, dos, Dv, T(0), s.dreadout.data(), Dv);
                gemm<T>(false, true, Dk, Dk, Dv, T(1), s.dreadout.data(), Dv, carry.C.data(), Dv, T(1),
                        adjoint_prev.S.data(), Dk);
                gemm<T>(true, false, Dk, Dv, Dk, T(1), carry.S.data(), Dk, s.dreadout.data(), Dv, T(1),
                        adjoint_prev.C.data(), Dv);
                if (masked)
                    for (size_t i = 0; i < s.dreadout.size(); ++i) adjoint_prev.G[i] -= s.dreadout[i];

                // Scores: dV, then dP = (dO' Vᵀ) ⊙ L through Q S Qᵀ.
                gemm<T>(true, false, L, Dv, L, T(1), s.scores.data(), C, dos, Dv, T(1), dvc, v_ld);
                gemm<T>(false, true, L, L, Dv, T(1), dos, Dv, c.v, v_ld, T(0), dp, C);
                keep_lower(dp, L, C, true);
                gemm<T>(false, false, L, Dk, L, T(1), dp, C, c.q, q_ld, T(0), kb, Dk);  // dP Q
                gemm<T>(false, true, L, Dk, Dk, T(1), kb, Dk, carry.S.data(), Dk, T(1), dqc, q_ld);
                gemm<T>(true, false, Dk, Dk, L, T(1), c.q, q_ld, kb, Dk, T(1), adjoint_prev.S.data(), Dk);
                gemm<T>(true, false, L, Dk, L, T(1), dp, C, s.qs.data(), Dk, T(1), dqc, q_ld);

                // The second-order term, back to dW.
                if (masked) {
                    for (int64_t i = 0; i < L; ++i)
                        for (int64_t j = 0; j < L; ++j) s.dkq[size_t(i * C + j)] = dp[i * C + j] + dp[j * C + i];
                    gemm<T>(false, false, L, L, L, T(1), s.dkq.data(), C, s.w.data(), C, T(0), dw, C);
                } else {
                    T* dkq = s.dkq.data();
                    gemm<T>(false, true, L, L, L, T(1), dp, C, s.kq.data(), C, T(0), dw, C);
                    gemm<T>(false, true, L, L, Dv, T(1), dos, Dv, s.kc.data(), Dv, T(1), dw, C);
                    gemm<T>(true, false, L, L, L, T(1), s.w.data(), C, dp, C, T(0), dkq, C);
                    gemm<T>(false, false, L, Dk, L, T(1), dkq, C, c.q, q_ld, T(1), dkc, q_ld);
                    gemm<T>(true, false, L, Dk, L, T(1), dkq, C, c.k, q_ld, T(1), dqc, q_ld);
                    T* dkey_read = s.dkey_read.data();
                    gemm<T>(true, false, L, Dv, L, T(1), s.w.data(), C, dos, Dv, T(0), dkey_read, Dv);
                    gemm<T>(false, true, L, Dk, Dv, T(1), dkey_read, Dv, carry.C.data(), Dv, T(1), dkc, q_ld);
                    gemm<T>(true, false, Dk, Dv, L, T(1), c.k, q_ld, dkey_read, Dv, T(1), adjoint_prev.C.data(),
                            Dv);
                }
                keep_lower(dw, L, C, true);
                gemm<T>(false, false, L, Dk, L, T(1), dw, C, c.k, q_ld, T(1), dqc, q_ld);
                gemm<T>(true, false, L, Dk, L, T(1), dw, C, c.q, q_ld, T(1), dkc, q_ld);

                // The carry update: C ← C + Qᵀ V.
                gemm<T>(false, true, L, Dk, Dv, T(1), c.v, v_ld, adjoint.C.data(), Dv, T(1), dqc, q_ld);
                gemm<T>(false, false, L, Dv, Dk, T(1), c.q, q_ld, adjoint.C.data(), Dv, T(1), dvc, v_ld);
                // S ← S + Kᵀ K, and (masked) G ← G + Kᵀ (X V) + (Kᵀ K) C.
                T* dsb = s.dkey_gram.data();
                std::copy(adjoint.S.begin(), adjoint.S.end(), dsb);
                if (masked) {
                    gemm<T>(false, true, Dk, Dk, Dv, T(1), adjoint.G.data(), Dv, carry.C.data(), Dv, T(1), dsb, Dk);
                    gemm<T>(true, false, Dk, Dk, L, T(1), c.k, q_ld, c.k, q_ld, T(0), s.key_gram.data(), Dk);
                    gemm<T>(false, false, Dk, Dv, Dk, T(1), s.key_gram.data(), Dk, adjoint.G.data(), Dv, T(1),
                            adjoint_prev.C.data(), Dv);
                    // Y = X V with X = (K Qᵀ) strictly lower.
                    T *x = s.kq.data(), *y = s.kc.data(), *dy = s.dkey_read.data();
                    gemm<T>(false, true, L, L, Dk, T(1), c.k, q_ld, c.q, q_ld, T(0), x, C);
                    keep_lower(x, L, C, false);
                    gemm<T>(false, false, L, Dv, L, T(1), x, C, c.v, v_ld, T(0), y, Dv);
                    gemm<T>(false, true, L, Dk, Dv, T(1), y, Dv, adjoint.G.data(), Dv, T(1), dkc, q_ld);
                    gemm<T>(false, false, L, Dv, Dk, T(1), c.k, q_ld, adjoint.G.data(), Dv, T(0), dy, Dv);
                    gemm<T>(true, false, L, Dv, L, T(1), x, C, dy, Dv, T(1), dvc, v_ld);
                    T* dx = s.dkq.data();
                    gemm<T>(false, true, L, L, Dv, T(1), dy, Dv, c.v, v_ld, T(0), dx, C);
                    keep_lower(dx, L, C, false);
                    gemm<T>(false, false, L, Dk, L, T(1), dx, C, c.q, q_ld, T(1), dkc, q_ld);
                    gemm<T>(true, false, L, Dk, L, T(1), dx, C, c.k, q_ld, T(1), dqc, q_ld);
                }
                // dK += K (dS_B + dS_Bᵀ): S_B = Σ k kᵀ is symmetric in k.
                for (int64_t r = 0; r < Dk; ++r)
                    for (int64_t col = 0; col <= r; ++col) {
                        const T both = dsb[r * Dk + col] + dsb[col * Dk + r];
                        dsb[r * Dk + col] = dsb[col * Dk + r] = both;
                    }
                gemm<T>(false, false, L, Dk, Dk, T(1), c.k, q_ld, dsb, Dk, T(1), dkc, q_ld);
                std::swap(adjoint, adjoint_prev);
            }
            adjoint.add_to(dinitial_state, off);
        }
    }
}

#define LINARCH_INSTANTIATE(T)                                                                                  \
    template void higher_order_attention_recurrent_forward<T>(T*, Moments<T*>, const T*, const T*, const T*,    \
                                                              Moments<const T*>, bool, double,                  \
                                                              const HigherOrderDims&, std::span<const int64_t>); \
    template void higher_order_attention_chunkwise_forward<T>(T*, Moments<T*>, const T*, const T*, const T*,    \
                                                              Moments<const T*>, bool, double, int64_t,         \
                                                              const HigherOrderDims&, std::span<const int64_t>); \
    template void higher_order_attention_chunkwise_backward<T>(                                                 \
        T*, T*, T*, Moments<T*>, const T*, Moments<const T*>, const T*, const T*, const T*, Moments<const T*>,  \
        bool, double, int64_t, const HigherOrderDims&, std::span<const int64_t>);
LINARCH_INSTANTIATE(float)
LINARCH_INSTANTIATE(double)
#undef LINARCH_INSTANTIATE

}  // namespace linarch::cpu
