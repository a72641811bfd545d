// CPU chunkwise linear attention with a vector gate (GLA, mixers.md §4): one log decay per key channel,
//     S_t = Diag(exp(g_t)) S_{t-1} + k_tᵀ v_t,   o_t = scale · q_t S_t,   g_t ∈ R^Dk, g_t ≤ 0.
// Per chunk of L rows, Γ_i = Σ of g over the chunk's rows 0..i (a vector; kept in double):
//     inter  O  = scale · (Q ⊙ exp(Γ)) S_prev
//     intra  P_ij = scale · Σ_c q_ic k_jc exp(Γ_ic − Γ_jc)  (i ≥ j),   O += P V
//     state  S  = Diag(exp(Γ_{L−1})) S_prev + (K ⊙ exp(Γ_{L−1} − Γ))ᵀ V
// The intra term is no plain matmul (the decay depends on the contracted channel c). GLA's secondary
// chunking: sub-chunks of 16 rows; between sub-chunks a GEMM of (q_i exp(Γ_i − Γ_r)) · (k_j exp(Γ_r − Γ_j))
// with the reference row r just before the query sub-chunk (j ≤ r < i, so both exponents are ≤ 0), and
// on the diagonal 16×16 blocks the exact log-space product element by element. No exp of a positive
// number is ever formed, so neither strong decay (underflow to 0, harmless) nor weak decay breaks it.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/linear_attention_internal.hpp"

namespace linarch::cpu::detail {
namespace {

// Rows of a secondary chunk (fla's BC).
constexpr int64_t kSubChunk = 16;

// Per-thread scratch for one chunk of up to C rows, sized once per thread.
template <typename T> struct GatedScratch {
    GatedScratch(int64_t chunk, int64_t key_dim, int64_t value_dim)
        : cumsum(size_t(chunk * key_dim)), into_row(size_t(chunk * key_dim)), to_end(size_t(chunk * key_dim)),
          q_gated(size_t(chunk * key_dim)), k_to_end(size_t(chunk * key_dim)), end_decay(size_t(key_dim)),
          query_factor(size_t(kSubChunk * key_dim)), q_ref(size_t(kSubChunk * key_dim)),
          key_factor(size_t(chunk * key_dim)), k_ref(size_t(chunk * key_dim)), scores(size_t(chunk * chunk)),
          dscores(size_t(chunk * chunk)), dq_local(size_t(chunk * key_dim)), dk_local(size_t(chunk * key_dim)),
          product(size_t(chunk * std::max(key_dim, value_dim))), chunk(chunk), key_dim(key_dim) {}
    std::vector<double> cumsum;      // Γ [L, Dk]
    std::vector<T> into_row, to_end;  // exp(Γ), exp(Γ_{L−1} − Γ) [L, Dk]
    std::vector<T> q_gated, k_to_end;  // Q ⊙ exp(Γ), K ⊙ exp(Γ_{L−1} − Γ) [L, Dk]
    std::vector<T> end_decay;          // exp(Γ_{L−1}) [Dk]
    std::vector<T> query_factor, q_ref;  // exp(Γ_i − Γ_r), q_i ⊙ that, for the query sub-chunk [16, Dk]
    std::vector<T> key_factor, k_ref;    // exp(Γ_r − Γ_j), k_j ⊙ that, for the rows before it [L, Dk]
    std::vector<T> scores, dscores;      // P, dP [L, L] (leading dim C)
    std::vector<T> dq_local, dk_local;   // this chunk's dq, dk [L, Dk]
    std::vector<T> product;              // a GEMM result before its element-wise factor [L, max(Dk, Dv)]
    int64_t chunk, key_dim;
};

// Γ of the chunk and the factors every term uses. gate: g at the chunk's row 0, rows ld apart.
template <typename T> void set_chunk(GatedScratch<T>& sc, const T* q_chunk, const T* k_chunk, int64_t q_ld,
                                     const T* gate, int64_t ld, int64_t rows) {
    const int64_t Dk = sc.key_dim;
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t c = 0; c < Dk; ++c)
            sc.cumsum[size_t(i * Dk + c)] =
                (i > 0 ? sc.cumsum[size_t((i - 1) * Dk + c)] : 0.0) + double(gate[i * ld + c]);
    const double* last = sc.cumsum.data() + (rows - 1) * Dk;
    for (int64_t c = 0; c < Dk; ++c) sc.end_decay[size_t(c)] = std::exp(T(last[c]));
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t c = 0; c < Dk; ++c) {
            const size_t at = size_t(i * Dk + c);
            sc.into_row[at] = std::exp(T(sc.cumsum[at]));
            sc.to_end[at] = std::exp(T(last[c] - sc.cumsum[at]));
            sc.q_gated[at] = q_chunk[i * q_ld + c] * sc.into_row[at];
            sc.k_to_end[at] = k_chunk[i * q_ld + c] * sc.to_end[at];
        }
}

// For the query sub-chunk [a0, a1) (a0 > 0), reference row r = a0 − 1:
//   query_factor[i − a0] = exp(Γ_i − Γ_r),  q_ref = q_i ⊙ query_factor   (i in [a0, a1))
//   key_factor[j]        = exp(Γ_r − Γ_j),  k_ref = k_j ⊙ key_factor     (j < a0)
template <typename T> void set_reference(GatedScratch<T>& sc, const T* q_chunk, const T* k_chunk, int64_t q_ld,
                                         int64_t a0, int64_t a1) {
    const int64_t Dk = sc.key_dim;
    const double* ref = sc.cumsum.data() + (a0 - 1) * Dk;
    for (int64_t i = a0; i < a1; ++i)
        for (int64_t c = 0; c < Dk; ++c) {
            const size_t at = size_t((i - a0) * Dk + c);
            sc.query_factor[at] = std::exp(T(sc.cumsum[size_t(i * Dk + c)] - ref[c]));
            sc.q_ref[at] = q_chunk[i * q_ld + c] * sc.query_factor[at];
        }
    for (int64_t j = 0; j < a0; ++j)
        for (int64_t c = 0; c < Dk; ++c) {
            const size_t at = size_t(j * Dk + c);
            sc.key_factor[at] = std::exp(T(ref[c] - sc.cumsum[at]));
            sc.k_ref[at] = k_chunk[j * q_ld + c] * sc.key_factor[at];
        }
}

// scores[L, L] = P: lower triangle (diagonal included) as above, zeros above it.
template <typename T> void intra_scores(GatedScratch<T>& sc, const T* q_chunk, const T* k_chunk, int64_t q_ld,
                                        int64_t rows, double scale) {
    const int64_t Dk = sc.key_dim, C = sc.chunk;
    T* scores = sc.scores.data();
    for (int64_t a0 = 0; a0 < rows; a0 += kSubChunk) {
        const int64_t a1 = std::min(a0 + kSubChunk, rows);
        if (a0 > 0) {
            set_reference(sc, q_chunk, k_chunk, q_ld, a0, a1);
            gemm<T>(false, true, a1 - a0, a0, Dk, T(scale), sc.q_ref.data(), Dk, sc.k_ref.data(), Dk, T(0),
                    scores + a0 * C, C);
        }
        for (int64_t i = a0; i < a1; ++i) {
            const double* gi = sc.cumsum.data() + i * Dk;
            for (int64_t j = a0; j <= i; ++j) {
                const double* gj = sc.cumsum.data() + j * Dk;
                T sum = 0;
                for (int64_t c = 0; c < Dk; ++c)
                    sum += q_chunk[i * q_ld + c] * k_chunk[j * q_ld + c] * std::exp(T(gi[c] - gj[c]));
                scores[i * C + j] = T(scale) * sum;
            }
            for (int64_t j = i + 1; j < rows; ++j) scores[i * C + j] = T(0);
        }
    }
}

// Through P: dq_local += scale · Σ_j dP_ij k_j ⊙ exp(Γ_i − Γ_j),  dk_local += scale · Σ_i dP_ij q_i ⊙
// exp(Γ_i − Γ_j), with dP = dscores (zero above the diagonal), split as in intra_scores.
template <typename T> void intra_gradients(GatedScratch<T>& sc, const T* q_chunk, const T* k_chunk, int64_t q_ld,
                                           int64_t rows, double scale) {
    const int64_t Dk = sc.key_dim, C = sc.chunk;
    const T* dscores = sc.dscores.data();
    T *dq = sc.dq_local.data(), *dk = sc.dk_local.data(), *product = sc.product.data();
    for (int64_t a0 = 0; a0 < rows; a0 += kSubChunk) {
        const int64_t a1 = std::min(a0 + kSubChunk, rows), m = a1 - a0;
        if (a0 > 0) {
            set_reference(sc, q_chunk, k_chunk, q_ld, a0, a1);
            gemm<T>(false, false, m, Dk, a0, T(scale), dscores + a0 * C, C, sc.k_ref.data(), Dk, T(0), product, Dk);
            for (int64_t x = 0; x < m * Dk; ++x) dq[a0 * Dk + x] += product[x] * sc.query_factor[size_t(x)];
            gemm<T>(true, false, a0, Dk, m, T(scale), dscores + a0 * C, C, sc.q_ref.data(), Dk, T(0), product, Dk);
            for (int64_t x = 0; x < a0 * Dk; ++x) dk[x] += product[x] * sc.key_factor[size_t(x)];
        }
        for (int64_t i = a0; i < a1; ++i) {
            const double* gi = sc.cumsum.data() + i * Dk;
            for (int64_t j = a0; j <= i; ++j) {
                const double* gj = sc.cumsum.data() + j * Dk;
                const T dp = T(scale) * dscores[i * C + j];
                for (int64_t c = 0; c < Dk; ++c) {
                    const T w = dp * std::exp(T(gi[c] - gj[c]));
                    dq[i * Dk + c] += w * k_chunk[j * q_ld + c];
                    dk[j * Dk + c] += w * q_chunk[i * q_ld + c];
                }
            }
        }
    }
}

// S = Diag(exp(Γ_{L−1})) S + (K ⊙ exp(Γ_{L−1} − Γ))ᵀ V
template <typename T> void advance_state(T* state, const GatedScratch<T>& sc, const T* v_chunk, int64_t v_ld,
                                         int64_t rows, int64_t value_dim) {
    for (int64_t c = 0; c < sc.key_dim; ++c)
        for (int64_t e = 0; e < value_dim; ++e) state[c * value_dim + e] *= sc.end_decay[size_t(c)];
    gemm<T>(true, false, sc.key_dim, value_dim, rows, T(1), sc.k_to_end.data(), sc.key_dim, v_chunk, v_ld, T(1),
            state, value_dim);
}

}  // namespace

// q,k [B,T,H,Dk]  v,out [B,T,H,Dv]  states [N,H,Dk,Dv]  log_gate [B,T,H,Dk]
template <typename T>
void gated_chunkwise_forward(T* out, T* final_state, const T* q, const T* k, const T* v, const T* initial_state,
                             const T* log_gate, double scale, int64_t chunk_size, const LinearAttentionDims& d) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim, q_ld = d.heads * Dk, v_ld = d.heads * Dv;
    const int64_t g_ld = gate_ld(d, GateKind::vector);
    const int64_t C = std::min(chunk_size, d.seq_len);
#pragma omp parallel if (worth_threads(d))
    {
        GatedScratch<T> sc(C, Dk, Dv);
        std::vector<T> state(static_cast<size_t>(Dk * Dv));
#pragma omp for schedule(dynamic, 1)
        for (int64_t pair = 0; pair < d.num_seqs * d.heads; ++pair) {
            const Slice s = slice_of(d, pair, GateKind::vector);
            if (initial_state) std::copy_n(initial_state + s.state, Dk * Dv, state.begin());
            else std::fill(state.begin(), state.end(), T(0));
            for (int64_t t0 = 0; t0 < s.length; t0 += C) {
                const int64_t L = std::min(C, s.length - t0);
                const T *qc = q + s.qk + t0 * q_ld, *kc = k + s.qk + t0 * q_ld, *vc = v + s.vo + t0 * v_ld;
                T* oc = out + s.vo + t0 * v_ld;
                set_chunk(sc, qc, kc, q_ld, log_gate + s.gate + t0 * g_ld, g_ld, L);
                gemm<T>(false, false, L, Dv, Dk, T(scale), sc.q_gated.data(), Dk, state.data(), Dv, T(0), oc, v_ld);
                intra_scores(sc, qc, kc, q_ld, L, scale);
                gemm<T>(false, false, L, Dv, L, T(1), sc.scores.data(), C, vc, v_ld, T(1), oc, v_ld);
                advance_state(state.data(), sc, vc, v_ld, L, Dv);
            }
            if (final_state) std::copy_n(state.begin(), Dk * Dv, final_state + s.state);
        }
    }
}

// Per chunk, walked from last to first with dS = ∂loss/∂S (state after the chunk):
//   dP = dO Vᵀ (lower triangle)          dV += Pᵀ dO + (K ⊙ exp(Γ_{L−1} − Γ)) dS
//   dQ += intra (intra_gradients) + scale · (dO S_prevᵀ) ⊙ exp(Γ)
//   dK += intra (intra_gradients) + (V dSᵀ) ⊙ exp(Γ_{L−1} − Γ)
//   dS_prev = Diag(exp(Γ_{L−1})) dS + scale · (Q ⊙ exp(Γ))ᵀ dO
// Gate gradient: q and k enter only as q_t ⊙ exp(G_t) and k_t ⊙ exp(−G_t) (G the cumulative log
// decay), besides the final state's Diag(exp(G_T)) factor, so per channel ∂loss/∂G_t = q_t ⊙ dq_t −
// k_t ⊙ dk_t (+ Σ_e dS_T ⊙ S_T at the last token), and dg_t = Σ_{u ≥ t} ∂loss/∂G_u (fla's chunk_gla
// backward). The sweep runs backwards, so the reverse cumsum accumulates as it goes.
template <typename T>
void gated_chunkwise_backward(T* dq, T* dk, T* dv, T* dinitial_state, T* dlog_gate, const T* dout,
                              const T* dfinal_state, const T* q, const T* k, const T* v, const T* initial_state,
                              const T* log_gate, double scale, int64_t chunk_size, const LinearAttentionDims& d) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim, q_ld = d.heads * Dk, v_ld = d.heads * Dv;
    const int64_t g_ld = gate_ld(d, GateKind::vector);
    const int64_t C = std::min(chunk_size, d.seq_len);
    const int64_t max_chunks = (d.seq_len + C - 1) / C;
    const int64_t state_size = Dk * Dv;
#pragma omp parallel if (worth_threads(d))
    {
        GatedScratch<T> sc(C, Dk, Dv);
        std::vector<T> states(static_cast<size_t>(max_chunks * state_size));  // states[n] = S before chunk n
        std::vector<T> state(static_cast<size_t>(state_size)), dstate(static_cast<size_t>(state_size));
        std::vector<double> gate_acc(static_cast<size_t>(Dk));  // Σ_{u > current row} ∂loss/∂G_u
#pragma omp for schedule(dynamic, 1)
        for (int64_t pair = 0; pair < d.num_seqs * d.heads; ++pair) {
            const Slice s = slice_of(d, pair, GateKind::vector);
            const int64_t num_chunks = (s.length + C - 1) / C;

            // Forward sweep: the state each chunk reads, and the final state.
            if (initial_state) std::copy_n(initial_state + s.state, state_size, state.begin());
            else std::fill(state.begin(), state.end(), T(0));
            for (int64_t n = 0; n < num_chunks; ++n) {
                const int64_t t0 = n * C, L = std::min(C, s.length - t0);
                std::copy(state.begin(), state.end(), states.begin() + n * state_size);
                set_chunk(sc, q + s.qk + t0 * q_ld, k + s.qk + t0 * q_ld, q_ld, log_gate + s.gate + t0 * g_ld, g_ld,
                          L);
                advance_state(state.data(), sc, v + s.vo + t0 * v_ld, v_ld, L, Dv);
            }

            // Backward sweep.
            if (dfinal_state) std::copy_n(dfinal_state + s.state, state_size, dstate.begin());
            else std::fill(dstate.begin(), dstate.end(), T(0));
            for (int64_t c = 0; c < Dk; ++c) {
                double sum = 0;
                for (int64_t e = 0; e < Dv; ++e)
                    sum += double(dstate[size_t(c * Dv + e)]) * double(state[size_t(c * Dv + e)]);
                gate_acc[size_t(c)] = sum;
            }
            for (int64_t n = num_chunks - 1; n >= 0; --n) {
                const int64_t t0 = n * C, L = std::min(C, s.length - t0);
                const T *qc = q + s.qk + t0 * q_ld, *kc = k + s.qk + t0 * q_ld;
                const T *vc = v + s.vo + t0 * v_ld, *doc = dout + s.vo + t0 * v_ld;
                T* dvc = dv + s.vo + t0 * v_ld;
                const T* state_prev = states.data() + n * state_size;
                set_chunk(sc, qc, kc, q_ld, log_gate + s.gate + t0 * g_ld, g_ld, L);
                std::fill_n(sc.dq_local.begin(), L * Dk, T(0));
                std::fill_n(sc.dk_local.begin(), L * Dk, T(0));
                T* product = sc.product.data();

                // Intra-chunk term O = P V (P recomputed, not stored).
                intra_scores(sc, qc, kc, q_ld, L, scale);
                T* dscores = sc.dscores.data();
                gemm<T>(false, true, L, L, Dv, T(1), doc, v_ld, vc, v_ld, T(0), dscores, C);
                for (int64_t i = 0; i < L; ++i) std::fill(dscores + i * C + i + 1, dscores + i * C + L, T(0));
                gemm<T>(true, false, L, Dv, L, T(1), sc.scores.data(), C, doc, v_ld, T(1), dvc, v_ld);
                intra_gradients(sc, qc, kc, q_ld, L, scale);

                // State written by this chunk: dS flows into its keys and values.
                gemm<T>(false, false, L, Dv, Dk, T(1), sc.k_to_end.data(), Dk, dstate.data(), Dv, T(1), dvc, v_ld);
                gemm<T>(false, true, L, Dk, Dv, T(1), vc, v_ld, dstate.data(), Dv, T(0), product, Dk);
                for (int64_t x = 0; x < L * Dk; ++x) sc.dk_local[size_t(x)] += product[x] * sc.to_end[size_t(x)];

                // Inter-chunk term O = scale · (Q ⊙ exp(Γ)) S_prev: into dQ and dS_prev (dstate last).
                gemm<T>(false, true, L, Dk, Dv, T(scale), doc, v_ld, state_prev, Dv, T(0), product, Dk);
                for (int64_t x = 0; x < L * Dk; ++x) sc.dq_local[size_t(x)] += product[x] * sc.into_row[size_t(x)];
                for (int64_t c = 0; c < Dk; ++c)
                    for (int64_t e = 0; e < Dv; ++e) dstate[size_t(c * Dv + e)] *= sc.end_decay[size_t(c)];
                gemm<T>(true, false, Dk, Dv, L, T(scale), sc.q_gated.data(), Dk, doc, v_ld, T(1), dstate.data(), Dv);

                // The chunk's dq/dk are complete: add them to the caller's; walk the gate's reverse cumsum.
                for (int64_t i = L - 1; i >= 0; --i)
                    for (int64_t c = 0; c < Dk; ++c) {
                        const T dqi = sc.dq_local[size_t(i * Dk + c)], dki = sc.dk_local[size_t(i * Dk + c)];
                        dq[s.qk + (t0 + i) * q_ld + c] += dqi;
                        dk[s.qk + (t0 + i) * q_ld + c] += dki;
                        if (!dlog_gate) continue;
                        gate_acc[size_t(c)] +=
                            double(qc[i * q_ld + c]) * double(dqi) - double(kc[i * q_ld + c]) * double(dki);
                        dlog_gate[s.gate + (t0 + i) * g_ld + c] += T(gate_acc[size_t(c)]);
                    }
            }
            if (dinitial_state)
                for (int64_t i = 0; i < state_size; ++i) dinitial_state[s.state + i] += dstate[size_t(i)];
        }
    }
}

#define LINARCH_INSTANTIATE(T)                                                                                 \
    template void gated_chunkwise_forward<T>(T*, T*, const T*, const T*, const T*, const T*, const T*, double, \
                                             int64_t, const LinearAttentionDims&);                             \
    template void gated_chunkwise_backward<T>(T*, T*, T*, T*, T*, const T*, const T*, const T*, const T*,      \
                                              const T*, const T*, const T*, double, int64_t,                   \
                                              const LinearAttentionDims&);
LINARCH_INSTANTIATE(float)
LINARCH_INSTANTIATE(double)
#undef LINARCH_INSTANTIATE

}  // namespace linarch::cpu::detail
