// CUDA chunkwise backward of the (gated) delta rule, bf16 (linear_attention_chunkwise.hpp). Per chunk, in
// the forward's WY notation (linear_attention_chunkwise.cu; q' = scale·q, γ_i = exp(G_i), E_ij =
// exp(G_i − G_j), T = (I + A)⁻¹, S_0 and S_C the states at the chunk's start and end):
//     W = T diag(βγ) k,  ũ = T diag(β) v,  u = ũ − W S_0,
//     o = diag(γ) q' S_0 + M u   with M_ij = q'_i·k_j E_ij (j ≤ i),
//     S_C = γ_C S_0 + k̃ᵀ u       with k̃_j = k_j exp(G_C − G_j).
// The backward, given do and dS_C:
//     du = Mᵀ do + k̃ dS_C,   dS_0 = γ_C dS_C + q'ᵀ diag(γ) do − Wᵀ du            (a walk over the chunks)
//     dq' = diag(γ) do S_0ᵀ + (do uᵀ ⊙ E) k,   dk += (u doᵀ ⊙ Eᵀ) q' + diag(exp(G_C − G)) u dS_Cᵀ,
//     dW = −du S_0ᵀ,  dũ = du                                                      (chunk by chunk)
//     dk += diag(βγ) Tᵀ dW,  dv = diag(β) Tᵀ du,  dT = dW (diag(βγ) k)ᵀ + du (diag(β) v)ᵀ,
//     dA = −Tᵀ dT Tᵀ (strictly lower),  dk += B k + Bᵀ k with B_ij = dA_ij β_i E_ij   (chunk by chunk)
// and β's and G's terms beside them; dg is the suffix sum of dG within the chunk.
// Four steps, none with atomics (every sum has a fixed order, so the gradients are deterministic):
//   1. the forward again, keeping T of every chunk, S_0 of every chunk and u (bf16);
//   2. delta_rule_state_backward_kernel: the chunks in reverse, dS (fp32) in registers per (sequence,
//      head, 64 value columns); writes du and dS_C of every chunk (bf16);
//   3. delta_rule_chunk_grads_kernel: every chunk in parallel: dq, dk's attention and state terms, dW, dG's;
//   4. delta_rule_wy_backward_kernel: every chunk in parallel: dk, dv, dβ, dg.
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
constexpr int kValueTile = 64;
constexpr int kThreads = 128;
constexpr int kTileStride = kChunk + 8;  // a 64 × 64 bf16 matrix's padded rows

struct BackwardParams {
    const bf16* q;
    const bf16* k;
    const bf16* v;
    const bf16* dout;
    const float* beta;
    const float* log_gate;       // null: the plain delta rule
    const float* dfinal_state;   // null: zero
    const bf16* w;               // step 1's W [B,T,H,Dk]
    const bf16* u;               // step 1's u [B,T,H,Dv]
    const bf16* states;          // step 1's S_0 per chunk [B,NC,H,Dk,Dv]
    const bf16* tmat;            // step 1's T per chunk [B,NC,H,64,64]
    bf16* dstates;               // step 2's dS_C per chunk [B,NC,H,Dk,Dv]
    bf16* du;                    // step 2's du [B,T,H,Dv]
    bf16* dw;                    // step 3's dW [B,T,H,Dk]
    float* dk_part;              // step 3's dk terms [B,T,H,Dk]
    float* dg_part;              // step 3's dG terms [B,T,H]
    bf16* dq;                    // += (bf16)
    bf16* dk;
    bf16* dv;
    float* dbeta;                // += (fp32)
    float* dlog_gate;            // += or null
    float* dinitial_state;       // += or null
    int seq_len, heads, value_dim, chunks;
    float scale;
};

// ---- step 2: the walk in reverse ----

template <int DK> struct StateBackwardLayout {
    static constexpr int qk_stride = DK + 8;
    static constexpr int v_stride = kValueTile + 8;
    static constexpr int q_off = 0;
    static constexpr int k_off = q_off + kChunk * qk_stride * 2;
    static constexpr int w_off = k_off + kChunk * qk_stride * 2;
    static constexpr int do_off = w_off + kChunk * qk_stride * 2;
    static constexpr int du_off = do_off + kChunk * v_stride * 2;
    static constexpr int ds_off = du_off + kChunk * v_stride * 2;
    static constexpr int g_off = ds_off + DK * v_stride * 2;
    static constexpr int bytes = g_off + kChunk * 4;
    static_assert(do_off % 16 == 0 && du_off % 16 == 0 && ds_off % 16 == 0 && g_off % 16 == 0);
};

// A block per (value tile, head, batch row); warp w keeps rows DK/4·w .. of dS [Dk × 64] in fp32 and, per
// chunk, rows 16w .. 16w+15 of du.
template <int DK>
__global__ void __launch_bounds__(kThreads, 2) delta_rule_state_backward_kernel(const BackwardParams p) {
    using L = StateBackwardLayout<DK>;
    constexpr int MT = DK / 64, NT = kValueTile / 8;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* qs = reinterpret_cast<bf16*>(smem + L::q_off);
    bf16* ks = reinterpret_cast<bf16*>(smem + L::k_off);
    bf16* ws = reinterpret_cast<bf16*>(smem + L::w_off);
    bf16* dos = reinterpret_cast<bf16*>(smem + L::do_off);
    bf16* dus = reinterpret_cast<bf16*>(smem + L::du_off);
    bf16* dss = reinterpret_cast<bf16*>(smem + L::ds_off);
    float* gs = reinterpret_cast<float*>(smem + L::g_off);
    const int v_col = blockIdx.x * kValueTile, h = blockIdx.y, b = blockIdx.z;
    const int T = p.seq_len, H = p.heads, DV = p.value_dim;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    const int mi = lane / 8, r8 = lane % 8, row0 = warp * 16, srow0 = warp * (DK / 4);

    float ds[MT][NT][4];
    const size_t state_base = (size_t(b) * H + h) * DK * DV;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int d = srow0 + mt * 16 + g + (e >= 2 ? 8 : 0), c = nt * 8 + 2 * t4 + (e & 1);
                ds[mt][nt][e] = p.dfinal_state ? p.dfinal_state[state_base + size_t(d) * DV + v_col + c] : 0.f;
            }

    for (int n = p.chunks - 1; n >= 0; --n) {
        const int t0 = n * kChunk, rows = min(kChunk, T - t0);
        const size_t token0 = (size_t(b) * T + t0) * H + h;
        load_rows(qs, L::qk_stride, p.q, token0, H, DK, 0, DK, rows);
        load_rows(ks, L::qk_stride, p.k, token0, H, DK, 0, DK, rows);
        load_rows(ws, L::qk_stride, p.w, token0, H, DK, 0, DK, rows);
        load_rows(dos, L::v_stride, p.dout, token0, H, DV, v_col, kValueTile, rows);
        cp_async_commit();
        if (warp == 0) chunk_cumulative_gate(gs, p.log_gate, token0, H, rows);
        // dS is now dS_C of chunk n: keep it (bf16) for step 3 and as this chunk's MMA operand.
        bf16* ds_out = p.dstates + ((size_t(b) * p.chunks + n) * H + h) * DK * DV + v_col;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    const int d = srow0 + mt * 16 + g + half * 8, c = nt * 8 + 2 * t4;
                    const uint32_t packed = pack_bf16(ds[mt][nt][2 * half], ds[mt][nt][2 * half + 1]);
                    *reinterpret_cast<uint32_t*>(dss + d * L::v_stride + c) = packed;
                    *reinterpret_cast<uint32_t*>(ds_out + size_t(d) * DV + c) = packed;
                }
        cp_async_wait_all();
        __syncthreads();
        const float g_last = gs[kChunk - 1];

        // du (rows j of this warp) = Mᵀ do + k̃ dS_C; (Mᵀ)_ji = scale k_j·q_i E_ij for i ≥ j.
        float kq[8][4];
        zero_tile(kq);
        mma_tile<8, false, true>(kq, ks, L::qk_stride, row0, qs, L::qk_stride, 0, 0, DK, warp, 4);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int j = row0 + g + (e >= 2 ? 8 : 0), i = nt * 8 + 2 * t4 + (e & 1);
                kq[nt][e] = i >= j ? kq[nt][e] * p.scale * __expf(gs[i] - gs[j]) : 0.f;
            }
        uint32_t mta[4][4];
        to_a_fragments<4>(mta, kq);
        float du[NT][4];
        zero_tile(du);
        mma_tile_from_fragments<NT, 4, false>(du, mta, warp, 4, dos, L::v_stride, 0);
        float kds[NT][4];
        zero_tile(kds);
        mma_tile<NT, false, false>(kds, ks, L::qk_stride, row0, dss, L::v_stride, 0, 0, DK);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int j = row0 + g + half * 8;
            const float decay = __expf(g_last - gs[j]);
            bf16* out = p.du + (token0 + size_t(j) * H) * DV + v_col + 2 * t4;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const uint32_t packed = pack_bf16(du[nt][2 * half] + decay * kds[nt][2 * half],
                                                  du[nt][2 * half + 1] + decay * kds[nt][2 * half + 1]);
                *reinterpret_cast<uint32_t*>(dus + j * L::v_stride + nt * 8 + 2 * t4) = packed;
                if (j < rows) *reinterpret_cast<uint32_t*>(out + nt * 8) = packed;
            }
        }
        __syncthreads();  // du complete

        // dS ← γ_C dS + q'ᵀ diag(γ) do − Wᵀ du.
        const float total = __expf(g_last);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) ds[mt][nt][e] *= total;
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            // A fragments of q'ᵀ diag(γ) and −Wᵀ: k index i = 16kk + 2t4 (+1) in a0, a1; + 8 in a2, a3.
            const int i0 = kk * 16 + 2 * t4;
            const float c0 = p.scale * __expf(gs[i0]), c1 = p.scale * __expf(gs[i0 + 1]);
            const float c8 = p.scale * __expf(gs[i0 + 8]), c9 = p.scale * __expf(gs[i0 + 9]);
            uint32_t qa[MT][4], wa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                ldmatrix_x4_trans(qa[mt], qs + (kk * 16 + (mi / 2) * 8 + r8) * L::qk_stride + srow0 + mt * 16 + (mi % 2) * 8);
                ldmatrix_x4_trans(wa[mt], ws + (kk * 16 + (mi / 2) * 8 + r8) * L::qk_stride + srow0 + mt * 16 + (mi % 2) * 8);
                qa[mt][0] = scale_bf16x2(qa[mt][0], c0, c1);
                qa[mt][1] = scale_bf16x2(qa[mt][1], c0, c1);
                qa[mt][2] = scale_bf16x2(qa[mt][2], c8, c9);
                qa[mt][3] = scale_bf16x2(qa[mt][3], c8, c9);
#pragma unroll
                for (int e = 0; e < 4; ++e) wa[mt][e] ^= 0x80008000u;  // negate both bf16
            }
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                uint32_t ob[4], ub[4];
                ldmatrix_x4_trans(ob, dos + (kk * 16 + (mi % 2) * 8 + r8) * L::v_stride + np * 16 + (mi / 2) * 8);
                ldmatrix_x4_trans(ub, dus + (kk * 16 + (mi % 2) * 8 + r8) * L::v_stride + np * 16 + (mi / 2) * 8);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma_bf16(ds[mt][2 * np], qa[mt], ob[0], ob[1]);
                    mma_bf16(ds[mt][2 * np + 1], qa[mt], ob[2], ob[3]);
                    mma_bf16(ds[mt][2 * np], wa[mt], ub[0], ub[1]);
                    mma_bf16(ds[mt][2 * np + 1], wa[mt], ub[2], ub[3]);
                }
            }
        }
        __syncthreads();  // every warp is done with this chunk's shared memory
    }
    if (p.dinitial_state != nullptr) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int d = srow0 + mt * 16 + g + (e >= 2 ? 8 : 0), c = nt * 8 + 2 * t4 + (e & 1);
                    p.dinitial_state[state_base + size_t(d) * DV + v_col + c] += ds[mt][nt][e];
                }
    }
}

// ---- step 3: dq, dk's attention and state terms, dW and dG's terms, chunk by chunk ----

template <int DK, int DV> struct ChunkGradsLayout {
    static constexpr int k_stride = DK + 8, v_stride = DV + 8;
    static constexpr int q_off = 0;
    static constexpr int k_off = q_off + kChunk * k_stride * 2;
    static constexpr int do_off = k_off + kChunk * k_stride * 2;
    static constexpr int u_off = do_off + kChunk * v_stride * 2;
    static constexpr int du_off = u_off + kChunk * v_stride * 2;
    static constexpr int s_off = du_off + kChunk * v_stride * 2;   // S_0 [Dk][Dv]
    static constexpr int ds_off = s_off + DK * v_stride * 2;       // dS_C [Dk][Dv]
    static constexpr int g_off = ds_off + DK * v_stride * 2;
    static constexpr int dg_off = g_off + kChunk * 4;
    static constexpr int red_off = dg_off + kChunk * 4;             // per-warp partial sums
    static constexpr int bytes = red_off + 8 * 4;
    static_assert(k_off % 16 == 0 && do_off % 16 == 0 && u_off % 16 == 0 && du_off % 16 == 0 && s_off % 16 == 0 &&
                  ds_off % 16 == 0);
};

template <int DK, int DV>
__global__ void __launch_bounds__(kThreads) delta_rule_chunk_grads_kernel(const BackwardParams p) {
    using L = ChunkGradsLayout<DK, DV>;
    constexpr int NK = DK / 8;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* qs = reinterpret_cast<bf16*>(smem + L::q_off);
    bf16* ks = reinterpret_cast<bf16*>(smem + L::k_off);
    bf16* dos = reinterpret_cast<bf16*>(smem + L::do_off);
    bf16* us = reinterpret_cast<bf16*>(smem + L::u_off);
    bf16* dus = reinterpret_cast<bf16*>(smem + L::du_off);
    bf16* s0 = reinterpret_cast<bf16*>(smem + L::s_off);
    bf16* dsc = reinterpret_cast<bf16*>(smem + L::ds_off);
    float* gs = reinterpret_cast<float*>(smem + L::g_off);
    float* dgs = reinterpret_cast<float*>(smem + L::dg_off);
    float* red = reinterpret_cast<float*>(smem + L::red_off);
    const int n = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int T = p.seq_len, H = p.heads;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4, row0 = warp * 16;
    const int t0 = n * kChunk, rows = min(kChunk, T - t0);
    const size_t token0 = (size_t(b) * T + t0) * H + h;
    const size_t state0 = ((size_t(b) * p.chunks + n) * H + h) * DK * DV;

    load_rows(qs, L::k_stride, p.q, token0, H, DK, 0, DK, rows);
    load_rows(ks, L::k_stride, p.k, token0, H, DK, 0, DK, rows);
    load_rows(dos, L::v_stride, p.dout, token0, H, DV, 0, DV, rows);
    load_rows(us, L::v_stride, p.u, token0, H, DV, 0, DV, rows);
    load_rows(dus, L::v_stride, p.du, token0, H, DV, 0, DV, rows);
    for (int idx = threadIdx.x; idx < DK * (DV / 8); idx += kThreads) {
        const int d = idx / (DV / 8), c = (idx % (DV / 8)) * 8;
        cp_async16(s0 + d * L::v_stride + c, p.states + state0 + size_t(d) * DV + c, true);
        cp_async16(dsc + d * L::v_stride + c, p.dstates + state0 + size_t(d) * DV + c, true);
    }
    cp_async_commit();
    if (warp == 0) chunk_cumulative_gate(gs, p.log_gate, token0, H, rows);
    cp_async_wait_all();
    __syncthreads();
    const float g_last = gs[kChunk - 1];
    const int r_lo = row0 + g, r_hi = r_lo + 8;
    float dg_lo = 0.f, dg_hi = 0.f;  // this lane's share of dG for rows r_lo, r_hi (quad-summed at the end)

    // dq' = diag(γ) do S_0ᵀ + (do uᵀ ⊙ E) k over rows i; dG_i += γ_i q'_i·(do S_0ᵀ)_i + Σ_j (do uᵀ ⊙ M)_ij.
    {
        float dq[NK][4];
        zero_tile(dq);
        mma_tile<NK, false, true>(dq, dos, L::v_stride, row0, s0, L::v_stride, 0, 0, DV);
        const float gamma_lo = __expf(gs[r_lo]), gamma_hi = __expf(gs[r_hi]);
#pragma unroll
        for (int nt = 0; nt < NK; ++nt) {
            const int d = nt * 8 + 2 * t4;
            const float2 q_lo = unpack_bf16(*reinterpret_cast<const uint32_t*>(qs + r_lo * L::k_stride + d));
            const float2 q_hi = unpack_bf16(*reinterpret_cast<const uint32_t*>(qs + r_hi * L::k_stride + d));
            dq[nt][0] *= gamma_lo, dq[nt][1] *= gamma_lo, dq[nt][2] *= gamma_hi, dq[nt][3] *= gamma_hi;
            dg_lo += p.scale * (q_lo.x * dq[nt][0] + q_lo.y * dq[nt][1]);
            dg_hi += p.scale * (q_hi.x * dq[nt][2] + q_hi.y * dq[nt][3]);
        }
        float qk[8][4], dm[8][4];
        zero_tile(qk);
        zero_tile(dm);
        mma_tile<8, false, true>(qk, qs, L::k_stride, row0, ks, L::k_stride, 0, 0, DK, 0, warp + 1);
        mma_tile<8, false, true>(dm, dos, L::v_stride, row0, us, L::v_stride, 0, 0, DV, 0, warp + 1);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = e >= 2 ? r_hi : r_lo, j = nt * 8 + 2 * t4 + (e & 1);
                float dme = 0.f;
                if (j <= i) {
                    const float decay = __expf(gs[i] - gs[j]);
                    const float z = dm[nt][e] * p.scale * qk[nt][e] * decay;
                    (e >= 2 ? dg_hi : dg_lo) += z;
                    dme = dm[nt][e] * decay;
                }
                dm[nt][e] = dme;
            }
        uint32_t pa[4][4];
        to_a_fragments<4>(pa, dm);
        mma_tile_from_fragments<NK, 4, false>(dq, pa, 0, warp + 1, ks, L::k_stride, 0);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int i = half ? r_hi : r_lo;
            if (i < rows) {
                add_row_into_bf16<NK>(p.dq + (token0 + size_t(i) * H) * DK + 2 * t4, dq, half, p.scale);
            }
        }
    }

    // dk over rows j: (u doᵀ ⊙ Eᵀ) q' + diag(exp(G_C − G)) u dS_Cᵀ;
    // dG_j −= Σ_i (u doᵀ ⊙ Mᵀ)_ji + ξ_j, ξ_j = k̃_j·(u dS_Cᵀ)_j, and dG_C += Σ_j ξ_j.
    float xi_warp = 0.f;
    {
        float dk[NK][4];
        zero_tile(dk);
        float kq[8][4], dmt[8][4];
        zero_tile(kq);
        zero_tile(dmt);
        mma_tile<8, false, true>(kq, ks, L::k_stride, row0, qs, L::k_stride, 0, 0, DK, warp, 4);
        mma_tile<8, false, true>(dmt, us, L::v_stride, row0, dos, L::v_stride, 0, 0, DV, warp, 4);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int j = e >= 2 ? r_hi : r_lo, i = nt * 8 + 2 * t4 + (e & 1);
                float dme = 0.f;
                if (i >= j) {
                    const float decay = __expf(gs[i] - gs[j]);
                    const float z = dmt[nt][e] * p.scale * kq[nt][e] * decay;
                    (e >= 2 ? dg_hi : dg_lo) -= z;
                    dme = dmt[nt][e] * decay * p.scale;
                }
                dmt[nt][e] = dme;
            }
        uint32_t pa[4][4];
        to_a_fragments<4>(pa, dmt);
        mma_tile_from_fragments<NK, 4, false>(dk, pa, warp, 4, qs, L::k_stride, 0);
        float uds[NK][4];
        zero_tile(uds);
        mma_tile<NK, false, true>(uds, us, L::v_stride, row0, dsc, L::v_stride, 0, 0, DV);
        const float c_lo = __expf(g_last - gs[r_lo]), c_hi = __expf(g_last - gs[r_hi]);
        float xi_lo = 0.f, xi_hi = 0.f;
#pragma unroll
        for (int nt = 0; nt < NK; ++nt) {
            const int d = nt * 8 + 2 * t4;
            const float2 k_lo = unpack_bf16(*reinterpret_cast<const uint32_t*>(ks + r_lo * L::k_stride + d));
            const float2 k_hi = unpack_bf16(*reinterpret_cast<const uint32_t*>(ks + r_hi * L::k_stride + d));
            xi_lo += c_lo * (k_lo.x * uds[nt][0] + k_lo.y * uds[nt][1]);
            xi_hi += c_hi * (k_hi.x * uds[nt][2] + k_hi.y * uds[nt][3]);
            dk[nt][0] += c_lo * uds[nt][0], dk[nt][1] += c_lo * uds[nt][1];
            dk[nt][2] += c_hi * uds[nt][2], dk[nt][3] += c_hi * uds[nt][3];
        }
        dg_lo -= xi_lo;
        dg_hi -= xi_hi;
        xi_warp = xi_lo + xi_hi;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int j = half ? r_hi : r_lo;
            if (j < rows) {
                float* out = p.dk_part + (token0 + size_t(j) * H) * DK + 2 * t4;
#pragma unroll
                for (int nt = 0; nt < NK; ++nt)
                    *reinterpret_cast<float2*>(out + nt * 8) = make_float2(dk[nt][2 * half], dk[nt][2 * half + 1]);
            }
        }
    }

    // dW = −du S_0ᵀ over rows i.
    {
        float dw[NK][4];
        zero_tile(dw);
        mma_tile<NK, false, true>(dw, dus, L::v_stride, row0, s0, L::v_stride, 0, 0, DV);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int i = half ? r_hi : r_lo;
            if (i < rows) {
                bf16* out = p.dw + (token0 + size_t(i) * H) * DK + 2 * t4;
#pragma unroll
                for (int nt = 0; nt < NK; ++nt)
                    *reinterpret_cast<uint32_t*>(out + nt * 8) = pack_bf16(-dw[nt][2 * half], -dw[nt][2 * half + 1]);
            }
        }
    }

    // dG_C += γ_C ⟨S_0, dS_C⟩ + Σ_j ξ_j: fixed-order block sums. G_C is G of the chunk's last valid row
    // (padding rows have gate 0), which is where it goes: padding rows' dG are not kept.
    float frob = 0.f;
    for (int idx = threadIdx.x; idx < DK * (DV / 2); idx += kThreads) {
        const int d = idx / (DV / 2), c = (idx % (DV / 2)) * 2;
        const float2 a = unpack_bf16(*reinterpret_cast<const uint32_t*>(s0 + d * L::v_stride + c));
        const float2 bb = unpack_bf16(*reinterpret_cast<const uint32_t*>(dsc + d * L::v_stride + c));
        frob += a.x * bb.x + a.y * bb.y;
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
        frob += __shfl_xor_sync(0xffffffffu, frob, off);
        xi_warp += __shfl_xor_sync(0xffffffffu, xi_warp, off);
    }
    if (lane == 0) red[warp] = frob, red[4 + warp] = xi_warp;
    dg_lo = quad_sum(dg_lo);
    dg_hi = quad_sum(dg_hi);
    if (t4 == 0) dgs[r_lo] = dg_lo, dgs[r_hi] = dg_hi;
    __syncthreads();
    if (threadIdx.x == 0)
        dgs[rows - 1] += __expf(g_last) * (red[0] + red[1] + red[2] + red[3]) + (red[4] + red[5] + red[6] + red[7]);
    __syncthreads();
    if (int(threadIdx.x) < rows) p.dg_part[token0 + size_t(threadIdx.x) * H] = dgs[threadIdx.x];
}

// ---- step 4: through W = T diag(βγ) k, ũ = T diag(β) v and T = (I + A)⁻¹, chunk by chunk ----

template <int DK, int DV> struct WyBackwardLayout {
    static constexpr int k_stride = DK + 8, v_stride = DV + 8;
    static constexpr int k_off = 0;
    static constexpr int v_off = k_off + kChunk * k_stride * 2;
    static constexpr int dw_off = v_off + kChunk * v_stride * 2;
    static constexpr int du_off = dw_off + kChunk * k_stride * 2;
    static constexpr int ae_off = du_off + kChunk * v_stride * 2;  // E_ij k_i·k_j (j < i), fp32; then Y = dA ⊙ A
    static constexpr int t_off = ae_off + kChunk * kChunk * 4;    // T, bf16
    static constexpr int dt_off = t_off + kChunk * kTileStride * 2;  // dT, then B = dA ⊙ diag(β) E (bf16)
    static constexpr int g_off = dt_off + kChunk * kTileStride * 2;
    static constexpr int beta_off = g_off + kChunk * 4;
    static constexpr int dg_off = beta_off + kChunk * 4;
    static constexpr int bytes = dg_off + kChunk * 4;
    static_assert(v_off % 16 == 0 && dw_off % 16 == 0 && du_off % 16 == 0 && ae_off % 16 == 0 && t_off % 16 == 0 &&
                  dt_off % 16 == 0);
    static_assert(bytes <= 113 * 1024, "two blocks a multiprocessor");
};

// Two blocks a multiprocessor (≤ 113 KB of shared memory each, T from the forward rather than solved again):
// the first version, one block a multiprocessor, waited ~34 cycles per instruction (dev/cuda/NOTES_delta_rule.md).
template <int DK, int DV>
__global__ void __launch_bounds__(kThreads, 2) delta_rule_wy_backward_kernel(const BackwardParams p) {
    using L = WyBackwardLayout<DK, DV>;
    constexpr int NK = DK / 8, NV = DV / 8;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* ks = reinterpret_cast<bf16*>(smem + L::k_off);
    bf16* vs = reinterpret_cast<bf16*>(smem + L::v_off);
    bf16* dws = reinterpret_cast<bf16*>(smem + L::dw_off);
    bf16* dus = reinterpret_cast<bf16*>(smem + L::du_off);
    float* ae = reinterpret_cast<float*>(smem + L::ae_off);
    bf16* ts = reinterpret_cast<bf16*>(smem + L::t_off);
    bf16* dts = reinterpret_cast<bf16*>(smem + L::dt_off);
    bf16* bmat = dts;
    float* gs = reinterpret_cast<float*>(smem + L::g_off);
    float* betas = reinterpret_cast<float*>(smem + L::beta_off);
    float* dgs = reinterpret_cast<float*>(smem + L::dg_off);
    const int n = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int T = p.seq_len, H = p.heads;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4, row0 = warp * 16;
    const int t0 = n * kChunk, rows = min(kChunk, T - t0);
    const size_t token0 = (size_t(b) * T + t0) * H + h;
    const int r_lo = row0 + g, r_hi = r_lo + 8;

    load_rows(ks, L::k_stride, p.k, token0, H, DK, 0, DK, rows);
    load_rows(vs, L::v_stride, p.v, token0, H, DV, 0, DV, rows);
    load_rows(dws, L::k_stride, p.dw, token0, H, DK, 0, DK, rows);
    load_rows(dus, L::v_stride, p.du, token0, H, DV, 0, DV, rows);
    const bf16* tmat = p.tmat + ((size_t(b) * p.chunks + n) * H + h) * kChunk * kChunk;
    for (int idx = threadIdx.x; idx < kChunk * (kChunk / 8); idx += kThreads) {
        const int r = idx / (kChunk / 8), c = (idx % (kChunk / 8)) * 8;
        cp_async16(ts + r * kTileStride + c, tmat + r * kChunk + c, true);
    }
    cp_async_commit();
    if (warp == 0) chunk_cumulative_gate(gs, p.log_gate, token0, H, rows);
    if (threadIdx.x < kChunk) betas[threadIdx.x] = int(threadIdx.x) < rows ? p.beta[token0 + size_t(threadIdx.x) * H] : 0.f;
    cp_async_wait_all();
    __syncthreads();

    // AE = k kᵀ ⊙ E, strictly lower (A = diag(β) AE).
    {
        float kk[8][4];
        zero_tile(kk);
        mma_tile<8, false, true>(kk, ks, L::k_stride, row0, ks, L::k_stride, 0, 0, DK, 0, warp + 1);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = e >= 2 ? r_hi : r_lo, j = nt * 8 + 2 * t4 + (e & 1);
                ae[i * kChunk + j] = j < i ? kk[nt][e] * __expf(gs[i] - gs[j]) : 0.f;
            }
    }

    float dbeta_lo = 0.f, dbeta_hi = 0.f, dg_lo = 0.f, dg_hi = 0.f;
    float dk[NK][4];
    zero_tile(dk);
    const float gamma_lo = __expf(gs[r_lo]), gamma_hi = __expf(gs[r_hi]);
    const float beta_lo = betas[r_lo], beta_hi = betas[r_hi];
    // Rows m: Tᵀ dW gives dk_m += β_m γ_m (Tᵀ dW)_m, dβ_m += γ_m k_m·(Tᵀ dW)_m, dG_m += β_m γ_m k_m·(Tᵀ dW)_m;
    // Tᵀ du gives dv_m = β_m (Tᵀ du)_m and dβ_m += v_m·(Tᵀ du)_m. (Tᵀ)_mi = T_im ≠ 0 for i ≥ m only.
    {
        float tdw[NK][4];
        zero_tile(tdw);
        mma_tile<NK, true, false>(tdw, ts, kTileStride, row0, dws, L::k_stride, 0, row0, kChunk);
#pragma unroll
        for (int nt = 0; nt < NK; ++nt) {
            const int d = nt * 8 + 2 * t4;
            const float2 k_lo = unpack_bf16(*reinterpret_cast<const uint32_t*>(ks + r_lo * L::k_stride + d));
            const float2 k_hi = unpack_bf16(*reinterpret_cast<const uint32_t*>(ks + r_hi * L::k_stride + d));
            const float dot_lo = k_lo.x * tdw[nt][0] + k_lo.y * tdw[nt][1];
            const float dot_hi = k_hi.x * tdw[nt][2] + k_hi.y * tdw[nt][3];
            dbeta_lo += gamma_lo * dot_lo, dbeta_hi += gamma_hi * dot_hi;
            dg_lo += beta_lo * gamma_lo * dot_lo, dg_hi += beta_hi * gamma_hi * dot_hi;
            dk[nt][0] += beta_lo * gamma_lo * tdw[nt][0], dk[nt][1] += beta_lo * gamma_lo * tdw[nt][1];
            dk[nt][2] += beta_hi * gamma_hi * tdw[nt][2], dk[nt][3] += beta_hi * gamma_hi * tdw[nt][3];
        }
        float tdu[NV][4];
        zero_tile(tdu);
        mma_tile<NV, true, false>(tdu, ts, kTileStride, row0, dus, L::v_stride, 0, row0, kChunk);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int m = half ? r_hi : r_lo;
            const float beta = half ? beta_hi : beta_lo;
            float dot = 0.f;
#pragma unroll
            for (int nt = 0; nt < NV; ++nt) {
                const int c = nt * 8 + 2 * t4;
                const float2 vv = unpack_bf16(*reinterpret_cast<const uint32_t*>(vs + m * L::v_stride + c));
                dot += vv.x * tdu[nt][2 * half] + vv.y * tdu[nt][2 * half + 1];
            }
            (half ? dbeta_hi : dbeta_lo) += dot;
            if (m < rows) {
                add_row_into_bf16<NV>(p.dv + (token0 + size_t(m) * H) * DV + 2 * t4, tdu, half, beta);
            }
        }
    }
    // dT = dW (diag(βγ) k)ᵀ + du (diag(β) v)ᵀ, rows i.
    {
        float dt1[8][4], dt2[8][4];
        zero_tile(dt1);
        zero_tile(dt2);
        mma_tile<8, false, true>(dt1, dws, L::k_stride, row0, ks, L::k_stride, 0, 0, DK);
        mma_tile<8, false, true>(dt2, dus, L::v_stride, row0, vs, L::v_stride, 0, 0, DV);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int i = half ? r_hi : r_lo, j = nt * 8 + 2 * t4;
                const float w0 = betas[j] * __expf(gs[j]), w1 = betas[j + 1] * __expf(gs[j + 1]);
                *reinterpret_cast<uint32_t*>(dts + i * kTileStride + j) =
                    pack_bf16(w0 * dt1[nt][2 * half] + betas[j] * dt2[nt][2 * half],
                              w1 * dt1[nt][2 * half + 1] + betas[j + 1] * dt2[nt][2 * half + 1]);
            }
    }
    __syncthreads();  // dT complete
    // dA = −Tᵀ dT Tᵀ (strictly lower), rows i; Y = dA ⊙ A; B = dA ⊙ diag(β) E.
    {
        float x[8][4];
        zero_tile(x);
        mma_tile<8, true, false>(x, ts, kTileStride, row0, dts, kTileStride, 0, row0, kChunk);
        uint32_t xa[4][4];
        to_a_fragments<4>(xa, x);
        float da[8][4];
        zero_tile(da);
        mma_tile_from_fragments<8, 4, true>(da, xa, 0, 4, ts, kTileStride, 0);
        __syncthreads();  // every warp is done reading dT: B takes its place
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = e >= 2 ? r_hi : r_lo, j = nt * 8 + 2 * t4 + (e & 1);
                const float dA = j < i ? -da[nt][e] : 0.f;
                const float aej = ae[i * kChunk + j];
                const float beta = e >= 2 ? beta_hi : beta_lo;
                (e >= 2 ? dbeta_hi : dbeta_lo) += dA * aej;
                const float y = dA * beta * aej;
                (e >= 2 ? dg_hi : dg_lo) += y;
                ae[i * kChunk + j] = y;
                da[nt][e] = j < i ? dA * beta * __expf(gs[i] - gs[j]) : 0.f;
            }
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int i = half ? r_hi : r_lo, j = nt * 8 + 2 * t4;
                *reinterpret_cast<uint32_t*>(bmat + i * kTileStride + j) = pack_bf16(da[nt][2 * half], da[nt][2 * half + 1]);
            }
        uint32_t ba[4][4];
        to_a_fragments<4>(ba, da);
        mma_tile_from_fragments<NK, 4, false>(dk, ba, 0, warp + 1, ks, L::k_stride, 0);
    }
    dbeta_lo = quad_sum(dbeta_lo), dbeta_hi = quad_sum(dbeta_hi);
    dg_lo = quad_sum(dg_lo), dg_hi = quad_sum(dg_hi);
    if (t4 == 0) dgs[r_lo] = dg_lo, dgs[r_hi] = dg_hi;
    __syncthreads();  // B, Y and the rows' dG complete
    // Rows j: dk_j += Σ_i B_ij k_i (i > j); dG_j −= Σ_i Y_ij.
    mma_tile<NK, true, false>(dk, bmat, kTileStride, row0, ks, L::k_stride, 0, row0, kChunk);
    if (threadIdx.x < kChunk) {
        const int j = threadIdx.x;
        float col = 0.f;
        for (int i = j + 1; i < kChunk; ++i) col += ae[i * kChunk + j];
        dgs[j] += (j < rows ? p.dg_part[token0 + size_t(j) * H] : 0.f) - col;
    }
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int j = half ? r_hi : r_lo;
        if (j < rows) {
            add_row_into_bf16<NK>(p.dk + (token0 + size_t(j) * H) * DK + 2 * t4, dk, half, 1.f,
                                  p.dk_part + (token0 + size_t(j) * H) * DK + 2 * t4);
            if (t4 == 0) p.dbeta[token0 + size_t(j) * H] += half ? dbeta_hi : dbeta_lo;
        }
    }
    __syncthreads();  // dG complete
    // dg_t = Σ_{i ≥ t} dG_i: warp 0, two rows a lane, a suffix scan.
    if (warp == 0 && p.dlog_gate != nullptr) {
        const float a = dgs[2 * lane], c = dgs[2 * lane + 1];
        float x = a + c;
#pragma unroll
        for (int off = 1; off < 32; off *= 2) {
            const float y = __shfl_down_sync(0xffffffffu, x, off);
            if (lane + off < 32) x += y;
        }
        if (2 * lane < rows) p.dlog_gate[token0 + size_t(2 * lane) * H] += x;
        if (2 * lane + 1 < rows) p.dlog_gate[token0 + size_t(2 * lane + 1) * H] += x - a;
    }
}

template <int DK, int DV> void launch_backward(const BackwardParams& p, int batch) {
    const dim3 chunks(unsigned(p.chunks), unsigned(p.heads), unsigned(batch));
    launch_with_shared_memory(delta_rule_state_backward_kernel<DK>, "delta_rule_state_backward_kernel",
                              dim3(unsigned(DV / kValueTile), unsigned(p.heads), unsigned(batch)), kThreads,
                              StateBackwardLayout<DK>::bytes, p);
    launch_with_shared_memory(delta_rule_chunk_grads_kernel<DK, DV>, "delta_rule_chunk_grads_kernel", chunks, kThreads,
                              ChunkGradsLayout<DK, DV>::bytes, p);
    launch_with_shared_memory(delta_rule_wy_backward_kernel<DK, DV>, "delta_rule_wy_backward_kernel", chunks, kThreads,
                              WyBackwardLayout<DK, DV>::bytes, p);
}

}  // namespace

bool delta_rule_chunkwise_backward_supports(int64_t key_dim, int64_t value_dim) {
    return (key_dim == 64 || key_dim == 128) && (value_dim == 64 || value_dim == 128);
}

size_t delta_rule_chunkwise_backward_scratch_bytes(int64_t batch, int64_t seq_len, int64_t heads, int64_t key_dim,
                                                   int64_t value_dim) {
    const size_t tokens = size_t(batch * seq_len * heads), chunks = size_t((seq_len + kChunk - 1) / kChunk);
    const size_t states = size_t(batch) * chunks * size_t(heads * key_dim * value_dim) * 2;
    const size_t tmat = size_t(batch) * chunks * size_t(heads) * kChunk * kChunk * 2;
    // w, dW (bf16 Dk), u, du (bf16 Dv), two chunk-state arrays (bf16), T (bf16), dk terms (fp32 Dk), dG terms
    // (fp32), each rounded up to 256 bytes.
    auto round = [](size_t bytes) { return (bytes + 255) / 256 * 256; };
    return 2 * round(tokens * size_t(key_dim) * 2) + 2 * round(tokens * size_t(value_dim) * 2) + 2 * round(states) +
           round(tmat) + round(tokens * size_t(key_dim) * 4) + round(tokens * 4);
}

void delta_rule_chunkwise_backward(const DeltaRuleBackward& a) {
    LINARCH_CHECK(delta_rule_chunkwise_backward_supports(a.key_dim, a.value_dim),
                  "delta_rule_chunkwise_backward (CUDA): no kernel for Dk={}, Dv={}", a.key_dim, a.value_dim);
    LINARCH_CHECK(a.batch <= 65535 && a.heads <= 65535 && a.seq_len < (int64_t(1) << 31),
                  "delta_rule_chunkwise_backward (CUDA): B={}, H={}, T={} exceed the grid", a.batch, a.heads,
                  a.seq_len);
    const size_t tokens = size_t(a.batch * a.seq_len * a.heads);
    const int64_t chunks = (a.seq_len + kChunk - 1) / kChunk;
    const size_t states = size_t(a.batch * chunks * a.heads * a.key_dim * a.value_dim) * 2;
    auto round = [](size_t bytes) { return (bytes + 255) / 256 * 256; };
    unsigned char* next = static_cast<unsigned char*>(a.scratch);
    auto take = [&](size_t bytes) {
        void* p = next;
        next += round(bytes);
        return p;
    };
    void* w = take(tokens * size_t(a.key_dim) * 2);
    void* dw = take(tokens * size_t(a.key_dim) * 2);
    void* u = take(tokens * size_t(a.value_dim) * 2);
    void* du = take(tokens * size_t(a.value_dim) * 2);
    void* chunk_states = take(states);
    void* dstates = take(states);
    void* tmat = take(size_t(a.batch * chunks * a.heads) * kChunk * kChunk * 2);
    void* dk_part = take(tokens * size_t(a.key_dim) * 4);
    void* dg_part = take(tokens * 4);

    // 1. The forward again, keeping T and S_0 per chunk and u (written over ũ).
    DeltaRuleForward forward{a.q, a.k, a.v, a.beta, a.log_gate, a.initial_state, nullptr, nullptr, w, u,
                             a.batch, a.seq_len, a.heads, a.key_dim, a.value_dim, a.scale};
    forward.chunk_states = chunk_states;
    forward.u_out = u;
    forward.t_out = tmat;
    delta_rule_chunkwise_forward(forward);

    const BackwardParams p{static_cast<const bf16*>(a.q), static_cast<const bf16*>(a.k), static_cast<const bf16*>(a.v),
                           static_cast<const bf16*>(a.dout), a.beta, a.log_gate, a.dfinal_state,
                           static_cast<const bf16*>(w), static_cast<const bf16*>(u),
                           static_cast<const bf16*>(chunk_states), static_cast<const bf16*>(tmat),
                           static_cast<bf16*>(dstates), static_cast<bf16*>(du),
                           static_cast<bf16*>(dw), static_cast<float*>(dk_part), static_cast<float*>(dg_part),
                           static_cast<bf16*>(a.dq), static_cast<bf16*>(a.dk), static_cast<bf16*>(a.dv), a.dbeta,
                           a.dlog_gate, a.dinitial_state, int(a.seq_len), int(a.heads), int(a.value_dim), int(chunks),
                           float(a.scale)};
    const int batch = int(a.batch);
    if (a.key_dim == 64) a.value_dim == 64 ? launch_backward<64, 64>(p, batch) : launch_backward<64, 128>(p, batch);
    else a.value_dim == 64 ? launch_backward<128, 64>(p, batch) : launch_backward<128, 128>(p, batch);
}

}  // namespace linarch::cuda
