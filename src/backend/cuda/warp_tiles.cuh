// Warp-level tensor-core tiles for the chunkwise kernels: a warp owns 16 rows of a product and
// accumulates op(A)·op(B) from bf16 shared memory (either operand may be stored transposed), or from an
// accumulator tile of its own turned into A fragments (FlashAttention-2's register trick).
//
// Accumulator layout (mma.sync m16n8k16): acc[nt][e] holds row g + 8·(e ≥ 2) and column
// 8·nt + 2·t4 + (e & 1) of the warp's 16 × 8·NT tile, with g = lane / 4 and t4 = lane % 4.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "backend/cuda/mma_ptx.cuh"

namespace linarch::cuda {

template <int NT> __device__ __forceinline__ void zero_tile(float (&acc)[NT][4]) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
}

// acc += op(A)[m0 .. m0+15, k0 .. k1) · op(B)[k0 .. k1, n0 .. n0 + 8·NT), skipping the 16-column pairs
// of n-tiles outside [np_begin, np_end). A(m, k) = a[m·lda + k], or a[k·lda + m] when A_T; B(k, n) =
// b[k·ldb + n], or b[n·ldb + k] when B_T. k0 and k1 are multiples of 16.
template <int NT, bool A_T, bool B_T>
__device__ __forceinline__ void mma_tile(float (&acc)[NT][4], const __nv_bfloat16* a, int lda, int m0,
                                         const __nv_bfloat16* b, int ldb, int n0, int k0, int k1, int np_begin = 0,
                                         int np_end = NT / 2) {
    const int lane = threadIdx.x % 32, mi = lane / 8, r8 = lane % 8;
    for (int k = k0; k < k1; k += 16) {
        uint32_t af[4];
        if constexpr (A_T) ldmatrix_x4_trans(af, a + (k + (mi / 2) * 8 + r8) * lda + m0 + (mi % 2) * 8);
        else ldmatrix_x4(af, a + (m0 + lane % 16) * lda + k + (lane / 16) * 8);
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
            if (np < np_begin || np >= np_end) continue;
            uint32_t bf[4];
            if constexpr (B_T) ldmatrix_x4(bf, b + (n0 + np * 16 + (mi / 2) * 8 + r8) * ldb + k + (mi % 2) * 8);
            else ldmatrix_x4_trans(bf, b + (k + (mi % 2) * 8 + r8) * ldb + n0 + np * 16 + (mi / 2) * 8);
            mma_bf16(acc[2 * np], af, bf[0], bf[1]);
            mma_bf16(acc[2 * np + 1], af, bf[2], bf[3]);
        }
    }
}

// The A fragments (bf16) of a warp's 16 × 16·KT accumulator tile: k-block kk is columns 16kk .. 16kk+15.
template <int KT>
__device__ __forceinline__ void to_a_fragments(uint32_t (&pa)[KT][4], const float (&acc)[2 * KT][4]) {
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
        pa[kk][0] = pack_bf16(acc[2 * kk][0], acc[2 * kk][1]);
        pa[kk][1] = pack_bf16(acc[2 * kk][2], acc[2 * kk][3]);
        pa[kk][2] = pack_bf16(acc[2 * kk + 1][0], acc[2 * kk + 1][1]);
        pa[kk][3] = pack_bf16(acc[2 * kk + 1][2], acc[2 * kk + 1][3]);
    }
}

// acc += P · op(B) for P given as A fragments, k-blocks kb_begin .. kb_end − 1 of 16 (B as in mma_tile,
// its k index 16·kk + …).
template <int NT, int KT, bool B_T>
__device__ __forceinline__ void mma_tile_from_fragments(float (&acc)[NT][4], const uint32_t (&pa)[KT][4], int kb_begin,
                                                        int kb_end, const __nv_bfloat16* b, int ldb, int n0) {
    const int lane = threadIdx.x % 32, mi = lane / 8, r8 = lane % 8;
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
        if (kk < kb_begin || kk >= kb_end) continue;
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
            uint32_t bf[4];
            if constexpr (B_T) ldmatrix_x4(bf, b + (n0 + np * 16 + (mi / 2) * 8 + r8) * ldb + kk * 16 + (mi % 2) * 8);
            else ldmatrix_x4_trans(bf, b + (kk * 16 + (mi % 2) * 8 + r8) * ldb + n0 + np * 16 + (mi / 2) * 8);
            mma_bf16(acc[2 * np], pa[kk], bf[0], bf[1]);
            mma_bf16(acc[2 * np + 1], pa[kk], bf[2], bf[3]);
        }
    }
}

// Sum over the four lanes of a quad (one accumulator row's lanes).
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    x += __shfl_xor_sync(0xffffffffu, x, 2);
    return x;
}

// Starts copying `rows` token rows of a [B,T,H,width] bf16 array from token0 = (b·T + t0)·H + h (columns
// col0 .. col0 + cols, a multiple of 8) into shared memory rows of `stride` elements, by cp.async from
// every thread of the block; rows rows .. tile_rows − 1 (past T) are zero-filled.
__device__ __forceinline__ void load_rows(__nv_bfloat16* dst, int stride, const __nv_bfloat16* src, size_t token0,
                                          int H, int width, int col0, int cols, int rows, int tile_rows = 64) {
    const int vecs = cols / 8;
    for (int idx = threadIdx.x; idx < tile_rows * vecs; idx += blockDim.x) {
        const int r = idx / vecs, c = (idx % vecs) * 8;
        const bool valid = r < rows;
        cp_async16(dst + r * stride + c, src + (token0 + size_t(valid ? r : 0) * H) * width + col0 + c, valid);
    }
}

// out[8·nt + 0, 1] += scale · (acc[nt][2·half], acc[nt][2·half + 1]) (+ extra[nt]) for one accumulator row
// of a lane, out bf16. Every load is issued before any store: interleaved, each load waited for the
// previous store (the compiler cannot tell the rows apart): 230k of ~280k cycles a block in the WY backward.
template <int NT>
__device__ __forceinline__ void add_row_into_bf16(__nv_bfloat16* out, const float (&acc)[NT][4], int half, float scale,
                                                  const float* extra = nullptr) {
    uint32_t old[NT];
    float2 more[NT];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        old[nt] = *reinterpret_cast<const uint32_t*>(out + nt * 8);
        more[nt] = extra != nullptr ? *reinterpret_cast<const float2*>(extra + nt * 8) : make_float2(0.f, 0.f);
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        const float2 o = unpack_bf16(old[nt]);
        *reinterpret_cast<uint32_t*>(out + nt * 8) = pack_bf16(o.x + scale * acc[nt][2 * half] + more[nt].x,
                                                               o.y + scale * acc[nt][2 * half + 1] + more[nt].y);
    }
}

// G_i, the inclusive cumulative sum of a chunk's 64 scalar log gates (fp32), into gs[64], by one warp, two
// tokens a lane; log_gate[token0 + r·H] is token r's gate; rows past `rows` (past T) have gate 0.
__device__ __forceinline__ void chunk_cumulative_gate(float* gs, const float* log_gate, size_t token0, int H,
                                                      int rows) {
    const int lane = threadIdx.x % 32;
    float g0 = 0.f, g1 = 0.f;
    if (log_gate != nullptr) {
        if (2 * lane < rows) g0 = log_gate[token0 + size_t(2 * lane) * H];
        if (2 * lane + 1 < rows) g1 = log_gate[token0 + size_t(2 * lane + 1) * H];
    }
    float x = g0 + g1;
#pragma unroll
    for (int off = 1; off < 32; off *= 2) {
        const float y = __shfl_up_sync(0xffffffffu, x, off);
        if (lane >= off) x += y;
    }
    gs[2 * lane] = x - g1;
    gs[2 * lane + 1] = x;
}

}  // namespace linarch::cuda
