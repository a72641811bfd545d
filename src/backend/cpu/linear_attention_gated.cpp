// CPU chunkwise linear attention with a vector gate (GLA, mixers.md §4): one log decay per key channel,
//     S_t = Diag(exp(g_t)) S_{t-1} + k_tᵀ v_t,   o_t = scale · q_t S_t,   g_t ∈ R^Dk, g_t ≤ 0.
// Per chunk of L rows, Γ_i = Σ of g over the chunk's rows 0..i (a vector; kept in double; Γ_{−1} = 0):
//     inter  O  = scale · (Q ⊙ exp(Γ)) S_prev
//     intra  P_ij = scale · Σ_c q_ic k_jc exp(Γ_ic − Γ_jc)  (i ≥ j),   O += P V
//     state  S  = Diag(exp(Γ_{L−1})) S_prev + (K ⊙ exp(Γ_{L−1} − Γ))ᵀ V
// The intra term is no plain matmul (the decay depends on the contracted channel c), but a block of P
// with query rows I and key rows J is one through a reference row r:
//     exp(Γ_i − Γ_j) = exp(Γ_i − Γ_r) · exp(Γ_r − Γ_j),   P_IJ = scale · (Q_I ⊙ exp(Γ_I − Γ_r)) (K_J ⊙ exp(Γ_r − Γ_J))ᵀ
// Both factors must stay in float's range. Below the diagonal (GLA's secondary chunking, fla's BC = 16:
// query sub-chunk [a0, a1), keys before a0, r = a0 − 1) both exponents are ≤ 0, for any decay. A block
// on the diagonal (I = J) puts r in its middle; one factor's exponent is then positive, up to the decay
// over half the block, so it is split only when every exponent stays within ±kMaxSplitExponent. When
// the whole chunk is such a block (the common case: weak or moderate decay), P is one GEMM, and the
// inter and state terms read the same two products Q ⊙ exp(Γ − Γ_r), K ⊙ exp(Γ_r − Γ) with the state
// moved to row r and back (per channel factors exp(Γ_r) and exp(Γ_{L−1} − Γ_r), both ≤ 1): two
// exponentials per element and four GEMMs per chunk, as for a scalar gate. Otherwise the query side is
// referred to the chunk's start and the key side to its end (the formulas above), and P is built per
// 16-row sub-chunk: the block left of it, and its diagonal block, split at its middle row when allowed,
// else (strong decay) the exact element-wise product exp(Γ_ic − Γ_jc) with a vectorised exp. No exp of
// a large positive number is ever formed, so neither strong decay (underflow to 0, harmless) nor weak
// decay breaks it.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "backend/cpu/linear_attention_internal.hpp"
#include "backend/cpu/vector_math.hpp"

namespace linarch::cpu::detail {
namespace {

// Rows of a secondary chunk (fla's BC).
constexpr int64_t kSubChunk = 16;

// Largest |exponent| of a factor of a split diagonal block. A float exp of an argument rounded to
// float has a relative error of ~|x|·2⁻²⁴, so a product of two factors with exponents ±E carries
// ~2E·6e-8 (2e-6 at E = 16) where the direct exp(Γ_i − Γ_j) of nearby rows carries almost none; the
// factors stay within [e⁻¹⁶, e¹⁶], far from float's underflow and overflow.
constexpr double kMaxSplitExponent = 16;

// q and k of some rows referred to reference rows ρ (queries) and σ (keys) of the chunk:
//     query_factor_i = exp(Γ_i − Γ_ρ), q_ref_i = q_i ⊙ that;   key_factor_j = exp(Γ_σ − Γ_j), k_ref_j = k_j ⊙ that
// stored at their chunk rows [L, Dk].
template <typename T> struct Referred {
    Referred(int64_t chunk, int64_t key_dim)
        : query_factor(size_t(chunk * key_dim)), q_ref(size_t(chunk * key_dim)), key_factor(size_t(chunk * key_dim)),
          k_ref(size_t(chunk * key_dim)) {}
    std::vector<T> query_factor, q_ref, key_factor, k_ref;
};

// Per-thread scratch for one chunk of up to C rows, sized once per thread.
template <typename T> struct GatedScratch {
    GatedScratch(int64_t chunk, int64_t key_dim, int64_t value_dim)
        : cumsum(size_t((chunk + 1) * key_dim)), whole(chunk, key_dim), block(chunk, key_dim),
          to_query_ref(size_t(key_dim)), between_refs(size_t(key_dim)), key_ref_to_end(size_t(key_dim)),
          scores(size_t(chunk * chunk)), dscores(size_t(chunk * chunk)), dq_local(size_t(chunk * key_dim)),
          dk_local(size_t(chunk * key_dim)), product(size_t(chunk * std::max(key_dim, value_dim))),
          state_ref(size_t(key_dim * value_dim)), chunk(chunk), key_dim(key_dim) {}
    // Γ_i at row i + 1, row 0 zeros (Γ_{−1}) [L + 1, Dk]
    const double* gamma(int64_t i) const { return cumsum.data() + (i + 1) * key_dim; }

    std::vector<double> cumsum;
    int64_t query_ref = -1, key_ref = 0;  // ρ, σ: the middle row twice, or −1 (the start) and L − 1
    bool split_whole = false;             // ρ = σ: P is one block through them
    Referred<T> whole;                    // the chunk's rows referred to ρ, σ
    Referred<T> block;                    // one block's rows referred to its own reference row
    std::vector<T> to_query_ref, between_refs, key_ref_to_end;  // exp(Γ_ρ), exp(Γ_σ − Γ_ρ), exp(Γ_{L−1} − Γ_σ) [Dk]
    std::vector<T> scores, dscores;      // P, dP [L, L] (leading dim C)
    std::vector<T> dq_local, dk_local;   // this chunk's dq, dk [L, Dk]
    std::vector<T> product;              // a GEMM result before its element-wise factor [L, max(Dk, Dv)]
    std::vector<T> state_ref;            // S_prev moved to row ρ: Diag(exp(Γ_ρ)) S_prev [Dk, Dv]
    int64_t chunk, key_dim;
};

// Largest exponent of the factors of the diagonal block [a0, a1) split at r: Γ is non-increasing, so
// over the block Γ_i − Γ_r ≤ Γ_{a0} − Γ_r and Γ_r − Γ_j ≤ Γ_r − Γ_{a1−1} (and as much below 0).
template <typename T> double split_exponent(const GatedScratch<T>& sc, int64_t a0, int64_t a1, int64_t r) {
    const double *first = sc.gamma(a0), *ref = sc.gamma(r), *last = sc.gamma(a1 - 1);
    double worst = 0;
#pragma omp simd reduction(max : worst)
    for (int64_t c = 0; c < sc.key_dim; ++c) worst = std::max(worst, std::max(first[c] - ref[c], ref[c] - last[c]));
    return worst;
}

// Rows [i0, i1) of the query side (query_factor, q_ref) referred to row ref, or (queries false) rows
// [i0, i1) of the key side (key_factor, k_ref). x: q or k at the chunk's row 0, rows ld apart.
template <typename T> void refer_rows(const GatedScratch<T>& sc, Referred<T>& out, bool queries, const T* x,
                                      int64_t ld, int64_t i0, int64_t i1, int64_t ref) {
    const int64_t Dk = sc.key_dim;
    const double* g_ref = sc.gamma(ref);
    for (int64_t i = i0; i < i1; ++i) {
        const double* gi = sc.gamma(i);
        const T* xi = x + i * ld;
        T* factor = (queries ? out.query_factor : out.key_factor).data() + i * Dk;
        T* referred = (queries ? out.q_ref : out.k_ref).data() + i * Dk;
        if (queries) {
#pragma omp simd
            for (int64_t c = 0; c < Dk; ++c) factor[c] = exp_of(T(gi[c] - g_ref[c]));
        } else {
#pragma omp simd
            for (int64_t c = 0; c < Dk; ++c) factor[c] = exp_of(T(g_ref[c] - gi[c]));
        }
#pragma omp simd
        for (int64_t c = 0; c < Dk; ++c) referred[c] = xi[c] * factor[c];
    }
}

// Γ of the chunk, its reference rows and the chunk's rows referred to them (the query side only when
// q_chunk is given: the backward's forward sweep needs the keys alone). gate: g at the chunk's row 0,
// rows ld apart. The cumsum is in double: a float sum of 64 terms near −13.8 would cost ~1e-5 of the
// exponents' precision.
template <typename T> void set_chunk(GatedScratch<T>& sc, const T* q_chunk, const T* k_chunk, int64_t q_ld,
                                     const T* gate, int64_t ld, int64_t rows) {
    const int64_t Dk = sc.key_dim;
    std::fill_n(sc.cumsum.begin(), Dk, 0.0);
    for (int64_t i = 0; i < rows; ++i) {
        const double* previous = sc.gamma(i - 1);
        double* row = sc.cumsum.data() + (i + 1) * Dk;
        const T* g = gate + i * ld;
#pragma omp simd
        for (int64_t c = 0; c < Dk; ++c) row[c] = previous[c] + double(g[c]);
    }
    const int64_t middle = (rows - 1) / 2;
    sc.split_whole = split_exponent(sc, 0, rows, middle) <= kMaxSplitExponent;
    sc.query_ref = sc.split_whole ? middle : -1;
    sc.key_ref = sc.split_whole ? middle : rows - 1;
    const double *g_query = sc.gamma(sc.query_ref), *g_key = sc.gamma(sc.key_ref), *g_last = sc.gamma(rows - 1);
#pragma omp simd
    for (int64_t c = 0; c < Dk; ++c) {
        sc.to_query_ref[size_t(c)] = exp_of(T(g_query[c]));
        sc.between_refs[size_t(c)] = exp_of(T(g_key[c] - g_query[c]));
        sc.key_ref_to_end[size_t(c)] = exp_of(T(g_last[c] - g_key[c]));
    }
    if (q_chunk) refer_rows(sc, sc.whole, true, q_chunk, q_ld, 0, rows, sc.query_ref);
    refer_rows(sc, sc.whole, false, k_chunk, q_ld, 0, rows, sc.key_ref);
}

// A block of P: query rows [i0, i1), key rows [j0, j1) of the chunk, through reference row ref (see the
// top) with the chunk's own referred rows, or its own, or (a diagonal block under strong decay) element
// by element.
enum class BlockForm { chunk_refs, own_refs, elementwise };
struct Block {
    int64_t i0, i1, j0, j1, ref;
    BlockForm form;
};

// The blocks that make up P's lower triangle (diagonal included) for a chunk of `rows` rows: the whole
// chunk when set_chunk split it, else per 16-row sub-chunk the block left of it (r = a0 − 1: exponents
// ≤ 0) and its diagonal block (split at its middle row when allowed).
template <typename T, typename Visit> void for_each_block(const GatedScratch<T>& sc, int64_t rows, Visit visit) {
    if (sc.split_whole) {
        visit(Block{0, rows, 0, rows, sc.query_ref, BlockForm::chunk_refs});
        return;
    }
    for (int64_t a0 = 0; a0 < rows; a0 += kSubChunk) {
        const int64_t a1 = std::min(a0 + kSubChunk, rows), middle = (a0 + a1 - 1) / 2;
        if (a0 > 0) visit(Block{a0, a1, 0, a0, a0 - 1, BlockForm::own_refs});
        const bool split = split_exponent(sc, a0, a1, middle) <= kMaxSplitExponent;
        visit(Block{a0, a1, a0, a1, middle, split ? BlockForm::own_refs : BlockForm::elementwise});
    }
}

// P_IJ into scores for one block (a split block's GEMM fills its whole rectangle; the caller zeroes
// what lies above the diagonal). An own_refs block refers its rows first (block_gradients reuses them).
template <typename T> void block_scores(GatedScratch<T>& sc, const T* q_chunk, const T* k_chunk, int64_t q_ld,
                                        const Block& b, double scale) {
    const int64_t Dk = sc.key_dim, C = sc.chunk;
    T* scores = sc.scores.data();
    if (b.form != BlockForm::elementwise) {
        if (b.form == BlockForm::own_refs) {
            refer_rows(sc, sc.block, true, q_chunk, q_ld, b.i0, b.i1, b.ref);
            refer_rows(sc, sc.block, false, k_chunk, q_ld, b.j0, b.j1, b.ref);
        }
        const Referred<T>& f = b.form == BlockForm::own_refs ? sc.block : sc.whole;
        gemm<T>(false, true, b.i1 - b.i0, b.j1 - b.j0, Dk, T(scale), f.q_ref.data() + b.i0 * Dk, Dk,
                f.k_ref.data() + b.j0 * Dk, Dk, T(0), scores + b.i0 * C + b.j0, C);
        return;
    }
    // Two loops per pair: GCC vectorises the exp loop, and the reduction once it holds no exp.
    T* k_decayed = sc.product.data();
    for (int64_t i = b.i0; i < b.i1; ++i) {
        const double* gi = sc.gamma(i);
        const T* qi = q_chunk + i * q_ld;
        for (int64_t j = b.j0; j <= i; ++j) {
            const double* gj = sc.gamma(j);
            const T* kj = k_chunk + j * q_ld;
#pragma omp simd
            for (int64_t c = 0; c < Dk; ++c) k_decayed[c] = kj[c] * exp_of(T(gi[c] - gj[c]));
            T sum = 0;
#pragma omp simd reduction(+ : sum)
            for (int64_t c = 0; c < Dk; ++c) sum += qi[c] * k_decayed[c];
            scores[i * C + j] = T(scale) * sum;
        }
    }
}

// dst[x] += product[x] · factor[x] for x < n
template <typename T> void add_product(T* dst, const T* product, const T* factor, int64_t n) {
#pragma omp simd
    for (int64_t x = 0; x < n; ++x) dst[x] += product[x] * factor[x];
}

// Through one block of P: dq_I += scale · dP_IJ (K_J ⊙ exp(Γ_I − Γ_J)),  dk_J += scale · dP_IJᵀ (Q_I ⊙
// exp(Γ_I − Γ_J)) per channel, with dP = dscores (zero above the diagonal). For a split block the
// factor exp(Γ_i − Γ_r) of dq (exp(Γ_r − Γ_j) of dk) comes out of the sum. block_scores must have run.
template <typename T> void block_gradients(GatedScratch<T>& sc, const T* q_chunk, const T* k_chunk, int64_t q_ld,
                                           const Block& b, double scale) {
    const int64_t Dk = sc.key_dim, C = sc.chunk, m = b.i1 - b.i0, n = b.j1 - b.j0;
    const T* dscores = sc.dscores.data();
    T *dq = sc.dq_local.data(), *dk = sc.dk_local.data(), *product = sc.product.data();
    if (b.form != BlockForm::elementwise) {
        const Referred<T>& f = b.form == BlockForm::own_refs ? sc.block : sc.whole;
        gemm<T>(false, false, m, Dk, n, T(scale), dscores + b.i0 * C + b.j0, C, f.k_ref.data() + b.j0 * Dk, Dk,
                T(0), product, Dk);
        add_product(dq + b.i0 * Dk, product, f.query_factor.data() + b.i0 * Dk, m * Dk);
        gemm<T>(true, false, n, Dk, m, T(scale), dscores + b.i0 * C + b.j0, C, f.q_ref.data() + b.i0 * Dk, Dk,
                T(0), product, Dk);
        add_product(dk + b.j0 * Dk, product, f.key_factor.data() + b.j0 * Dk, n * Dk);
        return;
    }
    for (int64_t i = b.i0; i < b.i1; ++i) {
        const double* gi = sc.gamma(i);
        const T* qi = q_chunk + i * q_ld;
        T* dqi = dq + i * Dk;
        for (int64_t j = b.j0; j <= i; ++j) {
            const double* gj = sc.gamma(j);
            const T* kj = k_chunk + j * q_ld;
            T* dkj = dk + j * Dk;
            const T dp = T(scale) * dscores[i * C + j];
#pragma omp simd
            for (int64_t c = 0; c < Dk; ++c) {
                const T w = dp * exp_of(T(gi[c] - gj[c]));
                dqi[c] += w * kj[c];
                dkj[c] += w * qi[c];
            }
        }
    }
}

template <typename T> void zero_above_diagonal(T* matrix, int64_t rows, int64_t ld) {
    for (int64_t i = 0; i < rows; ++i) std::fill(matrix + i * ld + i + 1, matrix + i * ld + rows, T(0));
}

// scores[L, L] = P: lower triangle (diagonal included), zeros above it.
template <typename T> void intra_scores(GatedScratch<T>& sc, const T* q_chunk, const T* k_chunk, int64_t q_ld,
                                        int64_t rows, double scale) {
    for_each_block(sc, rows, [&](const Block& b) { block_scores(sc, q_chunk, k_chunk, q_ld, b, scale); });
    zero_above_diagonal(sc.scores.data(), rows, sc.chunk);
}

// dst[Dk, Dv] = Diag(factor) src (dst may be src)
template <typename T> void scale_rows(T* dst, const T* src, const std::vector<T>& factor, int64_t value_dim) {
    for (size_t c = 0; c < factor.size(); ++c) {
        const T f = factor[c];
#pragma omp simd
        for (int64_t e = 0; e < value_dim; ++e) dst[int64_t(c) * value_dim + e] = f * src[int64_t(c) * value_dim + e];
    }
}

// From S_prev moved to ρ (state = Diag(exp(Γ_ρ)) S_prev) to the state after the chunk:
//     S = Diag(exp(Γ_{L−1} − Γ_σ)) (Diag(exp(Γ_σ − Γ_ρ)) state + (K ⊙ exp(Γ_σ − Γ))ᵀ V)
// (with ρ = −1, σ = L − 1: Diag(exp(Γ_{L−1})) S_prev + (K ⊙ exp(Γ_{L−1} − Γ))ᵀ V).
template <typename T> void advance_state(T* state, const GatedScratch<T>& sc, const T* v_chunk, int64_t v_ld,
                                         int64_t rows, int64_t value_dim) {
    scale_rows(state, state, sc.between_refs, value_dim);
    gemm<T>(true, false, sc.key_dim, value_dim, rows, T(1), sc.whole.k_ref.data(), sc.key_dim, v_chunk, v_ld, T(1),
            state, value_dim);
    scale_rows(state, state, sc.key_ref_to_end, value_dim);
}

// One chunk of one (sequence, head) pair: rows t0.. of its slices.
struct ChunkRows {
    ChunkRows(const LinearAttentionDims& d, const Slice& s, int64_t t0, int64_t chunk)
        : rows(std::min(chunk, s.length - t0)), qk(s.qk + t0 * d.heads * d.key_dim),
          vo(s.vo + t0 * d.heads * d.value_dim), gate(s.gate + t0 * gate_ld(d, GateKind::vector)) {}
    int64_t rows;
    int64_t qk, vo, gate;  // offsets of row t0 in q/k, v/o and the gate
};

// One chunk of the forward: O = scale · Q_ρ S_ρ + P V, then the state after the chunk (state: S_prev in,
// S out, [Dk, Dv]).
template <typename T> void forward_chunk(GatedScratch<T>& sc, T* state, T* out, const T* q, const T* k, const T* v,
                                         const T* log_gate, double scale, const ChunkRows& r,
                                         const LinearAttentionDims& d) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim, q_ld = d.heads * Dk, v_ld = d.heads * Dv, L = r.rows;
    const T *qc = q + r.qk, *kc = k + r.qk, *vc = v + r.vo;
    T* oc = out + r.vo;
    set_chunk(sc, qc, kc, q_ld, log_gate + r.gate, gate_ld(d, GateKind::vector), L);
    scale_rows(state, state, sc.to_query_ref, Dv);
    gemm<T>(false, false, L, Dv, Dk, T(scale), sc.whole.q_ref.data(), Dk, state, Dv, T(0), oc, v_ld);
    intra_scores(sc, qc, kc, q_ld, L, scale);
    gemm<T>(false, false, L, Dv, L, T(1), sc.scores.data(), sc.chunk, vc, v_ld, T(1), oc, v_ld);
    advance_state(state, sc, vc, v_ld, L, Dv);
}

// Per chunk, walked from last to first with dS = ∂loss/∂S (state after the chunk), in the referred
// form of the forward (S_ρ = Diag(exp(Γ_ρ)) S_prev, dS_σ = Diag(exp(Γ_{L−1} − Γ_σ)) dS, Q_ρ, K_σ the
// referred q and k, F_Q, F_K their factors):
//   dP = dO Vᵀ (lower triangle)     dV += Pᵀ dO + K_σ dS_σ
//   dQ += intra (block_gradients) + scale · (dO S_ρᵀ) ⊙ F_Q
//   dK += intra (block_gradients) + (V dS_σᵀ) ⊙ F_K
//   dS_prev = Diag(exp(Γ_ρ)) (Diag(exp(Γ_σ − Γ_ρ)) dS_σ + scale · Q_ρᵀ dO)
// Gate gradient: q and k enter only as q_t ⊙ exp(G_t) and k_t ⊙ exp(−G_t) (G the cumulative log
// decay), besides the final state's Diag(exp(G_T)) factor, so per channel ∂loss/∂G_t = q_t ⊙ dq_t −
// k_t ⊙ dk_t (+ Σ_e dS_T ⊙ S_T at the last token), and dg_t = Σ_{u ≥ t} ∂loss/∂G_u (fla's chunk_gla
// backward). The sweep runs backwards, so the reverse cumsum accumulates as it goes (gate_acc [Dk]:
// the sum over the rows after the current one).
template <typename T>
void backward_chunk(GatedScratch<T>& sc, T* dstate, double* gate_acc, T* dq, T* dk, T* dv, T* dlog_gate,
                    const T* dout, const T* state_prev, const T* q, const T* k, const T* v, const T* log_gate,
                    double scale, const ChunkRows& r, const LinearAttentionDims& d) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim, q_ld = d.heads * Dk, v_ld = d.heads * Dv, L = r.rows;
    const int64_t C = sc.chunk;
    const T *qc = q + r.qk, *kc = k + r.qk, *vc = v + r.vo, *doc = dout + r.vo;
    T* dvc = dv + r.vo;
    set_chunk(sc, qc, kc, q_ld, log_gate + r.gate, gate_ld(d, GateKind::vector), L);
    scale_rows(sc.state_ref.data(), state_prev, sc.to_query_ref, Dv);
    std::fill_n(sc.dq_local.begin(), L * Dk, T(0));
    std::fill_n(sc.dk_local.begin(), L * Dk, T(0));
    T* product = sc.product.data();

    // Intra-chunk term O = P V (P recomputed block by block, not stored).
    T* dscores = sc.dscores.data();
    gemm<T>(false, true, L, L, Dv, T(1), doc, v_ld, vc, v_ld, T(0), dscores, C);
    zero_above_diagonal(dscores, L, C);
    for_each_block(sc, L, [&](const Block& b) {
        block_scores(sc, qc, kc, q_ld, b, scale);
        block_gradients(sc, qc, kc, q_ld, b, scale);
    });
    zero_above_diagonal(sc.scores.data(), L, C);
    gemm<T>(true, false, L, Dv, L, T(1), sc.scores.data(), C, doc, v_ld, T(1), dvc, v_ld);

    // State written by this chunk: dS flows into its keys and values.
    scale_rows(dstate, dstate, sc.key_ref_to_end, Dv);
    gemm<T>(false, false, L, Dv, Dk, T(1), sc.whole.k_ref.data(), Dk, dstate, Dv, T(1), dvc, v_ld);
    gemm<T>(false, true, L, Dk, Dv, T(1), vc, v_ld, dstate, Dv, T(0), product, Dk);
    add_product(sc.dk_local.data(), product, sc.whole.key_factor.data(), L * Dk);

    // Inter-chunk term O = scale · Q_ρ S_ρ: into dQ and dS_prev (dstate last).
    gemm<T>(false, true, L, Dk, Dv, T(scale), doc, v_ld, sc.state_ref.data(), Dv, T(0), product, Dk);
    add_product(sc.dq_local.data(), product, sc.whole.query_factor.data(), L * Dk);
    scale_rows(dstate, dstate, sc.between_refs, Dv);
    gemm<T>(true, false, Dk, Dv, L, T(scale), sc.whole.q_ref.data(), Dk, doc, v_ld, T(1), dstate, Dv);
    scale_rows(dstate, dstate, sc.to_query_ref, Dv);

    // The chunk's dq/dk are complete: add them to the caller's; walk the gate's reverse cumsum.
    for (int64_t i = L - 1; i >= 0; --i) {
        const T *dq_row = sc.dq_local.data() + i * Dk, *dk_row = sc.dk_local.data() + i * Dk;
        T *dq_out = dq + r.qk + i * q_ld, *dk_out = dk + r.qk + i * q_ld;
#pragma omp simd
        for (int64_t c = 0; c < Dk; ++c) {
            dq_out[c] += dq_row[c];
            dk_out[c] += dk_row[c];
        }
        if (!dlog_gate) continue;
        const T *qi = qc + i * q_ld, *ki = kc + i * q_ld;
        T* dg_out = dlog_gate + r.gate + i * gate_ld(d, GateKind::vector);
#pragma omp simd
        for (int64_t c = 0; c < Dk; ++c) {
            gate_acc[c] += double(qi[c]) * double(dq_row[c]) - double(ki[c]) * double(dk_row[c]);
            dg_out[c] += T(gate_acc[c]);
        }
    }
}

// The OpenMP loop runs over (sequence, group of its heads), each group walked chunk by chunk with its
// heads in lockstep. A token's heads are adjacent in [B,T,H,D] (one row of H·D values), so a group
// reads each page and neighbouring cache lines together, where one head alone reads a 256-byte piece
// of every 2 KiB row: the whole forward runs 7–12% faster with 8 heads in lockstep than with 1 (B=4,
// T=2048, H=8, d=64, bench/mixers). Groups are as large as leaves ≥ 2 of them per thread (balance);
// the backward keeps the states of all chunks of a group's heads ([size, T/C, Dk, Dv] per thread).
struct HeadGroups {
    explicit HeadGroups(const LinearAttentionDims& dims) : d(dims), size(dims.heads) {
        const int64_t threads = worth_threads(d) ? omp_get_max_threads() : 1;
        while (size > 1 && (d.heads % size != 0 || d.num_seqs * (d.heads / size) < 2 * threads)) --size;
        count = d.num_seqs * (d.heads / size);
    }
    // Head h (0..size−1) of group `item`.
    Slice slice(int64_t item, int64_t h) const {
        const int64_t per_sequence = d.heads / size;
        const int64_t pair = (item / per_sequence) * d.heads + (item % per_sequence) * size + h;
        return slice_of(d, pair, GateKind::vector);
    }
    const LinearAttentionDims& d;
    int64_t size, count;
};

}  // namespace

// q,k [B,T,H,Dk]  v,out [B,T,H,Dv]  states [N,H,Dk,Dv]  log_gate [B,T,H,Dk]
template <typename T>
void gated_chunkwise_forward(T* out, T* final_state, const T* q, const T* k, const T* v, const T* initial_state,
                             const T* log_gate, double scale, int64_t chunk_size, const LinearAttentionDims& d) {
    const int64_t state_size = d.key_dim * d.value_dim, C = std::min(chunk_size, d.seq_len);
    const HeadGroups groups(d);
#pragma omp parallel if (worth_threads(d))
    {
        GatedScratch<T> sc(C, d.key_dim, d.value_dim);
        std::vector<T> states(static_cast<size_t>(groups.size * state_size));  // [group size, Dk, Dv]
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < groups.count; ++item) {
            for (int64_t h = 0; h < groups.size; ++h) {
                T* state = states.data() + h * state_size;
                if (initial_state) std::copy_n(initial_state + groups.slice(item, h).state, state_size, state);
                else std::fill_n(state, state_size, T(0));
            }
            for (int64_t t0 = 0; t0 < groups.slice(item, 0).length; t0 += C)
                for (int64_t h = 0; h < groups.size; ++h)
                    forward_chunk(sc, states.data() + h * state_size, out, q, k, v, log_gate, scale,
                                  ChunkRows(d, groups.slice(item, h), t0, C), d);
            if (final_state)
                for (int64_t h = 0; h < groups.size; ++h)
                    std::copy_n(states.data() + h * state_size, state_size, final_state + groups.slice(item, h).state);
        }
    }
}

// A forward sweep keeps the state before every chunk (states[h, n] for head h of the group, chunk n),
// then the backward sweep walks the chunks from last to first (backward_chunk).
template <typename T>
void gated_chunkwise_backward(T* dq, T* dk, T* dv, T* dinitial_state, T* dlog_gate, const T* dout,
                              const T* dfinal_state, const T* q, const T* k, const T* v, const T* initial_state,
                              const T* log_gate, double scale, int64_t chunk_size, const LinearAttentionDims& d) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim, q_ld = d.heads * Dk, v_ld = d.heads * Dv;
    const int64_t C = std::min(chunk_size, d.seq_len);
    const int64_t max_chunks = (d.seq_len + C - 1) / C;
    const int64_t state_size = Dk * Dv;
    const HeadGroups groups(d);
#pragma omp parallel if (worth_threads(d))
    {
        GatedScratch<T> sc(C, Dk, Dv);
        std::vector<T> states(static_cast<size_t>(groups.size * max_chunks * state_size));  // [size, chunks, Dk, Dv]
        std::vector<T> state(static_cast<size_t>(groups.size * state_size));               // [size, Dk, Dv]
        std::vector<T> dstate(static_cast<size_t>(groups.size * state_size));              // [size, Dk, Dv]
        std::vector<double> gate_acc(static_cast<size_t>(groups.size * Dk));               // [size, Dk]
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < groups.count; ++item) {
            const int64_t num_chunks = (groups.slice(item, 0).length + C - 1) / C;

            // Forward sweep: the state each chunk reads, and the final state.
            for (int64_t h = 0; h < groups.size; ++h) {
                T* s = state.data() + h * state_size;
                if (initial_state) std::copy_n(initial_state + groups.slice(item, h).state, state_size, s);
                else std::fill_n(s, state_size, T(0));
            }
            for (int64_t n = 0; n < num_chunks; ++n)
                for (int64_t h = 0; h < groups.size; ++h) {
                    T* s = state.data() + h * state_size;
                    std::copy_n(s, state_size, states.data() + (h * max_chunks + n) * state_size);
                    const ChunkRows r(d, groups.slice(item, h), n * C, C);
                    set_chunk<T>(sc, nullptr, k + r.qk, q_ld, log_gate + r.gate, gate_ld(d, GateKind::vector), r.rows);
                    scale_rows(s, s, sc.to_query_ref, Dv);
                    advance_state(s, sc, v + r.vo, v_ld, r.rows, Dv);
                }

            // Backward sweep, from dS_T (and its gate term Σ_e dS_T ⊙ S_T).
            for (int64_t h = 0; h < groups.size; ++h) {
                T* ds = dstate.data() + h * state_size;
                const T* s = state.data() + h * state_size;
                if (dfinal_state) std::copy_n(dfinal_state + groups.slice(item, h).state, state_size, ds);
                else std::fill_n(ds, state_size, T(0));
                for (int64_t c = 0; c < Dk; ++c) {
                    double sum = 0;
                    for (int64_t e = 0; e < Dv; ++e) sum += double(ds[c * Dv + e]) * double(s[c * Dv + e]);
                    gate_acc[size_t(h * Dk + c)] = sum;
                }
            }
            for (int64_t n = num_chunks - 1; n >= 0; --n)
                for (int64_t h = 0; h < groups.size; ++h)
                    backward_chunk(sc, dstate.data() + h * state_size, gate_acc.data() + h * Dk, dq, dk, dv, dlog_gate,
                                   dout, states.data() + (h * max_chunks + n) * state_size, q, k, v, log_gate, scale,
                                   ChunkRows(d, groups.slice(item, h), n * C, C), d);
            if (dinitial_state)
                for (int64_t h = 0; h < groups.size; ++h) {
                    T* dinitial = dinitial_state + groups.slice(item, h).state;
                    for (int64_t i = 0; i < state_size; ++i) dinitial[i] += dstate[size_t(h * state_size + i)];
                }
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
