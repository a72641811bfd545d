// Second-order HLA on CUDA (higher_order_attention.hpp): the CPU chunk step, one thread block per (sequence,
// head) slice. Every helper below that writes is a whole-block operation ending in a barrier, so the chunk functions
// read like the CPU's BLAS sequence they mirror (backend/cpu/higher_order_attention.cpp and
// higher_order_attention_backward.cpp carry the derivations); the names of the scratch matrices are the
// CPU's ChunkScratch fields.
#include "backend/cuda/higher_order_attention.hpp"

#include <cfloat>

#include "backend/cuda/check.cuh"

namespace linarch::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// ---- whole-block helpers (each ends in __syncthreads) ----

// c[m,n] = alpha · op(a) · op(b) + beta · c on row-major arrays with leading dims (BLAS's rules: beta = 0
// does not read c; c aliases neither a nor b). 64 × 64 output tiles; each depth step of 16 stages op(a)'s
// and op(b)'s slices in shared memory (read from global along their contiguous axis, whichever way the
// operand is transposed), and each of the 256 threads accumulates a 4 × 4 patch in registers (fp32, as
// sgemm). The slices of the chunk step are L1/L2-resident; the staging is what keeps a transposed
// operand's reads coalesced.
constexpr int kTile = 64;
constexpr int kDepthStep = 16;

__device__ void gemm(bool trans_a, bool trans_b, int m, int n, int depth, float alpha, const float* a, int64_t lda,
                     const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
    __shared__ float a_slice[kDepthStep][kTile + 4];  // op(a)[i0 + i, p0 + p] at [p][i]
    __shared__ float b_slice[kDepthStep][kTile + 4];  // op(b)[p0 + p, j0 + j] at [p][j]
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    for (int i0 = 0; i0 < m; i0 += kTile)
        for (int j0 = 0; j0 < n; j0 += kTile) {
            float acc[4][4] = {};
            for (int p0 = 0; p0 < depth; p0 += kDepthStep) {
                for (int e = threadIdx.x; e < kTile * kDepthStep; e += blockDim.x) {
                    // a row-major [m, depth] is contiguous along p; stored transposed, along i. Likewise b.
                    const int ai = trans_a ? e % kTile : e / kDepthStep, ap = trans_a ? e / kTile : e % kDepthStep;
                    const int bj = trans_b ? e / kDepthStep : e % kTile, bp = trans_b ? e % kDepthStep : e / kTile;
                    const int gi = i0 + ai, gp = p0 + ap, gj = j0 + bj, gq = p0 + bp;
                    a_slice[ap][ai] = gi < m && gp < depth ? (trans_a ? a[gp * lda + gi] : a[gi * lda + gp]) : 0.f;
                    b_slice[bp][bj] = gj < n && gq < depth ? (trans_b ? b[gj * ldb + gq] : b[gq * ldb + gj]) : 0.f;
                }
                __syncthreads();
#pragma unroll
                for (int p = 0; p < kDepthStep; ++p) {
                    float av[4], bv[4];
#pragma unroll
                    for (int r = 0; r < 4; ++r) av[r] = a_slice[p][ty * 4 + r], bv[r] = b_slice[p][tx * 4 + r];
#pragma unroll
                    for (int r = 0; r < 4; ++r)
#pragma unroll
                        for (int q = 0; q < 4; ++q) acc[r][q] += av[r] * bv[q];
                }
                __syncthreads();
            }
#pragma unroll
            for (int r = 0; r < 4; ++r)
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    const int gi = i0 + ty * 4 + r, gj = j0 + tx * 4 + q;
                    if (gi >= m || gj >= n) continue;
                    float* out = c + gi * ldc + gj;
                    *out = beta == 0.f ? alpha * acc[r][q] : alpha * acc[r][q] + beta * *out;
                }
        }
    __syncthreads();
}

// Zeroes the upper part of an [L,L] matrix (leading dim ld): above the diagonal, or from it on.
__device__ void keep_lower(float* a, int L, int64_t ld, bool with_diagonal) {
    for (int idx = threadIdx.x; idx < L * L; idx += blockDim.x) {
        const int i = idx / L, j = idx - i * L;
        if (with_diagonal ? j > i : j >= i) a[i * ld + j] = 0.f;
    }
    __syncthreads();
}

// a[i,:] *= factor[i] on [L,cols] (leading dim ld).
__device__ void scale_rows(float* a, int L, int cols, int64_t ld, const float* factor) {
    for (int idx = threadIdx.x; idx < L * cols; idx += blockDim.x) {
        const int i = idx / cols, j = idx - i * cols;
        a[i * ld + j] *= factor[i];
    }
    __syncthreads();
}

// dst[i,:] = factor[i] · src[i,:] (dst contiguous, leading dim cols).
__device__ void scaled_rows(float* dst, const float* src, int L, int cols, int64_t src_ld, const float* factor) {
    for (int idx = threadIdx.x; idx < L * cols; idx += blockDim.x) {
        const int i = idx / cols, j = idx - i * cols;
        dst[idx] = factor[i] * src[i * src_ld + j];
    }
    __syncthreads();
}

// dst[i,:] = src[i,:] · s (both [L,cols], leading dims dst_ld and src_ld).
__device__ void scaled_copy(float* dst, int64_t dst_ld, const float* src, int64_t src_ld, int L, int cols, float s) {
    for (int idx = threadIdx.x; idx < L * cols; idx += blockDim.x) {
        const int i = idx / cols, j = idx - i * cols;
        dst[i * dst_ld + j] = s * src[i * src_ld + j];
    }
    __syncthreads();
}

// a *= factor, in double and rounded once (the CPU's Carry::decay_by).
__device__ void scale(float* a, int64_t n, double factor) {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) a[i] = float(double(a[i]) * factor);
    __syncthreads();
}

__device__ void copy(float* dst, const float* src, int64_t n) {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src ? src[i] : 0.f;
    __syncthreads();
}

// dst += sign · src (src null: nothing).
__device__ void add(float* dst, const float* src, int64_t n, float sign = 1.f) {
    if (!src) return;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) dst[i] += sign * src[i];
    __syncthreads();
}

__device__ double warp_sum(double x) {
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

// Σ a[i] b[i] in double, the same value in every thread.
__device__ double block_dot(const float* a, const float* b, int64_t n) {
    __shared__ double partial[kWarps];
    double sum = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) sum += double(a[i]) * double(b[i]);
    sum = warp_sum(sum);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = sum;
    __syncthreads();
    double total = 0;
    for (int w = 0; w < kWarps; ++w) total += partial[w];
    __syncthreads();
    return total;
}

// For each row t < L: fn(t, Σ_{i<n(t)} a[t,i] b[t,i]) in double, called by one lane of the warp that owns t.
template <typename Length, typename Fn>
__device__ void row_dots(int L, Length n_of, const float* a, int64_t lda, const float* b, int64_t ldb, Fn fn) {
    const int lane = threadIdx.x & 31;
    for (int t = threadIdx.x >> 5; t < L; t += kWarps) {
        const int n = n_of(t);
        double sum = 0;
        for (int i = lane; i < n; i += 32) sum += double(a[t * lda + i]) * double(b[t * ldb + i]);
        sum = warp_sum(sum);
        if (lane == 0) fn(t, sum);
    }
    __syncthreads();
}

// ---- the slice, its chunks and their decay ----

// Where one (sequence, head) slice's rows and moments are, and its scratch.
struct Slice {
    int64_t qk, vo, gate, key_moment, value_moment;  // element offsets, as the CPU's SliceOffsets
    int64_t length;
};

__device__ Slice slice_of(const HigherOrderAttention& a, int64_t pair) {
    const int64_t n = pair / a.heads, h = pair % a.heads;
    const int64_t row0 = a.cu_seqlens ? a.cu_seqlens[n] : n * a.seq_len;
    const int64_t length = a.cu_seqlens ? a.cu_seqlens[n + 1] - row0 : a.seq_len;
    const int64_t row = row0 * a.heads + h;
    return {row * a.key_dim, row * a.value_dim, row, pair * a.key_dim * a.key_dim, pair * a.key_dim * a.value_dim,
            length};
}

// Offsets (in floats) of the scratch pieces of one slice; the double arrays come first (8-byte aligned).
struct Layout {
    int64_t log_cumulative, dc, through_end;  // [C] doubles each
    int64_t start, end, within;               // a, r [C]; D [C,C]
    int64_t readout, key_gram, qs, kc, w, scores, kq, x, key_scaled, value_scaled;
    int64_t dscores, dw, dkq, key_buffer, dout_scaled, dkey_read, dreadout, dkey_gram;
    int64_t dout_carry, dout_key, dvalue_scaled, dkey_scaled, dgram_cross;
    int64_t adjoint, adjoint_prev, carries;   // moments; carries: one per chunk (backward), else the carry
    int64_t total;
};

__host__ __device__ int64_t carry_floats(int64_t Dk, int64_t Dv) { return Dk * Dk + 2 * Dk * Dv; }

__host__ __device__ Layout layout_of(int64_t Dk, int64_t Dv, int64_t C, int64_t chunks, bool backward) {
    Layout l{};
    int64_t at = 0;
    const auto take = [&](int64_t floats) {
        const int64_t here = at;
        at += floats;
        return here;
    };
    l.log_cumulative = take(2 * C);
    l.dc = take(2 * C);
    l.through_end = take(2 * C);
    l.start = take(C);
    l.end = take(C);
    l.within = take(C * C);
    l.readout = take(Dk * Dv);
    l.key_gram = take(Dk * Dk);
    l.qs = take(C * Dk);
    l.kc = take(C * Dv);
    l.w = take(C * C);
    l.scores = take(C * C);
    l.kq = take(C * C);
    l.x = take(C * C);
    l.key_scaled = take(C * Dk);
    l.value_scaled = take(C * Dv);
    if (backward) {
        l.dscores = take(C * C);
        l.dw = take(C * C);
        l.dkq = take(C * C);
        l.key_buffer = take(C * Dk);
        l.dout_scaled = take(C * Dv);
        l.dkey_read = take(C * Dv);
        l.dreadout = take(Dk * Dv);
        l.dkey_gram = take(Dk * Dk);
        l.dout_carry = take(C * Dv);
        l.dout_key = take(C * Dv);
        l.dvalue_scaled = take(C * Dv);
        l.dkey_scaled = take(C * Dk);
        l.dgram_cross = take(Dk * Dk);
        l.adjoint = take(carry_floats(Dk, Dv));
        l.adjoint_prev = take(carry_floats(Dk, Dv));
    }
    l.carries = take((backward ? chunks : 1) * carry_floats(Dk, Dv));
    l.total = (at + 3) / 4 * 4;  // keeps the next slice's doubles aligned
    return l;
}

// The moments of one carry in scratch.
struct Carry {
    float *S, *C, *G;
};

__device__ Carry carry_at(float* base, int64_t Dk, int64_t Dv) {
    return {base, base + Dk * Dk, base + Dk * Dk + Dk * Dv};
}

// Everything the chunk functions share: sizes, the slice's scratch pointers, the chunk and its decay.
struct Step {
    int Dk, Dv, C;        // C: the leading dimension of the [C,C] matrices
    int64_t q_ld, v_ld;   // H·Dk, H·Dv
    bool masked;
    double scale;
    // The chunk: L rows of q, k, v (strides q_ld, v_ld).
    const float *q, *k, *v;
    int L;
    // The decay (on = false: none; every factor 1 and skipped, as on the CPU).
    bool decay_on;
    float total;         // ρ rounded to f32
    double exact_total;  // ρ
    double *log_cumulative, *dc, *through_end;
    float *start, *end, *within;
    // Scratch matrices (the CPU's ChunkScratch).
    float *readout, *key_gram, *qs, *kc, *w, *scores, *kq, *x, *key_scaled, *value_scaled;
    float *dscores, *dw, *dkq, *key_buffer, *dout_scaled, *dkey_read, *dreadout, *dkey_gram;
    float *dout_carry, *dout_key, *dvalue_scaled, *dkey_scaled, *dgram_cross;
};

__device__ Step step_of(const HigherOrderAttention& a, float* base, const Layout& l) {
    Step s{};
    s.Dk = int(a.key_dim);
    s.Dv = int(a.value_dim);
    s.C = int(a.chunk);
    s.q_ld = a.heads * a.key_dim;
    s.v_ld = a.heads * a.value_dim;
    s.masked = a.masked;
    s.scale = a.scale;
    s.log_cumulative = reinterpret_cast<double*>(base + l.log_cumulative);
    s.dc = reinterpret_cast<double*>(base + l.dc);
    s.through_end = reinterpret_cast<double*>(base + l.through_end);
    float** floats[] = {&s.start, &s.end, &s.within, &s.readout, &s.key_gram, &s.qs, &s.kc, &s.w, &s.scores,
                        &s.kq, &s.x, &s.key_scaled, &s.value_scaled, &s.dscores, &s.dw, &s.dkq, &s.key_buffer,
                        &s.dout_scaled, &s.dkey_read, &s.dreadout, &s.dkey_gram, &s.dout_carry, &s.dout_key,
                        &s.dvalue_scaled, &s.dkey_scaled, &s.dgram_cross};
    const int64_t offsets[] = {l.start, l.end, l.within, l.readout, l.key_gram, l.qs, l.kc, l.w, l.scores,
                               l.kq, l.x, l.key_scaled, l.value_scaled, l.dscores, l.dw, l.dkq, l.key_buffer,
                               l.dout_scaled, l.dkey_read, l.dreadout, l.dkey_gram, l.dout_carry, l.dout_key,
                               l.dvalue_scaled, l.dkey_scaled, l.dgram_cross};
    for (int i = 0; i < int(sizeof(offsets) / sizeof(offsets[0])); ++i) *floats[i] = base + offsets[i];
    return s;
}

// e^x for x ≤ 0, 0 below the smallest normal float (the CPU's ChunkDecay::factor).
__device__ float decay_factor(double x) {
    const double f = exp(x);
    return f < double(FLT_MIN) ? 0.f : float(f);
}

// Points the step at tokens [t0, t0 + L) of the slice and computes their decay factors.
__device__ void enter_chunk(Step& s, const HigherOrderAttention& a, const Slice& slice, int64_t h, int64_t t0) {
    s.L = int(min(int64_t(s.C), slice.length - t0));
    s.q = a.q + slice.qk + t0 * s.q_ld;
    s.k = a.k + slice.qk + t0 * s.q_ld;
    s.v = a.v + slice.vo + t0 * s.v_ld;
    s.decay_on = a.log_decay || a.log_gate;
    s.total = 1.f;
    s.exact_total = 1;
    if (!s.decay_on) return;
    __shared__ double chunk_sum;
    if (threadIdx.x == 0) {
        double sum = 0;
        for (int t = 0; t < s.L; ++t) {
            const double g = a.log_gate ? a.log_gate[slice.gate + (t0 + t) * a.heads] : a.log_decay[h];
            s.log_cumulative[t] = sum += g;
        }
        chunk_sum = sum;
    }
    __syncthreads();
    const double sum = chunk_sum;
    for (int idx = threadIdx.x; idx < s.L * s.L; idx += blockDim.x) {
        const int t = idx / s.L, j = idx - t * s.L;
        const double c = s.log_cumulative[t];
        s.within[t * s.C + j] = j <= t ? decay_factor(c - s.log_cumulative[j]) : 0.f;
        if (j == 0) {
            s.start[t] = decay_factor(c);
            s.end[t] = decay_factor(sum - c);
        }
    }
    s.total = decay_factor(sum);
    s.exact_total = exp(sum);
    __syncthreads();
}

// a ⊙= D on [L,L] (leading dim C).
__device__ void mask_decayed(float* a, const Step& s) {
    for (int idx = threadIdx.x; idx < s.L * s.L; idx += blockDim.x) {
        const int i = idx / s.L, j = idx - i * s.L;
        a[i * s.C + j] *= s.within[i * s.C + j];
    }
    __syncthreads();
}

__device__ void decay_carry(Carry a, const Step& s, double rho) {
    scale(a.S, int64_t(s.Dk) * s.Dk, rho);
    scale(a.C, int64_t(s.Dk) * s.Dv, rho);
    if (s.masked) scale(a.G, int64_t(s.Dk) * s.Dv, rho * rho);
}

// ---- the chunk step (the CPU's chunk_scores, chunk_output, scaled_to_end, advance_carry) ----

__device__ void chunk_scores(Step& s, Carry a) {
    const int Dk = s.Dk, Dv = s.Dv, L = s.L, C = s.C;
    gemm(false, false, Dk, Dv, Dk, 1.f, a.S, Dk, a.C, Dv, 0.f, s.readout, Dv);
    if (s.masked) add(s.readout, a.G, int64_t(Dk) * Dv, -1.f);
    gemm(false, false, L, Dk, Dk, 1.f, s.q, s.q_ld, a.S, Dk, 0.f, s.qs, Dk);
    gemm(false, true, L, L, Dk, 1.f, s.qs, Dk, s.q, s.q_ld, 0.f, s.scores, C);
    gemm(false, true, L, L, Dk, 1.f, s.q, s.q_ld, s.k, s.q_ld, 0.f, s.w, C);
    keep_lower(s.w, L, C, true);
    const float* x = s.w;  // X, the undecayed (q_t·k_i)
    if (s.decay_on) {
        if (s.masked) {
            scaled_copy(s.x, C, s.w, C, L, L, 1.f);
            x = s.x;
        }
        mask_decayed(s.w, s);
        scale_rows(s.scores, L, L, C, s.start);
    }
    if (s.masked) {
        gemm(false, true, L, L, L, 1.f, s.w, C, x, C, 1.f, s.scores, C);
    } else {
        gemm(false, true, L, L, Dk, 1.f, s.k, s.q_ld, s.q, s.q_ld, 0.f, s.kq, C);
        gemm(false, false, L, L, L, 1.f, s.w, C, s.kq, C, 1.f, s.scores, C);
        gemm(false, false, L, Dv, Dk, 1.f, s.k, s.q_ld, a.C, Dv, 0.f, s.kc, Dv);
    }
    if (s.decay_on) mask_decayed(s.scores, s);
    else keep_lower(s.scores, L, C, true);
}

__device__ void chunk_output(const Step& s, float* out) {
    const int Dk = s.Dk, Dv = s.Dv, L = s.L, C = s.C;
    const float scale = float(s.scale);
    gemm(false, false, L, Dv, Dk, scale, s.q, s.q_ld, s.readout, Dv, 0.f, out, s.v_ld);
    if (!s.decay_on) {
        gemm(false, false, L, Dv, L, scale, s.scores, C, s.v, s.v_ld, 1.f, out, s.v_ld);
        if (!s.masked) gemm(false, false, L, Dv, L, scale, s.w, C, s.kc, Dv, 1.f, out, s.v_ld);
        return;
    }
    scale_rows(out, L, Dv, s.v_ld, s.start);
    if (!s.masked) gemm(false, false, L, Dv, L, scale, s.w, C, s.kc, Dv, 1.f, out, s.v_ld);
    scale_rows(out, L, Dv, s.v_ld, s.start);
    gemm(false, false, L, Dv, L, scale, s.scores, C, s.v, s.v_ld, 1.f, out, s.v_ld);
}

// diag(r) K and diag(r) V with their leading dims (the inputs themselves without decay).
struct ScaledRows {
    const float* key;
    int64_t key_ld;
    const float* value;
    int64_t value_ld;
};

__device__ ScaledRows scaled_to_end(const Step& s) {
    if (!s.decay_on) return {s.k, s.q_ld, s.v, s.v_ld};
    scaled_rows(s.key_scaled, s.k, s.L, s.Dk, s.q_ld, s.end);
    scaled_rows(s.value_scaled, s.v, s.L, s.Dv, s.v_ld, s.end);
    return {s.key_scaled, s.Dk, s.value_scaled, s.Dv};
}

// A decayed chunk of one token (a decode step): every moment updated in double and rounded once, as the CPU's
// recurrent form (decay_add_outer there): rounding ρ·M on its own would bias each of thousands of steps the
// same way. G first, with the old C: G ← ρ² G + k (ρ kᵀ C); then S ← ρ S + k kᵀ, C ← ρ C + q vᵀ.
__device__ void advance_carry_one_token(const Step& s, Carry a) {
    const int Dk = s.Dk, Dv = s.Dv;
    const double rho = s.exact_total;
    if (s.masked) {
        for (int j = threadIdx.x; j < Dv; j += blockDim.x) {  // kᵀ C_old, scaled by ρ and rounded as the CPU does
            float sum = 0.f;
            for (int r = 0; r < Dk; ++r) sum += s.k[r] * a.C[r * Dv + j];
            s.kc[j] = float(rho * double(sum));
        }
        __syncthreads();
        for (int idx = threadIdx.x; idx < Dk * Dv; idx += blockDim.x)
            a.G[idx] = float(rho * rho * double(a.G[idx]) + double(s.k[idx / Dv]) * double(s.kc[idx % Dv]));
    }
    for (int idx = threadIdx.x; idx < Dk * Dk; idx += blockDim.x)
        a.S[idx] = float(rho * double(a.S[idx]) + double(s.k[idx / Dk]) * double(s.k[idx % Dk]));
    for (int idx = threadIdx.x; idx < Dk * Dv; idx += blockDim.x)
        a.C[idx] = float(rho * double(a.C[idx]) + double(s.q[idx / Dv]) * double(s.v[idx % Dv]));
    __syncthreads();
}

__device__ void advance_carry(const Step& s, Carry a) {
    const int Dk = s.Dk, Dv = s.Dv, L = s.L, C = s.C;
    if (L == 1 && s.decay_on) return advance_carry_one_token(s, a);
    const ScaledRows r = scaled_to_end(s);
    if (s.decay_on) decay_carry(a, s, s.exact_total);
    gemm(true, false, Dk, Dk, L, 1.f, r.key, r.key_ld, s.k, s.q_ld, 0.f, s.key_gram, Dk);
    if (s.masked) {
        gemm(false, true, L, L, Dk, 1.f, s.k, s.q_ld, s.q, s.q_ld, 0.f, s.kq, C);
        keep_lower(s.kq, L, C, false);
        gemm(false, false, L, Dv, L, 1.f, s.kq, C, r.value, r.value_ld, 0.f, s.kc, Dv);
        gemm(true, false, Dk, Dv, L, 1.f, r.key, r.key_ld, s.kc, Dv, 1.f, a.G, Dv);
        gemm(false, false, Dk, Dv, Dk, 1.f, s.key_gram, Dk, a.C, Dv, 1.f, a.G, Dv);
    }
    add(a.S, s.key_gram, int64_t(Dk) * Dk);
    gemm(true, false, Dk, Dv, L, 1.f, s.q, s.q_ld, r.value, r.value_ld, 1.f, a.C, Dv);
}

// ---- the backward's chunk step (the CPU's chunk_backward) ----

// dc_t += Σ_j E_tj and dc_j −= Σ_t E_tj with E = dM ⊙ M over j ≤ t: each thread owns one dc entry.
__device__ void add_pair_decay_gradient(const Step& s, const float* dm, const float* m) {
    for (int i = threadIdx.x; i < s.L; i += blockDim.x) {
        double row = 0, column = 0;
        for (int j = 0; j <= i; ++j) row += double(dm[i * s.C + j]) * double(m[i * s.C + j]);
        for (int t = i; t < s.L; ++t) column += double(dm[t * s.C + i]) * double(m[t * s.C + i]);
        s.dc[i] += row - column;
    }
    __syncthreads();
}

// dc[L−1] += x (from thread 0; every thread passes the same x).
__device__ void add_to_last(const Step& s, double x) {
    if (threadIdx.x == 0) s.dc[s.L - 1] += x;
    __syncthreads();
}

// Gradient rows of the chunk: dq, dk (stride q_ld) and dv (stride v_ld).
struct ChunkGradients {
    float *dq, *dk, *dv;
};

__device__ void chunk_backward(Step& s, Carry carry, Carry adjoint, Carry adjoint_prev, const ChunkGradients& g,
                               const float* dout, bool want_dc) {
    const int Dk = s.Dk, Dv = s.Dv, L = s.L, C = s.C;
    const int64_t q_ld = s.q_ld, v_ld = s.v_ld, moment = int64_t(Dk) * Dv, gram = int64_t(Dk) * Dk;
    const bool decayed = s.decay_on;
    const float rho = s.total;
    float *dqc = g.dq, *dkc = g.dk, *dvc = g.dv;
    float *dos = s.dout_scaled, *dp = s.dscores, *dw = s.dw, *kb = s.key_buffer;
    chunk_scores(s, carry);
    scaled_copy(dos, Dv, dout, v_ld, L, Dv, float(s.scale));
    copy(adjoint_prev.S, adjoint.S, gram);
    copy(adjoint_prev.C, adjoint.C, moment);
    if (s.masked) copy(adjoint_prev.G, adjoint.G, moment);
    if (decayed) {
        decay_carry(adjoint_prev, s, s.exact_total);
        if (want_dc) {
            const double rho_exact = s.exact_total;
            double through_rho = rho_exact * (block_dot(adjoint.S, carry.S, gram) + block_dot(adjoint.C, carry.C, moment));
            if (s.masked) through_rho += 2 * rho_exact * rho_exact * block_dot(adjoint.G, carry.G, moment);
            add_to_last(s, through_rho);
        }
    }

    // Output through the read-out matrix R.
    const float* dout_carry = dos;
    if (decayed) {
        scaled_rows(s.dout_carry, dos, L, Dv, Dv, s.start);
        scale_rows(s.dout_carry, L, Dv, Dv, s.start);
        dout_carry = s.dout_carry;
        gemm(false, true, L, Dk, Dv, 1.f, dout_carry, Dv, s.readout, Dv, 0.f, kb, Dk);
        if (want_dc) row_dots(L, [&](int) { return Dk; }, s.q, q_ld, kb, Dk, [&](int t, double sum) { s.dc[t] += 2 * sum; });
        for (int idx = threadIdx.x; idx < L * Dk; idx += blockDim.x) {
            const int t = idx / Dk, j = idx - t * Dk;
            dqc[t * q_ld + j] += kb[idx];
        }
        __syncthreads();
    } else {
        gemm(false, true, L, Dk, Dv, 1.f, dos, Dv, s.readout, Dv, 1.f, dqc, q_ld);
    }
    gemm(true, false, Dk, Dv, L, 1.f, s.q, q_ld, dout_carry, Dv, 0.f, s.dreadout, Dv);
    gemm(false, true, Dk, Dk, Dv, 1.f, s.dreadout, Dv, carry.C, Dv, 1.f, adjoint_prev.S, Dk);
    gemm(true, false, Dk, Dv, Dk, 1.f, carry.S, Dk, s.dreadout, Dv, 1.f, adjoint_prev.C, Dv);
    if (s.masked) add(adjoint_prev.G, s.dreadout, moment, -1.f);

    // Scores: dV, then dP = (dO' Vᵀ) ⊙ D through a ⊙ Q S Qᵀ.
    gemm(true, false, L, Dv, L, 1.f, s.scores, C, dos, Dv, 1.f, dvc, v_ld);
    gemm(false, true, L, L, Dv, 1.f, dos, Dv, s.v, v_ld, 0.f, dp, C);
    if (decayed) {
        if (want_dc) add_pair_decay_gradient(s, dp, s.scores);
        mask_decayed(dp, s);
    } else {
        keep_lower(dp, L, C, true);
    }
    gemm(false, false, L, Dk, L, 1.f, dp, C, s.q, q_ld, 0.f, kb, Dk);
    if (decayed) {
        scale_rows(kb, L, Dk, Dk, s.start);
        if (want_dc) row_dots(L, [&](int) { return Dk; }, s.qs, Dk, kb, Dk, [&](int t, double sum) { s.dc[t] += sum; });
    }
    gemm(false, true, L, Dk, Dk, 1.f, kb, Dk, carry.S, Dk, 1.f, dqc, q_ld);
    gemm(true, false, Dk, Dk, L, 1.f, s.q, q_ld, kb, Dk, 1.f, adjoint_prev.S, Dk);
    if (decayed) scale_rows(s.qs, L, Dk, Dk, s.start);
    gemm(true, false, L, Dk, L, 1.f, dp, C, s.qs, Dk, 1.f, dqc, q_ld);

    // The second-order term, back to dW.
    if (s.masked) {
        if (decayed) {
            gemm(false, false, L, L, L, 1.f, dp, C, s.x, C, 0.f, dw, C);
            gemm(true, false, L, L, L, 1.f, dp, C, s.w, C, 0.f, s.dkq, C);
        } else {
            for (int idx = threadIdx.x; idx < L * L; idx += blockDim.x) {
                const int i = idx / L, j = idx - i * L;
                s.dkq[i * C + j] = dp[i * C + j] + dp[j * C + i];
            }
            __syncthreads();
            gemm(false, false, L, L, L, 1.f, s.dkq, C, s.w, C, 0.f, dw, C);
        }
    } else {
        const float* dout_key = dos;
        if (decayed) {
            scaled_rows(s.dout_key, dos, L, Dv, Dv, s.start);
            dout_key = s.dout_key;
            gemm(false, true, L, L, Dv, 1.f, dout_key, Dv, s.kc, Dv, 0.f, dw, C);
            if (want_dc)
                row_dots(L, [](int t) { return t + 1; }, dw, C, s.w, C, [&](int t, double sum) { s.dc[t] += sum; });
            gemm(false, true, L, L, L, 1.f, dp, C, s.kq, C, 1.f, dw, C);
        } else {
            gemm(false, true, L, L, L, 1.f, dp, C, s.kq, C, 0.f, dw, C);
            gemm(false, true, L, L, Dv, 1.f, dos, Dv, s.kc, Dv, 1.f, dw, C);
        }
        gemm(true, false, L, L, L, 1.f, s.w, C, dp, C, 0.f, s.dkq, C);
        gemm(false, false, L, Dk, L, 1.f, s.dkq, C, s.q, q_ld, 1.f, dkc, q_ld);
        gemm(true, false, L, Dk, L, 1.f, s.dkq, C, s.k, q_ld, 1.f, dqc, q_ld);
        gemm(true, false, L, Dv, L, 1.f, s.w, C, dout_key, Dv, 0.f, s.dkey_read, Dv);
        gemm(false, true, L, Dk, Dv, 1.f, s.dkey_read, Dv, carry.C, Dv, 1.f, dkc, q_ld);
        gemm(true, false, Dk, Dv, L, 1.f, s.k, q_ld, s.dkey_read, Dv, 1.f, adjoint_prev.C, Dv);
    }
    if (decayed) {
        if (want_dc) add_pair_decay_gradient(s, dw, s.w);
        mask_decayed(dw, s);
        if (s.masked) {
            for (int idx = threadIdx.x; idx < L * L; idx += blockDim.x) {
                const int i = idx / L, j = idx - i * L;
                if (j <= i) dw[i * C + j] += s.dkq[i * C + j];
            }
            __syncthreads();
        }
    }
    keep_lower(dw, L, C, true);
    gemm(false, false, L, Dk, L, 1.f, dw, C, s.k, q_ld, 1.f, dqc, q_ld);
    gemm(true, false, L, Dk, L, 1.f, dw, C, s.q, q_ld, 1.f, dkc, q_ld);

    // The carry update; dKr, dVr land in dK, dV directly without decay, else in scratch scaled by r at the end.
    const ScaledRows r = scaled_to_end(s);
    float* dkr = decayed ? s.dkey_scaled : dkc;
    float* dvr = decayed ? s.dvalue_scaled : dvc;
    const int64_t dkr_ld = decayed ? Dk : q_ld, dvr_ld = decayed ? Dv : v_ld;
    const float first = decayed ? 0.f : 1.f;
    gemm(false, true, L, Dk, Dv, 1.f, r.value, r.value_ld, adjoint.C, Dv, 1.f, dqc, q_ld);
    gemm(false, false, L, Dv, Dk, 1.f, s.q, q_ld, adjoint.C, Dv, first, dvr, dvr_ld);
    float* dsb = s.dkey_gram;
    copy(dsb, adjoint.S, gram);
    if (s.masked) {
        gemm(true, false, Dk, Dk, L, 1.f, r.key, r.key_ld, s.k, q_ld, 0.f, s.key_gram, Dk);
        if (decayed) {
            float* cross = s.dgram_cross;
            gemm(false, true, Dk, Dk, Dv, 1.f, adjoint.G, Dv, carry.C, Dv, 0.f, cross, Dk);
            if (want_dc) add_to_last(s, s.exact_total * block_dot(cross, s.key_gram, gram));
            add(dsb, cross, gram, rho);
        } else {
            gemm(false, true, Dk, Dk, Dv, 1.f, adjoint.G, Dv, carry.C, Dv, 1.f, dsb, Dk);
        }
        gemm(false, false, Dk, Dv, Dk, rho, s.key_gram, Dk, adjoint.G, Dv, 1.f, adjoint_prev.C, Dv);
        float *x = s.kq, *y = s.kc, *dy = s.dkey_read;
        gemm(false, true, L, L, Dk, 1.f, s.k, q_ld, s.q, q_ld, 0.f, x, C);
        keep_lower(x, L, C, false);
        gemm(false, false, L, Dv, L, 1.f, x, C, r.value, r.value_ld, 0.f, y, Dv);
        gemm(false, true, L, Dk, Dv, 1.f, y, Dv, adjoint.G, Dv, first, dkr, dkr_ld);
        gemm(false, false, L, Dv, Dk, 1.f, r.key, r.key_ld, adjoint.G, Dv, 0.f, dy, Dv);
        gemm(true, false, L, Dv, L, 1.f, x, C, dy, Dv, 1.f, dvr, dvr_ld);
        float* dx = s.dkq;
        gemm(false, true, L, L, Dv, 1.f, dy, Dv, r.value, r.value_ld, 0.f, dx, C);
        keep_lower(dx, L, C, false);
        gemm(false, false, L, Dk, L, 1.f, dx, C, s.q, q_ld, 1.f, dkc, q_ld);
        gemm(true, false, L, Dk, L, 1.f, dx, C, s.k, q_ld, 1.f, dqc, q_ld);
    }
    if (!decayed) {
        // dK += K (dS_B + dS_Bᵀ); the thread of each lower entry writes the pair.
        for (int idx = threadIdx.x; idx < Dk * Dk; idx += blockDim.x) {
            const int row = idx / Dk, col = idx - row * Dk;
            if (col > row) continue;
            const float both = dsb[row * Dk + col] + dsb[col * Dk + row];
            dsb[row * Dk + col] = dsb[col * Dk + row] = both;
        }
        __syncthreads();
        gemm(false, false, L, Dk, Dk, 1.f, s.k, q_ld, dsb, Dk, 1.f, dkc, q_ld);
        return;
    }
    gemm(false, false, L, Dk, Dk, 1.f, r.key, r.key_ld, dsb, Dk, 1.f, dkc, q_ld);
    gemm(false, true, L, Dk, Dk, 1.f, s.k, q_ld, dsb, Dk, s.masked ? 1.f : 0.f, dkr, dkr_ld);
    if (want_dc) {
        // r_t = e^{c_{L−1} − c_t}: r_t · ∂loss/∂r_t goes to dc_{L−1} and comes off dc_t.
        row_dots(L, [&](int) { return Dk; }, r.key, r.key_ld, dkr, dkr_ld,
                 [&](int t, double sum) { s.through_end[t] = sum; });
        row_dots(L, [&](int) { return Dv; }, r.value, r.value_ld, dvr, dvr_ld,
                 [&](int t, double sum) { s.through_end[t] += sum; });
        for (int t = threadIdx.x; t < L; t += blockDim.x) s.dc[t] -= s.through_end[t];
        __syncthreads();
        if (threadIdx.x == 0) {
            double total = 0;
            for (int t = 0; t < L; ++t) total += s.through_end[t];
            s.dc[L - 1] += total;
        }
        __syncthreads();
    }
    for (int idx = threadIdx.x; idx < L * Dk; idx += blockDim.x) {
        const int t = idx / Dk, j = idx - t * Dk;
        dkc[t * q_ld + j] += s.end[t] * dkr[t * Dk + j];
    }
    for (int idx = threadIdx.x; idx < L * Dv; idx += blockDim.x) {
        const int t = idx / Dv, j = idx - t * Dv;
        dvc[t * v_ld + j] += s.end[t] * dvr[t * Dv + j];
    }
    __syncthreads();
}

// ---- kernels: one block per (sequence, head) slice ----

// Copies one slice's moments between a state tensor (null moments: zeros on load, skipped on store) and a
// carry.
__device__ void load_moments(Carry to, const HigherOrderMoments& from, const Slice& slice, const Step& s) {
    const int64_t gram = int64_t(s.Dk) * s.Dk, moment = int64_t(s.Dk) * s.Dv;
    copy(to.S, from.key_moment ? from.key_moment + slice.key_moment : nullptr, gram);
    copy(to.C, from.query_value_moment ? from.query_value_moment + slice.value_moment : nullptr, moment);
    copy(to.G, from.correction ? from.correction + slice.value_moment : nullptr, moment);
}

__device__ void store_moments(const HigherOrderMoments& to, Carry from, const Slice& slice, const Step& s,
                              bool accumulate) {
    const int64_t gram = int64_t(s.Dk) * s.Dk, moment = int64_t(s.Dk) * s.Dv;
    // (Unmasked, the carries' G is scratch nobody wrote: the op refuses a correction moment then.)
    float* dst[3] = {to.key_moment ? to.key_moment + slice.key_moment : nullptr,
                     to.query_value_moment ? to.query_value_moment + slice.value_moment : nullptr,
                     to.correction && s.masked ? to.correction + slice.value_moment : nullptr};
    const float* src[3] = {from.S, from.C, from.G};
    const int64_t sizes[3] = {gram, moment, moment};
    for (int m = 0; m < 3; ++m) {
        if (!dst[m]) continue;
        if (accumulate) add(dst[m], src[m], sizes[m]);
        else copy(dst[m], src[m], sizes[m]);
    }
}

__global__ void __launch_bounds__(kThreads)
    higher_order_attention_forward_kernel(HigherOrderAttention a, float* o, HigherOrderMoments final_state,
                                          float* scratch) {
    const int64_t pair = blockIdx.x, h = pair % a.heads;
    const int64_t chunks = (a.max_length + a.chunk - 1) / a.chunk;
    const Layout l = layout_of(a.key_dim, a.value_dim, a.chunk, chunks, false);
    float* base = scratch + pair * l.total;
    Step s = step_of(a, base, l);
    const Slice slice = slice_of(a, pair);
    const Carry carry = carry_at(base + l.carries, a.key_dim, a.value_dim);
    load_moments(carry, a.initial, slice, s);
    for (int64_t t0 = 0; t0 < slice.length; t0 += a.chunk) {
        enter_chunk(s, a, slice, h, t0);
        chunk_scores(s, carry);
        chunk_output(s, o + slice.vo + t0 * s.v_ld);
        advance_carry(s, carry);
    }
    store_moments(final_state, carry, slice, s, false);
}

__global__ void __launch_bounds__(kThreads)
    higher_order_attention_backward_kernel(HigherOrderAttention a, HigherOrderAttentionGrads g, float* scratch) {
    const int64_t pair = blockIdx.x, h = pair % a.heads;
    const int64_t max_chunks = (a.max_length + a.chunk - 1) / a.chunk;
    const Layout l = layout_of(a.key_dim, a.value_dim, a.chunk, max_chunks, true);
    float* base = scratch + pair * l.total;
    Step s = step_of(a, base, l);
    const Slice slice = slice_of(a, pair);
    const int64_t chunks = (slice.length + a.chunk - 1) / a.chunk, size = carry_floats(a.key_dim, a.value_dim);
    const auto carry = [&](int64_t n) { return carry_at(base + l.carries + n * size, a.key_dim, a.value_dim); };

    // The carries before every chunk, by a forward sweep.
    load_moments(carry(0), a.initial, slice, s);
    for (int64_t n = 0; n + 1 < chunks; ++n) {
        copy(carry(n + 1).S, carry(n).S, size);  // the three moments are contiguous
        enter_chunk(s, a, slice, h, n * a.chunk);
        advance_carry(s, carry(n + 1));
    }

    Carry adjoint = carry_at(base + l.adjoint, a.key_dim, a.value_dim);
    Carry adjoint_prev = carry_at(base + l.adjoint_prev, a.key_dim, a.value_dim);
    load_moments(adjoint, g.dfinal_state, slice, s);
    const bool want_dc = g.dlog_gate && a.log_gate;
    for (int64_t n = chunks - 1; n >= 0; --n) {
        const int64_t t0 = n * a.chunk;
        enter_chunk(s, a, slice, h, t0);
        for (int t = threadIdx.x; t < s.L; t += blockDim.x) s.dc[t] = 0;
        __syncthreads();
        const ChunkGradients grads{g.dq + slice.qk + t0 * s.q_ld, g.dk + slice.qk + t0 * s.q_ld,
                                   g.dv + slice.vo + t0 * s.v_ld};
        chunk_backward(s, carry(n), adjoint, adjoint_prev, grads, g.dout + slice.vo + t0 * s.v_ld, want_dc);
        if (want_dc && threadIdx.x == 0) {
            // c_t = Σ_{s≤t} g_s within the chunk: dg_s = Σ_{t≥s} dc_t.
            double suffix = 0;
            for (int t = s.L - 1; t >= 0; --t) {
                suffix += s.dc[t];
                g.dlog_gate[slice.gate + (t0 + t) * a.heads] += float(suffix);
            }
        }
        __syncthreads();
        const Carry swap = adjoint;
        adjoint = adjoint_prev;
        adjoint_prev = swap;
    }
    store_moments(g.dinitial_state, adjoint, slice, s, true);
}

}  // namespace

size_t higher_order_attention_scratch_floats(const HigherOrderAttention& args, bool backward) {
    const int64_t chunks = (args.max_length + args.chunk - 1) / args.chunk;
    const Layout l = layout_of(args.key_dim, args.value_dim, args.chunk, chunks, backward);
    return size_t(args.sequences * args.heads * l.total);
}

void higher_order_attention_forward(const HigherOrderAttention& args, float* o, HigherOrderMoments final_state,
                                    float* scratch) {
    const int64_t blocks = args.sequences * args.heads;
    higher_order_attention_forward_kernel<<<unsigned(blocks), kThreads, 0, cudaStreamPerThread>>>(args, o, final_state,
                                                                                               scratch);
    check_launch("higher_order_attention_forward_kernel");
}

void higher_order_attention_backward(const HigherOrderAttention& args, const HigherOrderAttentionGrads& grads,
                                     float* scratch) {
    const int64_t blocks = args.sequences * args.heads;
    higher_order_attention_backward_kernel<<<unsigned(blocks), kThreads, 0, cudaStreamPerThread>>>(args, grads,
                                                                                                scratch);
    check_launch("higher_order_attention_backward_kernel");
}

}  // namespace linarch::cuda
