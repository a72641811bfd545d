// CUDA causal softmax attention in fp32: FlashAttention-2 (Dao 2023) on 64×64 tiles, the CPU backend's
// algorithm (backend/cpu/softmax_attention.cpp has the notation) with one thread block per tile row:
//     S_ij = scale · q_i·k_j + bias_ij,  P_ij = exp(S_ij − lse_i),  o_i = Σ_j P_ij v_j
//     bias_ij = −slope_h (i − j) + F_i − F_j,   F_i = Σ_{l=1..i} log_forget_l (FoX; kept in float64)
//     backward: D_i = dout_i·o_i, dP = dout Vᵀ, dS = P ⊙ (dP − D),
//               dq = scale · dS K, dk = scale · dSᵀ Q, dv = Pᵀ dout, dF_i = Σ_j dS_ij − Σ_j dS_ji
// Positions i, j count from the sequence's start. A block's 256 threads form 16 × 16: thread (ty, tx) owns
// the tile rows ty + 16r and columns tx + 16c (r, c < 4), so the 16 threads of a row are one half-warp
// (row reductions are shuffles) and the tiles' rows, padded to an odd stride, are read without bank
// conflicts. The backward recomputes P twice, once per key block (dk, dv) and once per query block (dq):
// every gradient row then has one writer, and no atomics are needed.
#include "backend/cuda/softmax_attention.hpp"

#include <algorithm>
#include <type_traits>

#include "backend/cuda/check.cuh"
#include "backend/cuda/device.hpp"
#include "core/error.hpp"

namespace linarch::cuda {
namespace {

constexpr int kBlock = 64;    // queries or keys per tile
constexpr int kThreads = 256;  // 16 × 16
constexpr int kSpan = kBlock / 16;
constexpr int kScoreStride = kBlock + 1;
constexpr unsigned kFullMask = 0xffffffffu;

struct Params {
    const int64_t* starts;  // S+1 sequence offsets
    int64_t heads, key_dim, value_dim;
    float scale;
    int64_t window;
    const float* alibi_slopes;    // [H] or null
    const double* forget_cumsum;  // F [tokens,H] or null
};

// The (sequence, head) pair of this block: blockIdx.x = sequence · H + head (x: packed batches of many short
// sequences can hold more pairs than a grid's y dimension); blockIdx.y is the block of queries or keys.
struct Slice {
    int64_t start, length, head;
    float slope;
    __device__ explicit Slice(const Params& p) {
        const int64_t sequence = blockIdx.x / p.heads;
        head = blockIdx.x % p.heads;
        start = p.starts[sequence];
        length = p.starts[sequence + 1] - start;
        slope = p.alibi_slopes ? p.alibi_slopes[head] : 0.f;
    }
};

__device__ int tile_row() { return int(threadIdx.x) / 16; }
__device__ int tile_col() { return int(threadIdx.x) % 16; }

__device__ float half_warp_max(float x) {
    for (int offset = 8; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, offset, 16));
    return x;
}
__device__ float half_warp_sum(float x) {
    for (int offset = 8; offset > 0; offset /= 2) x += __shfl_xor_sync(kFullMask, x, offset, 16);
    return x;
}

// The first key a query block starting at i0 sees.
__device__ int64_t first_key(const Params& p, int64_t i0) {
    return p.window > 0 ? max(int64_t(0), i0 - p.window + 1) : int64_t(0);
}

// tile[r][d] (row stride dim + 1) = x[token first + r, head, d] for rows inside the sequence, else 0.
__device__ void load_tile(float* tile, const float* x, const Slice& s, int64_t first, int64_t heads, int64_t dim) {
    const int width = int(dim), stride = width + 1;
    for (int e = threadIdx.x; e < kBlock * width; e += kThreads) {
        const int r = e / width, d = e % width;
        const int64_t position = first + r;
        tile[r * stride + d] = position < s.length ? x[((s.start + position) * heads + s.head) * dim + d] : 0.f;
    }
}

// values[n] = x[token first + 16n, head] (a [tokens,H] array) inside the sequence, else `outside`.
template <typename T>
__device__ void load_scalars(T (&values)[kSpan], const T* x, const Slice& s, int64_t first, int64_t heads,
                             T outside) {
#pragma unroll
    for (int n = 0; n < kSpan; ++n) {
        const int64_t position = first + 16 * n;
        values[n] = x != nullptr && position < s.length ? x[(s.start + position) * heads + s.head] : outside;
    }
}

// dots[r][c] = a[ty + 16r] · b[tx + 16c] over dim, for two tiles of stride dim + 1.
__device__ void tile_dots(float (&dots)[kSpan][kSpan], const float* a, const float* b, int64_t dim) {
    const int stride = int(dim) + 1, ty = tile_row(), tx = tile_col();
#pragma unroll
    for (int r = 0; r < kSpan; ++r)
#pragma unroll
        for (int c = 0; c < kSpan; ++c) dots[r][c] = 0.f;
    for (int d = 0; d < int(dim); ++d) {
        float av[kSpan], bv[kSpan];
#pragma unroll
        for (int n = 0; n < kSpan; ++n) {
            av[n] = a[(ty + 16 * n) * stride + d];
            bv[n] = b[(tx + 16 * n) * stride + d];
        }
#pragma unroll
        for (int r = 0; r < kSpan; ++r)
#pragma unroll
            for (int c = 0; c < kSpan; ++c) dots[r][c] = fmaf(av[r], bv[c], dots[r][c]);
    }
}

// acc[r][j] += Σ_e w[ty + 16r][e] · x[e][tx + 16j]: a 64×64 score tile w (stride kScoreStride) times a
// data tile x (stride dim + 1), columns below dim.
template <int NJ>
__device__ void accumulate(float (&acc)[kSpan][NJ], const float* w, const float* x, int64_t dim) {
    const int stride = int(dim) + 1, ty = tile_row(), tx = tile_col();
    for (int e = 0; e < kBlock; ++e) {
        float wv[kSpan];
#pragma unroll
        for (int r = 0; r < kSpan; ++r) wv[r] = w[(ty + 16 * r) * kScoreStride + e];
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
            if (tx + 16 * j >= dim) break;
            const float xv = x[e * stride + tx + 16 * j];
#pragma unroll
            for (int r = 0; r < kSpan; ++r) acc[r][j] = fmaf(wv[r], xv, acc[r][j]);
        }
    }
}

// x[token first + ty + 16r, head, tx + 16j] (+)= factor[r] · acc[r][j] for rows inside the sequence.
template <int NJ>
__device__ void store_rows(float* x, const float (&acc)[kSpan][NJ], const float (&factor)[kSpan], bool add,
                           const Slice& s, int64_t first, int64_t heads, int64_t dim) {
    const int ty = tile_row(), tx = tile_col();
#pragma unroll
    for (int r = 0; r < kSpan; ++r) {
        const int64_t position = first + ty + 16 * r;
        if (position >= s.length) continue;
        float* row = x + ((s.start + position) * heads + s.head) * dim;
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
            const int d = tx + 16 * j;
            if (d >= dim) break;
            row[d] = (add ? row[d] : 0.f) + factor[r] * acc[r][j];
        }
    }
}

// The logit of query i and key j from their dot product, or −∞ where i may not see j.
__device__ float logit(const Params& p, const Slice& s, float dot, int64_t i, int64_t j, double forget_i,
                       double forget_j) {
    if (i >= s.length || j > i || (p.window > 0 && i - j >= p.window)) return -INFINITY;
    return p.scale * dot - s.slope * float(i - j) + float(forget_i - forget_j);
}

__host__ __device__ size_t tile_floats(int64_t dim) { return size_t(kBlock) * size_t(dim + 1); }
constexpr size_t kScoreFloats = size_t(kBlock) * kScoreStride;

// ---- forward ------------------------------------------------------------------------------------------

// A block per (query block, sequence · head): the online softmax over the key blocks it sees.
// Shared: the query, key and value tiles and the probabilities.
template <int NJ>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(Params p, const float* q, const float* k, const float* v, float* out,
                             float* logsumexp) {
    extern __shared__ float shared[];
    const Slice s(p);
    const int64_t i0 = int64_t(blockIdx.y) * kBlock;
    if (i0 >= s.length) return;
    float* queries = shared;
    float* keys = queries + tile_floats(p.key_dim);
    float* values = keys + tile_floats(p.key_dim);
    float* probs = values + tile_floats(p.value_dim);
    const int ty = tile_row(), tx = tile_col();
    load_tile(queries, q, s, i0, p.heads, p.key_dim);
    double forget_rows[kSpan];
    load_scalars(forget_rows, p.forget_cumsum, s, i0 + ty, p.heads, 0.0);
    float row_max[kSpan], row_sum[kSpan], acc[kSpan][NJ];
#pragma unroll
    for (int r = 0; r < kSpan; ++r) {
        row_max[r] = -INFINITY;
        row_sum[r] = 0.f;
#pragma unroll
        for (int j = 0; j < NJ; ++j) acc[r][j] = 0.f;
    }
    const int64_t end = min(i0 + kBlock, s.length);
    for (int64_t j0 = first_key(p, i0); j0 < end; j0 += kBlock) {
        __syncthreads();  // the previous keys, values and probabilities are consumed
        load_tile(keys, k, s, j0, p.heads, p.key_dim);
        load_tile(values, v, s, j0, p.heads, p.value_dim);
        __syncthreads();
        float scores[kSpan][kSpan];
        tile_dots(scores, queries, keys, p.key_dim);
        double forget_cols[kSpan];
        load_scalars(forget_cols, p.forget_cumsum, s, j0 + tx, p.heads, 0.0);
#pragma unroll
        for (int r = 0; r < kSpan; ++r) {
            const int64_t i = i0 + ty + 16 * r;
            float tile_max = -INFINITY;
#pragma unroll
            for (int c = 0; c < kSpan; ++c) {
                scores[r][c] = logit(p, s, scores[r][c], i, j0 + tx + 16 * c, forget_rows[r], forget_cols[c]);
                tile_max = fmaxf(tile_max, scores[r][c]);
            }
            const float new_max = fmaxf(row_max[r], half_warp_max(tile_max));
            // A row with no visible key yet (a window's edge) adds nothing: exp(−∞) = 0 everywhere.
            const float shift = new_max == -INFINITY ? 0.f : new_max;
            float tile_sum = 0.f;
#pragma unroll
            for (int c = 0; c < kSpan; ++c) {
                const float prob = expf(scores[r][c] - shift);
                tile_sum += prob;
                probs[(ty + 16 * r) * kScoreStride + tx + 16 * c] = prob;
            }
            const float rescale = expf(row_max[r] - shift);  // 0 on the row's first visible tile
            row_sum[r] = row_sum[r] * rescale + half_warp_sum(tile_sum);
            row_max[r] = new_max;
#pragma unroll
            for (int j = 0; j < NJ; ++j) acc[r][j] *= rescale;
        }
        __syncthreads();
        accumulate(acc, probs, values, p.value_dim);
    }
    // Every query sees itself, so each row's sum is ≥ 1 after its maximum is subtracted.
    float inverse[kSpan];
#pragma unroll
    for (int r = 0; r < kSpan; ++r) inverse[r] = 1.f / row_sum[r];
    store_rows(out, acc, inverse, false, s, i0, p.heads, p.value_dim);
    if (tx == 0)
#pragma unroll
        for (int r = 0; r < kSpan; ++r) {
            const int64_t i = i0 + ty + 16 * r;
            if (i < s.length) logsumexp[(s.start + i) * p.heads + s.head] = row_max[r] + logf(row_sum[r]);
        }
}

// F[start + i, h] = Σ_{l=1..i} log_forget[start + l, h] in float64: a warp per (sequence, head) scans its
// tokens 32 at a time.
__global__ void forget_cumsum_kernel(double* cumsum, const float* log_forget, const int64_t* starts,
                                     int64_t pairs, int64_t heads) {
    const int64_t pair = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const int lane = int(threadIdx.x) % 32;
    if (pair >= pairs) return;  // whole warps
    const int64_t sequence = pair / heads, head = pair % heads;
    const int64_t start = starts[sequence], length = starts[sequence + 1] - start;
    double carry = 0;
    for (int64_t base = 0; base < length; base += 32) {
        const int64_t i = base + lane;
        double x = i >= 1 && i < length ? double(log_forget[(start + i) * heads + head]) : 0.0;
        for (int offset = 1; offset < 32; offset *= 2) {
            const double y = __shfl_up_sync(kFullMask, x, offset);
            if (lane >= offset) x += y;
        }
        x += carry;
        if (i < length) cumsum[(start + i) * heads + head] = x;
        carry = __shfl_sync(kFullMask, x, 31);
    }
}

// ---- backward -----------------------------------------------------------------------------------------

// D_i = dout_i · o_i: a warp per (token, head) row.
__global__ void row_delta_kernel(float* delta, const float* dout, const float* out, int64_t rows, int64_t dim) {
    const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const int lane = int(threadIdx.x) % 32;
    if (row >= rows) return;
    float sum = 0.f;
    for (int64_t d = lane; d < dim; d += 32) sum += dout[row * dim + d] * out[row * dim + d];
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(kFullMask, sum, offset);
    if (lane == 0) delta[row] = sum;
}

// A block per (key block, sequence · head): dk and dv of its keys over every query block that sees them,
// and Σ_i dS_ij per key for the forget gate. Tiles are [key][query]. Shared: the key, value, query and
// dout tiles, P and dS.
template <int NJ>
__global__ void __launch_bounds__(kThreads)
    attention_backward_keys_kernel(Params p, const float* q, const float* k, const float* v, const float* dout,
                                   const float* logsumexp, const float* delta, float* dk, float* dv,
                                   float* key_forget_total) {
    extern __shared__ float shared[];
    const Slice s(p);
    const int64_t j0 = int64_t(blockIdx.y) * kBlock;
    if (j0 >= s.length) return;
    float* keys = shared;
    float* values = keys + tile_floats(p.key_dim);
    float* queries = values + tile_floats(p.value_dim);
    float* douts = queries + tile_floats(p.key_dim);
    float* probs = douts + tile_floats(p.value_dim);
    float* dscores = probs + kScoreFloats;
    const int ty = tile_row(), tx = tile_col();
    load_tile(keys, k, s, j0, p.heads, p.key_dim);
    load_tile(values, v, s, j0, p.heads, p.value_dim);
    double forget_keys[kSpan];
    load_scalars(forget_keys, p.forget_cumsum, s, j0 + ty, p.heads, 0.0);
    float dk_acc[kSpan][NJ], dv_acc[kSpan][NJ], forget_total[kSpan];
#pragma unroll
    for (int r = 0; r < kSpan; ++r) {
        forget_total[r] = 0.f;
#pragma unroll
        for (int j = 0; j < NJ; ++j) dk_acc[r][j] = dv_acc[r][j] = 0.f;
    }
    // Queries i ≥ j0 see these keys, up to i − j < window from the block's last key.
    const int64_t query_end = p.window > 0 ? min(s.length, j0 + kBlock - 1 + p.window) : s.length;
    for (int64_t i0 = j0; i0 < query_end; i0 += kBlock) {
        __syncthreads();  // the previous queries, douts, P and dS are consumed
        load_tile(queries, q, s, i0, p.heads, p.key_dim);
        load_tile(douts, dout, s, i0, p.heads, p.value_dim);
        __syncthreads();
        float lse[kSpan], row_delta[kSpan];
        double forget_queries[kSpan];
        load_scalars(lse, logsumexp, s, i0 + tx, p.heads, 0.f);
        load_scalars(row_delta, delta, s, i0 + tx, p.heads, 0.f);
        load_scalars(forget_queries, p.forget_cumsum, s, i0 + tx, p.heads, 0.0);
        float scores[kSpan][kSpan], dprobs[kSpan][kSpan];
        tile_dots(scores, keys, queries, p.key_dim);
        tile_dots(dprobs, values, douts, p.value_dim);
#pragma unroll
        for (int r = 0; r < kSpan; ++r)
#pragma unroll
            for (int c = 0; c < kSpan; ++c) {
                const float score = logit(p, s, scores[r][c], i0 + tx + 16 * c, j0 + ty + 16 * r,
                                          forget_queries[c], forget_keys[r]);
                const float prob = expf(score - lse[c]);
                const float dscore = prob * (dprobs[r][c] - row_delta[c]);
                forget_total[r] += dscore;
                probs[(ty + 16 * r) * kScoreStride + tx + 16 * c] = prob;
                dscores[(ty + 16 * r) * kScoreStride + tx + 16 * c] = dscore;
            }
        __syncthreads();
        accumulate(dv_acc, probs, douts, p.value_dim);
        accumulate(dk_acc, dscores, queries, p.key_dim);
    }
    const float ones[kSpan] = {1.f, 1.f, 1.f, 1.f};
    const float scales[kSpan] = {p.scale, p.scale, p.scale, p.scale};
    store_rows(dk, dk_acc, scales, true, s, j0, p.heads, p.key_dim);
    store_rows(dv, dv_acc, ones, true, s, j0, p.heads, p.value_dim);
    if (key_forget_total != nullptr)
#pragma unroll
        for (int r = 0; r < kSpan; ++r) {
            const float total = half_warp_sum(forget_total[r]);
            const int64_t j = j0 + ty + 16 * r;
            if (tx == 0 && j < s.length) key_forget_total[(s.start + j) * p.heads + s.head] = total;
        }
}

// A block per (query block, sequence · head): dq of its queries over the key blocks they see, and
// Σ_j dS_ij per query for the forget gate. Tiles are [query][key]. Shared: the query, dout, key and
// value tiles and dS.
template <int NJ>
__global__ void __launch_bounds__(kThreads)
    attention_backward_queries_kernel(Params p, const float* q, const float* k, const float* v,
                                      const float* dout, const float* logsumexp, const float* delta, float* dq,
                                      float* query_forget_total) {
    extern __shared__ float shared[];
    const Slice s(p);
    const int64_t i0 = int64_t(blockIdx.y) * kBlock;
    if (i0 >= s.length) return;
    float* queries = shared;
    float* douts = queries + tile_floats(p.key_dim);
    float* keys = douts + tile_floats(p.value_dim);
    float* values = keys + tile_floats(p.key_dim);
    float* dscores = values + tile_floats(p.value_dim);
    const int ty = tile_row(), tx = tile_col();
    load_tile(queries, q, s, i0, p.heads, p.key_dim);
    load_tile(douts, dout, s, i0, p.heads, p.value_dim);
    float lse[kSpan], row_delta[kSpan], forget_total[kSpan], dq_acc[kSpan][NJ];
    double forget_queries[kSpan];
    load_scalars(lse, logsumexp, s, i0 + ty, p.heads, 0.f);
    load_scalars(row_delta, delta, s, i0 + ty, p.heads, 0.f);
    load_scalars(forget_queries, p.forget_cumsum, s, i0 + ty, p.heads, 0.0);
#pragma unroll
    for (int r = 0; r < kSpan; ++r) {
        forget_total[r] = 0.f;
#pragma unroll
        for (int j = 0; j < NJ; ++j) dq_acc[r][j] = 0.f;
    }
    const int64_t end = min(i0 + kBlock, s.length);
    for (int64_t j0 = first_key(p, i0); j0 < end; j0 += kBlock) {
        __syncthreads();  // the previous keys, values and dS are consumed
        load_tile(keys, k, s, j0, p.heads, p.key_dim);
        load_tile(values, v, s, j0, p.heads, p.value_dim);
        __syncthreads();
        double forget_keys[kSpan];
        load_scalars(forget_keys, p.forget_cumsum, s, j0 + tx, p.heads, 0.0);
        float scores[kSpan][kSpan], dprobs[kSpan][kSpan];
        tile_dots(scores, queries, keys, p.key_dim);
        tile_dots(dprobs, douts, values, p.value_dim);
#pragma unroll
        for (int r = 0; r < kSpan; ++r)
#pragma unroll
            for (int c = 0; c < kSpan; ++c) {
                const float score = logit(p, s, scores[r][c], i0 + ty + 16 * r, j0 + tx + 16 * c,
                                          forget_queries[r], forget_keys[c]);
                const float dscore = expf(score - lse[r]) * (dprobs[r][c] - row_delta[r]);
                forget_total[r] += dscore;
                dscores[(ty + 16 * r) * kScoreStride + tx + 16 * c] = dscore;
            }
        __syncthreads();
        accumulate(dq_acc, dscores, keys, p.key_dim);
    }
    const float scales[kSpan] = {p.scale, p.scale, p.scale, p.scale};
    store_rows(dq, dq_acc, scales, true, s, i0, p.heads, p.key_dim);
    if (query_forget_total != nullptr)
#pragma unroll
        for (int r = 0; r < kSpan; ++r) {
            const float total = half_warp_sum(forget_total[r]);
            const int64_t i = i0 + ty + 16 * r;
            if (tx == 0 && i < s.length) query_forget_total[(s.start + i) * p.heads + s.head] = total;
        }
}

// dlog_forget[start + l, h] += Σ_{i ≥ l} dF_i with dF_i = query_total_i − key_total_i, for l ≥ 1 (the
// first token's gate never enters a bias). A warp per (sequence, head) scans from the end, 32 at a time.
__global__ void forget_gradient_kernel(float* dlog_forget, const float* query_total, const float* key_total,
                                       const int64_t* starts, int64_t pairs, int64_t heads) {
    const int64_t pair = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const int lane = int(threadIdx.x) % 32;
    if (pair >= pairs) return;  // whole warps
    const int64_t sequence = pair / heads, head = pair % heads;
    const int64_t start = starts[sequence], length = starts[sequence + 1] - start;
    double carry = 0;
    for (int64_t top = length - 1; top >= 0; top -= 32) {
        const int64_t i = top - lane;  // lane 0 holds the highest position of this stretch
        const int64_t at = (start + i) * heads + head;
        double x = i >= 0 ? double(query_total[at]) - double(key_total[at]) : 0.0;
        for (int offset = 1; offset < 32; offset *= 2) {
            const double y = __shfl_up_sync(kFullMask, x, offset);
            if (lane >= offset) x += y;
        }
        x += carry;
        if (i >= 1) dlog_forget[at] += float(x);
        carry = __shfl_sync(kFullMask, x, 31);
    }
}

// ---- decode -------------------------------------------------------------------------------------------

// x reduced over the block (max or sum) with a fixed-order tree; every thread gets the result.
template <typename Combine> __device__ float block_reduce(float x, float* scratch, Combine combine) {
    scratch[threadIdx.x] = x;
    __syncthreads();
    for (int width = kThreads / 2; width > 0; width /= 2) {
        if (int(threadIdx.x) < width) scratch[threadIdx.x] = combine(scratch[threadIdx.x], scratch[threadIdx.x + width]);
        __syncthreads();
    }
    const float result = scratch[0];
    __syncthreads();
    return result;
}

// A block per head. Each thread scores a contiguous stretch of the visible keys, walking it backwards so
// that the FoX bias Σ_{l=j+1..t} log_forget_l accumulates as it goes (the sums of the later stretches come
// from a scan over the threads); then a softmax over the block and o = Σ_j p_j v_j, a thread per column.
// logits: [H, cached] scratch.
__global__ void __launch_bounds__(kThreads)
    attention_decode_kernel(float* o, const float* q, const float* keys, const float* values,
                            const float* log_forget, const float* alibi_slopes, float* logits, int64_t cached,
                            int64_t heads, int64_t key_dim, int64_t value_dim, float scale, int64_t window) {
    __shared__ double later_forget[kThreads];
    __shared__ float scratch[kThreads];
    const int64_t h = blockIdx.x, t = cached - 1;
    const int64_t first = window > 0 ? max(int64_t(0), t - window + 1) : int64_t(0);
    const int64_t per_thread = (t - first + kThreads) / kThreads;
    const int64_t lo = first + int64_t(threadIdx.x) * per_thread, hi = min(lo + per_thread, t + 1);
    double stretch_forget = 0;
    if (log_forget != nullptr)
        for (int64_t j = lo; j < hi; ++j) stretch_forget += double(log_forget[j * heads + h]);
    later_forget[threadIdx.x] = stretch_forget;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0;
        for (int i = kThreads - 1; i >= 0; --i) {
            const double stretch = later_forget[i];
            later_forget[i] = total;
            total += stretch;
        }
    }
    __syncthreads();
    double forget = later_forget[threadIdx.x];  // Σ_{l ≥ hi} log_forget_l
    const float slope = alibi_slopes != nullptr ? alibi_slopes[h] : 0.f;
    float* row = logits + h * cached;
    float local_max = -INFINITY;
    for (int64_t j = hi - 1; j >= lo; --j) {
        float dot = 0.f;
        for (int64_t c = 0; c < key_dim; ++c) dot = fmaf(q[h * key_dim + c], keys[(j * heads + h) * key_dim + c], dot);
        const float logit = scale * dot + float(forget) - slope * float(t - j);
        if (log_forget != nullptr) forget += double(log_forget[j * heads + h]);
        row[j] = logit;
        local_max = fmaxf(local_max, logit);
    }
    const float row_max = block_reduce(local_max, scratch, [](float a, float b) { return fmaxf(a, b); });
    float local_sum = 0.f;
    for (int64_t j = lo; j < hi; ++j) {
        const float weight = expf(row[j] - row_max);
        row[j] = weight;
        local_sum += weight;
    }
    const float inverse = 1.f / block_reduce(local_sum, scratch, [](float a, float b) { return a + b; });
    for (int64_t c = threadIdx.x; c < value_dim; c += kThreads) {
        float acc = 0.f;
        for (int64_t j = first; j <= t; ++j) acc = fmaf(row[j], values[(j * heads + h) * value_dim + c], acc);
        o[h * value_dim + c] = acc * inverse;
    }
}

// ---- host ---------------------------------------------------------------------------------------------

unsigned warps_blocks(int64_t warps) { return unsigned((warps * 32 + kThreads - 1) / kThreads); }

// Calls launch with the accumulators' column count: tiles of 16 columns covering the wider head.
template <typename Launch> void with_columns(const SoftmaxAttentionLayout& layout, Launch launch) {
    const int64_t width = std::max(layout.key_dim, layout.value_dim);
    if (width <= 32) return launch(std::integral_constant<int, 2>{});
    if (width <= 64) return launch(std::integral_constant<int, 4>{});
    launch(std::integral_constant<int, 8>{});
}

// What every kernel shares: the sequence offsets on the device, the grid, and F for FoX.
struct Problem {
    DeviceBuffer starts;
    int64_t sequences, tokens, max_length;
    DeviceBuffer forget_cumsum;
    Params params;

    explicit Problem(const SoftmaxAttentionLayout& layout)
        : starts(layout.starts),
          sequences(int64_t(layout.starts.size()) - 1),
          tokens(layout.starts.back()),
          max_length(0),
          forget_cumsum(layout.log_forget ? size_t(layout.starts.back() * layout.heads) * sizeof(double) : 0) {
        LINARCH_CHECK(sequences >= 1, "softmax_attention: expected at least one sequence");
        LINARCH_CHECK(softmax_attention_supports(layout.key_dim, layout.value_dim),
                      "softmax_attention: the CUDA kernels take Dk and Dv from 1 to {}, got Dk={}, Dv={}",
                      kMaxSoftmaxHeadDim, layout.key_dim, layout.value_dim);
        for (int64_t n = 0; n < sequences; ++n)
            max_length = std::max(max_length, layout.starts[size_t(n + 1)] - layout.starts[size_t(n)]);
        params = {starts.as<int64_t>(), layout.heads, layout.key_dim, layout.value_dim, float(layout.scale),
                  layout.window, layout.alibi_slopes, layout.log_forget ? forget_cumsum.as<double>() : nullptr};
        if (layout.log_forget) {
            const int64_t pairs = sequences * layout.heads;
            forget_cumsum_kernel<<<warps_blocks(pairs), kThreads, 0, cudaStreamPerThread>>>(
                forget_cumsum.as<double>(), layout.log_forget, starts.as<int64_t>(), pairs, layout.heads);
            check_launch("forget_cumsum_kernel");
        }
    }
    dim3 grid() const {
        const int64_t blocks = (max_length + kBlock - 1) / kBlock;
        LINARCH_CHECK(blocks <= 65535, "softmax_attention: a sequence of {} tokens exceeds the grid ({} at most)",
                      max_length, 65535 * kBlock);
        return dim3(unsigned(sequences * params.heads), unsigned(blocks));
    }
};

}  // namespace

bool softmax_attention_supports(int64_t key_dim, int64_t value_dim) {
    return key_dim >= 1 && value_dim >= 1 && key_dim <= kMaxSoftmaxHeadDim && value_dim <= kMaxSoftmaxHeadDim;
}

void softmax_attention_forward(float* out, float* logsumexp, const float* q, const float* k, const float* v,
                               const SoftmaxAttentionLayout& layout) {
    const Problem problem(layout);
    const int bytes = int((2 * tile_floats(layout.key_dim) + tile_floats(layout.value_dim) + kScoreFloats) * 4);
    with_columns(layout, [&](auto columns) {
        launch_with_shared_memory(attention_forward_kernel<decltype(columns)::value>, "attention_forward_kernel",
                                  problem.grid(), kThreads, bytes, problem.params, q, k, v, out, logsumexp);
    });
}

void softmax_attention_backward(float* dq, float* dk, float* dv, float* dlog_forget, const float* dout,
                                const float* q, const float* k, const float* v, const float* out,
                                const float* logsumexp, const SoftmaxAttentionLayout& layout) {
    const Problem problem(layout);
    const int64_t rows = problem.tokens * layout.heads;
    const DeviceBuffer delta(size_t(rows) * sizeof(float));
    row_delta_kernel<<<warps_blocks(rows), kThreads, 0, cudaStreamPerThread>>>(delta.as<float>(), dout, out, rows,
                                                                               layout.value_dim);
    check_launch("row_delta_kernel");
    const bool forget = dlog_forget != nullptr && layout.log_forget != nullptr;
    const DeviceBuffer key_total(forget ? size_t(rows) * sizeof(float) : 0);
    const DeviceBuffer query_total(forget ? size_t(rows) * sizeof(float) : 0);
    const size_t key_tiles = tile_floats(layout.key_dim), value_tiles = tile_floats(layout.value_dim);
    const int keys_bytes = int((2 * key_tiles + 2 * value_tiles + 2 * kScoreFloats) * 4);
    const int queries_bytes = int((2 * key_tiles + 2 * value_tiles + kScoreFloats) * 4);
    with_columns(layout, [&](auto columns) {
        constexpr int NJ = decltype(columns)::value;
        launch_with_shared_memory(attention_backward_keys_kernel<NJ>, "attention_backward_keys_kernel",
                                  problem.grid(), kThreads, keys_bytes, problem.params, q, k, v, dout, logsumexp,
                                  delta.as<const float>(), dk, dv, key_total.as<float>());
        launch_with_shared_memory(attention_backward_queries_kernel<NJ>, "attention_backward_queries_kernel",
                                  problem.grid(), kThreads, queries_bytes, problem.params, q, k, v, dout,
                                  logsumexp, delta.as<const float>(), dq, query_total.as<float>());
    });
    if (forget) {
        const int64_t pairs = problem.sequences * layout.heads;
        forget_gradient_kernel<<<warps_blocks(pairs), kThreads, 0, cudaStreamPerThread>>>(
            dlog_forget, query_total.as<float>(), key_total.as<float>(), problem.starts.as<int64_t>(), pairs,
            layout.heads);
        check_launch("forget_gradient_kernel");
    }
}

void softmax_attention_decode(float* o, const float* q, const float* keys, const float* values,
                              const float* log_forget, const float* alibi_slopes, int64_t cached, int64_t heads,
                              int64_t key_dim, int64_t value_dim, double scale, int64_t window) {
    const DeviceBuffer logits(size_t(heads * cached) * sizeof(float));
    attention_decode_kernel<<<unsigned(heads), kThreads, 0, cudaStreamPerThread>>>(
        o, q, keys, values, log_forget, alibi_slopes, logits.as<float>(), cached, heads, key_dim, value_dim,
        float(scale), window);
    check_launch("attention_decode_kernel");
}

}  // namespace linarch::cuda
