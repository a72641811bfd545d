// Kernels of the CUDA chunkwise backward of causal linear attention (no decay or a per-head scalar
// log gate). Plain CUDA (no linarch headers) so that the variant harness
// dev/cuda/linear_attention_chunkwise_backward.cu checks and times exactly these kernels; the library's
// entry point is linear_attention_chunkwise_backward.cu.
//
// Per sequence and head (mixers.md §1, §3), with a_t = exp(g_t), S_t = a_t S_{t−1} + k_tᵀ v_t,
// o_t = s · q_t S_t, and Λ_t the adjoint of S_t (Λ_t = s q_tᵀ do_t + a_{t+1} Λ_{t+1}, Λ_{T−1} ∋ dS_T):
//     dq_t = s · do_t S_tᵀ,   dk_t = v_t Λ_tᵀ,   dv_t = k_t Λ_t,   dS_0 = a_0 Λ_0,
//     dG_t = q_t·dq_t − k_t·dk_t (+ ⟨dS_T, S_T⟩ at t = T−1),   dg_t = Σ_{t' ≥ t} dG_{t'}
// (every term of o_t carries exp(G_t), every term through k_t carries exp(−G_t), the final state
// exp(G_T): so q·dq and k·dk collect the derivative by the cumulative log gate G).
// Each of dq, dk, dv is the output of one "chunk scan" — the forward kernel's algorithm with other
// operands, walking the chunks forwards or backwards:
//     dq: forwards,  rows do, columns v, values k; state Sᵀ [Dv×Dk] from S_0ᵀ
//     dk: backwards, rows v,  columns do, values q; state Λᵀ/s [Dv×Dk] from dS_Tᵀ/s
//     dv: backwards, rows k,  columns q, values do; state Λ/s [Dk×Dv] from dS_T/s, ending at dS_0/s
// A backward scan of a chunk (local inclusive cumulative log gate G, G_L its last):
//     out_r = s·[exp(G_L − G_r) q_r S + Σ_{c ≥ r} exp(G_c − G_r)(q_r·k_c) v_c],
//     S ← exp(G_L) S + Σ_c exp(G_c) k_cᵀ v_c
// (the forward scan: exp(G_r) q_r S, c ≤ r with exp(G_r − G_c), and exp(G_L − G_c) in the update);
// every exponent is ≤ 0 (mixers.md §13).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/mma_ptx.cuh"

namespace linarch::cuda::la_backward {

using bf16 = __nv_bfloat16;

constexpr int kChunk = 64;
constexpr int kValueTile = 64;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;

// One chunk scan. rows, cols [B,T,H,KD] and values [B,T,H,VD] bf16; the state is KD × VD (fp32 in
// registers, the block holding KD × kValueTile of it).
struct ScanParams {
    const bf16* rows;
    const bf16* cols;
    const bf16* values;
    const float* log_gate;          // [B,T,H] or null
    const float* initial_state;     // [B,H,KD,VD] (or [B,H,VD,KD] when state_transposed) or null
    float initial_scale;            // the state starts at initial_scale · initial_state
    float* final_state;             // [B,H,KD,VD]: += final_scale · S (or = when !accumulate_final); or null
    float final_scale;
    bool accumulate_final;
    bool state_transposed;          // applies to initial_state and state_dot_with
    bf16* out;                      // [B,T,H,VD]
    bool accumulate_out;            // out += result (else out = result)
    const bf16* dot_with;           // [B,T,H,VD] or null: dot_out[tile][b,t,h] = Σ_tile result·dot_with
    float* dot_out;                 // [VD/64][B,T,H]
    const float* state_dot_with;    // [B,H,KD,VD] (transposed as above) or null
    float* state_dot_out;           // [VD/64][B,H]: Σ_tile S_final · state_dot_with
    int seq_len, heads, value_dim;
    float scale;
    int variant;  // 1 or 2 (EARLY below); the library runs 2
};

// Two stages of (rows, cols, values, gates) and the bf16 copy of the state slice; rows padded by 16
// bytes so that ldmatrix's eight row addresses fall in different banks.
template <int KD> struct ScanLayout {
    static constexpr int qk_stride = KD + 8;
    static constexpr int v_stride = kValueTile + 8;
    static constexpr int q_off = 0;
    static constexpr int k_off = q_off + kChunk * qk_stride * 2;
    static constexpr int v_off = k_off + kChunk * qk_stride * 2;
    static constexpr int g_off = v_off + kChunk * v_stride * 2;
    static constexpr int stage_bytes = g_off + kChunk * 4;
    static constexpr int s_off = 2 * stage_bytes;
    static constexpr int red_off = s_off + KD * v_stride * 2;
    static constexpr int bytes = red_off + kWarps * 4;
    static_assert(stage_bytes % 16 == 0 && k_off % 16 == 0 && v_off % 16 == 0 && g_off % 16 == 0);
};


// Starts copying chunk rows t0 .. t0+63 into a stage; rows past the sequence end are zero, their gates
// 0, so a partial chunk's total decay is its last token's.
template <int KD>
__device__ __forceinline__ void load_chunk(unsigned char* stage, const ScanParams& p, int b, int h, int v_col, int t0) {
    using L = ScanLayout<KD>;
    bf16* qs = reinterpret_cast<bf16*>(stage + L::q_off);
    bf16* ks = reinterpret_cast<bf16*>(stage + L::k_off);
    bf16* vs = reinterpret_cast<bf16*>(stage + L::v_off);
    const int T = p.seq_len, H = p.heads, VD = p.value_dim;
    constexpr int qk_vecs = KD / 8, v_vecs = kValueTile / 8;
    for (int idx = threadIdx.x; idx < kChunk * qk_vecs; idx += kThreads) {
        const int r = idx / qk_vecs, c = (idx % qk_vecs) * 8, t = t0 + r;
        const bool valid = t < T;
        const size_t off = ((size_t(b) * T + (valid ? t : 0)) * H + h) * KD + c;
        cp_async16(qs + r * L::qk_stride + c, p.rows + off, valid);
        cp_async16(ks + r * L::qk_stride + c, p.cols + off, valid);
    }
    for (int idx = threadIdx.x; idx < kChunk * v_vecs; idx += kThreads) {
        const int r = idx / v_vecs, c = (idx % v_vecs) * 8, t = t0 + r;
        const bool valid = t < T;
        const size_t off = ((size_t(b) * T + (valid ? t : 0)) * H + h) * VD + v_col + c;
        cp_async16(vs + r * L::v_stride + c, p.values + off, valid);
    }
    if (p.log_gate != nullptr && threadIdx.x < kChunk) {
        const int t = t0 + threadIdx.x;
        const bool valid = t < T;
        float* gs = reinterpret_cast<float*>(stage + L::g_off);
        cp_async4(gs + threadIdx.x, p.log_gate + (size_t(b) * T + (valid ? t : 0)) * H + h, valid);
    }
}

// A block owns (value tile blockIdx.x, head blockIdx.y, batch row blockIdx.z) and walks the chunks,
// forwards or backwards (REVERSE), with its KD × 64 slice of the state in fp32 registers; warp w takes
// the chunk's rows 16w .. 16w+15. The forward kernel of linear_attention_chunkwise.cu with the
// direction, the scales and the epilogue (accumulate, dot products) as parameters.
//
// EARLY (variant 2): the epilogue's global reads (the previous out to add into, the dot operand) are
// issued right after the chunk's first barrier into registers, so their latency hides behind the
// chunk's MMAs instead of stalling the epilogue; variant 1 reads them in the epilogue.
template <int KD, bool GATED, bool REVERSE, bool EARLY>
__global__ void __launch_bounds__(kThreads, 2) chunk_scan_kernel(const ScanParams p) {
    constexpr int BV = kValueTile;
    using L = ScanLayout<KD>;
    constexpr int MT = KD / 64;
    constexpr int NT = BV / 8;
    constexpr int KS = KD / 16;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* state_bf16 = reinterpret_cast<bf16*>(smem + L::s_off);

    const int v_col = blockIdx.x * BV, h = blockIdx.y, b = blockIdx.z;
    const int T = p.seq_len, H = p.heads, VD = p.value_dim;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t4 = lane % 4;
    const int mi = lane / 8, r8 = lane % 8;
    const int row0 = warp * 16;
    const int srow0 = warp * (KD / 4);
    // Index of state element (d, c) of this (b, h): [KD][VD], or [VD][KD] when transposed.
    const size_t state_base = (size_t(b) * H + h) * KD * VD;
    auto state_index = [&](int d, int c) {
        return state_base + (p.state_transposed ? size_t(v_col + c) * KD + d : size_t(d) * VD + v_col + c);
    };

    float s[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int d = srow0 + mt * 16 + g + (e >= 2 ? 8 : 0), c = nt * 8 + 2 * t4 + (e & 1);
                s[mt][nt][e] = p.initial_state ? p.initial_scale * p.initial_state[state_index(d, c)] : 0.f;
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
    auto chunk_at = [&](int i) { return REVERSE ? num_chunks - 1 - i : i; };
    const size_t plane = size_t(gridDim.z) * T * H;  // one dot_out plane per value tile
    load_chunk<KD>(smem, p, b, h, v_col, chunk_at(0) * kChunk);
    cp_async_commit();
    for (int i = 0; i < num_chunks; ++i) {
        const int n = chunk_at(i);
        cp_async_wait_all();
        __syncthreads();  // chunk n is in its stage; every warp is done with the previous chunk and the state copy is current
        if (i + 1 < num_chunks)
            load_chunk<KD>(smem + ((i + 1) & 1) * L::stage_bytes, p, b, h, v_col, chunk_at(i + 1) * kChunk);
        cp_async_commit();
        // Rows i_lo = 16·warp + g and i_hi = i_lo + 8 of the chunk: their tokens, and for EARLY the
        // epilogue's reads (4 lanes of a quad cover a row's 64 columns, 2 per lane per 8-column tile).
        size_t row_tok[2];
        bool row_valid[2];
        uint32_t early_prev[2][NT], early_dot[2][NT];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int t = n * kChunk + row0 + g + half * 8;
            row_valid[half] = t < T;
            row_tok[half] = (size_t(b) * T + (row_valid[half] ? t : 0)) * H + h;
            if constexpr (EARLY) {
                const size_t base = row_tok[half] * VD + v_col + 2 * t4;
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    early_prev[half][nt] = p.accumulate_out && row_valid[half]
                                               ? *reinterpret_cast<const uint32_t*>(p.out + base + nt * 8) : 0u;
                    early_dot[half][nt] = p.dot_with != nullptr && row_valid[half]
                                              ? __ldg(reinterpret_cast<const unsigned int*>(p.dot_with + base + nt * 8)) : 0u;
                }
            }
        }
        unsigned char* stage = smem + (i & 1) * L::stage_bytes;
        const bf16* qs = reinterpret_cast<const bf16*>(stage + L::q_off);
        const bf16* ks = reinterpret_cast<const bf16*>(stage + L::k_off);
        const bf16* vs = reinterpret_cast<const bf16*>(stage + L::v_off);
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
        auto cum_at = [&](int src, int parity) {
            const float e = __shfl_sync(0xffffffffu, cum_even, src), o = __shfl_sync(0xffffffffu, cum_odd, src);
            return parity ? o : e;
        };
        // Column tiles of 16 that meet this warp's rows under the mask.
        auto tile_used = [&](int tile) { return REVERSE ? tile >= warp : tile <= warp; };

        uint32_t qa[KS][4];
#pragma unroll
        for (int kd = 0; kd < KS; ++kd)
            ldmatrix_x4(qa[kd], qs + (row0 + lane % 16) * L::qk_stride + kd * 16 + (lane / 16) * 8);
        float a[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) a[nt][e] = 0.f;
#pragma unroll
        for (int kd = 0; kd < KS; ++kd)
#pragma unroll
            for (int np = 0; np < 4; ++np)
                if (tile_used(np)) {
                    uint32_t kb[4];
                    ldmatrix_x4(kb, ks + (np * 16 + (mi / 2) * 8 + r8) * L::qk_stride + kd * 16 + (mi % 2) * 8);
                    mma_bf16(a[2 * np], qa[kd], kb[0], kb[1]);
                    mma_bf16(a[2 * np + 1], qa[kd], kb[2], kb[3]);
                }
        const int i_lo = row0 + g, i_hi = i_lo + 8;
        float cum_lo = 0.f, cum_hi = 0.f, cum_last = 0.f;
        if constexpr (GATED) {
            cum_lo = cum_at(i_lo / 2, i_lo & 1);
            cum_hi = cum_at(i_hi / 2, i_hi & 1);
            cum_last = __shfl_sync(0xffffffffu, cum_odd, 31);
        }
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            float cj0 = 0.f, cj1 = 0.f;  // G of columns j = 8nt + 2t4 and + 1 (lane 4nt + t4 holds both)
            if constexpr (GATED) {
                cj0 = __shfl_sync(0xffffffffu, cum_even, 4 * nt + t4);
                cj1 = __shfl_sync(0xffffffffu, cum_odd, 4 * nt + t4);
            }
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e >= 2 ? i_hi : i_lo, j = nt * 8 + 2 * t4 + (e & 1);
                const bool inside = REVERSE ? j >= r : j <= r;
                float val = inside ? a[nt][e] : 0.f;
                if constexpr (GATED) {
                    const float gr = e >= 2 ? cum_hi : cum_lo, gj = (e & 1) ? cj1 : cj0;
                    if (inside) val *= __expf(REVERSE ? gj - gr : gr - gj);
                }
                a[nt][e] = val;
            }
        }
        uint32_t pa[4][4];
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            pa[kk][0] = pack_bf16(a[2 * kk][0], a[2 * kk][1]);
            pa[kk][1] = pack_bf16(a[2 * kk][2], a[2 * kk][3]);
            pa[kk][2] = pack_bf16(a[2 * kk + 1][0], a[2 * kk + 1][1]);
            pa[kk][3] = pack_bf16(a[2 * kk + 1][2], a[2 * kk + 1][3]);
        }
        float o[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[nt][e] = 0.f;
#pragma unroll
        for (int kd = 0; kd < KS; ++kd)
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                uint32_t sb[4];
                ldmatrix_x4_trans(sb, state_bf16 + (kd * 16 + (mi % 2) * 8 + r8) * L::v_stride + np * 16 + (mi / 2) * 8);
                mma_bf16(o[2 * np], qa[kd], sb[0], sb[1]);
                mma_bf16(o[2 * np + 1], qa[kd], sb[2], sb[3]);
            }
        if constexpr (GATED) {
            const float d_lo = __expf(REVERSE ? cum_last - cum_lo : cum_lo);
            const float d_hi = __expf(REVERSE ? cum_last - cum_hi : cum_hi);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                o[nt][0] *= d_lo; o[nt][1] *= d_lo; o[nt][2] *= d_hi; o[nt][3] *= d_hi;
            }
        }
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
            if (tile_used(kk)) {
#pragma unroll
                for (int np = 0; np < NT / 2; ++np) {
                    uint32_t vb[4];
                    ldmatrix_x4_trans(vb, vs + (kk * 16 + (mi % 2) * 8 + r8) * L::v_stride + np * 16 + (mi / 2) * 8);
                    mma_bf16(o[2 * np], pa[kk], vb[0], vb[1]);
                    mma_bf16(o[2 * np + 1], pa[kk], vb[2], vb[3]);
                }
            }
        // Epilogue: rows i_lo and i_hi of the chunk; the 4 lanes of a quad hold a row's 64 columns.
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const bool valid = row_valid[half];
            const size_t tok = row_tok[half];
            bf16* out = p.out + tok * VD + v_col + 2 * t4;
            float dot = 0.f;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const float x0 = o[nt][2 * half] * p.scale, x1 = o[nt][2 * half + 1] * p.scale;
                if (p.dot_with != nullptr && valid) {
                    const uint32_t* src = reinterpret_cast<const uint32_t*>(p.dot_with + tok * VD + v_col + 2 * t4 + nt * 8);
                    const float2 w = unpack_bf16(EARLY ? early_dot[half][nt] : *src);
                    dot += x0 * w.x + x1 * w.y;
                }
                if (valid) {
                    uint32_t* dst = reinterpret_cast<uint32_t*>(out + nt * 8);
                    float2 prev = make_float2(0.f, 0.f);
                    if (p.accumulate_out) prev = unpack_bf16(EARLY ? early_prev[half][nt] : *dst);
                    *dst = pack_bf16(prev.x + x0, prev.y + x1);
                }
            }
            if (p.dot_with != nullptr) {
                dot += __shfl_xor_sync(0xffffffffu, dot, 1);
                dot += __shfl_xor_sync(0xffffffffu, dot, 2);
                if (valid && t4 == 0) p.dot_out[blockIdx.x * plane + tok] = dot;
            }
        }
        // State update into registers (reads only this stage's cols, values), then the barrier, then
        // the shared copy (which other warps may still be reading above).
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
                // a0,a1 hold column index j = 16kk + 2t4 (+1); a2,a3 hold j + 8 (+1): lanes 8kk + t4 and + 4.
                auto w = [&](float gj) { return __expf(REVERSE ? gj : cum_last - gj); };
                const float w0 = w(__shfl_sync(0xffffffffu, cum_even, 8 * kk + t4));
                const float w1 = w(__shfl_sync(0xffffffffu, cum_odd, 8 * kk + t4));
                const float w8 = w(__shfl_sync(0xffffffffu, cum_even, 8 * kk + t4 + 4));
                const float w9 = w(__shfl_sync(0xffffffffu, cum_odd, 8 * kk + t4 + 4));
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
        __syncthreads();  // every warp is done reading the state copy
        write_state_bf16();
    }
    if (p.final_state != nullptr) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    const int d = srow0 + mt * 16 + g + half * 8, c = nt * 8 + 2 * t4;
                    float2* dst = reinterpret_cast<float2*>(p.final_state + state_base + size_t(d) * VD + v_col + c);
                    float2 val = make_float2(p.final_scale * s[mt][nt][2 * half], p.final_scale * s[mt][nt][2 * half + 1]);
                    if (p.accumulate_final) {
                        const float2 prev = *dst;
                        val.x += prev.x;
                        val.y += prev.y;
                    }
                    *dst = val;
                }
    }
    if (p.state_dot_with != nullptr) {
        float dot = 0.f;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int d = srow0 + mt * 16 + g + (e >= 2 ? 8 : 0), c = nt * 8 + 2 * t4 + (e & 1);
                    dot += s[mt][nt][e] * p.state_dot_with[state_index(d, c)];
                }
#pragma unroll
        for (int off = 16; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, off);
        float* red = reinterpret_cast<float*>(smem + L::red_off);
        if (lane == 0) red[warp] = dot;
        __syncthreads();
        if (threadIdx.x == 0) {
            float total = 0.f;
            for (int w = 0; w < kWarps; ++w) total += red[w];
            p.state_dot_out[size_t(blockIdx.x) * gridDim.z * H + size_t(b) * H + h] = total;
        }
    }
}

// dlog_gate[b,t,h] += Σ_{t' ≥ t} dG[b,t',h], dG = Σ_tiles q·dq − Σ_tiles k·dk (+ Σ_tiles ⟨dS_T, S_T⟩
// at t = T−1), from the partial planes the scans wrote. One block per (b, h); thread i takes a run of
// consecutive tokens, the runs' sums are scanned in shared memory (a fixed order: deterministic).
struct GateParams {
    const float* q_dot;      // [tiles][B,T,H]
    const float* k_dot;      // [tiles][B,T,H]
    const float* state_dot;  // [tiles][B,H] or null
    float* dlog_gate;        // [B,T,H]: += (or = when !accumulate)
    int batch, seq_len, heads, tiles;
    bool accumulate;
};

constexpr int kGateThreads = 256;

__global__ void __launch_bounds__(kGateThreads) gate_gradient_kernel(const GateParams p) {
    __shared__ float run_sums[kGateThreads];
    const int b = blockIdx.x / p.heads, h = blockIdx.x % p.heads;
    const int T = p.seq_len, H = p.heads;
    const size_t plane = size_t(p.batch) * T * H;
    const int per_thread = (T + kGateThreads - 1) / kGateThreads;
    const int t_begin = min(T, int(threadIdx.x) * per_thread), t_end = min(T, t_begin + per_thread);
    auto dG = [&](int t) {
        const size_t tok = (size_t(b) * T + t) * H + h;
        float x = 0.f;
        for (int tile = 0; tile < p.tiles; ++tile) x += p.q_dot[tile * plane + tok] - p.k_dot[tile * plane + tok];
        if (t == T - 1 && p.state_dot != nullptr)
            for (int tile = 0; tile < p.tiles; ++tile) x += p.state_dot[size_t(tile) * p.batch * H + size_t(b) * H + h];
        return x;
    };
    float run = 0.f;
    for (int t = t_begin; t < t_end; ++t) run += dG(t);
    run_sums[threadIdx.x] = run;
    __syncthreads();
    // Suffix sums of the runs after this one (Hillis–Steele over 256 entries).
    for (int off = 1; off < kGateThreads; off *= 2) {
        const float y = threadIdx.x + off < kGateThreads ? run_sums[threadIdx.x + off] : 0.f;
        __syncthreads();
        run_sums[threadIdx.x] += y;
        __syncthreads();
    }
    float suffix = threadIdx.x + 1 < kGateThreads ? run_sums[threadIdx.x + 1] : 0.f;
    for (int t = t_end - 1; t >= t_begin; --t) {
        suffix += dG(t);
        float& dst = p.dlog_gate[(size_t(b) * T + t) * H + h];
        dst = p.accumulate ? dst + suffix : suffix;
    }
}

template <int KD, bool GATED, bool REVERSE>
cudaError_t launch_scan(const ScanParams& p, int batch, cudaStream_t stream) {
    auto* kernel = p.variant == 1 ? chunk_scan_kernel<KD, GATED, REVERSE, false>
                                  : chunk_scan_kernel<KD, GATED, REVERSE, true>;
    constexpr int bytes = ScanLayout<KD>::bytes;
    // Over 48 KB of dynamic shared memory needs the opt-in (per device; cheap to repeat).
    cudaError_t status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (status != cudaSuccess) return status;
    const dim3 grid(unsigned(p.value_dim / kValueTile), unsigned(p.heads), unsigned(batch));
    kernel<<<grid, kThreads, bytes, stream>>>(p);
    return cudaGetLastError();
}

template <int KD>
cudaError_t scan_with_key_dim(const ScanParams& p, bool gated, bool reverse, int batch, cudaStream_t stream) {
    if (gated) return reverse ? launch_scan<KD, true, true>(p, batch, stream) : launch_scan<KD, true, false>(p, batch, stream);
    return reverse ? launch_scan<KD, false, true>(p, batch, stream) : launch_scan<KD, false, false>(p, batch, stream);
}

// One chunk scan; key_dim (the rows' and cols' width) 64 or 128.
inline cudaError_t scan(const ScanParams& p, int key_dim, bool gated, bool reverse, int batch, cudaStream_t stream) {
    return key_dim == 64 ? scan_with_key_dim<64>(p, gated, reverse, batch, stream)
                         : scan_with_key_dim<128>(p, gated, reverse, batch, stream);
}

// The whole backward. Pointers to device arrays, bf16 q, k, v, dout, dq, dk, dv (+=), fp32 gates and
// states; dq, dk, dv, dinitial_state and dlog_gate are added into (written when !accumulate). gate_scratch holds
// scratch_floats(...) floats (the q·dq, k·dk and ⟨dS_T, S_T⟩ partials) when dlog_gate is wanted.
struct BackwardArgs {
    const bf16 *q, *k, *v, *dout;
    const float* log_gate;
    const float* initial_state;
    const float* dfinal_state;
    bf16 *dq, *dk, *dv;
    float* dinitial_state;
    float* dlog_gate;
    float* gate_scratch;
    int batch, seq_len, heads, key_dim, value_dim;
    float scale;
    bool accumulate;  // false (the harness): the gradients are written, not added
    int variant;      // of chunk_scan_kernel: 1 or 2 (the library's)
};

inline size_t scratch_floats(int batch, int seq_len, int heads, int key_dim) {
    const size_t tiles = size_t(key_dim / kValueTile);
    return 2 * tiles * size_t(batch) * seq_len * heads + tiles * size_t(batch) * heads;
}

// Returns the first failing launch's status and, through failed_kernel, its name.
inline cudaError_t backward(const BackwardArgs& a, cudaStream_t stream, const char** failed_kernel) {
    const bool gated = a.log_gate != nullptr;
    const bool want_gate = gated && a.dlog_gate != nullptr;
    const size_t plane = size_t(a.batch) * a.seq_len * a.heads;
    const int tiles = a.key_dim / kValueTile;
    float* q_dot = want_gate ? a.gate_scratch : nullptr;
    float* k_dot = want_gate ? a.gate_scratch + tiles * plane : nullptr;
    float* state_dot = want_gate && a.dfinal_state ? a.gate_scratch + 2 * tiles * plane : nullptr;
    const float inv_scale = 1.0f / a.scale;
    ScanParams p{};
    p.log_gate = a.log_gate;
    p.seq_len = a.seq_len;
    p.heads = a.heads;
    p.scale = a.scale;
    p.accumulate_out = a.accumulate;
    p.variant = a.variant;
    // dq: forwards; rows do, columns v, values k; state Sᵀ from S_0ᵀ.
    p.rows = a.dout; p.cols = a.v; p.values = a.k;
    p.initial_state = a.initial_state; p.initial_scale = 1.f; p.state_transposed = true;
    p.out = a.dq; p.value_dim = a.key_dim;
    p.dot_with = want_gate ? a.q : nullptr; p.dot_out = q_dot;
    p.state_dot_with = state_dot ? a.dfinal_state : nullptr; p.state_dot_out = state_dot;
    cudaError_t status = scan(p, a.value_dim, gated, false, a.batch, stream);
    if (status != cudaSuccess) { *failed_kernel = "chunk_scan_kernel (dq)"; return status; }
    // dk: backwards; rows v, columns do, values q; state Λᵀ/s from dS_Tᵀ/s.
    p.rows = a.v; p.cols = a.dout; p.values = a.q;
    p.initial_state = a.dfinal_state; p.initial_scale = inv_scale; p.state_transposed = true;
    p.out = a.dk; p.value_dim = a.key_dim;
    p.dot_with = want_gate ? a.k : nullptr; p.dot_out = k_dot;
    p.state_dot_with = nullptr; p.state_dot_out = nullptr;
    status = scan(p, a.value_dim, gated, true, a.batch, stream);
    if (status != cudaSuccess) { *failed_kernel = "chunk_scan_kernel (dk)"; return status; }
    // dv: backwards; rows k, columns q, values do; state Λ/s from dS_T/s, ending at dS_0/s.
    p.rows = a.k; p.cols = a.q; p.values = a.dout;
    p.initial_state = a.dfinal_state; p.initial_scale = inv_scale; p.state_transposed = false;
    p.out = a.dv; p.value_dim = a.value_dim;
    p.dot_with = nullptr; p.dot_out = nullptr;
    p.final_state = a.dinitial_state; p.final_scale = a.scale; p.accumulate_final = a.accumulate;
    status = scan(p, a.key_dim, gated, true, a.batch, stream);
    if (status != cudaSuccess) { *failed_kernel = "chunk_scan_kernel (dv)"; return status; }
    if (want_gate) {
        const GateParams gp{q_dot, k_dot, state_dot, a.dlog_gate, a.batch, a.seq_len, a.heads, tiles, a.accumulate};
        gate_gradient_kernel<<<unsigned(a.batch * a.heads), kGateThreads, 0, stream>>>(gp);
        status = cudaGetLastError();
        if (status != cudaSuccess) { *failed_kernel = "gate_gradient_kernel"; return status; }
    }
    return cudaSuccess;
}

}  // namespace linarch::cuda::la_backward
