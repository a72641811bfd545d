// CUDA chunkwise forward and backward of gated linear attention with a gate per key dimension (GLA,
// mixers.md §4), bf16 on the tensor cores (linear_attention_chunkwise.hpp):
//     S_t = diag(exp(g_t)) S_{t−1} + k_tᵀ v_t,   o_t = scale · q_t S_t      (g_t ≤ 0, [B,T,H,Dk])
// Within a chunk of 64 tokens, with G the fp32 inclusive cumulative log gate (per key dimension) and
// L the chunk's last token:
//     o_t  = scale · (q̂_t S_0 + Σ_{s≤t} A_ts v_s),     q̂_t = q_t ⊙ e^{G_t},   A_ts = Σ_i q_ti k_si e^{G_ti − G_si}
//     S_L  = diag(e^{G_L}) S_0 + Σ_s k̂_sᵀ v_s,         k̂_s = k_s ⊙ e^{G_L − G_s}
// Only differences with the later token first are exponentiated (≤ 0: nothing overflows however strong
// the gates, mixers.md §13). gla_intra_kernel forms q̂, k̂, e^{G_L} and A for every chunk in parallel;
// the linear-attention walk (linear_attention_chunkwise.cu) then runs over q̂, k̂ with A in place of its
// masked q kᵀ and decays the state's rows by e^{G_L}.
// A is built from 16-token sub-chunks, as fla's chunk_gla: a block (I, J), I > J, factors through the
// first token r = 16I of the query sub-chunk,
//     e^{G_t − G_s} = e^{G_t − G_r} · e^{G_r − G_s}        (t ≥ r > s: both factors ≤ 1),
// so it is one tensor-core product of rescaled bf16 tiles; the diagonal blocks take e^{G_t − G_s} per
// element in fp32 (no reference point keeps both factors ≤ 1 there).
//
// The backward, given dO and dS_L (q̂, k̂, A as above, γ = e^{G_L}):
//     dS_0 = diag(γ) dS_L + scale · q̂ᵀ dO                                     (a walk over the chunks)
//     dq̂ = scale · dO S_0ᵀ,  dk̂ = v dS_Lᵀ,  dv = scale · Aᵀ dO + k̂ dS_L,
//     dA = scale · dO vᵀ (lower),  dγ_i = Σ_j (S_0 ⊙ dS_L)_ij                 (chunk by chunk)
//     dq_t = dq̂_t ⊙ e^{G_t} + Σ_{s≤t} dA_ts k_s ⊙ e^{G_t − G_s},
//     dk_s = dk̂_s ⊙ e^{G_L − G_s} + Σ_{t≥s} dA_ts q_t ⊙ e^{G_t − G_s},
//     ∂L/∂G_t = q_t ⊙ dq_t − k_t ⊙ dk_t   (+ at t = L: Σ_s k̂_s ⊙ dk̂_s + γ ⊙ dγ),
//     dg_t = Σ_{t' ≥ t in the chunk} ∂L/∂G_t'                                  (chunk by chunk)
// (q_t enters only through factors e^{G_t}, k_t only through e^{−G_t}: hence ∂L/∂G.) Four steps, none with
// atomics, so the gradients are deterministic:
//   1. the forward again (gla_intra_kernel and the walk), keeping S_0 of every chunk (bf16);
//   2. gla_state_backward_kernel: the chunks in reverse, dS in fp32 registers per (sequence, head, 64 value
//      columns); writes dS_L of every chunk (bf16) and adds dS_0 of the first into dinitial_state;
//   3. gla_chunk_grads_kernel: every chunk in parallel: dq̂, dk̂, dA (bf16), dγ, and adds dv;
//   4. gla_intra_backward_kernel: every chunk in parallel: through the gates to dq, dk and dg (the
//      sub-chunk products again, transposed).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "backend/cuda/linear_attention_chunkwise.hpp"
#include "backend/cuda/mma_ptx.cuh"
#include "backend/cuda/warp_tiles.cuh"
#include "core/error.hpp"

namespace linarch::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kChunk = 64;
constexpr int kSubChunk = 16;  // a warp's rows
constexpr int kValueTile = 64;
constexpr int kThreads = 128;
constexpr int kTileStride = kChunk + 8;  // a 64 × 64 bf16 matrix's padded rows

// Starts copying `rows` token rows of the [B,T,H,DK] fp32 log gate into shared memory rows of `stride`
// floats; rows past T get gate 0, so the chunk's total decay is its last token's.
template <int DK>
__device__ __forceinline__ void load_gate_rows(float* dst, int stride, const float* log_gate, size_t token0, int H,
                                               int rows) {
    constexpr int vecs = DK / 4;
    for (int idx = threadIdx.x; idx < kChunk * vecs; idx += kThreads) {
        const int r = idx / vecs, c = (idx % vecs) * 4;
        const bool valid = r < rows;
        cp_async16(dst + r * stride + c, log_gate + (token0 + size_t(valid ? r : 0) * H) * DK + c, valid);
    }
}

// G: the inclusive cumulative sum down each column of the chunk's gates, in place (a thread per column).
template <int DK> __device__ __forceinline__ void cumulate_gate_columns(float* gs, int stride) {
    for (int i = threadIdx.x; i < DK; i += kThreads) {
        float acc = 0.f;
        for (int r = 0; r < kChunk; ++r) {
            acc += gs[r * stride + i];
            gs[r * stride + i] = acc;
        }
    }
}

// dst[r][i] = src[r][i] · e^{sign · (G[r][i] − G_ref[i])} for rows r of a warp's tile (both bf16), two
// columns a lane-step; the caller's signs keep the exponent ≤ 0.
template <int DK>
__device__ __forceinline__ void rescale_rows(bf16* dst, const bf16* src, int stride, const float* gs, int g_stride,
                                             const float* g_ref, float sign, int rows) {
    const int lane = threadIdx.x % 32;
    for (int idx = lane; idx < rows * (DK / 2); idx += 32) {
        const int r = idx / (DK / 2), i = (idx % (DK / 2)) * 2;
        const float2 x = unpack_bf16(*reinterpret_cast<const uint32_t*>(src + r * stride + i));
        const float2 gr = *reinterpret_cast<const float2*>(gs + r * g_stride + i);
        const float2 ref = *reinterpret_cast<const float2*>(g_ref + i);
        *reinterpret_cast<uint32_t*>(dst + r * stride + i) =
            pack_bf16(x.x * __expf(sign * (gr.x - ref.x)), x.y * __expf(sign * (gr.y - ref.y)));
    }
}

// ---- forward: q̂, k̂, e^{G_L} and A per chunk ----

struct IntraParams {
    const bf16* q;
    const bf16* k;
    const float* log_gate;
    bf16* q_hat;       // [B,T,H,Dk]
    bf16* k_hat;       // [B,T,H,Dk]
    bf16* a_intra;     // [B,T,H,64]: row t's A_ts over the chunk's tokens s, zero for s > t
    float* row_decay;  // e^{G_L} [B, chunks, H, Dk]
    int seq_len, heads;
};

template <int DK> struct IntraLayout {
    static constexpr int qk_stride = DK + 8;  // bf16; rows padded by 16 bytes for ldmatrix
    static constexpr int g_stride = DK + 4;   // fp32
    static constexpr int q_off = 0;
    static constexpr int k_off = q_off + kChunk * qk_stride * 2;
    static constexpr int g_off = k_off + kChunk * qk_stride * 2;
    static constexpr int a_off = g_off + kChunk * g_stride * 4;
    static constexpr int scratch_off = a_off + kChunk * kTileStride * 2;
    // Warp w's rescaled tiles: its 16 query rows, then the 16w key rows before them.
    static constexpr int scratch_rows = 4 * kSubChunk + kSubChunk * (0 + 1 + 2 + 3);
    static constexpr int bytes = scratch_off + scratch_rows * qk_stride * 2;
    static __device__ int warp_first_row(int w) { return kSubChunk * w + 8 * w * (w - 1); }
    static_assert(k_off % 16 == 0 && g_off % 16 == 0 && a_off % 16 == 0 && scratch_off % 16 == 0);
};

// One block per (chunk, head, batch row); warp w owns the sub-chunk of rows 16w .. 16w + 15.
template <int DK>
__global__ void __launch_bounds__(kThreads) gla_intra_kernel(const IntraParams p) {
    using L = IntraLayout<DK>;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* qs = reinterpret_cast<bf16*>(smem + L::q_off);
    bf16* ks = reinterpret_cast<bf16*>(smem + L::k_off);
    float* gs = reinterpret_cast<float*>(smem + L::g_off);
    bf16* as = reinterpret_cast<bf16*>(smem + L::a_off);
    const int chunk = blockIdx.x, t0 = chunk * kChunk, h = blockIdx.y, b = blockIdx.z;
    const int T = p.seq_len, H = p.heads, rows = min(kChunk, T - t0);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    const int row0 = warp * kSubChunk;
    const size_t token0 = (size_t(b) * T + t0) * H + h;

    load_rows(qs, L::qk_stride, p.q, token0, H, DK, 0, DK, rows);
    load_rows(ks, L::qk_stride, p.k, token0, H, DK, 0, DK, rows);
    load_gate_rows<DK>(gs, L::g_stride, p.log_gate, token0, H, rows);
    cp_async_commit();
    for (int idx = threadIdx.x; idx < kChunk * kTileStride / 8; idx += kThreads)
        reinterpret_cast<uint4*>(as)[idx] = make_uint4(0, 0, 0, 0);
    cp_async_wait_all();
    __syncthreads();
    cumulate_gate_columns<DK>(gs, L::g_stride);
    __syncthreads();

    // 1. q̂, k̂ and e^{G_L}, a thread per key dimension (each row's store is contiguous across threads).
    const size_t chunks = size_t(gridDim.x);
    for (int i = threadIdx.x; i < DK; i += kThreads) {
        const float last = gs[(kChunk - 1) * L::g_stride + i];
        for (int r = 0; r < rows; ++r) {
            const float gi = gs[r * L::g_stride + i];
            const size_t at = (token0 + size_t(r) * H) * DK + i;
            p.q_hat[at] = __float2bfloat16(__bfloat162float(qs[r * L::qk_stride + i]) * __expf(gi));
            p.k_hat[at] = __float2bfloat16(__bfloat162float(ks[r * L::qk_stride + i]) * __expf(last - gi));
        }
        p.row_decay[((size_t(b) * chunks + chunk) * H + h) * DK + i] = __expf(last);
    }

    // 2. The blocks left of the diagonal: (q ⊙ e^{G − G_r}) (k ⊙ e^{G_r − G})ᵀ with r = row0.
    if (warp > 0) {
        bf16* q_tilde = reinterpret_cast<bf16*>(smem + L::scratch_off) + L::warp_first_row(warp) * L::qk_stride;
        bf16* k_tilde = q_tilde + kSubChunk * L::qk_stride;
        const float* g_ref = gs + row0 * L::g_stride;
        rescale_rows<DK>(q_tilde, qs + row0 * L::qk_stride, L::qk_stride, g_ref, L::g_stride, g_ref, 1.f, kSubChunk);
        rescale_rows<DK>(k_tilde, ks, L::qk_stride, gs, L::g_stride, g_ref, -1.f, row0);
        __syncwarp();
        float acc[8][4];
        zero_tile(acc);
        mma_tile<8, false, true>(acc, q_tilde, L::qk_stride, 0, k_tilde, L::qk_stride, 0, 0, DK, 0, warp);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
            if (nt < 2 * warp)
#pragma unroll
                for (int half = 0; half < 2; ++half)
                    *reinterpret_cast<uint32_t*>(as + (row0 + g + 8 * half) * kTileStride + nt * 8 + 2 * t4) =
                        pack_bf16(acc[nt][2 * half], acc[nt][2 * half + 1]);
    }
    // 3. The diagonal block, a (t, s ≤ t) pair per lane-step: Σ_i q_ti k_si e^{G_ti − G_si} in fp32.
    for (int pair = lane; pair < kSubChunk * (kSubChunk + 1) / 2; pair += 32) {
        int tl = int((sqrtf(8.f * pair + 1.f) - 1.f) * 0.5f);
        if ((tl + 1) * (tl + 2) / 2 <= pair) ++tl;  // (guards sqrtf's rounding)
        const int sl = pair - tl * (tl + 1) / 2, t = row0 + tl, s = row0 + sl;
        float sum = 0.f;
#pragma unroll 8
        for (int i = 0; i < DK; i += 2) {
            const float2 qv = unpack_bf16(*reinterpret_cast<const uint32_t*>(qs + t * L::qk_stride + i));
            const float2 kv = unpack_bf16(*reinterpret_cast<const uint32_t*>(ks + s * L::qk_stride + i));
            const float2 gt = *reinterpret_cast<const float2*>(gs + t * L::g_stride + i);
            const float2 gsv = *reinterpret_cast<const float2*>(gs + s * L::g_stride + i);
            sum += qv.x * kv.x * __expf(gt.x - gsv.x) + qv.y * kv.y * __expf(gt.y - gsv.y);
        }
        as[t * kTileStride + s] = __float2bfloat16(sum);
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < rows * (kChunk / 8); idx += kThreads) {
        const int r = idx / (kChunk / 8), c = (idx % (kChunk / 8)) * 8;
        *reinterpret_cast<uint4*>(p.a_intra + (token0 + size_t(r) * H) * kChunk + c) =
            *reinterpret_cast<const uint4*>(as + r * kTileStride + c);
    }
}

// ---- backward ----

struct BackwardParams {
    const bf16* q;
    const bf16* k;
    const bf16* v;
    const bf16* dout;
    const float* log_gate;
    const float* dfinal_state;
    const bf16* q_hat;
    const bf16* k_hat;
    const bf16* a_intra;
    const float* row_decay;
    const bf16* chunk_states;  // S_0 of every chunk [B, chunks, H, Dk, Dv]
    bf16* dstates;             // dS_L of every chunk, the same shape
    bf16* dq_hat;              // [B,T,H,Dk]
    bf16* dk_hat;
    bf16* da;                  // [B,T,H,64]
    float* d_decay;            // [B, chunks, H, Dk]
    bf16* dq;
    bf16* dk;
    bf16* dv;
    float* dlog_gate;          // null: not wanted
    float* dinitial_state;     // null: not wanted
    int seq_len, heads, value_dim, chunks;
    float scale;
};

template <int DK> struct StateBackwardLayout {
    static constexpr int q_stride = DK + 8;
    static constexpr int v_stride = kValueTile + 8;
    static constexpr int q_off = 0;
    static constexpr int do_off = q_off + kChunk * q_stride * 2;
    static constexpr int decay_off = do_off + kChunk * v_stride * 2;
    static constexpr int bytes = decay_off + DK * 4;
    static_assert(do_off % 16 == 0 && decay_off % 16 == 0);
};

// One block per (64 value columns, head, batch row) walks the chunks from the last; warp w holds rows
// DK/4·w .. of dS (fp32) in registers.
template <int DK>
__global__ void __launch_bounds__(kThreads) gla_state_backward_kernel(const BackwardParams p) {
    using L = StateBackwardLayout<DK>;
    constexpr int MT = DK / 64;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* qs = reinterpret_cast<bf16*>(smem + L::q_off);
    bf16* dos = reinterpret_cast<bf16*>(smem + L::do_off);
    float* decay = reinterpret_cast<float*>(smem + L::decay_off);
    const int v_col = blockIdx.x * kValueTile, h = blockIdx.y, b = blockIdx.z;
    const int T = p.seq_len, H = p.heads, DV = p.value_dim;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    const int srow0 = warp * (DK / 4);

    float ds[MT][8][4];
    const size_t state_base = (size_t(b) * H + h) * DK * DV + v_col;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int d = srow0 + mt * 16 + g + (e >= 2 ? 8 : 0), c = nt * 8 + 2 * t4 + (e & 1);
                ds[mt][nt][e] = p.dfinal_state ? p.dfinal_state[state_base + size_t(d) * DV + c] : 0.f;
            }
    for (int n = p.chunks - 1; n >= 0; --n) {
        const int t0 = n * kChunk, rows = min(kChunk, T - t0);
        const size_t token0 = (size_t(b) * T + t0) * H + h;
        const size_t chunk_base = ((size_t(b) * p.chunks + n) * H + h) * DK;
        load_rows(qs, L::q_stride, p.q_hat, token0, H, DK, 0, DK, rows);
        load_rows(dos, L::v_stride, p.dout, token0, H, DV, v_col, kValueTile, rows);
        if (threadIdx.x < DK / 4) cp_async16(decay + 4 * threadIdx.x, p.row_decay + chunk_base + 4 * threadIdx.x, true);
        cp_async_commit();
        // dS_L of this chunk (what arrives from the next), meanwhile.
        bf16* out = p.dstates + chunk_base * DV + v_col;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < 8; ++nt)
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    const int d = srow0 + mt * 16 + g + half * 8, c = nt * 8 + 2 * t4;
                    *reinterpret_cast<uint32_t*>(out + size_t(d) * DV + c) =
                        pack_bf16(ds[mt][nt][2 * half], ds[mt][nt][2 * half + 1]);
                }
        cp_async_wait_all();
        __syncthreads();
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            const float d_lo = decay[srow0 + mt * 16 + g], d_hi = decay[srow0 + mt * 16 + g + 8];
            float acc[8][4];
            zero_tile(acc);
            mma_tile<8, true, false>(acc, qs, L::q_stride, srow0 + mt * 16, dos, L::v_stride, 0, 0, kChunk);
#pragma unroll
            for (int nt = 0; nt < 8; ++nt) {
                ds[mt][nt][0] = d_lo * ds[mt][nt][0] + p.scale * acc[nt][0];
                ds[mt][nt][1] = d_lo * ds[mt][nt][1] + p.scale * acc[nt][1];
                ds[mt][nt][2] = d_hi * ds[mt][nt][2] + p.scale * acc[nt][2];
                ds[mt][nt][3] = d_hi * ds[mt][nt][3] + p.scale * acc[nt][3];
            }
        }
        __syncthreads();  // every warp is done with this chunk's tiles
    }
    if (p.dinitial_state != nullptr) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int d = srow0 + mt * 16 + g + (e >= 2 ? 8 : 0), c = nt * 8 + 2 * t4 + (e & 1);
                    p.dinitial_state[state_base + size_t(d) * DV + c] += ds[mt][nt][e];
                }
    }
}

template <int DK, int DV> struct ChunkGradsLayout {
    static constexpr int s_stride = DV + 8;  // S_0, dS_L rows (Dk of them) and dO, v rows (64)
    static constexpr int k_stride = DK + 8;
    static constexpr int s_off = 0;
    static constexpr int ds_off = s_off + DK * s_stride * 2;
    static constexpr int do_off = ds_off + DK * s_stride * 2;
    static constexpr int v_off = do_off + kChunk * s_stride * 2;
    static constexpr int kh_off = v_off + kChunk * s_stride * 2;
    static constexpr int a_off = kh_off + kChunk * k_stride * 2;
    static constexpr int bytes = a_off + kChunk * kTileStride * 2;
    static_assert(ds_off % 16 == 0 && do_off % 16 == 0 && v_off % 16 == 0 && kh_off % 16 == 0 && a_off % 16 == 0);
};

// Stores a warp's 16 × 8·NT accumulator rows (times scale) as bf16 rows t0 + row0 + … of a [B,T,H,width]
// array from column 0; rows past T are skipped.
template <int NT>
__device__ __forceinline__ void store_rows_bf16(bf16* dst, const float (&acc)[NT][4], float scale, size_t token0, int H,
                                                int width, int row0, int rows) {
    const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int r = row0 + g + 8 * half;
        if (r >= rows) continue;
        bf16* out = dst + (token0 + size_t(r) * H) * width + 2 * t4;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
            *reinterpret_cast<uint32_t*>(out + nt * 8) =
                pack_bf16(scale * acc[nt][2 * half], scale * acc[nt][2 * half + 1]);
    }
}

// One block per (chunk, head, batch row); warp w owns rows 16w .. 16w + 15 of each product.
template <int DK, int DV>
__global__ void __launch_bounds__(kThreads) gla_chunk_grads_kernel(const BackwardParams p) {
    using L = ChunkGradsLayout<DK, DV>;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* ss = reinterpret_cast<bf16*>(smem + L::s_off);
    bf16* dss = reinterpret_cast<bf16*>(smem + L::ds_off);
    bf16* dos = reinterpret_cast<bf16*>(smem + L::do_off);
    bf16* vs = reinterpret_cast<bf16*>(smem + L::v_off);
    bf16* khs = reinterpret_cast<bf16*>(smem + L::kh_off);
    bf16* as = reinterpret_cast<bf16*>(smem + L::a_off);
    const int n = blockIdx.x, t0 = n * kChunk, h = blockIdx.y, b = blockIdx.z;
    const int T = p.seq_len, H = p.heads, rows = min(kChunk, T - t0);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    const int row0 = warp * kSubChunk;
    const size_t token0 = (size_t(b) * T + t0) * H + h;
    const size_t chunk_base = ((size_t(b) * p.chunks + n) * H + h) * DK;

    // The chunk states are [Dk][Dv] row-major: DK "rows" of one token-like stride-free array.
    load_rows(ss, L::s_stride, p.chunk_states + chunk_base * DV, 0, 1, DV, 0, DV, DK, DK);
    load_rows(dss, L::s_stride, p.dstates + chunk_base * DV, 0, 1, DV, 0, DV, DK, DK);
    load_rows(dos, L::s_stride, p.dout, token0, H, DV, 0, DV, rows);
    load_rows(vs, L::s_stride, p.v, token0, H, DV, 0, DV, rows);
    load_rows(khs, L::k_stride, p.k_hat, token0, H, DK, 0, DK, rows);
    load_rows(as, kTileStride, p.a_intra, token0, H, kChunk, 0, kChunk, rows);
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();

    {  // dq̂ = scale · dO S_0ᵀ, dk̂ = v dS_Lᵀ
        float acc[DK / 8][4];
        zero_tile(acc);
        mma_tile<DK / 8, false, true>(acc, dos, L::s_stride, row0, ss, L::s_stride, 0, 0, DV);
        store_rows_bf16(p.dq_hat, acc, p.scale, token0, H, DK, row0, rows);
        zero_tile(acc);
        mma_tile<DK / 8, false, true>(acc, vs, L::s_stride, row0, dss, L::s_stride, 0, 0, DV);
        store_rows_bf16(p.dk_hat, acc, 1.f, token0, H, DK, row0, rows);
    }
    {  // dA = scale · dO vᵀ on and below the diagonal (all 64 columns are stored)
        float acc[8][4];
        zero_tile(acc);
        mma_tile<8, false, true>(acc, dos, L::s_stride, row0, vs, L::s_stride, 0, 0, DV, 0, warp + 1);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                if (nt * 8 + 2 * t4 + (e & 1) > row0 + g + (e >= 2 ? 8 : 0)) acc[nt][e] = 0.f;
        store_rows_bf16(p.da, acc, p.scale, token0, H, kChunk, row0, rows);
    }
    {  // dv += scale · Aᵀ dO + k̂ dS_L (A's rows above this warp's are zero in its columns)
        float acc[DV / 8][4];
        zero_tile(acc);
        mma_tile<DV / 8, true, false>(acc, as, kTileStride, row0, dos, L::s_stride, 0, row0, kChunk);
#pragma unroll
        for (int nt = 0; nt < DV / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[nt][e] *= p.scale;
        mma_tile<DV / 8, false, false>(acc, khs, L::k_stride, row0, dss, L::s_stride, 0, 0, DK);
#pragma unroll
        for (int half = 0; half < 2; ++half)
            if (row0 + g + 8 * half < rows)
                add_row_into_bf16(p.dv + (token0 + size_t(row0 + g + 8 * half) * H) * DV + 2 * t4, acc, half, 1.f);
    }
    // dγ_i = Σ_j S_0[i][j] dS_L[i][j], a thread per row.
    for (int i = threadIdx.x; i < DK; i += kThreads) {
        float sum = 0.f;
        for (int j = 0; j < DV; j += 2) {
            const float2 s = unpack_bf16(*reinterpret_cast<const uint32_t*>(ss + i * L::s_stride + j));
            const float2 d = unpack_bf16(*reinterpret_cast<const uint32_t*>(dss + i * L::s_stride + j));
            sum += s.x * d.x + s.y * d.y;
        }
        p.d_decay[chunk_base + i] = sum;
    }
}

template <int DK> struct IntraBackwardLayout {
    static constexpr int qk_stride = DK + 8;
    static constexpr int g_stride = DK + 4;
    static constexpr int q_off = 0;
    static constexpr int k_off = q_off + kChunk * qk_stride * 2;
    static constexpr int g_off = k_off + kChunk * qk_stride * 2;
    static constexpr int da_off = g_off + kChunk * g_stride * 4;
    static constexpr int scratch_off = da_off + kChunk * kTileStride * 2;
    static constexpr int scratch_rows = kSubChunk * (0 + 1 + 2 + 3);  // either phase's rescaled tiles
    static constexpr int dq_off = scratch_off + scratch_rows * qk_stride * 2;
    static constexpr int dk_off = dq_off + kChunk * g_stride * 4;
    static constexpr int bytes = dk_off + kChunk * g_stride * 4;
    static_assert(k_off % 16 == 0 && g_off % 16 == 0 && da_off % 16 == 0 && scratch_off % 16 == 0 &&
                  dq_off % 16 == 0 && dk_off % 16 == 0);
};

// One block per (chunk, head, batch row); warp w owns sub-chunk w: dq's rows 16w .. (its keys are the
// earlier sub-chunks'), then dk's rows 16w .. (its queries are the later sub-chunks'). Then a thread per
// key dimension adds the state terms, forms ∂L/∂G and sums it from the chunk's end.
template <int DK>
__global__ void __launch_bounds__(kThreads) gla_intra_backward_kernel(const BackwardParams p) {
    using L = IntraBackwardLayout<DK>;
    constexpr int NT = DK / 8;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* qs = reinterpret_cast<bf16*>(smem + L::q_off);
    bf16* ks = reinterpret_cast<bf16*>(smem + L::k_off);
    float* gs = reinterpret_cast<float*>(smem + L::g_off);
    bf16* das = reinterpret_cast<bf16*>(smem + L::da_off);
    bf16* scratch = reinterpret_cast<bf16*>(smem + L::scratch_off);
    float* dq_s = reinterpret_cast<float*>(smem + L::dq_off);
    float* dk_s = reinterpret_cast<float*>(smem + L::dk_off);
    const int n = blockIdx.x, t0 = n * kChunk, h = blockIdx.y, b = blockIdx.z;
    const int T = p.seq_len, H = p.heads, rows = min(kChunk, T - t0);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    const int row0 = warp * kSubChunk;
    const size_t token0 = (size_t(b) * T + t0) * H + h;

    load_rows(qs, L::qk_stride, p.q, token0, H, DK, 0, DK, rows);
    load_rows(ks, L::qk_stride, p.k, token0, H, DK, 0, DK, rows);
    load_gate_rows<DK>(gs, L::g_stride, p.log_gate, token0, H, rows);
    load_rows(das, kTileStride, p.da, token0, H, kChunk, 0, kChunk, rows);
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();
    cumulate_gate_columns<DK>(gs, L::g_stride);
    __syncthreads();

    // Stores a warp's 16 × DK accumulator rows into an fp32 tile, each element times e^{±(G − G_ref)}.
    auto store_rescaled = [&](float* dst, const float (&acc)[NT][4], const float* g_ref, float sign) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int r = row0 + g + 8 * half, i = nt * 8 + 2 * t4;
                const float2 gr = *reinterpret_cast<const float2*>(gs + r * L::g_stride + i);
                *reinterpret_cast<float2*>(dst + r * L::g_stride + i) =
                    make_float2(acc[nt][2 * half] * __expf(sign * (gr.x - g_ref[i])),
                                acc[nt][2 * half + 1] * __expf(sign * (gr.y - g_ref[i + 1])));
            }
    };

    // dq from dA: the earlier sub-chunks through r = row0 (e^{G_t − G_r} · Σ_s dA_ts k_s e^{G_r − G_s}),
    // then the diagonal block per element, a key dimension per lane-step.
    {
        float acc[NT][4];
        zero_tile(acc);
        const float* g_ref = gs + row0 * L::g_stride;
        if (warp > 0) {
            bf16* k_tilde = scratch + 8 * warp * (warp - 1) * L::qk_stride;
            rescale_rows<DK>(k_tilde, ks, L::qk_stride, gs, L::g_stride, g_ref, -1.f, row0);
            __syncwarp();
            mma_tile<NT, false, false>(acc, das, kTileStride, row0, k_tilde, L::qk_stride, 0, 0, row0);
        }
        store_rescaled(dq_s, acc, g_ref, 1.f);
        __syncwarp();
        for (int i = lane; i < DK; i += 32)
            for (int tl = 0; tl < kSubChunk; ++tl) {
                const int t = row0 + tl;
                const float gt = gs[t * L::g_stride + i];
                float sum = 0.f;
                for (int s = row0; s <= t; ++s)
                    sum += __bfloat162float(das[t * kTileStride + s]) * __bfloat162float(ks[s * L::qk_stride + i]) *
                           __expf(gt - gs[s * L::g_stride + i]);
                dq_s[t * L::g_stride + i] += sum;
            }
    }
    __syncthreads();  // the scratch tiles change hands
    // dk from dA: the later sub-chunks through r = row0 + 15 (e^{G_r − G_s} · Σ_t dA_ts q_t e^{G_t − G_r}),
    // then the diagonal block.
    {
        float acc[NT][4];
        zero_tile(acc);
        const int r_ref = row0 + kSubChunk - 1, later = row0 + kSubChunk, count = kChunk - later;
        const float* g_ref = gs + r_ref * L::g_stride;
        if (count > 0) {
            bf16* q_tilde = scratch + (kChunk - kSubChunk) * warp * L::qk_stride - 8 * warp * (warp - 1) * L::qk_stride;
            rescale_rows<DK>(q_tilde, qs + later * L::qk_stride, L::qk_stride, gs + later * L::g_stride, L::g_stride,
                             g_ref, 1.f, count);
            __syncwarp();
            mma_tile<NT, true, false>(acc, das + later * kTileStride, kTileStride, row0, q_tilde, L::qk_stride, 0, 0,
                                      count);
        }
        store_rescaled(dk_s, acc, g_ref, -1.f);
        __syncwarp();
        for (int i = lane; i < DK; i += 32)
            for (int sl = 0; sl < kSubChunk; ++sl) {
                const int s = row0 + sl;
                const float g_s = gs[s * L::g_stride + i];
                float sum = 0.f;
                for (int t = s; t < row0 + kSubChunk; ++t)
                    sum += __bfloat162float(das[t * kTileStride + s]) * __bfloat162float(qs[t * L::qk_stride + i]) *
                           __expf(gs[t * L::g_stride + i] - g_s);
                dk_s[s * L::g_stride + i] += sum;
            }
    }
    __syncthreads();

    // The state terms, dq and dk added into, ∂L/∂G in place of dq_s, then dg from the chunk's end.
    const size_t chunk_base = ((size_t(b) * p.chunks + n) * H + h) * DK;
    for (int i = threadIdx.x; i < DK; i += kThreads) {
        const float last = gs[(kChunk - 1) * L::g_stride + i];
        float at_last = 0.f;  // Σ_s k̂_s dk̂_s + γ dγ: ∂L/∂G_L through e^{G_L}
        for (int r = 0; r < rows; ++r) {
            const size_t at = (token0 + size_t(r) * H) * DK + i;
            const float gi = gs[r * L::g_stride + i];
            const float k_decay = __expf(last - gi);
            const float dk_hat = __bfloat162float(p.dk_hat[at]);
            const float dq = __bfloat162float(p.dq_hat[at]) * __expf(gi) + dq_s[r * L::g_stride + i];
            const float dk = dk_hat * k_decay + dk_s[r * L::g_stride + i];
            p.dq[at] = __float2bfloat16(__bfloat162float(p.dq[at]) + dq);
            p.dk[at] = __float2bfloat16(__bfloat162float(p.dk[at]) + dk);
            const float kv = __bfloat162float(ks[r * L::qk_stride + i]);
            at_last += kv * k_decay * dk_hat;
            dq_s[r * L::g_stride + i] = __bfloat162float(qs[r * L::qk_stride + i]) * dq - kv * dk;
        }
        if (p.dlog_gate == nullptr) continue;
        float suffix = at_last + __expf(last) * p.d_decay[chunk_base + i];
        for (int r = rows - 1; r >= 0; --r) {
            suffix += dq_s[r * L::g_stride + i];
            p.dlog_gate[(token0 + size_t(r) * H) * DK + i] += suffix;
        }
    }
}

template <typename Kernel, typename Params>
void launch_kernel(Kernel kernel, const char* name, int dk, dim3 grid, int bytes, const Params& p) {
    cudaError_t status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (status == cudaSuccess) {
        kernel<<<grid, kThreads, bytes, cudaStreamPerThread>>>(p);
        status = cudaGetLastError();
    }
    if (status != cudaSuccess)
        fail("CUDA kernel {}<Dk={}> of the GLA chunkwise path failed to launch: {}", name, dk,
             cudaGetErrorString(status));
}

size_t round_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

// The forward's scratch, carved in order: q̂, k̂, A, e^{G_L}.
struct ForwardScratch {
    bf16* q_hat;
    bf16* k_hat;
    bf16* a_intra;
    float* row_decay;
    size_t bytes;
};
ForwardScratch carve_forward(void* base, int64_t batch, int64_t seq_len, int64_t heads, int64_t key_dim) {
    const size_t tokens = size_t(batch * seq_len * heads), chunks = size_t((seq_len + kChunk - 1) / kChunk);
    unsigned char* at = static_cast<unsigned char*>(base);
    ForwardScratch s{};
    s.q_hat = reinterpret_cast<bf16*>(at + s.bytes);
    s.bytes += round_up(tokens * size_t(key_dim) * 2);
    s.k_hat = reinterpret_cast<bf16*>(at + s.bytes);
    s.bytes += round_up(tokens * size_t(key_dim) * 2);
    s.a_intra = reinterpret_cast<bf16*>(at + s.bytes);
    s.bytes += round_up(tokens * kChunk * 2);
    s.row_decay = reinterpret_cast<float*>(at + s.bytes);
    s.bytes += round_up(size_t(batch) * chunks * size_t(heads * key_dim) * 4);
    return s;
}

void check_grid(const char* op, int64_t batch, int64_t seq_len, int64_t heads, int64_t key_dim, int64_t value_dim) {
    LINARCH_CHECK(gla_chunkwise_supports(key_dim, value_dim), "{} (CUDA): no kernel for Dk={}, Dv={}", op, key_dim,
                  value_dim);
    LINARCH_CHECK(batch <= 65535 && heads <= 65535 && seq_len < (int64_t(1) << 31),
                  "{} (CUDA): B={}, H={}, T={} exceed the grid", op, batch, heads, seq_len);
}

template <int DK> void run_forward(const GlaForward& a, const ForwardScratch& s) {
    const IntraParams intra{static_cast<const bf16*>(a.q), static_cast<const bf16*>(a.k), a.log_gate, s.q_hat,
                            s.k_hat, s.a_intra, s.row_decay, int(a.seq_len), int(a.heads)};
    const dim3 grid(unsigned((a.seq_len + kChunk - 1) / kChunk), unsigned(a.heads), unsigned(a.batch));
    launch_kernel(gla_intra_kernel<DK>, "gla_intra_kernel", DK, grid, IntraLayout<DK>::bytes, intra);
    gla_walk({s.q_hat, s.k_hat, a.v, s.a_intra, s.row_decay, a.initial_state, a.o, a.final_state, a.chunk_states,
              a.batch, a.seq_len, a.heads, a.key_dim, a.value_dim, a.scale});
}

template <int DK, int DV> void run_backward(const BackwardParams& p, int batch) {
    const dim3 chunks(unsigned(p.chunks), unsigned(p.heads), unsigned(batch));
    launch_kernel(gla_state_backward_kernel<DK>, "gla_state_backward_kernel", DK,
                  dim3(unsigned(DV / kValueTile), unsigned(p.heads), unsigned(batch)), StateBackwardLayout<DK>::bytes,
                  p);
    launch_kernel(gla_chunk_grads_kernel<DK, DV>, "gla_chunk_grads_kernel", DK, chunks,
                  ChunkGradsLayout<DK, DV>::bytes, p);
    launch_kernel(gla_intra_backward_kernel<DK>, "gla_intra_backward_kernel", DK, chunks,
                  IntraBackwardLayout<DK>::bytes, p);
}

}  // namespace

bool gla_chunkwise_supports(int64_t key_dim, int64_t value_dim) {
    return (key_dim == 64 || key_dim == 128) && (value_dim == 64 || value_dim == 128);
}

size_t gla_chunkwise_forward_scratch_bytes(int64_t batch, int64_t seq_len, int64_t heads, int64_t key_dim) {
    return carve_forward(nullptr, batch, seq_len, heads, key_dim).bytes;
}

void gla_chunkwise_forward(const GlaForward& a) {
    check_grid("gla_chunkwise_forward", a.batch, a.seq_len, a.heads, a.key_dim, a.value_dim);
    const ForwardScratch s = carve_forward(a.scratch, a.batch, a.seq_len, a.heads, a.key_dim);
    a.key_dim == 64 ? run_forward<64>(a, s) : run_forward<128>(a, s);
}

size_t gla_chunkwise_backward_scratch_bytes(int64_t batch, int64_t seq_len, int64_t heads, int64_t key_dim,
                                            int64_t value_dim) {
    const size_t tokens = size_t(batch * seq_len * heads), chunks = size_t((seq_len + kChunk - 1) / kChunk);
    const size_t states = size_t(batch) * chunks * size_t(heads * key_dim * value_dim) * 2;
    // the forward's, S_0 and dS_L per chunk, dq̂ and dk̂, dA, dγ
    return gla_chunkwise_forward_scratch_bytes(batch, seq_len, heads, key_dim) + 2 * round_up(states) +
           2 * round_up(tokens * size_t(key_dim) * 2) + round_up(tokens * kChunk * 2) +
           round_up(size_t(batch) * chunks * size_t(heads * key_dim) * 4);
}

void gla_chunkwise_backward(const GlaBackward& a) {
    check_grid("gla_chunkwise_backward", a.batch, a.seq_len, a.heads, a.key_dim, a.value_dim);
    const int64_t chunks = (a.seq_len + kChunk - 1) / kChunk;
    const size_t tokens = size_t(a.batch * a.seq_len * a.heads);
    const size_t states = size_t(a.batch * chunks * a.heads * a.key_dim * a.value_dim) * 2;
    const ForwardScratch fs = carve_forward(a.scratch, a.batch, a.seq_len, a.heads, a.key_dim);
    unsigned char* next = static_cast<unsigned char*>(a.scratch) + fs.bytes;
    auto take = [&](size_t bytes) {
        void* p = next;
        next += round_up(bytes);
        return p;
    };
    void* chunk_states = take(states);
    void* dstates = take(states);
    void* dq_hat = take(tokens * size_t(a.key_dim) * 2);
    void* dk_hat = take(tokens * size_t(a.key_dim) * 2);
    void* da = take(tokens * kChunk * 2);
    void* d_decay = take(size_t(a.batch * chunks * a.heads * a.key_dim) * 4);

    // 1. The forward again, keeping S_0 of every chunk (and q̂, k̂, A, e^{G_L} in the scratch).
    GlaForward forward{a.q, a.k, a.v, a.log_gate, a.initial_state, nullptr, nullptr, a.scratch,
                       a.batch, a.seq_len, a.heads, a.key_dim, a.value_dim, a.scale};
    forward.chunk_states = chunk_states;
    a.key_dim == 64 ? run_forward<64>(forward, fs) : run_forward<128>(forward, fs);

    const BackwardParams p{static_cast<const bf16*>(a.q), static_cast<const bf16*>(a.k), static_cast<const bf16*>(a.v),
                           static_cast<const bf16*>(a.dout), a.log_gate, a.dfinal_state, fs.q_hat, fs.k_hat,
                           fs.a_intra, fs.row_decay, static_cast<const bf16*>(chunk_states),
                           static_cast<bf16*>(dstates), static_cast<bf16*>(dq_hat), static_cast<bf16*>(dk_hat),
                           static_cast<bf16*>(da), static_cast<float*>(d_decay), static_cast<bf16*>(a.dq),
                           static_cast<bf16*>(a.dk), static_cast<bf16*>(a.dv), a.dlog_gate, a.dinitial_state,
                           int(a.seq_len), int(a.heads), int(a.value_dim), int(chunks), float(a.scale)};
    const int batch = int(a.batch);
    if (a.key_dim == 64) a.value_dim == 64 ? run_backward<64, 64>(p, batch) : run_backward<64, 128>(p, batch);
    else a.value_dim == 64 ? run_backward<128, 64>(p, batch) : run_backward<128, 128>(p, batch);
}

}  // namespace linarch::cuda
