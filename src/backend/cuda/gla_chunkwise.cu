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
// A is built from 16-token sub-chunks (as fla's chunk_gla): row block I factors through the first token
// r = 16I of its sub-chunk,
//     e^{G_t − G_s} = e^{G_t − G_r} · e^{G_r − G_s}        (t ≥ r: the first factor ≤ 1),
// so each block is one tensor-core product of rescaled bf16 operands. Left of the diagonal (s < r) the
// second factor is ≤ 1 too; on the diagonal block it is ≥ 1 but bounded while the sub-chunk's gates stay
// within kMaxSubChunkRange, and its products take split bf16 factors (hi·hi + hi·lo + lo·hi) for about
// fp32's accuracy there; a sub-chunk beyond that range sums its diagonal block per element in fp32.
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

#include "backend/cuda/check.cuh"
#include "backend/cuda/linear_attention_chunkwise.hpp"
#include "backend/cuda/mma_ptx.cuh"
#include "backend/cuda/warp_tiles.cuh"
#include "core/error.hpp"

namespace linarch::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kChunk = 64;
constexpr int kSubChunk = 16;  // the rows of an MMA tile
constexpr int kValueTile = 64;
constexpr int kTileStride = kChunk + 8;  // a 64 × 64 bf16 matrix's padded rows

// Starts copying `rows` token rows of the [B,T,H,DK] fp32 log gate into shared memory rows of `stride`
// floats; rows past T get gate 0, so the chunk's total decay is its last token's.
template <int DK>
__device__ __forceinline__ void load_gate_rows(float* dst, int stride, const float* log_gate, size_t token0, int H,
                                               int rows) {
    constexpr int vecs = DK / 4;
    for (int idx = threadIdx.x; idx < kChunk * vecs; idx += blockDim.x) {
        const int r = idx / vecs, c = (idx % vecs) * 4;
        const bool valid = r < rows;
        cp_async16(dst + r * stride + c, log_gate + (token0 + size_t(valid ? r : 0) * H) * DK + c, valid);
    }
}

// G: the inclusive cumulative sum down each column of the chunk's gates, in place. Two threads a column
// (2·DK ≤ the block's threads) each sum half the rows in registers (independent loads, a short chain),
// then the lower half adds the upper half's total.
template <int DK> __device__ __forceinline__ void cumulate_gate_columns(float* gs, int stride) {
    constexpr int kHalf = kChunk / 2;
    const int i = threadIdx.x % DK, half = threadIdx.x / DK;
    float x[kHalf];
    if (half < 2) {
#pragma unroll
        for (int r = 0; r < kHalf; ++r) x[r] = gs[(half * kHalf + r) * stride + i];
#pragma unroll
        for (int r = 1; r < kHalf; ++r) x[r] += x[r - 1];
        if (half == 0)
#pragma unroll
            for (int r = 0; r < kHalf; ++r) gs[r * stride + i] = x[r];
    }
    __syncthreads();
    if (half == 1) {
        const float upper = gs[(kHalf - 1) * stride + i];
#pragma unroll
        for (int r = 0; r < kHalf; ++r) gs[(kHalf + r) * stride + i] = x[r] + upper;
    }
    __syncthreads();
}

// Factoring e^{G_t − G_s} through a reference token inside a 16-token sub-chunk puts factors ≥ 1 on one
// side, up to e^{range} with range the sub-chunk's −Σ g in a key dimension. Within kMaxSubChunkRange they
// are ≤ e^40 ≈ 2e17, so an operand as large as 1e21 stays finite in bf16 and the partners, ≥ e^−40, stay
// far above fp32's smallest normal. Past that, the diagonal blocks take e^{G_t − G_s} per element instead.
constexpr float kMaxSubChunkRange = 40.f;

// Whether the sub-chunk of rows first .. first + 15 is within that range (every lane of the warp calls it).
template <int DK> __device__ __forceinline__ bool sub_chunk_in_range(const float* gs, int stride, int first) {
    const int lane = threadIdx.x % 32;
    float range = 0.f;
    for (int i = lane; i < DK; i += 32) range = fmaxf(range, gs[first * stride + i] - gs[(first + 15) * stride + i]);
    return __all_sync(0xffffffffu, range <= kMaxSubChunkRange);
}

// bf16 pairs (x, y) and, where lo is given, the bf16 pair of what rounding left: hi + lo carries x and y to
// about 16 bits. The diagonal blocks' products take three MMAs (hi·hi + hi·lo + lo·hi) with them: those
// blocks hold the largest terms (decay ≈ 1 near the diagonal), and plain bf16 factors there tripled the
// error of dg against the float64 reference (8e-3 against 3e-3; fla sums them in fp32).
template <bool SPLIT> __device__ __forceinline__ uint32_t pack_split(float x, float y, uint32_t& lo) {
    const uint32_t hi = pack_bf16(x, y);
    if constexpr (SPLIT) {
        const float2 h = unpack_bf16(hi);
        lo = pack_bf16(x - h.x, y - h.y);
    }
    return hi;
}

// mma.sync m16n8k16 fragments of rescaled bf16 tiles x (rows `stride` apart) with G fp32 (rows
// g_stride apart): element (r, c) is x[r][c] · e^{sign · (G[r][c] − ref[c])}; with SPLIT, lo takes the
// rounding remainders.
// Elements (r, c) and (r, c + 1), packed.
template <bool SPLIT>
__device__ __forceinline__ uint32_t rescaled_pair(const bf16* x, int stride, const float* gs, int g_stride,
                                                  const float* ref, float sign, int r, int c, uint32_t& lo) {
    const float2 v = unpack_bf16(*reinterpret_cast<const uint32_t*>(x + r * stride + c));
    const float2 gv = *reinterpret_cast<const float2*>(gs + r * g_stride + c);
    return pack_split<SPLIT>(v.x * __expf(sign * (gv.x - ref[c])), v.y * __expf(sign * (gv.y - ref[c + 1])), lo);
}
// The A fragment of rows m0 .. m0 + 15, columns k0 .. k0 + 15.
template <bool SPLIT>
__device__ __forceinline__ void rescaled_a_fragment(uint32_t (&a)[4], uint32_t (&lo)[4], const bf16* x, int stride,
                                                    const float* gs, int g_stride, const float* ref, float sign,
                                                    int m0, int k0) {
    const int lane = threadIdx.x % 32, r0 = m0 + lane / 4, c0 = k0 + 2 * (lane % 4);
    a[0] = rescaled_pair<SPLIT>(x, stride, gs, g_stride, ref, sign, r0, c0, lo[0]);
    a[1] = rescaled_pair<SPLIT>(x, stride, gs, g_stride, ref, sign, r0 + 8, c0, lo[1]);
    a[2] = rescaled_pair<SPLIT>(x, stride, gs, g_stride, ref, sign, r0, c0 + 8, lo[2]);
    a[3] = rescaled_pair<SPLIT>(x, stride, gs, g_stride, ref, sign, r0 + 8, c0 + 8, lo[3]);
}
// The B fragment for B(k, n) = element (n0 + n, k0 + k): rows of x as B's columns (x kᵀ products).
template <bool SPLIT>
__device__ __forceinline__ void rescaled_b_fragment_of_rows(uint32_t (&b)[2], uint32_t (&lo)[2], const bf16* x, int stride,
                                                            const float* gs, int g_stride, const float* ref,
                                                            float sign, int n0, int k0) {
    const int lane = threadIdx.x % 32, r = n0 + lane / 4, c0 = k0 + 2 * (lane % 4);
    b[0] = rescaled_pair<SPLIT>(x, stride, gs, g_stride, ref, sign, r, c0, lo[0]);
    b[1] = rescaled_pair<SPLIT>(x, stride, gs, g_stride, ref, sign, r, c0 + 8, lo[1]);
}
// The B fragment for B(k, n) = element (k0 + k, n0 + n): x's rows as B's rows (P x products); ref_n is
// ref[n0 + lane / 4].
template <bool SPLIT>
__device__ __forceinline__ void rescaled_b_fragment(uint32_t (&b)[2], uint32_t (&lo)[2], const bf16* x, int stride,
                                                    const float* gs, int g_stride, float ref_n, float sign, int k0,
                                                    int n0) {
    const int lane = threadIdx.x % 32, c = n0 + lane / 4, r0 = k0 + 2 * (lane % 4);
    auto element = [&](int r) {
        return __bfloat162float(x[r * stride + c]) * __expf(sign * (gs[r * g_stride + c] - ref_n));
    };
    b[0] = pack_split<SPLIT>(element(r0), element(r0 + 1), lo[0]);
    b[1] = pack_split<SPLIT>(element(r0 + 8), element(r0 + 9), lo[1]);
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

constexpr int kIntraThreads = 256;  // 8 warps: two a sub-chunk

template <int DK> struct IntraLayout {
    static constexpr int qk_stride = DK + 8;  // bf16; rows padded by 16 bytes
    static constexpr int g_stride = DK + 4;   // fp32
    static constexpr int q_off = 0;
    static constexpr int k_off = q_off + kChunk * qk_stride * 2;
    static constexpr int g_off = k_off + kChunk * qk_stride * 2;
    static constexpr int a_off = g_off + kChunk * g_stride * 4;
    static constexpr int bytes = a_off + kChunk * kTileStride * 2;
    static_assert(k_off % 16 == 0 && g_off % 16 == 0 && a_off % 16 == 0);
};

// One block per (chunk, head, batch row); warps 2I and 2I + 1 own sub-chunk I (rows 16I .. 16I + 15) and
// take alternate 8-column tiles of its row of A. Every tile is one tensor-core product through the
// reference r = 16I, its operands rescaled as their fragments are loaded: q̃_t = q_t e^{G_t − G_r} (≤ 1)
// and k̃_s = k_s e^{G_r − G_s} (≤ 1 left of the diagonal block, ≤ e^{80} within it, see
// kMaxSubChunkRange). A sub-chunk beyond that range sums its diagonal block per element instead.
template <int DK>
__global__ void __launch_bounds__(kIntraThreads) gla_intra_kernel(const IntraParams p) {
    using L = IntraLayout<DK>;
    constexpr int KD = DK / 16;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* qs = reinterpret_cast<bf16*>(smem + L::q_off);
    bf16* ks = reinterpret_cast<bf16*>(smem + L::k_off);
    float* gs = reinterpret_cast<float*>(smem + L::g_off);
    bf16* as = reinterpret_cast<bf16*>(smem + L::a_off);
    const int chunk = blockIdx.x, t0 = chunk * kChunk, h = blockIdx.y, b = blockIdx.z;
    const int T = p.seq_len, H = p.heads, rows = min(kChunk, T - t0);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    const int sub = warp / 2, parity = warp % 2, row0 = sub * kSubChunk;
    const size_t token0 = (size_t(b) * T + t0) * H + h;

    load_rows(qs, L::qk_stride, p.q, token0, H, DK, 0, DK, rows);
    load_rows(ks, L::qk_stride, p.k, token0, H, DK, 0, DK, rows);
    load_gate_rows<DK>(gs, L::g_stride, p.log_gate, token0, H, rows);
    cp_async_commit();
    for (int idx = threadIdx.x; idx < kChunk * kTileStride / 8; idx += kIntraThreads)
        reinterpret_cast<uint4*>(as)[idx] = make_uint4(0, 0, 0, 0);
    cp_async_wait_all();
    __syncthreads();
    cumulate_gate_columns<DK>(gs, L::g_stride);

    // 1. q̂, k̂ (eight key dimensions of a row a thread, 16-byte stores) and e^{G_L}.
    const float* g_last = gs + (kChunk - 1) * L::g_stride;
    for (int idx = threadIdx.x; idx < rows * (DK / 8); idx += kIntraThreads) {
        const int r = idx / (DK / 8), c = (idx % (DK / 8)) * 8;
        const uint4 qv = *reinterpret_cast<const uint4*>(qs + r * L::qk_stride + c);
        const uint4 kv = *reinterpret_cast<const uint4*>(ks + r * L::qk_stride + c);
        const uint32_t* qw = reinterpret_cast<const uint32_t*>(&qv);
        const uint32_t* kw = reinterpret_cast<const uint32_t*>(&kv);
        uint4 q_out, k_out;
        uint32_t* qo = reinterpret_cast<uint32_t*>(&q_out);
        uint32_t* ko = reinterpret_cast<uint32_t*>(&k_out);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const float g0 = gs[r * L::g_stride + c + 2 * j], g1 = gs[r * L::g_stride + c + 2 * j + 1];
            qo[j] = scale_bf16x2(qw[j], __expf(g0), __expf(g1));
            ko[j] = scale_bf16x2(kw[j], __expf(g_last[c + 2 * j] - g0), __expf(g_last[c + 2 * j + 1] - g1));
        }
        const size_t at = (token0 + size_t(r) * H) * DK + c;
        *reinterpret_cast<uint4*>(p.q_hat + at) = q_out;
        *reinterpret_cast<uint4*>(p.k_hat + at) = k_out;
    }
    for (int i = threadIdx.x; i < DK; i += kIntraThreads)
        p.row_decay[((size_t(b) * gridDim.x + chunk) * H + h) * DK + i] = __expf(g_last[i]);

    // 2. This warp's tiles of A's row block.
    const bool in_range = sub_chunk_in_range<DK>(gs, L::g_stride, row0);
    const float* g_ref = gs + row0 * L::g_stride;
    const int tiles = 2 * sub + (in_range ? 2 : 0);
    if (parity < tiles) {
        uint32_t qa[KD][4], qa_lo[KD][4];  // the remainders for the diagonal block's tiles
#pragma unroll
        for (int kd = 0; kd < KD; ++kd) {
            if (in_range)
                rescaled_a_fragment<true>(qa[kd], qa_lo[kd], qs, L::qk_stride, gs, L::g_stride, g_ref, 1.f, row0,
                                          kd * 16);
            else
                rescaled_a_fragment<false>(qa[kd], qa_lo[kd], qs, L::qk_stride, gs, L::g_stride, g_ref, 1.f, row0,
                                           kd * 16);
        }
        for (int tile = parity; tile < tiles; tile += 2) {
            const bool diagonal = tile >= 2 * sub;
            float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
            for (int kd = 0; kd < KD; ++kd) {
                uint32_t kb[2], kb_lo[2];
                if (diagonal) {
                    rescaled_b_fragment_of_rows<true>(kb, kb_lo, ks, L::qk_stride, gs, L::g_stride, g_ref, -1.f,
                                                      tile * 8, kd * 16);
                    mma_bf16(acc, qa[kd], kb_lo[0], kb_lo[1]);
                    mma_bf16(acc, qa_lo[kd], kb[0], kb[1]);
                } else {
                    rescaled_b_fragment_of_rows<false>(kb, kb_lo, ks, L::qk_stride, gs, L::g_stride, g_ref, -1.f,
                                                       tile * 8, kd * 16);
                }
                mma_bf16(acc, qa[kd], kb[0], kb[1]);
            }
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int t = row0 + g + 8 * half, s = tile * 8 + 2 * t4;
                *reinterpret_cast<uint32_t*>(as + t * kTileStride + s) =
                    pack_bf16(s <= t ? acc[2 * half] : 0.f, s + 1 <= t ? acc[2 * half + 1] : 0.f);
            }
        }
    }
    // 3. Beyond the range: the diagonal block per element, a (t, s ≤ t) pair per lane-step of the two warps.
    if (!in_range) {
        for (int pair = parity * 32 + lane; pair < kSubChunk * (kSubChunk + 1) / 2; pair += 64) {
            int tl = int((sqrtf(8.f * pair + 1.f) - 1.f) * 0.5f);
            if ((tl + 1) * (tl + 2) / 2 <= pair) ++tl;  // (guards sqrtf's rounding)
            const int sl = pair - tl * (tl + 1) / 2, t = row0 + tl, s = row0 + sl;
            float sum = 0.f;
            for (int i = 0; i < DK; i += 2) {
                const float2 qv = unpack_bf16(*reinterpret_cast<const uint32_t*>(qs + t * L::qk_stride + i));
                const float2 kv = unpack_bf16(*reinterpret_cast<const uint32_t*>(ks + s * L::qk_stride + i));
                const float2 gt = *reinterpret_cast<const float2*>(gs + t * L::g_stride + i);
                const float2 gsv = *reinterpret_cast<const float2*>(gs + s * L::g_stride + i);
                sum += qv.x * kv.x * __expf(gt.x - gsv.x) + qv.y * kv.y * __expf(gt.y - gsv.y);
            }
            as[t * kTileStride + s] = __float2bfloat16(sum);
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < rows * (kChunk / 8); idx += kIntraThreads) {
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

constexpr int kStateThreads = 128;

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
__global__ void __launch_bounds__(kStateThreads) gla_state_backward_kernel(const BackwardParams p) {
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

constexpr int kGradThreads = 256;  // 8 warps: two a row block

// One block per (chunk, head, batch row). Warp w < 4 makes rows 16w .. of dq̂ and dk̂; warp 4 + w makes
// the same rows of dA and dv (about the same tensor-core work).
template <int DK, int DV>
__global__ void __launch_bounds__(kGradThreads) gla_chunk_grads_kernel(const BackwardParams p) {
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
    const int block = warp % 4, row0 = block * kSubChunk;
    const size_t token0 = (size_t(b) * T + t0) * H + h;
    const size_t chunk_base = ((size_t(b) * p.chunks + n) * H + h) * DK;

    // The chunk states are [Dk][Dv] row-major: Dk rows of one Dv-wide "token" each.
    load_rows(ss, L::s_stride, p.chunk_states + chunk_base * DV, 0, 1, DV, 0, DV, DK, DK);
    load_rows(dss, L::s_stride, p.dstates + chunk_base * DV, 0, 1, DV, 0, DV, DK, DK);
    load_rows(dos, L::s_stride, p.dout, token0, H, DV, 0, DV, rows);
    load_rows(vs, L::s_stride, p.v, token0, H, DV, 0, DV, rows);
    load_rows(khs, L::k_stride, p.k_hat, token0, H, DK, 0, DK, rows);
    load_rows(as, kTileStride, p.a_intra, token0, H, kChunk, 0, kChunk, rows);
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();

    if (warp < 4) {  // dq̂ = scale · dO S_0ᵀ, dk̂ = v dS_Lᵀ
        float acc[DK / 8][4];
        zero_tile(acc);
        mma_tile<DK / 8, false, true>(acc, dos, L::s_stride, row0, ss, L::s_stride, 0, 0, DV);
        store_rows_bf16(p.dq_hat, acc, p.scale, token0, H, DK, row0, rows);
        zero_tile(acc);
        mma_tile<DK / 8, false, true>(acc, vs, L::s_stride, row0, dss, L::s_stride, 0, 0, DV);
        store_rows_bf16(p.dk_hat, acc, 1.f, token0, H, DK, row0, rows);
    } else {
        {  // dA = scale · dO vᵀ on and below the diagonal (all 64 columns are stored)
            float acc[8][4];
            zero_tile(acc);
            mma_tile<8, false, true>(acc, dos, L::s_stride, row0, vs, L::s_stride, 0, 0, DV, 0, block + 1);
#pragma unroll
            for (int nt = 0; nt < 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    if (nt * 8 + 2 * t4 + (e & 1) > row0 + g + (e >= 2 ? 8 : 0)) acc[nt][e] = 0.f;
            store_rows_bf16(p.da, acc, p.scale, token0, H, kChunk, row0, rows);
        }
        // dv += scale · Aᵀ dO + k̂ dS_L (A's rows above this block's are zero in its columns)
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
    // dγ_i = Σ_j S_0[i][j] dS_L[i][j]: a warp a row, the lanes along it (a thread a row read down a column
    // of the padded tiles with 8-way bank conflicts).
    for (int i = warp; i < DK; i += kGradThreads / 32) {
        float sum = 0.f;
#pragma unroll
        for (int j = 2 * lane; j < DV; j += 64) {
            const float2 s = unpack_bf16(*reinterpret_cast<const uint32_t*>(ss + i * L::s_stride + j));
            const float2 d = unpack_bf16(*reinterpret_cast<const uint32_t*>(dss + i * L::s_stride + j));
            sum += s.x * d.x + s.y * d.y;
        }
#pragma unroll
        for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
        if (lane == 0) p.d_decay[chunk_base + i] = sum;
    }
}

template <int DK> struct IntraBackwardLayout {
    static constexpr int qk_stride = DK + 8;
    static constexpr int g_stride = DK + 4;
    static constexpr int q_off = 0;
    static constexpr int k_off = q_off + kChunk * qk_stride * 2;
    static constexpr int g_off = k_off + kChunk * qk_stride * 2;
    static constexpr int da_off = g_off + kChunk * g_stride * 4;
    static constexpr int dq_off = da_off + kChunk * kTileStride * 2;  // dq's dA terms, then ∂L/∂G and its suffix sums
    static constexpr int dk_off = dq_off + kChunk * g_stride * 4;     // dk's dA terms
    static constexpr int part_off = dk_off + kChunk * g_stride * 4;   // per row group: Σ_s k̂_s dk̂_s
    static constexpr int bytes = part_off + kIntraThreads * 8 * 4;
    static_assert(k_off % 16 == 0 && g_off % 16 == 0 && da_off % 16 == 0 && dq_off % 16 == 0 && dk_off % 16 == 0 &&
                  part_off % 16 == 0);
};

// Eight consecutive bf16 (16 bytes) as floats, and back.
__device__ __forceinline__ void unpack8(float (&x)[8], const uint4& v) {
    const uint32_t* w = reinterpret_cast<const uint32_t*>(&v);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const float2 f = unpack_bf16(w[j]);
        x[2 * j] = f.x, x[2 * j + 1] = f.y;
    }
}
__device__ __forceinline__ uint4 pack8(const float (&x)[8]) {
    uint4 v;
    uint32_t* w = reinterpret_cast<uint32_t*>(&v);
#pragma unroll
    for (int j = 0; j < 4; ++j) w[j] = pack_bf16(x[2 * j], x[2 * j + 1]);
    return v;
}

// One block per (chunk, head, batch row), in three passes.
//   1. Warp w < 4 makes dq's dA terms for sub-chunk w through r = 16w:
//      e^{G_t − G_r} · Σ_s dA_ts (k_s e^{G_r − G_s}) over s < 16w + 16 (< 16w beyond the range, the diagonal
//      block then per element); warp 4 + w makes dk's for sub-chunk w through r' = 16w + 15:
//      e^{G_r' − G_s} · Σ_t dA_ts (q_t e^{G_t − G_r'}) over t ≥ 16w (> r' beyond the range). Into shared tiles.
//   2. Every thread, eight key dimensions of a row at a time: dq, dk with their state terms (dq̂ e^{G},
//      dk̂ e^{G_L − G}) added into, ∂L/∂G = q ⊙ dq − k ⊙ dk into a shared tile, and partial column sums of
//      k̂ ⊙ dk̂.
//   3. dg: ∂L/∂G summed from the chunk's end (a thread a column), with e^{G_L}'s terms at the last token.
template <int DK>
__global__ void __launch_bounds__(kIntraThreads) gla_intra_backward_kernel(const BackwardParams p) {
    using L = IntraBackwardLayout<DK>;
    constexpr int NT = DK / 8;
    constexpr int kRowThreads = DK / 8;                            // threads a row in pass 2
    constexpr int kRowGroups = kIntraThreads / kRowThreads;        // rows a pass-2 step
    constexpr int kSteps = kChunk / kRowGroups;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* qs = reinterpret_cast<bf16*>(smem + L::q_off);
    bf16* ks = reinterpret_cast<bf16*>(smem + L::k_off);
    float* gs = reinterpret_cast<float*>(smem + L::g_off);
    bf16* das = reinterpret_cast<bf16*>(smem + L::da_off);
    float* dq_s = reinterpret_cast<float*>(smem + L::dq_off);
    float* dk_s = reinterpret_cast<float*>(smem + L::dk_off);
    float* parts = reinterpret_cast<float*>(smem + L::part_off);
    const int n = blockIdx.x, t0 = n * kChunk, h = blockIdx.y, b = blockIdx.z;
    const int T = p.seq_len, H = p.heads, rows = min(kChunk, T - t0);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    const int mi = lane / 8, r8 = lane % 8;
    const bool dq_warp = warp < 4;
    const int sub = warp % 4, row0 = sub * kSubChunk;
    const size_t token0 = (size_t(b) * T + t0) * H + h;

    load_rows(qs, L::qk_stride, p.q, token0, H, DK, 0, DK, rows);
    load_rows(ks, L::qk_stride, p.k, token0, H, DK, 0, DK, rows);
    load_gate_rows<DK>(gs, L::g_stride, p.log_gate, token0, H, rows);
    load_rows(das, kTileStride, p.da, token0, H, kChunk, 0, kChunk, rows);
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();
    cumulate_gate_columns<DK>(gs, L::g_stride);

    // 1.
    {
        const bool in_range = sub_chunk_in_range<DK>(gs, L::g_stride, row0);
        const float* g_ref = gs + (dq_warp ? row0 : row0 + kSubChunk - 1) * L::g_stride;
        float acc[NT][4];
        zero_tile(acc);
        if (dq_warp) {
            const int keys = row0 + (in_range ? kSubChunk : 0);
            for (int k0 = 0; k0 < keys; k0 += 16) {
                uint32_t af[4];
                ldmatrix_x4(af, das + (row0 + lane % 16) * kTileStride + k0 + (lane / 16) * 8);
                const bool diagonal = k0 == row0;
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    uint32_t bf[2], bf_lo[2];
                    if (diagonal) {
                        rescaled_b_fragment<true>(bf, bf_lo, ks, L::qk_stride, gs, L::g_stride, g_ref[nt * 8 + g], -1.f,
                                                  k0, nt * 8);
                        mma_bf16(acc[nt], af, bf_lo[0], bf_lo[1]);
                    } else {
                        rescaled_b_fragment<false>(bf, bf_lo, ks, L::qk_stride, gs, L::g_stride, g_ref[nt * 8 + g],
                                                   -1.f, k0, nt * 8);
                    }
                    mma_bf16(acc[nt], af, bf[0], bf[1]);
                }
            }
        } else {
            for (int k0 = row0 + (in_range ? 0 : kSubChunk); k0 < kChunk; k0 += 16) {
                uint32_t af[4];  // dAᵀ: rows s, columns t
                ldmatrix_x4_trans(af, das + (k0 + (mi / 2) * 8 + r8) * kTileStride + row0 + (mi % 2) * 8);
                const bool diagonal = k0 == row0;
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    uint32_t bf[2], bf_lo[2];
                    if (diagonal) {
                        rescaled_b_fragment<true>(bf, bf_lo, qs, L::qk_stride, gs, L::g_stride, g_ref[nt * 8 + g], 1.f,
                                                  k0, nt * 8);
                        mma_bf16(acc[nt], af, bf_lo[0], bf_lo[1]);
                    } else {
                        rescaled_b_fragment<false>(bf, bf_lo, qs, L::qk_stride, gs, L::g_stride, g_ref[nt * 8 + g],
                                                   1.f, k0, nt * 8);
                    }
                    mma_bf16(acc[nt], af, bf[0], bf[1]);
                }
            }
        }
        float* tile = dq_warp ? dq_s : dk_s;
        const float sign = dq_warp ? 1.f : -1.f;  // e^{G_t − G_r} or e^{G_r' − G_s}
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int r = row0 + g + 8 * half, i = nt * 8 + 2 * t4;
                const float2 gr = *reinterpret_cast<const float2*>(gs + r * L::g_stride + i);
                *reinterpret_cast<float2*>(tile + r * L::g_stride + i) =
                    make_float2(acc[nt][2 * half] * __expf(sign * (gr.x - g_ref[i])),
                                acc[nt][2 * half + 1] * __expf(sign * (gr.y - g_ref[i + 1])));
            }
        if (!in_range) {  // the diagonal block per element, a key dimension a lane
            __syncwarp();
            for (int i = lane; i < DK; i += 32)
                for (int a = row0; a < row0 + kSubChunk; ++a) {
                    const float ga = gs[a * L::g_stride + i];
                    float sum = 0.f;
                    if (dq_warp)
                        for (int s = row0; s <= a; ++s)
                            sum += __bfloat162float(das[a * kTileStride + s]) *
                                   __bfloat162float(ks[s * L::qk_stride + i]) * __expf(ga - gs[s * L::g_stride + i]);
                    else
                        for (int t = a; t < row0 + kSubChunk; ++t)
                            sum += __bfloat162float(das[t * kTileStride + a]) *
                                   __bfloat162float(qs[t * L::qk_stride + i]) * __expf(gs[t * L::g_stride + i] - ga);
                    tile[a * L::g_stride + i] += sum;
                }
        }
    }
    __syncthreads();

    // 2. Thread (row group, eight columns); every global load of the pass is issued before any store.
    {
        const int c = (threadIdx.x % kRowThreads) * 8, group = threadIdx.x / kRowThreads;
        uint4 dq_hat[kSteps], dk_hat[kSteps], dq_old[kSteps], dk_old[kSteps];
#pragma unroll
        for (int step = 0; step < kSteps; ++step) {
            const int r = group + step * kRowGroups;
            const size_t at = (token0 + size_t(r < rows ? r : 0) * H) * DK + c;
            const uint4 zero = make_uint4(0, 0, 0, 0);
            dq_hat[step] = r < rows ? *reinterpret_cast<const uint4*>(p.dq_hat + at) : zero;
            dk_hat[step] = r < rows ? *reinterpret_cast<const uint4*>(p.dk_hat + at) : zero;
            dq_old[step] = r < rows ? *reinterpret_cast<const uint4*>(p.dq + at) : zero;
            dk_old[step] = r < rows ? *reinterpret_cast<const uint4*>(p.dk + at) : zero;
        }
        float part[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        const float* g_last = gs + (kChunk - 1) * L::g_stride;
#pragma unroll
        for (int step = 0; step < kSteps; ++step) {
            const int r = group + step * kRowGroups;
            float dqh[8], dkh[8], dq[8], dk[8], qv[8], kv[8];
            unpack8(dqh, dq_hat[step]);
            unpack8(dkh, dk_hat[step]);
            unpack8(dq, dq_old[step]);
            unpack8(dk, dk_old[step]);
            unpack8(qv, *reinterpret_cast<const uint4*>(qs + r * L::qk_stride + c));
            unpack8(kv, *reinterpret_cast<const uint4*>(ks + r * L::qk_stride + c));
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const float gr = gs[r * L::g_stride + c + j], k_decay = __expf(g_last[c + j] - gr);
                const float dq_total = dq_s[r * L::g_stride + c + j] + dqh[j] * __expf(gr);
                const float dk_total = dk_s[r * L::g_stride + c + j] + dkh[j] * k_decay;
                dq[j] += dq_total;
                dk[j] += dk_total;
                part[j] += kv[j] * k_decay * dkh[j];  // k̂ dk̂
                dq_s[r * L::g_stride + c + j] = qv[j] * dq_total - kv[j] * dk_total;  // ∂L/∂G
            }
            if (r < rows) {
                const size_t at = (token0 + size_t(r) * H) * DK + c;
                *reinterpret_cast<uint4*>(p.dq + at) = pack8(dq);
                *reinterpret_cast<uint4*>(p.dk + at) = pack8(dk);
            }
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) parts[group * DK + c + j] = part[j];
    }
    if (p.dlog_gate == nullptr) return;
    __syncthreads();

    // 3.
    const size_t chunk_base = ((size_t(b) * p.chunks + n) * H + h) * DK;
    for (int i = threadIdx.x; i < DK; i += kIntraThreads) {
        float suffix = __expf(gs[(kChunk - 1) * L::g_stride + i]) * p.d_decay[chunk_base + i];
        for (int group = 0; group < kRowGroups; ++group) suffix += parts[group * DK + i];
        for (int r = kChunk - 1; r >= 0; --r) {
            suffix += dq_s[r * L::g_stride + i];
            dq_s[r * L::g_stride + i] = suffix;
        }
    }
    __syncthreads();
    constexpr int kVecSteps = kChunk * (DK / 4) / kIntraThreads;
    float4 old[kVecSteps];
#pragma unroll
    for (int step = 0; step < kVecSteps; ++step) {
        const int idx = threadIdx.x + step * kIntraThreads, r = idx / (DK / 4), c = (idx % (DK / 4)) * 4;
        old[step] = r < rows ? *reinterpret_cast<const float4*>(p.dlog_gate + (token0 + size_t(r) * H) * DK + c)
                             : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int step = 0; step < kVecSteps; ++step) {
        const int idx = threadIdx.x + step * kIntraThreads, r = idx / (DK / 4), c = (idx % (DK / 4)) * 4;
        if (r >= rows) continue;
        const float4 d = *reinterpret_cast<const float4*>(dq_s + r * L::g_stride + c);
        *reinterpret_cast<float4*>(p.dlog_gate + (token0 + size_t(r) * H) * DK + c) =
            make_float4(old[step].x + d.x, old[step].y + d.y, old[step].z + d.z, old[step].w + d.w);
    }
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

// The backward's scratch: the forward's, then S_0 and dS_L of every chunk, dq̂, dk̂, dA, dγ.
struct BackwardScratch {
    ForwardScratch forward;
    bf16* chunk_states;
    bf16* dstates;
    bf16* dq_hat;
    bf16* dk_hat;
    bf16* da;
    float* d_decay;
    size_t bytes;
};
BackwardScratch carve_backward(void* base, int64_t batch, int64_t seq_len, int64_t heads, int64_t key_dim,
                               int64_t value_dim) {
    const size_t tokens = size_t(batch * seq_len * heads), chunks = size_t((seq_len + kChunk - 1) / kChunk);
    const size_t states = size_t(batch) * chunks * size_t(heads * key_dim * value_dim) * 2;
    BackwardScratch s{};
    s.forward = carve_forward(base, batch, seq_len, heads, key_dim);
    unsigned char* at = static_cast<unsigned char*>(base);
    s.bytes = s.forward.bytes;
    auto take = [&](size_t bytes) {
        unsigned char* p = at + s.bytes;
        s.bytes += round_up(bytes);
        return p;
    };
    s.chunk_states = reinterpret_cast<bf16*>(take(states));
    s.dstates = reinterpret_cast<bf16*>(take(states));
    s.dq_hat = reinterpret_cast<bf16*>(take(tokens * size_t(key_dim) * 2));
    s.dk_hat = reinterpret_cast<bf16*>(take(tokens * size_t(key_dim) * 2));
    s.da = reinterpret_cast<bf16*>(take(tokens * kChunk * 2));
    s.d_decay = reinterpret_cast<float*>(take(size_t(batch) * chunks * size_t(heads * key_dim) * 4));
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
    launch_with_shared_memory(gla_intra_kernel<DK>, "gla_intra_kernel", grid, kIntraThreads, IntraLayout<DK>::bytes,
                              intra);
    gla_walk({s.q_hat, s.k_hat, a.v, s.a_intra, s.row_decay, a.initial_state, a.o, a.final_state, a.chunk_states,
              a.batch, a.seq_len, a.heads, a.key_dim, a.value_dim, a.scale});
}

template <int DK, int DV> void run_backward(const BackwardParams& p, int batch) {
    const dim3 chunks(unsigned(p.chunks), unsigned(p.heads), unsigned(batch));
    launch_with_shared_memory(gla_state_backward_kernel<DK>, "gla_state_backward_kernel",
                              dim3(unsigned(DV / kValueTile), unsigned(p.heads), unsigned(batch)), kStateThreads,
                              StateBackwardLayout<DK>::bytes, p);
    launch_with_shared_memory(gla_chunk_grads_kernel<DK, DV>, "gla_chunk_grads_kernel", chunks, kGradThreads,
                              ChunkGradsLayout<DK, DV>::bytes, p);
    launch_with_shared_memory(gla_intra_backward_kernel<DK>, "gla_intra_backward_kernel", chunks, kIntraThreads,
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
    return carve_backward(nullptr, batch, seq_len, heads, key_dim, value_dim).bytes;
}

void gla_chunkwise_backward(const GlaBackward& a) {
    check_grid("gla_chunkwise_backward", a.batch, a.seq_len, a.heads, a.key_dim, a.value_dim);
    const int64_t chunks = (a.seq_len + kChunk - 1) / kChunk;
    const BackwardScratch s = carve_backward(a.scratch, a.batch, a.seq_len, a.heads, a.key_dim, a.value_dim);
    const ForwardScratch& fs = s.forward;

    // 1. The forward again, keeping S_0 of every chunk (and q̂, k̂, A, e^{G_L} in the scratch).
    GlaForward forward{a.q, a.k, a.v, a.log_gate, a.initial_state, nullptr, nullptr, a.scratch,
                       a.batch, a.seq_len, a.heads, a.key_dim, a.value_dim, a.scale};
    forward.chunk_states = s.chunk_states;
    a.key_dim == 64 ? run_forward<64>(forward, fs) : run_forward<128>(forward, fs);

    const BackwardParams p{static_cast<const bf16*>(a.q), static_cast<const bf16*>(a.k), static_cast<const bf16*>(a.v),
                           static_cast<const bf16*>(a.dout), a.log_gate, a.dfinal_state, fs.q_hat, fs.k_hat,
                           fs.a_intra, fs.row_decay, s.chunk_states, s.dstates, s.dq_hat, s.dk_hat, s.da,
                           s.d_decay, static_cast<bf16*>(a.dq),
                           static_cast<bf16*>(a.dk), static_cast<bf16*>(a.dv), a.dlog_gate, a.dinitial_state,
                           int(a.seq_len), int(a.heads), int(a.value_dim), int(chunks), float(a.scale)};
    const int batch = int(a.batch);
    if (a.key_dim == 64) a.value_dim == 64 ? run_backward<64, 64>(p, batch) : run_backward<64, 128>(p, batch);
    else a.value_dim == 64 ? run_backward<128, 64>(p, batch) : run_backward<128, 128>(p, batch);
}

}  // namespace linarch::cuda
