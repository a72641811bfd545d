// CUDA LM head + sampler (backend/cuda/lm_head_sample.hpp). The kernels are dev/cuda/lm_head_sample.cu's
// (where the variants and their figures are): chunks of kChunk vocabulary columns, one stream.
//   per chunk:  logits[B, C] = hidden · weight[chunk]ᵀ      (cuBLASLt, fp32 out, one reused buffer)
//               reduce_chunk_kernel: per (row, segment) exact argmax of l/T + g, logsumexp partial
//   finalize_kernel: per row, merge the partials → token, logprob
// With top-k, top-p or min-p (lm_head_sample.hpp): whole rows' logits (up to 256 MB at a time), filter_kernel finds
// each row's boundary key, and the reduction draws over the whole row within it.
// Why the draw is the CPU's: g is backend/gumbel_noise.hpp's, evaluated in double for every entry that
// can be its block's argmax (a float prefilter with a proven error bound picks them); ties go to the lower
// index at every merge.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <climits>
#include <map>
#include <mutex>
#include <tuple>

#include "backend/cuda/check.cuh"
#include "backend/cuda/device.hpp"
#include "backend/cuda/lm_head_sample.hpp"
#include "core/error.hpp"

namespace linarch::cuda {
namespace {

using noise::NoiseKey;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// One row's best over some vocabulary entries, and its logsumexp partial (max, Σ exp(l − max)) at T = 1.
struct Partial {
    double score;    // l/T + g (greedy: l)
    int32_t index;   // INT_MAX when empty
    float logit;     // l of `index`
    float max, sum;  // logsumexp partial; max = −inf when empty
};

__device__ __forceinline__ bool beats(double score, int32_t index, double best_score, int32_t best_index) {
    return score > best_score || (score == best_score && index < best_index);
}

// g of the word r in float, branch-free on the fast MUFU logarithm: within 3e-5 + 2e-6·|g| of
// gumbel_from_word(r). E = −log u: for u < 1/2, −log u; for u ≥ 1/2, −log(1 − t) with
// t = (~r + 1)/(2³² + 1), or for t < 2⁻⁶ the series t + t²/2 + t³/3 + t⁴/4 (relative error < t⁴/5), since
// 1 − t rounded to float would cost E its relative precision as t → 0.
//   error: u or 1 − t rounded (2⁻²⁴), __logf (2^−21.4 absolute on [1/2, 2], 3 ulp elsewhere): E to 3e-7
//   relative for u < 1/2, to 2.3e-5 for t ≥ 2⁻⁶; then g = −log E adds 3 ulp of g.
// (v1 used logf / log1pf on two branches: same bound shape, 1e-6, but both branches ran in every warp.)
__device__ __forceinline__ float gumbel_from_word_float(uint32_t r) {
    constexpr float kInvTwo32Plus1 = float(1.0 / noise::kTwo32Plus1);
    const bool upper = r >= 0x80000000u;
    // t = 1 − u for u ≥ 1/2, else u itself: one int→float conversion (a quarter-rate instruction) for both.
    const float t_or_u = (float(upper ? ~r : r) + 1.0f) * kInvTwo32Plus1;
    const float series = t_or_u * (1.0f + t_or_u * (0.5f + t_or_u * (1.0f / 3.0f + t_or_u * 0.25f)));
    const float by_log = -__logf(upper ? 1.0f - t_or_u : t_or_u);
    const float exponential = upper && t_or_u < 0x1.0p-6f ? series : by_log;
    return -__logf(exponential);
}

__device__ __forceinline__ void merge_lse(float& max, float& sum, float other_max, float other_sum) {
    if (other_max == -INFINITY) return;
    if (other_max > max) {
        sum = sum * __expf(max - other_max) + other_sum;
        max = other_max;
    } else {
        sum += other_sum * __expf(other_max - max);
    }
}

// Block-wide max of a float (every thread gets it); scratch holds a float per warp.
__device__ __forceinline__ float block_max(float x, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    x = scratch[0];
    for (int w = 1; w < int(blockDim.x / 32); ++w) x = fmaxf(x, scratch[w]);
    __syncthreads();
    return x;
}

// Block-wide merge of partials; thread 0 returns the result.
__device__ __forceinline__ Partial block_merge(Partial p, Partial* scratch) {
    for (int o = 16; o > 0; o >>= 1) {
        Partial q;
        q.score = __shfl_xor_sync(0xffffffffu, p.score, o);
        q.index = __shfl_xor_sync(0xffffffffu, p.index, o);
        q.logit = __shfl_xor_sync(0xffffffffu, p.logit, o);
        q.max = __shfl_xor_sync(0xffffffffu, p.max, o);
        q.sum = __shfl_xor_sync(0xffffffffu, p.sum, o);
        if (beats(q.score, q.index, p.score, p.index)) p.score = q.score, p.index = q.index, p.logit = q.logit;
        merge_lse(p.max, p.sum, q.max, q.sum);
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) scratch[warp] = p;
    __syncthreads();
    if (threadIdx.x == 0)
        for (int w = 1; w < kWarps; ++w) {
            const Partial q = scratch[w];
            if (beats(q.score, q.index, p.score, p.index)) p.score = q.score, p.index = q.index, p.logit = q.logit;
            merge_lse(p.max, p.sum, q.max, q.sum);
        }
    return p;
}

// The position of (logit l, vocabulary index v) in the row sorted by descending logit, then ascending
// index (the plain sampler's order): smaller keys come first. The logit's bits are mapped to an order-
// reversing integer (−0 as +0, since the two compare equal).
__device__ __forceinline__ uint64_t order_key(float l, int64_t index) {
    const uint32_t bits = __float_as_uint(l == 0.f ? 0.f : l);
    const uint32_t ascending = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
    return (uint64_t(~ascending) << 32) | uint32_t(index);
}

// One block per (segment of kGroups·4·256 entries of a chunk, row). logits: [B, ld] fp32, the chunk's
// columns [0, width) hold vocabulary entries v0 + column; v0 is a multiple of the segment.
// partials[b·parts_per_row + v0/segment + blockIdx.x]. kFiltered: only entries whose order key is at
// most boundaries[b] can be drawn (top-k, top-p, min-p); the logsumexp still takes every entry.
template <int kGroups, bool kGreedy, bool kLogprobs, bool kFiltered = false>
__global__ void __launch_bounds__(kThreads) reduce_chunk_kernel(const float* __restrict__ logits, int64_t ld, int64_t v0,
                                                                int64_t width, const NoiseKey* __restrict__ keys,
                                                                double inv_temperature, Partial* __restrict__ partials,
                                                                int64_t parts_per_row,
                                                                const uint64_t* __restrict__ boundaries = nullptr) {
    constexpr int kSegment = kGroups * 4 * kThreads;
    __shared__ Partial merge_scratch[kWarps];
    __shared__ float max_scratch[kWarps];
    const int64_t b = blockIdx.y;
    const float* row = logits + b * ld;
    NoiseKey key{};
    if constexpr (!kGreedy) key = keys[b];  // greedy runs take no keys
    const float inv_t = float(inv_temperature);
    float l[kGroups][4], approx[kGroups][4];
    uint32_t words[kGroups][4];
    Partial mine{-INFINITY, INT_MAX, 0.f, -INFINITY, 0.f};
    float best_approx = -INFINITY;
#pragma unroll
    for (int g = 0; g < kGroups; ++g) {
        const int64_t column = int64_t(blockIdx.x) * kSegment + (int64_t(g) * kThreads + threadIdx.x) * 4;
        if (column + 4 <= width) {
            const float4 x = *reinterpret_cast<const float4*>(row + column);
            l[g][0] = x.x, l[g][1] = x.y, l[g][2] = x.z, l[g][3] = x.w;
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j) l[g][j] = column + j < width ? row[column + j] : -INFINITY;
        }
        if constexpr (!kGreedy) {
            noise::philox4x32_words(key.seed, key.stream, key.counter + uint64_t(v0 + column) / 4, words[g]);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                bool drawable = l[g][j] != -INFINITY;
                if constexpr (kFiltered) drawable = drawable && order_key(l[g][j], v0 + column + j) <= boundaries[b];
                approx[g][j] = drawable ? l[g][j] * inv_t + gumbel_from_word_float(words[g][j]) : -INFINITY;
                best_approx = fmaxf(best_approx, approx[g][j]);
            }
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            if (l[g][j] == -INFINITY) continue;
            if constexpr (kGreedy)
                if (l[g][j] > mine.score) mine.score = l[g][j], mine.index = int32_t(v0 + column + j), mine.logit = l[g][j];
            if constexpr (kLogprobs) merge_lse(mine.max, mine.sum, l[g][j], 1.f);
        }
    }
    if constexpr (!kGreedy) {
        // Only entries whose float score is within the bound of the block's best can be its exact argmax.
        const float block_best = block_max(best_approx, max_scratch);
        const float threshold = block_best - (2e-4f + 8e-6f * fabsf(block_best));
#pragma unroll
        for (int g = 0; g < kGroups; ++g)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                if (!(approx[g][j] >= threshold)) continue;
                // A filtered block may have nothing to draw (its threshold is −inf then); unfiltered, an
                // all −inf row still draws its first index, as the CPU does.
                if constexpr (kFiltered)
                    if (approx[g][j] == -INFINITY) continue;
                const int64_t column = int64_t(blockIdx.x) * kSegment + (int64_t(g) * kThreads + threadIdx.x) * 4 + j;
                const double score = double(l[g][j]) * inv_temperature + noise::gumbel_from_word(words[g][j]);
                if (beats(score, int32_t(v0 + column), mine.score, mine.index))
                    mine.score = score, mine.index = int32_t(v0 + column), mine.logit = l[g][j];
            }
    }
    const Partial merged = block_merge(mine, merge_scratch);
    if (threadIdx.x == 0) partials[b * parts_per_row + v0 / kSegment + blockIdx.x] = merged;
}

// One warp per row: merge the row's partials in any order (ties to the lower index) → token, logprob.
__global__ void finalize_kernel(const Partial* __restrict__ partials, int64_t parts_per_row, int64_t B,
                                int32_t* __restrict__ tokens, float* __restrict__ logprobs) {
    const int64_t b = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (b >= B) return;
    Partial p{-INFINITY, INT_MAX, 0.f, -INFINITY, 0.f};
    for (int64_t i = lane; i < parts_per_row; i += 32) {
        const Partial q = partials[b * parts_per_row + i];
        if (beats(q.score, q.index, p.score, p.index)) p.score = q.score, p.index = q.index, p.logit = q.logit;
        merge_lse(p.max, p.sum, q.max, q.sum);
    }
    for (int o = 16; o > 0; o >>= 1) {
        Partial q;
        q.score = __shfl_xor_sync(0xffffffffu, p.score, o);
        q.index = __shfl_xor_sync(0xffffffffu, p.index, o);
        q.logit = __shfl_xor_sync(0xffffffffu, p.logit, o);
        q.max = __shfl_xor_sync(0xffffffffu, p.max, o);
        q.sum = __shfl_xor_sync(0xffffffffu, p.sum, o);
        if (beats(q.score, q.index, p.score, p.index)) p.score = q.score, p.index = q.index, p.logit = q.logit;
        merge_lse(p.max, p.sum, q.max, q.sum);
    }
    if (lane == 0) {
        tokens[b] = p.index;
        if (logprobs) logprobs[b] = p.logit - (p.max + logf(p.sum));
    }
}

// The filters of the plain sampler (infer/sampling.cpp), on one materialised row.
struct Filters {
    int64_t top_k;  // 0: off
    double top_p;   // 1: off
    double min_p;   // 0: off
    double temperature;
};

// The weight exp((l − max)/T) of an entry, as the plain sampler forms it (in double).
__device__ __forceinline__ double filter_weight(float l, float max, double temperature) {
    return exp((double(l) - double(max)) / temperature);
}

// The logit an order key was made from (order_key's inverse on its high half).
__device__ __forceinline__ float logit_of(uint64_t key) {
    const uint32_t ascending = ~uint32_t(key >> 32);
    return __uint_as_float((ascending & 0x80000000u) ? (ascending & 0x7fffffffu) : ~ascending);
}

// The filter kernel's block: a row is one block's, so at small B the block alone hides the latency.
constexpr int kFilterThreads = 1024;
constexpr int kFilterWarps = kFilterThreads / 32;
// Keys a block gathers in shared memory once the bucket being refined holds no more (32 KiB).
constexpr int kGathered = 4096;

// Radix selection over the order keys of one row that are at most `limit`, 8 bits a pass from the top.
// By count (by_mass false): the key with `target` keys before it. By mass: the first key at which the
// running sum of weights (in key order) reaches `target`, or the last key when rounding keeps the sum
// below it (the plain sampler then keeps every entry). Once the bucket being refined holds at most
// kGathered keys they are gathered in shared memory, and the later passes read them instead of the row
// (the kept sets are small next to V). Called by the whole block; every thread returns the key.
__device__ uint64_t radix_select(const float* row, int64_t V, uint64_t limit, bool by_mass, double target, float max,
                                 double temperature) {
    __shared__ unsigned counts[256];
    __shared__ double masses[256];
    __shared__ uint64_t gathered[kGathered];
    __shared__ double warp_staging[kFilterWarps][32];
    __shared__ unsigned gathered_count;
    __shared__ uint64_t chosen;
    __shared__ unsigned chosen_count;
    uint64_t prefix = 0;
    bool from_row = true;
    double before = 0;  // thread 0's: the count or mass of the keys before the chosen buckets
    for (int pass = 0; pass < 8; ++pass) {
        const int shift = 56 - 8 * pass;
        const uint64_t high = pass == 0 ? 0 : ~uint64_t(0) << (shift + 8);
        for (int d = threadIdx.x; d < 256; d += blockDim.x) counts[d] = 0, masses[d] = 0;
        __syncthreads();
        // Called by every lane of a warp together: lanes with the same digit add through their lowest lane
        // (the logits crowd into a few buckets, and 32 lanes' atomics on one would run one after another).
        double* staging = warp_staging[threadIdx.x / 32];
        const int lane = threadIdx.x % 32;
        const auto count = [&](uint64_t key, bool present) {
            const bool valid = present && key <= limit && (key & high) == prefix;
            const int digit = valid ? int(key >> shift) & 255 : -1;
            const unsigned peers = __match_any_sync(0xffffffffu, digit);
            staging[lane] = valid && by_mass ? filter_weight(logit_of(key), max, temperature) : 0.0;
            __syncwarp();
            if (valid && lane == __ffs(peers) - 1) {
                atomicAdd(&counts[digit], unsigned(__popc(peers)));
                if (by_mass) {
                    double sum = 0;
                    for (unsigned m = peers; m; m &= m - 1) sum += staging[__ffs(m) - 1];
                    atomicAdd(&masses[digit], sum);
                }
            }
            __syncwarp();
        };
        if (from_row)
            for (int64_t base = 0; base < V; base += blockDim.x) {
                const int64_t i = base + threadIdx.x;
                count(i < V ? order_key(row[i], i) : 0, i < V);
            }
        else
            for (unsigned base = 0; base < gathered_count; base += blockDim.x) {
                const unsigned i = base + threadIdx.x;
                count(i < gathered_count ? gathered[i] : 0, i < gathered_count);
            }
        __syncthreads();
        if (threadIdx.x == 0) {
            int pick = -1, last = -1;
            for (int d = 0; d < 256 && pick < 0; ++d) {
                if (counts[d] == 0) continue;
                last = d;
                const double here = by_mass ? masses[d] : double(counts[d]);
                if (by_mass ? before + here >= target : target < before + here) pick = d;
                else before += here;
            }
            if (pick < 0) {  // the sum fell short of the target by rounding: the last key, from here on
                pick = last;
                target = INFINITY;
            }
            chosen = prefix | (uint64_t(pick) << shift);
            chosen_count = counts[pick];
            if (from_row) gathered_count = 0;
        }
        __syncthreads();
        prefix = chosen;
        if (from_row && pass < 7 && chosen_count <= kGathered) {
            // Gather the chosen bucket's keys: the later passes look at nothing else.
            const uint64_t bucket = ~uint64_t(0) << shift;
            for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
                const uint64_t key = order_key(row[i], i);
                if (key <= limit && (key & bucket) == prefix) gathered[atomicAdd(&gathered_count, 1u)] = key;
            }
            from_row = false;
        }
        __syncthreads();  // before thread 0 writes the shared values again
    }
    return prefix;
}

// One block per materialised row: the boundary key of its kept set (top-k, then top-p over the top-k
// set's mass, then min-p, each a prefix of the sorted row; infer/sampling.cpp).
__global__ void __launch_bounds__(kFilterThreads) filter_kernel(const float* __restrict__ logits, int64_t ld, int64_t V,
                                                                Filters f, uint64_t* __restrict__ boundaries) {
    __shared__ float max_scratch[kFilterWarps];
    __shared__ double sum_scratch[kFilterWarps];
    __shared__ unsigned long long last_key;
    const float* row = logits + int64_t(blockIdx.x) * ld;
    float max = -INFINITY;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) max = fmaxf(max, row[i]);
    max = block_max(max, max_scratch);
    uint64_t bound = ~uint64_t(0);
    if (f.top_k > 0 && f.top_k < V) bound = radix_select(row, V, bound, false, double(f.top_k - 1), max, f.temperature);
    if (f.top_p < 1) {
        double total = 0;
        for (int64_t i = threadIdx.x; i < V; i += blockDim.x)
            if (order_key(row[i], i) <= bound) total += filter_weight(row[i], max, f.temperature);
        for (int o = 16; o > 0; o >>= 1) total += __shfl_xor_sync(0xffffffffu, total, o);
        if (threadIdx.x % 32 == 0) sum_scratch[threadIdx.x / 32] = total;
        __syncthreads();
        total = 0;
        for (int w = 0; w < kFilterWarps; ++w) total += sum_scratch[w];
        bound = radix_select(row, V, bound, true, f.top_p * total, max, f.temperature);
    }
    if (f.min_p > 0) {
        // The kept entries of weight ≥ min_p (the top one's is 1): the last such key. The top entry always
        // qualifies, so one is found.
        if (threadIdx.x == 0) last_key = 0;
        __syncthreads();
        // The exponent x = (l − max)/T decides w = e^x ≥ min_p by itself away from log min_p; only near it
        // is the weight formed, so the comparison is the plain sampler's.
        const double log_min_p = log(f.min_p);
        unsigned long long mine = 0;
        for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
            const uint64_t key = order_key(row[i], i);
            if (key > bound || key <= mine) continue;
            const double x = (double(row[i]) - double(max)) / f.temperature;
            const bool kept = fabs(x - log_min_p) > 1e-9 ? x > log_min_p
                                                          : filter_weight(row[i], max, f.temperature) >= f.min_p;
            if (kept) mine = key;
        }
        atomicMax(&last_key, mine);
        __syncthreads();
        bound = last_key;
    }
    if (threadIdx.x == 0) boundaries[blockIdx.x] = bound;
}

// Vocabulary columns per GEMM: the widest tried (dev/cuda/NOTES_lm_head_sample.md); the fp32 buffer is
// B × kChunk × 4 bytes (32 MB at B = 256).
constexpr int64_t kChunk = 32768;
constexpr size_t kWorkspaceBytes = size_t(32) << 20;

void check_lt(cublasStatus_t status, const char* what) {
    if (status != CUBLAS_STATUS_SUCCESS) fail("lm_head_sample (CUDA): {} failed: cuBLASLt status {}", what, int(status));
}

cublasLtHandle_t lt_handle() {
    static cublasLtHandle_t handle = [] {
        cublasLtHandle_t h;
        check_lt(cublasLtCreate(&h), "cublasLtCreate");
        return h;
    }();
    return handle;
}

// C (column-major [m, B], ld ldc) = A[D, m]ᵀ · H[D, B]: the row-major logits [B, m] of one chunk.
struct Gemm {
    cublasLtMatmulDesc_t op{};
    cublasLtMatrixLayout_t a{}, b{}, c{};
    cublasLtMatmulHeuristicResult_t algo{};

    Gemm(int64_t m, int64_t B, int64_t D, int64_t ldc, bool fp32_inputs) {
        const cudaDataType in = fp32_inputs ? CUDA_R_32F : CUDA_R_16BF;
        check_lt(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
        const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
        check_lt(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "set TRANSA");
        check_lt(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "set TRANSB");
        check_lt(cublasLtMatrixLayoutCreate(&a, in, uint64_t(D), uint64_t(m), D), "layout of weight");
        check_lt(cublasLtMatrixLayoutCreate(&b, in, uint64_t(D), uint64_t(B), D), "layout of hidden");
        check_lt(cublasLtMatrixLayoutCreate(&c, CUDA_R_32F, uint64_t(m), uint64_t(B), ldc), "layout of logits");
        cublasLtMatmulPreference_t pref;
        check_lt(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
        check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &kWorkspaceBytes,
                                                      sizeof kWorkspaceBytes),
                 "set workspace");
        int found = 0;
        check_lt(cublasLtMatmulAlgoGetHeuristic(lt_handle(), op, a, b, c, c, pref, 1, &algo, &found),
                 "cublasLtMatmulAlgoGetHeuristic");
        cublasLtMatmulPreferenceDestroy(pref);
        LINARCH_CHECK(found > 0, "lm_head_sample (CUDA): cuBLASLt has no GEMM for m={}, B={}, D={} ({})", m, B, D,
                      fp32_inputs ? "fp32" : "bf16");
    }
    void run(const void* A, const void* H, float* C, void* workspace) const {
        const float alpha = 1.f, beta = 0.f;
        check_lt(cublasLtMatmul(lt_handle(), op, &alpha, A, a, H, b, &beta, C, c, C, c, &algo.algo, workspace,
                                kWorkspaceBytes, cudaStreamPerThread),
                 "cublasLtMatmul");
    }
};

// The GEMM of a chunk of width m, made once per shape (the heuristic query costs more than a small GEMM).
const Gemm& gemm_for(int64_t m, int64_t B, int64_t D, int64_t ldc, bool fp32_inputs) {
    static std::mutex mutex;
    static std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, bool>, Gemm> plans;
    const std::lock_guard<std::mutex> lock(mutex);
    const auto key = std::make_tuple(m, B, D, ldc, fp32_inputs);
    auto it = plans.find(key);
    if (it == plans.end()) it = plans.emplace(key, Gemm(m, B, D, ldc, fp32_inputs)).first;
    return it->second;
}

template <int G, bool kGreedy, bool kLogprobs, bool kFiltered = false>
void reduce(const float* buffer, int64_t ld, int64_t v0, int64_t width, const NoiseKey* keys, double inv_t, Partial* partials,
            int64_t B, int64_t parts_per_row, const uint64_t* boundaries = nullptr) {
    constexpr int64_t segment = int64_t(G) * 4 * kThreads;
    const dim3 grid(unsigned((width + segment - 1) / segment), unsigned(B));
    reduce_chunk_kernel<G, kGreedy, kLogprobs, kFiltered><<<grid, kThreads, 0, cudaStreamPerThread>>>(
        buffer, ld, v0, width, keys, inv_t, partials, parts_per_row, boundaries);
    check_launch("reduce_chunk_kernel");
}

template <int G>
void reduce_mode(bool greedy, bool logprobs, const float* buffer, int64_t ld, int64_t v0, int64_t width, const NoiseKey* keys,
                 double inv_t, Partial* partials, int64_t B, int64_t parts_per_row) {
    if (greedy) {
        if (logprobs) reduce<G, true, true>(buffer, ld, v0, width, keys, inv_t, partials, B, parts_per_row);
        else reduce<G, true, false>(buffer, ld, v0, width, keys, inv_t, partials, B, parts_per_row);
    } else {
        if (logprobs) reduce<G, false, true>(buffer, ld, v0, width, keys, inv_t, partials, B, parts_per_row);
        else reduce<G, false, false>(buffer, ld, v0, width, keys, inv_t, partials, B, parts_per_row);
    }
}

bool filters_on(const LmHeadSample& a) {
    return a.temperature > 0 && ((a.top_k > 0 && a.top_k < a.V) || a.top_p < 1 || a.min_p > 0);
}

// Logits materialised at once for the filters: up to 256 MB of fp32 rows (~440 rows at V = 151936), so
// that the filter kernel has a block per row on every SM.
constexpr int64_t kFilterBytes = int64_t(256) << 20;

// The filtered draws: per group of rows, the whole rows' logits, their boundaries, then the reduction
// over each whole row within its boundary, into the same partials as the unfiltered path.
template <int G>
void sample_filtered(const LmHeadSample& a, const NoiseKey* keys, Partial* partials, int64_t parts_per_row,
                     void* workspace) {
    const int64_t ld = (a.V + 3) / 4 * 4;  // rows start 16-byte aligned (float4 loads)
    const size_t element = a.fp32_inputs ? 4 : 2;
    const int64_t by_memory = std::max<int64_t>(1, kFilterBytes / (ld * int64_t(sizeof(float))));
    const int64_t group = std::min(a.materialised_rows > 0 ? a.materialised_rows : by_memory, a.B);
    DeviceBuffer logits(size_t(group * ld) * sizeof(float)), boundaries(size_t(a.B) * sizeof(uint64_t));
    const Filters filters{a.top_k, a.top_p, a.min_p, a.temperature};
    for (int64_t r0 = 0; r0 < a.B; r0 += group) {
        const int64_t rows = std::min(group, a.B - r0);
        const void* hidden = static_cast<const char*>(a.hidden) + size_t(r0 * a.D) * element;
        for (int64_t v0 = 0; v0 < a.V; v0 += kChunk)
            gemm_for(std::min(kChunk, a.V - v0), rows, a.D, ld, a.fp32_inputs)
                .run(static_cast<const char*>(a.weight) + size_t(v0 * a.D) * element, hidden, logits.as<float>() + v0,
                     workspace);
        uint64_t* row_boundaries = boundaries.as<uint64_t>() + r0;
        filter_kernel<<<unsigned(rows), kFilterThreads, 0, cudaStreamPerThread>>>(logits.as<float>(), ld, a.V, filters,
                                                                                  row_boundaries);
        check_launch("filter_kernel");
        if (a.logprobs)
            reduce<G, false, true, true>(logits.as<float>(), ld, 0, a.V, keys + r0, 1.0 / a.temperature,
                                         partials + r0 * parts_per_row, rows, parts_per_row, row_boundaries);
        else
            reduce<G, false, false, true>(logits.as<float>(), ld, 0, a.V, keys + r0, 1.0 / a.temperature,
                                          partials + r0 * parts_per_row, rows, parts_per_row, row_boundaries);
    }
}

}  // namespace

void lm_head_sample(const LmHeadSample& a) {
    LINARCH_CHECK(a.B >= 1 && a.B < 65536, "lm_head_sample (CUDA): B = {} rows, expected 1 to 65535", a.B);
    LINARCH_CHECK(a.V < INT_MAX, "lm_head_sample (CUDA): V = {} does not fit the int32 token ids", a.V);
    // Two Philox blocks (8 entries) a thread from 32 rows up; one below, for more blocks over few rows.
    const int groups = a.B < 32 ? 1 : 2;
    const int64_t segment = int64_t(groups) * 4 * kThreads;
    const int64_t parts_per_row = (a.V + segment - 1) / segment;
    DeviceBuffer workspace(kWorkspaceBytes), partials(size_t(a.B * parts_per_row) * sizeof(Partial)),
        keys(size_t(a.B) * sizeof(NoiseKey)), tokens(size_t(a.B) * sizeof(int32_t));
    const bool greedy = a.temperature == 0;
    if (!greedy) {
        const cudaError_t status = cudaMemcpyAsync(keys.as<void>(), a.keys, size_t(a.B) * sizeof(NoiseKey),
                                                   cudaMemcpyHostToDevice, cudaStreamPerThread);
        if (status != cudaSuccess) fail("lm_head_sample (CUDA): copying the stream keys: {}", cudaGetErrorString(status));
    }
    const auto* key_ptr = keys.as<NoiseKey>();
    auto* partial_ptr = partials.as<Partial>();
    if (filters_on(a)) {
        if (groups == 1) sample_filtered<1>(a, key_ptr, partial_ptr, parts_per_row, workspace.as<void>());
        else sample_filtered<2>(a, key_ptr, partial_ptr, parts_per_row, workspace.as<void>());
    } else {
        const double inv_t = greedy ? 1.0 : 1.0 / a.temperature;
        const size_t element = a.fp32_inputs ? 4 : 2;
        const int64_t chunk = std::min(kChunk, a.V);
        const int64_t ld = (chunk + 3) / 4 * 4;  // rows of the buffer start 16-byte aligned (float4 loads)
        DeviceBuffer logits(size_t(a.B * ld) * sizeof(float));
        for (int64_t v0 = 0; v0 < a.V; v0 += chunk) {
            const int64_t width = std::min(chunk, a.V - v0);
            gemm_for(width, a.B, a.D, ld, a.fp32_inputs)
                .run(static_cast<const char*>(a.weight) + size_t(v0 * a.D) * element, a.hidden, logits.as<float>(),
                     workspace.as<void>());
            if (groups == 1)
                reduce_mode<1>(greedy, a.logprobs != nullptr, logits.as<float>(), ld, v0, width, key_ptr, inv_t,
                               partial_ptr, a.B, parts_per_row);
            else
                reduce_mode<2>(greedy, a.logprobs != nullptr, logits.as<float>(), ld, v0, width, key_ptr, inv_t,
                               partial_ptr, a.B, parts_per_row);
        }
    }
    finalize_kernel<<<unsigned((a.B + 3) / 4), 128, 0, cudaStreamPerThread>>>(
        partials.as<Partial>(), parts_per_row, a.B, tokens.as<int32_t>(), a.logprobs);
    check_launch("finalize_kernel");
    copy_to_host(a.tokens, tokens.as<void>(), size_t(a.B) * sizeof(int32_t));  // synchronises the stream
}

}  // namespace linarch::cuda
