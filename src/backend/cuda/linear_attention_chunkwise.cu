// CUDA chunkwise forward of causal linear attention and of the (gated) delta rule (see the header).
// Variant 3 of dev/cuda/linear_attention_chunkwise.cu: one fused kernel; a block owns one (batch row,
// head, slice of BV value columns: 64, or 32 or 16 for few sequences) and walks the sequence's chunks of
// 64 tokens in order, keeping its Dk × BV slice of the state in fp32 registers, so no per-chunk state
// reaches device memory.
// Per chunk, warp w (4 warps) takes query rows 16w .. 16w+15:
//     A = q kᵀ (causal tiles only), masked and decayed by exp(G_i − G_j) in registers (exponent ≤ 0:
//         mixers.md §13), then reused as the A operand of P·v (FlashAttention-2's register trick);
//     o = exp(G_i) · (q S) + P v,   S ← exp(G_last) S + (exp(G_last − G_j) k_j)ᵀ v
// with G the fp32 cumulative log gate within the chunk, which every warp scans itself in registers.
// mma.sync m16n8k16 (bf16 → fp32), operands through ldmatrix from padded shared memory; the next
// chunk's q, k, v arrive by cp.async meanwhile. Two barriers a chunk.
//
// The delta rule is the same walk over pseudo-values (the WY/UT form, mixers.md §6). Within a chunk,
// with A_ij = β_i exp(G_i − G_j) k_i·k_j for j < i, the state's updates are S ← exp(g_t) S + k_tᵀ u_t with
//     (I + A) u = diag(β) v − diag(β exp(G)) k S_0,   i.e.   u = ũ − W S_0,
//     ũ = (I + A)⁻¹ diag(β) v,   W = (I + A)⁻¹ diag(β exp(G)) k,
// and ũ, W depend on the chunk's own tokens only. A first kernel solves for them, every chunk in
// parallel (fp32 forward substitution, a column per thread); the walk then loads W next to k and ũ in
// v's place, and forms u = ũ − W·S on the tensor cores before using it as v (one more barrier a chunk).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "backend/cuda/check.cuh"
#include "backend/cuda/linear_attention_chunkwise.hpp"
#include "backend/cuda/device.hpp"
#include "backend/cuda/mma_ptx.cuh"
#include "backend/cuda/warp_tiles.cuh"
#include "core/error.hpp"

namespace linarch::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kChunk = 64;
constexpr int kValueTile = 64;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;

struct Params {
    const bf16* q;
    const bf16* k;
    const bf16* v;               // the delta rule: ũ
    const bf16* w;               // the delta rule: W [B,T,H,Dk]; null otherwise
    const float* log_gate;
    const float* initial_state;
    bf16* o;                     // null: not wanted (the delta rule's backward recomputing the walk)
    float* final_state;
    bf16* chunk_states;          // null, or S at each chunk's start [B, chunks, H, Dk, Dv] (bf16)
    bf16* u_out;                 // the delta rule: null, or u [B,T,H,Dv]
    int seq_len, heads, value_dim;
    float scale;
    const bf16* a_intra = nullptr;    // GLA: the chunks' intra-chunk matrices [B,T,H,64] (gla_chunkwise.cu)
    const float* row_decay = nullptr; // GLA: exp(G_last) per key dimension [B, chunks, H, Dk]
};

// One stage holds a chunk's q, k, [W,] v and gates [or, for a vector gate, the intra-chunk matrix and
// the chunk's decay per key dimension]; rows are padded by 16 bytes so that ldmatrix's eight row
// addresses fall in different banks. STAGES of them (2: the next chunk loads during this one), then the
// bf16 copy of the state slice.
template <int DK, bool DELTA, int BV, bool VECTOR = false> struct StageLayout {
    static constexpr int qk_stride = DK + 8;  // elements
    static constexpr int v_stride = BV + 8;
    static constexpr int q_off = 0;
    static constexpr int k_off = q_off + kChunk * qk_stride * 2;
    static constexpr int w_off = k_off + kChunk * qk_stride * 2;
    static constexpr int v_off = w_off + (DELTA ? kChunk * qk_stride * 2 : 0);
    static constexpr int g_off = v_off + kChunk * v_stride * 2;
    static constexpr int a_stride = kChunk + 8;
    static constexpr int a_off = g_off + (VECTOR ? 0 : kChunk * 4);  // (a vector gate's walk loads no gates)
    static constexpr int decay_off = a_off + (VECTOR ? kChunk * a_stride * 2 : 0);
    static constexpr int stage_bytes = decay_off + (VECTOR ? DK * 4 : 0);
    static_assert(stage_bytes % 16 == 0 && k_off % 16 == 0 && v_off % 16 == 0 && g_off % 16 == 0 &&
                  a_off % 16 == 0 && decay_off % 16 == 0);
};
template <int DK, bool DELTA, int STAGES, int BV, bool VECTOR = false>
struct Layout : StageLayout<DK, DELTA, BV, VECTOR> {
    static constexpr int s_off = STAGES * StageLayout<DK, DELTA, BV, VECTOR>::stage_bytes;
    static constexpr int bytes = s_off + DK * StageLayout<DK, DELTA, BV, VECTOR>::v_stride * 2;
};


// Starts copying one chunk of q, k, (W,) v (columns v_col ..) and the gates into a stage; rows past the
// sequence end are zero-filled, and their gates 0, so the chunk's total decay is its last token's.
template <int DK, bool DELTA, int BV, bool VECTOR>
__device__ __forceinline__ void load_chunk(unsigned char* stage, const Params& p, int b, int h, int v_col, int t0) {
    using L = StageLayout<DK, DELTA, BV, VECTOR>;
    bf16* qs = reinterpret_cast<bf16*>(stage + L::q_off);
    bf16* ks = reinterpret_cast<bf16*>(stage + L::k_off);
    bf16* ws = reinterpret_cast<bf16*>(stage + L::w_off);
    bf16* vs = reinterpret_cast<bf16*>(stage + L::v_off);
    const int T = p.seq_len, H = p.heads, DV = p.value_dim;
    constexpr int qk_vecs = DK / 8, v_vecs = BV / 8;
    for (int idx = threadIdx.x; idx < kChunk * qk_vecs; idx += kThreads) {
        const int r = idx / qk_vecs, c = (idx % qk_vecs) * 8, t = t0 + r;
        const bool valid = t < T;
        const size_t off = ((size_t(b) * T + (valid ? t : 0)) * H + h) * DK + c;
        if (p.o != nullptr) cp_async16(qs + r * L::qk_stride + c, p.q + off, valid);  // (q only feeds o)
        cp_async16(ks + r * L::qk_stride + c, p.k + off, valid);
        if constexpr (DELTA) cp_async16(ws + r * L::qk_stride + c, p.w + off, valid);
    }
    for (int idx = threadIdx.x; idx < kChunk * v_vecs; idx += kThreads) {
        const int r = idx / v_vecs, c = (idx % v_vecs) * 8, t = t0 + r;
        const bool valid = t < T;
        const size_t off = ((size_t(b) * T + (valid ? t : 0)) * H + h) * DV + v_col + c;
        cp_async16(vs + r * L::v_stride + c, p.v + off, valid);
    }
    if (p.log_gate != nullptr && threadIdx.x < kChunk) {
        const int t = t0 + threadIdx.x;
        const bool valid = t < T;
        float* gs = reinterpret_cast<float*>(stage + L::g_off);
        cp_async4(gs + threadIdx.x, p.log_gate + (size_t(b) * T + (valid ? t : 0)) * H + h, valid);
    }
    if constexpr (VECTOR) {
        bf16* as = reinterpret_cast<bf16*>(stage + L::a_off);
        for (int idx = threadIdx.x; idx < kChunk * (kChunk / 8); idx += kThreads) {
            const int r = idx / (kChunk / 8), c = (idx % (kChunk / 8)) * 8, t = t0 + r;
            const bool valid = t < T;
            cp_async16(as + r * L::a_stride + c, p.a_intra + ((size_t(b) * T + (valid ? t : 0)) * H + h) * kChunk + c,
                       valid);
        }
        const int chunks = (T + kChunk - 1) / kChunk;
        float* decay = reinterpret_cast<float*>(stage + L::decay_off);
        if (threadIdx.x < DK / 4)
            cp_async16(decay + 4 * threadIdx.x,
                       p.row_decay + ((size_t(b) * chunks + t0 / kChunk) * H + h) * DK + 4 * threadIdx.x, true);
    }
}


template <int DK, bool GATED, bool DELTA, int STAGES, int BV, bool VECTOR>
__global__ void __launch_bounds__(kThreads, 2) linear_attention_chunkwise_forward_kernel(const Params p) {
    static_assert(!(VECTOR && (GATED || DELTA)), "a vector gate walks precomputed q̂, k̂ and A");
    using L = Layout<DK, DELTA, STAGES, BV, VECTOR>;
    constexpr int MT = DK / 64;
    constexpr int NT = BV / 8;
    constexpr int KD = DK / 16;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* state_bf16 = reinterpret_cast<bf16*>(smem + L::s_off);

    const int v_col = blockIdx.x * BV, h = blockIdx.y, b = blockIdx.z;
    const int T = p.seq_len, H = p.heads, DV = p.value_dim;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t4 = lane % 4;
    const int mi = lane / 8, r8 = lane % 8;
    const int row0 = warp * 16;
    const int srow0 = warp * (DK / 4);

    float s[MT][NT][4];
    const size_t state_base = (size_t(b) * H + h) * DK * DV;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int d = srow0 + mt * 16 + g + (e >= 2 ? 8 : 0), c = nt * 8 + 2 * t4 + (e & 1);
                s[mt][nt][e] = p.initial_state ? p.initial_state[state_base + size_t(d) * DV + v_col + c] : 0.f;
            }
    auto write_state_bf16 = [&] {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    const int d = srow0 + mt * 16 + g + half * 8, c = nt * 8 + 2 * t4;
                    *reinterpret_cast<uint32_t*>(state_bf16 + d * L::v_stride + c) =
                        pack_bf16(s[mt][nt][2 * half], s[mt][nt][2 * half + 1]);
                }
    };
    write_state_bf16();

    const int num_chunks = (T + kChunk - 1) / kChunk;
    load_chunk<DK, DELTA, BV, VECTOR>(smem, p, b, h, v_col, 0);
    cp_async_commit();
    for (int n = 0; n < num_chunks; ++n) {
        cp_async_wait_all();
        __syncthreads();  // chunk n is in its stage; every warp is done with chunk n − 1 and the state copy is current
        if (p.chunk_states != nullptr) {
            bf16* out = p.chunk_states + ((size_t(b) * num_chunks + n) * H + h) * DK * DV + v_col;
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                    for (int half = 0; half < 2; ++half) {
                        const int d = srow0 + mt * 16 + g + half * 8, c = nt * 8 + 2 * t4;
                        *reinterpret_cast<uint32_t*>(out + size_t(d) * DV + c) =
                            pack_bf16(s[mt][nt][2 * half], s[mt][nt][2 * half + 1]);
                    }
        }
        if (STAGES == 2 && n + 1 < num_chunks)
            load_chunk<DK, DELTA, BV, VECTOR>(smem + ((n + 1) & 1) * L::stage_bytes, p, b, h, v_col, (n + 1) * kChunk);
        cp_async_commit();
        unsigned char* stage = smem + (STAGES == 2 ? (n & 1) : 0) * L::stage_bytes;
        const bf16* qs = reinterpret_cast<const bf16*>(stage + L::q_off);
        const bf16* ks = reinterpret_cast<const bf16*>(stage + L::k_off);
        bf16* vs = reinterpret_cast<bf16*>(stage + L::v_off);
        if constexpr (DELTA) {
            // u = ũ − W·S over this warp's rows, written over ũ; the barrier publishes every warp's rows,
            // which P·u and the state update below read.
            const bf16* ws = reinterpret_cast<const bf16*>(stage + L::w_off);
            float ws_prod[NT][4];
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) ws_prod[nt][e] = 0.f;
#pragma unroll
            for (int kd = 0; kd < KD; ++kd) {
                uint32_t wa[4];
                ldmatrix_x4(wa, ws + (row0 + lane % 16) * L::qk_stride + kd * 16 + (lane / 16) * 8);
#pragma unroll
                for (int np = 0; np < NT / 2; ++np) {
                    uint32_t sb[4];
                    ldmatrix_x4_trans(sb, state_bf16 + (kd * 16 + (mi % 2) * 8 + r8) * L::v_stride + np * 16 + (mi / 2) * 8);
                    mma_bf16(ws_prod[2 * np], wa, sb[0], sb[1]);
                    mma_bf16(ws_prod[2 * np + 1], wa, sb[2], sb[3]);
                }
            }
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    uint32_t* u = reinterpret_cast<uint32_t*>(vs + (row0 + g + half * 8) * L::v_stride + nt * 8 + 2 * t4);
                    const float2 ut = unpack_bf16(*u);
                    *u = pack_bf16(ut.x - ws_prod[nt][2 * half], ut.y - ws_prod[nt][2 * half + 1]);
                    const int t = n * kChunk + row0 + g + half * 8;
                    if (p.u_out != nullptr && t < T)
                        *reinterpret_cast<uint32_t*>(p.u_out + ((size_t(b) * T + t) * H + h) * DV + v_col + nt * 8 +
                                                     2 * t4) = *u;
                }
            __syncthreads();
        }
        // Lane l holds G[2l], G[2l+1] (inclusive prefix sums of the chunk's log gates, fp32).
        float cum_even = 0.f, cum_odd = 0.f;
        if constexpr (GATED) {
            const float2 gg = reinterpret_cast<const float2*>(stage + L::g_off)[lane];
            float x = gg.x + gg.y;
#pragma unroll
            for (int off = 1; off < 32; off *= 2) {
                const float y = __shfl_up_sync(0xffffffffu, x, off);
                if (lane >= off) x += y;
            }
            cum_even = x - gg.y;
            cum_odd = x;
        }
        // G_j for j = 2·src + parity, by shuffle (every lane of the warp must call it).
        auto cum_at = [&](int src, int parity) {
            const float e = __shfl_sync(0xffffffffu, cum_even, src), o = __shfl_sync(0xffffffffu, cum_odd, src);
            return parity ? o : e;
        };

        const float cum_last = GATED ? __shfl_sync(0xffffffffu, cum_odd, 31) : 0.f;
        // The chunk's output; skipped by the walks that only want the states (and u): the delta rule's
        // backward, and the long-sequence forward whose outputs chunk_output_kernel makes in parallel.
        if (p.o != nullptr) {
            uint32_t qa[KD][4];
#pragma unroll
            for (int kd = 0; kd < KD; ++kd)
                ldmatrix_x4(qa[kd], qs + (row0 + lane % 16) * L::qk_stride + kd * 16 + (lane / 16) * 8);
            const int i_lo = row0 + g, i_hi = i_lo + 8;
            float cum_lo = 0.f, cum_hi = 0.f;
            if constexpr (GATED) {
                cum_lo = cum_at(i_lo / 2, i_lo & 1);
                cum_hi = cum_at(i_hi / 2, i_hi & 1);
            }
            // P: this warp's rows of the chunk's masked, decayed q kᵀ, as A fragments (bf16); with a vector
            // gate, precomputed (blocks right of the diagonal are zero and are not read).
            uint32_t pa[4][4];
            if constexpr (VECTOR) {
                const bf16* as = reinterpret_cast<const bf16*>(stage + L::a_off);
#pragma unroll
                for (int kk = 0; kk < 4; ++kk)
                    if (kk <= warp) ldmatrix_x4(pa[kk], as + (row0 + lane % 16) * L::a_stride + kk * 16 + (lane / 16) * 8);
            } else {
                float a[8][4];
#pragma unroll
                for (int nt = 0; nt < 8; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) a[nt][e] = 0.f;
#pragma unroll
                for (int kd = 0; kd < KD; ++kd)
#pragma unroll
                    for (int np = 0; np < 4; ++np)
                        if (np <= warp) {
                            uint32_t kb[4];
                            ldmatrix_x4(kb, ks + (np * 16 + (mi / 2) * 8 + r8) * L::qk_stride + kd * 16 + (mi % 2) * 8);
                            mma_bf16(a[2 * np], qa[kd], kb[0], kb[1]);
                            mma_bf16(a[2 * np + 1], qa[kd], kb[2], kb[3]);
                        }
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) {
                    // columns j = 8nt + 2t4 and + 1: lane 4nt + t4 holds both
                    float cj0 = 0.f, cj1 = 0.f;
                    if constexpr (GATED) {
                        cj0 = __shfl_sync(0xffffffffu, cum_even, 4 * nt + t4);
                        cj1 = __shfl_sync(0xffffffffu, cum_odd, 4 * nt + t4);
                    }
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int i = e >= 2 ? i_hi : i_lo, j = nt * 8 + 2 * t4 + (e & 1);
                        float val = j <= i ? a[nt][e] : 0.f;
                        if constexpr (GATED) {
                            if (j <= i) val *= __expf((e >= 2 ? cum_hi : cum_lo) - ((e & 1) ? cj1 : cj0));
                        }
                        a[nt][e] = val;
                    }
                }
                to_a_fragments(pa, a);
            }
            float o[NT][4];
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) o[nt][e] = 0.f;
#pragma unroll
            for (int kd = 0; kd < KD; ++kd)
#pragma unroll
                for (int np = 0; np < NT / 2; ++np) {
                    uint32_t sb[4];
                    ldmatrix_x4_trans(sb, state_bf16 + (kd * 16 + (mi % 2) * 8 + r8) * L::v_stride + np * 16 + (mi / 2) * 8);
                    mma_bf16(o[2 * np], qa[kd], sb[0], sb[1]);
                    mma_bf16(o[2 * np + 1], qa[kd], sb[2], sb[3]);
                }
            if constexpr (GATED) {
                const float d_lo = __expf(cum_lo), d_hi = __expf(cum_hi);
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    o[nt][0] *= d_lo; o[nt][1] *= d_lo; o[nt][2] *= d_hi; o[nt][3] *= d_hi;
                }
            }
#pragma unroll
            for (int kk = 0; kk < 4; ++kk)
                if (kk <= warp) {
#pragma unroll
                    for (int np = 0; np < NT / 2; ++np) {
                        uint32_t vb[4];
                        ldmatrix_x4_trans(vb, vs + (kk * 16 + (mi % 2) * 8 + r8) * L::v_stride + np * 16 + (mi / 2) * 8);
                        mma_bf16(o[2 * np], pa[kk], vb[0], vb[1]);
                        mma_bf16(o[2 * np + 1], pa[kk], vb[2], vb[3]);
                    }
                }
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int t = n * kChunk + row0 + g + half * 8;
                if (t < T) {
                    bf16* out = p.o + ((size_t(b) * T + t) * H + h) * DV + v_col + 2 * t4;
#pragma unroll
                    for (int nt = 0; nt < NT; ++nt)
                        *reinterpret_cast<uint32_t*>(out + nt * 8) =
                            pack_bf16(o[nt][2 * half] * p.scale, o[nt][2 * half + 1] * p.scale);
                }
            }
        }
        // State update first into registers (reads only this stage's k, v), then the barrier, then
        // the shared copy (which other warps may still be reading above).
        if constexpr (VECTOR) {
            const float* decay = reinterpret_cast<const float*>(stage + L::decay_off);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                const float d_lo = decay[srow0 + mt * 16 + g], d_hi = decay[srow0 + mt * 16 + g + 8];
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    s[mt][nt][0] *= d_lo; s[mt][nt][1] *= d_lo; s[mt][nt][2] *= d_hi; s[mt][nt][3] *= d_hi;
                }
            }
        }
        if constexpr (GATED) {
            const float total = __expf(cum_last);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) s[mt][nt][e] *= total;
        }
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            uint32_t ka[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
                ldmatrix_x4_trans(ka[mt], ks + (kk * 16 + (mi / 2) * 8 + r8) * L::qk_stride + srow0 + mt * 16 + (mi % 2) * 8);
            if constexpr (GATED) {
                // a0,a1 hold k index j = 16kk + 2t4 (+1); a2,a3 hold j + 8 (+1): lanes 8kk + t4 and + 4.
                const float w0 = __expf(cum_last - __shfl_sync(0xffffffffu, cum_even, 8 * kk + t4));
                const float w1 = __expf(cum_last - __shfl_sync(0xffffffffu, cum_odd, 8 * kk + t4));
                const float w8 = __expf(cum_last - __shfl_sync(0xffffffffu, cum_even, 8 * kk + t4 + 4));
                const float w9 = __expf(cum_last - __shfl_sync(0xffffffffu, cum_odd, 8 * kk + t4 + 4));
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    ka[mt][0] = scale_bf16x2(ka[mt][0], w0, w1);
                    ka[mt][1] = scale_bf16x2(ka[mt][1], w0, w1);
                    ka[mt][2] = scale_bf16x2(ka[mt][2], w8, w9);
                    ka[mt][3] = scale_bf16x2(ka[mt][3], w8, w9);
                }
            }
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                uint32_t vb[4];
                ldmatrix_x4_trans(vb, vs + (kk * 16 + (mi % 2) * 8 + r8) * L::v_stride + np * 16 + (mi / 2) * 8);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma_bf16(s[mt][2 * np], ka[mt], vb[0], vb[1]);
                    mma_bf16(s[mt][2 * np + 1], ka[mt], vb[2], vb[3]);
                }
            }
        }
        __syncthreads();  // every warp is done reading the state copy (and, with one stage, the chunk)
        write_state_bf16();
        if (STAGES == 1 && n + 1 < num_chunks) {
            load_chunk<DK, DELTA, BV, VECTOR>(smem, p, b, h, v_col, (n + 1) * kChunk);
            cp_async_commit();
        }
    }
    if (p.final_state != nullptr) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    const int d = srow0 + mt * 16 + g + half * 8, c = nt * 8 + 2 * t4;
                    *reinterpret_cast<float2*>(p.final_state + state_base + size_t(d) * DV + v_col + c) =
                        make_float2(s[mt][nt][2 * half], s[mt][nt][2 * half + 1]);
                }
    }
}

template <int DK, bool GATED, bool DELTA, bool VECTOR, int STAGES, int BV> void launch(const Params& p, int batch) {
    auto* kernel = linear_attention_chunkwise_forward_kernel<DK, GATED, DELTA, STAGES, BV, VECTOR>;
    constexpr int bytes = Layout<DK, DELTA, STAGES, BV, VECTOR>::bytes;
    const dim3 grid(unsigned(p.value_dim / BV), unsigned(p.heads), unsigned(batch));
    launch_with_shared_memory(kernel,
                              fmt::format("linear_attention_chunkwise_forward_kernel<Dk={}, gated={}, delta={}, "
                                          "vector gate={}, stages={}, value tile={}>",
                                          DK, GATED, DELTA, VECTOR, STAGES, BV)
                                  .c_str(),
                              grid, kThreads, bytes, p);
}

int multiprocessor_count() {
    static const int count = [] {
        int device = 0, n = 1;
        cudaGetDevice(&device);
        cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device);
        return n;
    }();
    return count;
}

// Whether value tiles of 64 columns leave multiprocessors idle: a few long sequences.
bool few_walks(const Params& p, int batch) {
    return int64_t(p.heads) * batch * (p.value_dim / 64) < multiprocessor_count();
}

// The walk's shape by the grid (dev/cuda/NOTES_delta_rule.md). With a block of 64 value columns for every
// multiprocessor or more: 64 columns, and for the delta rule one stage (80 KB for Dk 128, so two blocks
// share a multiprocessor and hide each other's loads: 0.24 ms against 0.29 ms with two stages at B=8
// T=2048). With fewer (a few long sequences): two stages, and value tiles of 32 or 16 columns for more
// blocks, each redoing its chunks' q kᵀ. With 64 columns, the vector gate's walk takes one stage as the
// delta rule's (its stage also holds the intra-chunk matrix).
template <int DK, bool GATED, bool DELTA, bool VECTOR = false> void launch_walk(const Params& p, int batch) {
    const int64_t sequence_heads = int64_t(p.heads) * batch;
    if (!few_walks(p, batch)) {
        if constexpr (DELTA || VECTOR) launch<DK, GATED, DELTA, VECTOR, 1, 64>(p, batch);
        else launch<DK, GATED, DELTA, VECTOR, 2, 64>(p, batch);
    } else if (sequence_heads * (p.value_dim / 32) >= multiprocessor_count()) {
        launch<DK, GATED, DELTA, VECTOR, 2, 32>(p, batch);
    } else {
        launch<DK, GATED, DELTA, VECTOR, 2, 16>(p, batch);
    }
}

// ---- the outputs of every chunk in parallel, from the states a walk kept ----

// A walk over few long sequences is sequential over many chunks with few blocks, and its outputs (q kᵀ,
// P v, q S: most of a chunk's products) lengthen every step. There the walk keeps only the states (and,
// for the delta rule, u), and this kernel makes every chunk's o from them: a block per (chunk, head,
// batch row and 64 value columns); warp w takes rows 16w .. 16w + 15, as the walk.
struct OutputParams {
    const bf16* q;
    const bf16* k;
    const bf16* v;             // the values the walk used (the delta rule's u)
    const float* log_gate;     // null: no decay
    const bf16* chunk_states;  // S at each chunk's start [B, chunks, H, Dk, Dv]
    bf16* o;
    int seq_len, heads, value_dim;
    float scale;
};

template <int DK> struct OutputLayout {
    static constexpr int qk_stride = DK + 8;
    static constexpr int v_stride = kValueTile + 8;
    static constexpr int q_off = 0;
    static constexpr int k_off = q_off + kChunk * qk_stride * 2;
    static constexpr int v_off = k_off + kChunk * qk_stride * 2;
    static constexpr int s_off = v_off + kChunk * v_stride * 2;
    static constexpr int g_off = s_off + DK * v_stride * 2;
    static constexpr int bytes = g_off + kChunk * 4;
    static_assert(k_off % 16 == 0 && v_off % 16 == 0 && s_off % 16 == 0 && g_off % 16 == 0);
};

template <int DK, bool GATED>
__global__ void __launch_bounds__(kThreads) chunk_output_kernel(const OutputParams p) {
    using L = OutputLayout<DK>;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* qs = reinterpret_cast<bf16*>(smem + L::q_off);
    bf16* ks = reinterpret_cast<bf16*>(smem + L::k_off);
    bf16* vs = reinterpret_cast<bf16*>(smem + L::v_off);
    bf16* ss = reinterpret_cast<bf16*>(smem + L::s_off);
    float* gs = reinterpret_cast<float*>(smem + L::g_off);
    const int tiles = p.value_dim / kValueTile;
    const int n = blockIdx.x, t0 = n * kChunk, h = blockIdx.y, b = blockIdx.z / tiles;
    const int v_col = (blockIdx.z % tiles) * kValueTile;
    const int T = p.seq_len, H = p.heads, DV = p.value_dim, rows = min(kChunk, T - t0);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    const int row0 = warp * 16;
    const size_t token0 = (size_t(b) * T + t0) * H + h;

    load_rows(qs, L::qk_stride, p.q, token0, H, DK, 0, DK, rows);
    load_rows(ks, L::qk_stride, p.k, token0, H, DK, 0, DK, rows);
    load_rows(vs, L::v_stride, p.v, token0, H, DV, v_col, kValueTile, rows);
    const bf16* state = p.chunk_states + ((size_t(b) * gridDim.x + n) * H + h) * DK * DV;
    load_rows(ss, L::v_stride, state, 0, 1, DV, v_col, kValueTile, DK, DK);
    cp_async_commit();
    if (GATED && warp == 0) chunk_cumulative_gate(gs, p.log_gate, token0, H, rows);
    cp_async_wait_all();
    __syncthreads();

    // P = q kᵀ on and below the diagonal, decayed by e^{G_i − G_j}.
    float a[8][4];
    zero_tile(a);
    mma_tile<8, false, true>(a, qs, L::qk_stride, row0, ks, L::qk_stride, 0, 0, DK, 0, warp + 1);
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int i = row0 + g + (e >= 2 ? 8 : 0), j = nt * 8 + 2 * t4 + (e & 1);
            a[nt][e] = j <= i ? a[nt][e] * (GATED ? __expf(gs[i] - gs[j]) : 1.f) : 0.f;
        }
    uint32_t pa[4][4];
    to_a_fragments(pa, a);
    // o = e^{G_i} q S_0 + P v
    float o[kValueTile / 8][4];
    zero_tile(o);
    mma_tile<kValueTile / 8, false, false>(o, qs, L::qk_stride, row0, ss, L::v_stride, 0, 0, DK);
    if constexpr (GATED) {
        const float d_lo = __expf(gs[row0 + g]), d_hi = __expf(gs[row0 + g + 8]);
#pragma unroll
        for (int nt = 0; nt < kValueTile / 8; ++nt) {
            o[nt][0] *= d_lo; o[nt][1] *= d_lo; o[nt][2] *= d_hi; o[nt][3] *= d_hi;
        }
    }
    mma_tile_from_fragments<kValueTile / 8, 4, false>(o, pa, 0, warp + 1, vs, L::v_stride, 0);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int r = row0 + g + 8 * half;
        if (r >= rows) continue;
        bf16* out = p.o + (token0 + size_t(r) * H) * DV + v_col + 2 * t4;
#pragma unroll
        for (int nt = 0; nt < kValueTile / 8; ++nt)
            *reinterpret_cast<uint32_t*>(out + nt * 8) = pack_bf16(p.scale * o[nt][2 * half], p.scale * o[nt][2 * half + 1]);
    }
}

template <int DK, bool GATED> void launch_output(const OutputParams& p, int batch) {
    auto* kernel = chunk_output_kernel<DK, GATED>;
    constexpr int bytes = OutputLayout<DK>::bytes;
    const dim3 grid(unsigned((p.seq_len + kChunk - 1) / kChunk), unsigned(p.heads),
                    unsigned(batch * (p.value_dim / kValueTile)));
    launch_with_shared_memory(kernel, fmt::format("chunk_output_kernel<Dk={}, gated={}>", DK, GATED).c_str(), grid,
                              kThreads, bytes, p);
}

// ---- the delta rule's chunk-local solve ----

struct WyParams {
    const bf16* k;
    const bf16* v;
    const float* beta;
    const float* log_gate;  // null: the plain delta rule
    bf16* w;                // [B,T,H,Dk]
    bf16* u;                // ũ [B,T,H,Dv]
    bf16* t_out;            // null, or T = (I + A)⁻¹ of every chunk [B, chunks, H, 64, 64] (the backward's)
    int seq_len, heads, value_dim;
};

template <int DK> struct WyLayout {
    static constexpr int k_stride = DK + 8;          // bf16 elements; rows padded as in Layout
    static constexpr int v_stride = kValueTile + 8;  // ũ is made kValueTile columns at a time
    static constexpr int t_stride = kChunk + 8;
    static constexpr int k_off = 0;
    static constexpr int v_off = k_off + kChunk * k_stride * 2;
    static constexpr int a_off = v_off + kChunk * v_stride * 2;     // A, fp32 [64][64], zero on and above the diagonal
    static constexpr int tw_off = a_off + kChunk * kChunk * 4;      // T diag(β exp(G)), bf16
    static constexpr int tu_off = tw_off + kChunk * t_stride * 2;   // T diag(β), bf16
    static constexpr int beta_off = tu_off + kChunk * t_stride * 2;
    static constexpr int cum_off = beta_off + kChunk * 4;           // G_i, the cumulative log gate
    static constexpr int bytes = cum_off + kChunk * 4;
    static_assert(v_off % 16 == 0 && a_off % 16 == 0 && tw_off % 16 == 0 && tu_off % 16 == 0);
};

// Starts copying value columns v_col .. v_col + 63 of the chunk's v into the tile (rows past T: zeros).
template <int DK>
__device__ __forceinline__ void load_value_tile(bf16* vs, const WyParams& p, int b, int h, int t0, int v_col) {
    using L = WyLayout<DK>;
    for (int idx = threadIdx.x; idx < kChunk * (kValueTile / 8); idx += kThreads) {
        const int r = idx / (kValueTile / 8), c = (idx % (kValueTile / 8)) * 8, t = t0 + r;
        const bool valid = t < p.seq_len;
        cp_async16(vs + r * L::v_stride + c,
                   p.v + ((size_t(b) * p.seq_len + (valid ? t : 0)) * p.heads + h) * p.value_dim + v_col + c, valid);
    }
}

// Rows 16·warp .. +15 of tmat (bf16 [64][64], lower triangular) · src (bf16 [64][NT·8], rows src_stride
// apart), stored as bf16 into columns col0 .. of the [B,T,H,width] array dst (rows past T skipped).
// tmat's blocks right of the diagonal are zero, so only the j-blocks up to the warp's are read.
template <int NT>
__device__ __forceinline__ void store_lower_product(bf16* dst, int width, int col0, const bf16* tmat, const bf16* src,
                                                    int src_stride, int warp, int t0, int T, int H, int b, int h) {
    constexpr int t_stride = kChunk + 8;
    const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4, mi = lane / 8, r8 = lane % 8, row0 = warp * 16;
    float acc[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
        if (kk <= warp) {
            uint32_t ta[4];
            ldmatrix_x4(ta, tmat + (row0 + lane % 16) * t_stride + kk * 16 + (lane / 16) * 8);
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                uint32_t sb[4];
                ldmatrix_x4_trans(sb, src + (kk * 16 + (mi % 2) * 8 + r8) * src_stride + np * 16 + (mi / 2) * 8);
                mma_bf16(acc[2 * np], ta, sb[0], sb[1]);
                mma_bf16(acc[2 * np + 1], ta, sb[2], sb[3]);
            }
        }
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int t = t0 + row0 + g + half * 8;
        if (t < T) {
            bf16* out = dst + ((size_t(b) * T + t) * H + h) * width + col0 + 2 * t4;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
                *reinterpret_cast<uint32_t*>(out + nt * 8) = pack_bf16(acc[nt][2 * half], acc[nt][2 * half + 1]);
        }
    }
}

// One block per (chunk, head, batch row):
//   1. A from k kᵀ on the tensor cores (fp32, scaled by β_i exp(G_i − G_j), strictly lower);
//   2. T = (I + A)⁻¹ in fp32 by forward substitution, a column per thread (threads 0..63; column c is zero
//      above row c, so the 16-row blocks above c's are skipped), kept as bf16 T diag(β exp(G)) and T diag(β);
//   3. W = T diag(β exp(G)) k and ũ = T diag(β) v on the tensor cores, 64 value columns at a time.
// (v1 solved every column of W and ũ by substitution, each thread reading all of A: 2× slower;
// dev/cuda/delta_rule_chunkwise.cu.) Rows past the sequence end have k = v = β = 0 and are not written.
template <int DK>
__global__ void __launch_bounds__(kThreads) delta_rule_wy_kernel(const WyParams p) {
    using L = WyLayout<DK>;
    constexpr int KD = DK / 16;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* ks = reinterpret_cast<bf16*>(smem + L::k_off);
    bf16* vs = reinterpret_cast<bf16*>(smem + L::v_off);
    float* a_s = reinterpret_cast<float*>(smem + L::a_off);
    bf16* tw = reinterpret_cast<bf16*>(smem + L::tw_off);
    bf16* tu = reinterpret_cast<bf16*>(smem + L::tu_off);
    float* beta_s = reinterpret_cast<float*>(smem + L::beta_off);
    float* cum_s = reinterpret_cast<float*>(smem + L::cum_off);
    const int t0 = blockIdx.x * kChunk, h = blockIdx.y, b = blockIdx.z;
    const int T = p.seq_len, H = p.heads, DV = p.value_dim;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t4 = lane % 4, mi = lane / 8, r8 = lane % 8;
    const int row0 = warp * 16;
    auto token = [&](int r) { return (size_t(b) * T + t0 + r) * H + h; };

    for (int idx = threadIdx.x; idx < kChunk * (DK / 8); idx += kThreads) {
        const int r = idx / (DK / 8), c = (idx % (DK / 8)) * 8;
        const bool valid = t0 + r < T;
        cp_async16(ks + r * L::k_stride + c, p.k + (valid ? token(r) : 0) * DK + c, valid);
    }
    load_value_tile<DK>(vs, p, b, h, t0, 0);
    cp_async_commit();
    // The cumulative log gate G (fp32): warp 0 scans it, two tokens a lane.
    if (warp == 0) {
        float g0 = 0.f, g1 = 0.f;
        if (p.log_gate != nullptr) {
            if (t0 + 2 * lane < T) g0 = p.log_gate[token(2 * lane)];
            if (t0 + 2 * lane + 1 < T) g1 = p.log_gate[token(2 * lane + 1)];
        }
        float x = g0 + g1;
#pragma unroll
        for (int off = 1; off < 32; off *= 2) {
            const float y = __shfl_up_sync(0xffffffffu, x, off);
            if (lane >= off) x += y;
        }
        cum_s[2 * lane] = x - g1;
        cum_s[2 * lane + 1] = x;
    }
    if (threadIdx.x < kChunk) beta_s[threadIdx.x] = t0 + int(threadIdx.x) < T ? p.beta[token(threadIdx.x)] : 0.f;
    cp_async_wait_all();
    __syncthreads();

    // 1. A = k kᵀ, this warp's 16 rows; the tiles right of the diagonal block stay zero.
    {
        float a[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) a[nt][e] = 0.f;
#pragma unroll
        for (int kd = 0; kd < KD; ++kd) {
            uint32_t ka[4];
            ldmatrix_x4(ka, ks + (row0 + lane % 16) * L::k_stride + kd * 16 + (lane / 16) * 8);
#pragma unroll
            for (int np = 0; np < 4; ++np)
                if (np <= warp) {
                    uint32_t kb[4];
                    ldmatrix_x4(kb, ks + (np * 16 + (mi / 2) * 8 + r8) * L::k_stride + kd * 16 + (mi % 2) * 8);
                    mma_bf16(a[2 * np], ka, kb[0], kb[1]);
                    mma_bf16(a[2 * np + 1], ka, kb[2], kb[3]);
                }
        }
        // A_ij = β_i exp(G_i − G_j) k_i·k_j for j < i (exponent ≤ 0; a ratio exp(G_i)/exp(G_j) could be 0/0).
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = row0 + g + (e >= 2 ? 8 : 0), j = nt * 8 + 2 * t4 + (e & 1);
                a_s[i * kChunk + j] = j < i ? beta_s[i] * a[nt][e] * __expf(cum_s[i] - cum_s[j]) : 0.f;
            }
    }
    __syncthreads();

    // 2. Column c of T: x_i = δ_ic − Σ_{j<i} A_ij x_j. x_j = 0 for j < c, so the rows of the 16-row blocks
    //    above c's are skipped, and so are the terms from them.
    if (threadIdx.x < kChunk) {
        const int c = threadIdx.x, c_block = c / 16;
        float x[kChunk];
#pragma unroll
        for (int i = 0; i < kChunk; ++i) x[i] = i == c ? 1.f : 0.f;
#pragma unroll
        for (int i = 1; i < kChunk; ++i) {
            if (i / 16 < c_block) continue;
            const float4* row = reinterpret_cast<const float4*>(a_s + i * kChunk);
            float acc = x[i];
#pragma unroll
            for (int j4 = 0; j4 < (i + 3) / 4; ++j4) {
                if (j4 / 4 < c_block) continue;
                const float4 r = row[j4];  // (up to the next multiple of 4, where A is zero)
                acc -= r.x * x[4 * j4] + r.y * x[4 * j4 + 1] + r.z * x[4 * j4 + 2] + r.w * x[4 * j4 + 3];
            }
            x[i] = acc;
        }
        const float w_scale = beta_s[c] * __expf(cum_s[c]), u_scale = beta_s[c];
#pragma unroll
        for (int i = 0; i < kChunk; ++i) {
            tw[i * L::t_stride + c] = __float2bfloat16(x[i] * w_scale);
            tu[i * L::t_stride + c] = __float2bfloat16(x[i] * u_scale);
        }
        if (p.t_out != nullptr) {
            bf16* out = p.t_out + ((size_t(b) * gridDim.x + blockIdx.x) * H + h) * kChunk * kChunk + c;
#pragma unroll
            for (int i = 0; i < kChunk; ++i) out[i * kChunk] = __float2bfloat16(x[i]);
        }
    }
    __syncthreads();

    // 3. W = (T diag(β exp(G))) k, then ũ = (T diag(β)) v a tile at a time.
    store_lower_product<DK / 8>(p.w, DK, 0, tw, ks, L::k_stride, warp, t0, T, H, b, h);
    for (int v_col = 0; v_col < DV; v_col += kValueTile) {
        if (v_col > 0) {
            __syncthreads();  // every warp is done with the previous tile
            load_value_tile<DK>(vs, p, b, h, t0, v_col);
            cp_async_commit();
            cp_async_wait_all();
            __syncthreads();
        }
        store_lower_product<kValueTile / 8>(p.u, DV, v_col, tu, vs, L::v_stride, warp, t0, T, H, b, h);
    }
}

template <int DK> void launch_wy(const WyParams& p, int batch) {
    auto* kernel = delta_rule_wy_kernel<DK>;
    constexpr int bytes = WyLayout<DK>::bytes;
    const dim3 grid(unsigned((p.seq_len + kChunk - 1) / kChunk), unsigned(p.heads), unsigned(batch));
    launch_with_shared_memory(kernel, fmt::format("delta_rule_wy_kernel<Dk={}>", DK).c_str(), grid, kThreads, bytes,
                              p);
}

}  // namespace

bool linear_attention_chunkwise_supports(int64_t key_dim, int64_t value_dim) {
    return (key_dim == 64 || key_dim == 128) && value_dim > 0 && value_dim % kValueTile == 0;
}

void linear_attention_chunkwise_forward(const LinearAttentionForward& a) {
    LINARCH_CHECK(linear_attention_chunkwise_supports(a.key_dim, a.value_dim),
                  "linear_attention_chunkwise_forward (CUDA): no kernel for Dk={}, Dv={}", a.key_dim, a.value_dim);
    LINARCH_CHECK(a.batch <= 65535 && a.heads <= 65535 && a.seq_len < (int64_t(1) << 31),
                  "linear_attention_chunkwise_forward (CUDA): B={}, H={}, T={} exceed the grid", a.batch, a.heads,
                  a.seq_len);
    const Params p{static_cast<const bf16*>(a.q), static_cast<const bf16*>(a.k), static_cast<const bf16*>(a.v),
                   nullptr, a.log_gate, a.initial_state, static_cast<bf16*>(a.o), a.final_state, nullptr, nullptr,
                   int(a.seq_len), int(a.heads), int(a.value_dim), float(a.scale)};
    const bool gated = a.log_gate != nullptr;
    const int batch = int(a.batch);
    if (a.key_dim == 64) gated ? launch_walk<64, true, false>(p, batch) : launch_walk<64, false, false>(p, batch);
    else gated ? launch_walk<128, true, false>(p, batch) : launch_walk<128, false, false>(p, batch);
}

void gla_walk(const GlaWalk& a) {
    Params p{static_cast<const bf16*>(a.q_hat), static_cast<const bf16*>(a.k_hat), static_cast<const bf16*>(a.v),
             nullptr, nullptr, a.initial_state, static_cast<bf16*>(a.o), a.final_state,
             static_cast<bf16*>(a.chunk_states), nullptr, int(a.seq_len), int(a.heads), int(a.value_dim),
             float(a.scale)};
    p.a_intra = static_cast<const bf16*>(a.a_intra);
    p.row_decay = a.row_decay;
    if (a.key_dim == 64) launch_walk<64, false, false, true>(p, int(a.batch));
    else launch_walk<128, false, false, true>(p, int(a.batch));
}

void delta_rule_chunkwise_forward(const DeltaRuleForward& a) {
    LINARCH_CHECK(linear_attention_chunkwise_supports(a.key_dim, a.value_dim),
                  "delta_rule_chunkwise_forward (CUDA): no kernel for Dk={}, Dv={}", a.key_dim, a.value_dim);
    LINARCH_CHECK(a.batch <= 65535 && a.heads <= 65535 && a.seq_len < (int64_t(1) << 31),
                  "delta_rule_chunkwise_forward (CUDA): B={}, H={}, T={} exceed the grid", a.batch, a.heads, a.seq_len);
    const WyParams wy{static_cast<const bf16*>(a.k), static_cast<const bf16*>(a.v), a.beta, a.log_gate,
                      static_cast<bf16*>(a.w_scratch), static_cast<bf16*>(a.u_scratch), static_cast<bf16*>(a.t_out),
                      int(a.seq_len), int(a.heads), int(a.value_dim)};
    Params p{static_cast<const bf16*>(a.q), static_cast<const bf16*>(a.k), static_cast<const bf16*>(a.u_scratch),
             static_cast<const bf16*>(a.w_scratch), a.log_gate, a.initial_state, static_cast<bf16*>(a.o),
             a.final_state, static_cast<bf16*>(a.chunk_states), static_cast<bf16*>(a.u_out), int(a.seq_len),
             int(a.heads), int(a.value_dim), float(a.scale)};
    const bool gated = a.log_gate != nullptr;
    const int batch = int(a.batch);
    // Few long sequences with a gate: the walk keeps the states and u (over ũ), and the outputs are made
    // afterwards, every chunk in parallel (B=1 T=32768: 2.15 → 1.83 ms; without a gate 1.67 → 1.79, so
    // that walk keeps making them: dev/cuda/NOTES_delta_rule.md).
    const bool outputs_apart = a.o != nullptr && gated && few_walks(p, batch);
    const int64_t chunks = (a.seq_len + kChunk - 1) / kChunk;
    DeviceBuffer kept_states(outputs_apart && a.chunk_states == nullptr
                                 ? size_t(a.batch * chunks * a.heads * a.key_dim * a.value_dim) * 2
                                 : 0);
    if (outputs_apart) {
        p.o = nullptr;
        if (p.chunk_states == nullptr) p.chunk_states = kept_states.as<bf16>();
        if (p.u_out == nullptr) p.u_out = static_cast<bf16*>(a.u_scratch);
    }
    if (a.key_dim == 64) {
        launch_wy<64>(wy, batch);
        gated ? launch_walk<64, true, true>(p, batch) : launch_walk<64, false, true>(p, batch);
    } else {
        launch_wy<128>(wy, batch);
        gated ? launch_walk<128, true, true>(p, batch) : launch_walk<128, false, true>(p, batch);
    }
    if (!outputs_apart) return;
    const OutputParams out{p.q, p.k, p.u_out, a.log_gate, p.chunk_states, static_cast<bf16*>(a.o), int(a.seq_len),
                           int(a.heads), int(a.value_dim), float(a.scale)};
    if (a.key_dim == 64) gated ? launch_output<64, true>(out, batch) : launch_output<64, false>(out, batch);
    else gated ? launch_output<128, true>(out, batch) : launch_output<128, false>(out, batch);
}

}  // namespace linarch::cuda
