// CPU causal softmax attention: FlashAttention-2 forward (online softmax) and backward (recompute the
// probabilities from the saved logsumexp). Notation per (sequence, head), positions i (query) and j
// (key) counted from the sequence start:
//     S_ij = scale · q_i·k_j + bias_ij   where visible(i,j) = j ≤ i and (window = 0 or i − j < window)
//     P_ij = exp(S_ij − lse_i),   o_i = Σ_j P_ij v_j,   lse_i = log Σ_j exp(S_ij)
// backward (Dao 2023, alg. 2): D_i = dout_i·o_i, dP = dout Vᵀ, dS = P ⊙ (dP − D),
//     dq = scale · dS K,  dk = scale · dSᵀ Q,  dv = Pᵀ dout,  dbias = dS.
// Tiles are kQueryBlock queries × kKeyBlock keys; only tiles holding a visible pair are visited.
// Every (b,h) slice of a [B,T,H,D] tensor is a [T,D] matrix with leading dimension H·D, so BLAS
// reads and writes the tensors in place.
#include "backend/cpu/softmax_attention.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace linarch::cpu {
namespace {

constexpr int64_t kQueryBlock = 64;
constexpr int64_t kKeyBlock = 64;

// C[m,n] = alpha · op(A) · op(B) + beta · C on row-major arrays with leading dimensions. Inside our
// OpenMP region over (sequence, head) pairs the OpenMP build of OpenBLAS runs single-threaded.
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

// exp for f32 that the compiler vectorizes (the libm call does not vectorize, and the T²/2
// exponentials per head cost more than the GEMMs without this): Cody-Waite reduction
// x = n·ln2 + r, |r| ≤ ln2/2, Cephes' degree-7 polynomial for e^r (≈1 ulp), then 2^n through the
// exponent bits. Inputs below −87.3 (including −∞: masked logits) give exactly 0.
inline float exp_f32(float x) {
    const float clamped = std::min(std::max(x, -87.3f), 88.0f);
    const float n = std::floor(clamped * 1.44269504088896341f + 0.5f);
    const float r = clamped - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = (int32_t(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return x < -87.3f ? 0.0f : p * scale;
}

// row[c] = exp(row[c] − shift) for c < cols; returns their sum. −∞ entries become exactly 0.
template <typename T> T exp_shifted(T* row, int64_t cols, T shift) {
    T sum = 0;
    if constexpr (std::is_same_v<T, float>) {
#pragma omp simd reduction(+ : sum)
        for (int64_t c = 0; c < cols; ++c) {
            row[c] = exp_f32(row[c] - shift);
            sum += row[c];
        }
    } else {
        for (int64_t c = 0; c < cols; ++c) {
            row[c] = std::exp(row[c] - shift);
            sum += row[c];
        }
    }
    return sum;
}

template <typename T> T row_maximum(const T* row, int64_t cols) {
    T maximum = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : maximum)
    for (int64_t c = 0; c < cols; ++c) maximum = std::max(maximum, row[c]);
    return maximum;
}

// One attention problem: a whole batch row, or one packed sequence of cu_seqlens.
struct Sequence {
    int64_t batch, start, length;
};

std::vector<Sequence> sequences_of(const SoftmaxAttentionDims& d, std::span<const int64_t> cu_seqlens) {
    std::vector<Sequence> sequences;
    if (cu_seqlens.empty())
        for (int64_t b = 0; b < d.batch; ++b) sequences.push_back({b, 0, d.seq_len});
    else
        for (size_t s = 0; s + 1 < cu_seqlens.size(); ++s)
            sequences.push_back({0, cu_seqlens[s], cu_seqlens[s + 1] - cu_seqlens[s]});
    return sequences;
}

// A parallel region costs microseconds to open (far more when cores are shared): tiny problems,
// such as the ones finite-difference checks evaluate thousands of times, run on the calling thread.
inline bool worth_threads(int64_t pairs, const SoftmaxAttentionDims& d) {
    return pairs > 1 && d.batch * d.heads * d.seq_len * d.seq_len * (d.key_dim + d.value_dim) >= (int64_t(1) << 18);
}

// The rows of one (sequence, head) pair: pointers to its first token, leading dimensions, its bias.
template <typename T> struct Head {
    int64_t row_qk, row_vo, row_scalar;  // offsets of the first token in q/k, v/o and [B,T,H] tensors
    int64_t qk_ld, vo_ld, scalar_ld;     // H·Dk, H·Dv, H
    int64_t length, key_dim, window;
    double scale, slope;                 // slope 0 without ALiBi
    const double* forget_cumsum;         // F_i = Σ_{l=1..i} log_forget_l, or null without FoX

    Head(const SoftmaxAttentionDims& d, const Sequence& s, int64_t h, const SoftmaxAttentionBias<T>& bias,
         std::vector<double>& cumsum_scratch)
        : row_qk(((s.batch * d.seq_len + s.start) * d.heads + h) * d.key_dim),
          row_vo(((s.batch * d.seq_len + s.start) * d.heads + h) * d.value_dim),
          row_scalar((s.batch * d.seq_len + s.start) * d.heads + h),
          qk_ld(d.heads * d.key_dim),
          vo_ld(d.heads * d.value_dim),
          scalar_ld(d.heads),
          length(s.length),
          key_dim(d.key_dim),
          window(bias.window),
          scale(bias.scale),
          slope(bias.alibi_slopes ? double(bias.alibi_slopes[h]) : 0.0),
          forget_cumsum(nullptr) {
        if (!bias.log_forget) return;
        // The bias is F_i − F_j = Σ_{l=j+1..i} log f_l. The prefix sums are kept in double, so the
        // difference of two long sums (which can reach thousands of nats) keeps the precision of
        // the short sum it stands for, in f32 as in f64.
        const T* log_forget = bias.log_forget + row_scalar;
        cumsum_scratch.assign(size_t(length), 0.0);
        for (int64_t i = 1; i < length; ++i)
            cumsum_scratch[size_t(i)] = cumsum_scratch[size_t(i - 1)] + double(log_forget[i * scalar_ld]);
        forget_cumsum = cumsum_scratch.data();
    }

    // Keys a query block [i0, i0+rows) sees: [first, end).
    int64_t first_key(int64_t i0) const { return window > 0 ? std::max<int64_t>(0, i0 - window + 1) : 0; }

    // scores[rows, cols] (leading dim ld) = scale · Q Kᵀ + bias for queries i0.. and keys j0.., and
    // −∞ where a query may not see a key (so exp gives exactly 0 there: mask before exponentiating).
    void score_tile(T* scores, int64_t ld, const T* q, const T* k, int64_t i0, int64_t rows, int64_t j0,
                    int64_t cols) const {
        gemm<T>(false, true, rows, cols, key_dim, T(scale), q + row_qk + i0 * qk_ld, qk_ld, k + row_qk + j0 * qk_ld,
                qk_ld, T(0), scores, ld);
        constexpr T minus_infinity = -std::numeric_limits<T>::infinity();
        for (int64_t r = 0; r < rows; ++r) {
            const int64_t i = i0 + r;
            T* row = scores + r * ld;
            // Visible keys of this row inside the tile: columns [lo, hi).
            const int64_t hi = std::clamp<int64_t>(i + 1 - j0, 0, cols);
            const int64_t lo = std::clamp<int64_t>(window > 0 ? i - window + 1 - j0 : 0, 0, hi);
            std::fill(row, row + lo, minus_infinity);
            std::fill(row + hi, row + cols, minus_infinity);
            if (slope != 0)
                for (int64_t c = lo; c < hi; ++c) row[c] -= T(slope * double(i - j0 - c));
            if (forget_cumsum) {
                const double F_i = forget_cumsum[i];
                for (int64_t c = lo; c < hi; ++c) row[c] += T(F_i - forget_cumsum[j0 + c]);
            }
        }
    }
};

// Per-thread scratch for one tile and one sequence's row statistics, sized once per thread.
template <typename T> struct TileScratch {
    TileScratch() : scores(size_t(kQueryBlock * kKeyBlock)), dscores(size_t(kQueryBlock * kKeyBlock)) {}
    std::vector<T> scores, dscores;
    std::vector<T> row_max, row_sum, delta;
    std::vector<double> forget_cumsum, dforget_cumsum;
};

// Forward of one (sequence, head): for each query block, an online softmax over its key blocks
// (running max m and sum l per row; earlier partial outputs are rescaled by exp(m_old − m_new)).
template <typename T>
void forward_head(T* out, T* logsumexp, const T* q, const T* k, const T* v, const Head<T>& hd, int64_t value_dim,
                  TileScratch<T>& scratch) {
    constexpr T minus_infinity = -std::numeric_limits<T>::infinity();
    T* scores = scratch.scores.data();
    for (int64_t i0 = 0; i0 < hd.length; i0 += kQueryBlock) {
        const int64_t rows = std::min(kQueryBlock, hd.length - i0);
        T* out_block = out + hd.row_vo + i0 * hd.vo_ld;
        for (int64_t r = 0; r < rows; ++r) std::fill_n(out_block + r * hd.vo_ld, value_dim, T(0));
        scratch.row_max.assign(size_t(rows), minus_infinity);
        scratch.row_sum.assign(size_t(rows), T(0));
        const int64_t key_end = i0 + rows;
        for (int64_t j0 = hd.first_key(i0); j0 < key_end; j0 += kKeyBlock) {
            const int64_t cols = std::min(kKeyBlock, key_end - j0);
            hd.score_tile(scores, kKeyBlock, q, k, i0, rows, j0, cols);
            for (int64_t r = 0; r < rows; ++r) {
                T* row = scores + r * kKeyBlock;
                const T new_max = std::max(scratch.row_max[size_t(r)], row_maximum(row, cols));
                if (new_max == minus_infinity) {  // no visible key yet (windowed rows): nothing to add
                    std::fill_n(row, cols, T(0));
                    continue;
                }
                const T sum = exp_shifted(row, cols, new_max);
                const T rescale = std::exp(scratch.row_max[size_t(r)] - new_max);  // 0 on the first visible tile
                scratch.row_sum[size_t(r)] = scratch.row_sum[size_t(r)] * rescale + sum;
                scratch.row_max[size_t(r)] = new_max;
                if (rescale != T(1))
                    for (T *o = out_block + r * hd.vo_ld, *o_end = o + value_dim; o < o_end; ++o) *o *= rescale;
            }
            gemm<T>(false, false, rows, value_dim, cols, T(1), scores, kKeyBlock, v + hd.row_vo + j0 * hd.vo_ld,
                    hd.vo_ld, T(1), out_block, hd.vo_ld);
        }
        // Every query sees itself, so each row sum is ≥ 1 after its max is subtracted.
        for (int64_t r = 0; r < rows; ++r) {
            const T sum = scratch.row_sum[size_t(r)];
            const T inverse = T(1) / sum;
            for (T *o = out_block + r * hd.vo_ld, *o_end = o + value_dim; o < o_end; ++o) *o *= inverse;
            logsumexp[hd.row_scalar + (i0 + r) * hd.scalar_ld] = scratch.row_max[size_t(r)] + std::log(sum);
        }
    }
}

// Backward of one (sequence, head), tile by tile; each tile adds its share into dq, dk, dv (this
// thread owns the head's rows) and, with FoX, into dF (∂loss/∂F_i, reverse-summed at the end).
template <typename T>
void backward_head(T* dq, T* dk, T* dv, T* dlog_forget, const T* dout, const T* q, const T* k, const T* v,
                   const T* out, const T* logsumexp, const Head<T>& hd, int64_t value_dim, TileScratch<T>& scratch) {
    const int64_t L = hd.length;
    // D_i = dout_i·o_i = Σ_j P_ij dP_ij: the row term of the softmax Jacobian.
    scratch.delta.resize(size_t(L));
    for (int64_t i = 0; i < L; ++i) {
        const T* dout_row = dout + hd.row_vo + i * hd.vo_ld;
        const T* out_row = out + hd.row_vo + i * hd.vo_ld;
        double sum = 0;
        for (int64_t c = 0; c < value_dim; ++c) sum += double(dout_row[c]) * double(out_row[c]);
        scratch.delta[size_t(i)] = T(sum);
    }
    const bool want_dforget = dlog_forget && hd.forget_cumsum;
    if (want_dforget) scratch.dforget_cumsum.assign(size_t(L), 0.0);
    T *probs = scratch.scores.data(), *dscores = scratch.dscores.data();
    for (int64_t i0 = 0; i0 < L; i0 += kQueryBlock) {
        const int64_t rows = std::min(kQueryBlock, L - i0);
        const T* dout_block = dout + hd.row_vo + i0 * hd.vo_ld;
        const int64_t key_end = i0 + rows;
        for (int64_t j0 = hd.first_key(i0); j0 < key_end; j0 += kKeyBlock) {
            const int64_t cols = std::min(kKeyBlock, key_end - j0);
            hd.score_tile(probs, kKeyBlock, q, k, i0, rows, j0, cols);
            for (int64_t r = 0; r < rows; ++r) {
                exp_shifted(probs + r * kKeyBlock, cols, logsumexp[hd.row_scalar + (i0 + r) * hd.scalar_ld]);
            }
            // dV += Pᵀ dout;  dP = dout Vᵀ
            gemm<T>(true, false, cols, value_dim, rows, T(1), probs, kKeyBlock, dout_block, hd.vo_ld, T(1),
                    dv + hd.row_vo + j0 * hd.vo_ld, hd.vo_ld);
            gemm<T>(false, true, rows, cols, value_dim, T(1), dout_block, hd.vo_ld, v + hd.row_vo + j0 * hd.vo_ld,
                    hd.vo_ld, T(0), dscores, kKeyBlock);
            // dS = P ⊙ (dP − D_i); masked entries have P = 0 and stay 0.
            for (int64_t r = 0; r < rows; ++r) {
                const T delta = scratch.delta[size_t(i0 + r)];
                const T* p = probs + r * kKeyBlock;
                T* ds = dscores + r * kKeyBlock;
                for (int64_t c = 0; c < cols; ++c) ds[c] = p[c] * (ds[c] - delta);
            }
            // dQ += scale · dS K;  dK += scale · dSᵀ Q
            gemm<T>(false, false, rows, hd.key_dim, cols, T(hd.scale), dscores, kKeyBlock,
                    k + hd.row_qk + j0 * hd.qk_ld, hd.qk_ld, T(1), dq + hd.row_qk + i0 * hd.qk_ld, hd.qk_ld);
            gemm<T>(true, false, cols, hd.key_dim, rows, T(hd.scale), dscores, kKeyBlock,
                    q + hd.row_qk + i0 * hd.qk_ld, hd.qk_ld, T(1), dk + hd.row_qk + j0 * hd.qk_ld, hd.qk_ld);
            // The bias F_i − F_j: dF_i += Σ_j dS_ij,  dF_j −= Σ_i dS_ij.
            if (want_dforget)
                for (int64_t r = 0; r < rows; ++r) {
                    const T* ds = dscores + r * kKeyBlock;
                    double row_total = 0;
                    for (int64_t c = 0; c < cols; ++c) {
                        row_total += double(ds[c]);
                        scratch.dforget_cumsum[size_t(j0 + c)] -= double(ds[c]);
                    }
                    scratch.dforget_cumsum[size_t(i0 + r)] += row_total;
                }
        }
    }
    // F_i = Σ_{l=1..i} log f_l, so ∂loss/∂log f_l = Σ_{i ≥ l} dF_i (l ≥ 1; the first token's gate
    // never enters a bias, its gradient is exactly 0).
    if (want_dforget) {
        double suffix = 0;
        for (int64_t l = L - 1; l >= 1; --l) {
            suffix += scratch.dforget_cumsum[size_t(l)];
            dlog_forget[hd.row_scalar + l * hd.scalar_ld] += T(suffix);
        }
    }
}

}  // namespace

template <typename T>
void softmax_attention_forward(T* out, T* logsumexp, const T* q, const T* k, const T* v,
                               const SoftmaxAttentionBias<T>& bias, const SoftmaxAttentionDims& d) {
    const std::vector<Sequence> sequences = sequences_of(d, bias.cu_seqlens);
    const int64_t pairs = int64_t(sequences.size()) * d.heads;
#pragma omp parallel if (worth_threads(pairs, d))
    {
        TileScratch<T> scratch;
#pragma omp for schedule(dynamic, 1)
        for (int64_t pair = 0; pair < pairs; ++pair) {
            const Head<T> hd(d, sequences[size_t(pair / d.heads)], pair % d.heads, bias, scratch.forget_cumsum);
            forward_head(out, logsumexp, q, k, v, hd, d.value_dim, scratch);
        }
    }
}

template <typename T>
void softmax_attention_backward(T* dq, T* dk, T* dv, T* dlog_forget, const T* dout, const T* q, const T* k,
                                const T* v, const T* out, const T* logsumexp, const SoftmaxAttentionBias<T>& bias,
                                const SoftmaxAttentionDims& d) {
    const std::vector<Sequence> sequences = sequences_of(d, bias.cu_seqlens);
    const int64_t pairs = int64_t(sequences.size()) * d.heads;
#pragma omp parallel if (worth_threads(pairs, d))
    {
        TileScratch<T> scratch;
#pragma omp for schedule(dynamic, 1)
        for (int64_t pair = 0; pair < pairs; ++pair) {
            const Head<T> hd(d, sequences[size_t(pair / d.heads)], pair % d.heads, bias, scratch.forget_cumsum);
            backward_head(dq, dk, dv, dlog_forget, dout, q, k, v, out, logsumexp, hd, d.value_dim, scratch);
        }
    }
}

#define LINARCH_INSTANTIATE(T)                                                                                 \
    template void softmax_attention_forward<T>(T*, T*, const T*, const T*, const T*,                           \
                                               const SoftmaxAttentionBias<T>&, const SoftmaxAttentionDims&);   \
    template void softmax_attention_backward<T>(T*, T*, T*, T*, const T*, const T*, const T*, const T*,        \
                                                const T*, const T*, const SoftmaxAttentionBias<T>&,            \
                                                const SoftmaxAttentionDims&);
LINARCH_INSTANTIATE(float)
LINARCH_INSTANTIATE(double)
#undef LINARCH_INSTANTIATE

}  // namespace linarch::cpu
