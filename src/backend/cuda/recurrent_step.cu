// CUDA recurrent (decode) step of the linear-attention family (see the header). Variants 2 and 5 of
// dev/cuda/recurrent_step.cu (tiles of 64 or 16 columns, by batch size): one kernel, a block owns one
// (sequence, head, tile of BV value columns); a thread holds R rows × 4 columns of the state tile in
// registers, loaded and stored with 16-byte accesses, so the state is read once and written once.
// With D = Diag(a), a = exp(g) (a = 1 without decay):
//     S_new = D S + kᵀ u,     o = scale · (q D S + (q·k) u)
//     u = v (additive)   or   u = β (v − k D S)   (delta rule: S' = D S, u = β (v − k S'), S = S' + kᵀ u)
// (q S_new = q D S + (q·k) u.) Only the column sums (q∘a) S and (k∘a) S of the old state are needed
// before the update: one reduction across the block's warps through shared memory, one barrier.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "backend/cuda/recurrent_step.hpp"
#include "core/error.hpp"

namespace linarch::cuda {
namespace {

using bf16 = __nv_bfloat16;

struct Params {
    const void* q;
    const void* k;
    const void* v;
    const float* log_gate;
    const float* beta;
    float* state;
    void* o;
    int value_dim;
    float scale;
};

__device__ __forceinline__ float load1(const bf16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float load1(const float* p) { return *p; }
__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 load4(const bf16* p) {
    const uint2 raw = *reinterpret_cast<const uint2*>(p);
    const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
    const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
    return make_float4(lo.x, lo.y, hi.x, hi.y);
}
__device__ __forceinline__ void store4(float* p, float4 x) { *reinterpret_cast<float4*>(p) = x; }
__device__ __forceinline__ void store4(bf16* p, float4 x) {
    const __nv_bfloat162 lo = __floats2bfloat162_rn(x.x, x.y), hi = __floats2bfloat162_rn(x.z, x.w);
    uint2 raw;
    raw.x = *reinterpret_cast<const uint32_t*>(&lo);
    raw.y = *reinterpret_cast<const uint32_t*>(&hi);
    *reinterpret_cast<uint2*>(p) = raw;
}
__device__ __forceinline__ float4 fma4(float a, float4 x, float4 acc) {
    return make_float4(fmaf(a, x.x, acc.x), fmaf(a, x.y, acc.y), fmaf(a, x.z, acc.z), fmaf(a, x.w, acc.w));
}
__device__ __forceinline__ float4 add4(float4 a, float4 b) {
    return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}
__device__ __forceinline__ float4 warp_sum_over_rows(float4 x, int lanes_per_row) {
    for (int off = lanes_per_row; off < 32; off *= 2) {
        x.x += __shfl_xor_sync(0xffffffffu, x.x, off);
        x.y += __shfl_xor_sync(0xffffffffu, x.y, off);
        x.z += __shfl_xor_sync(0xffffffffu, x.z, off);
        x.w += __shfl_xor_sync(0xffffffffu, x.w, off);
    }
    return x;
}

// Grid: N·H·(Dv/BV) blocks, block index = (n·H + h)·(Dv/BV) + tile. Thread (warp w, lane l) holds
// columns 4·(l mod BV/4) .. +3 of the tile and rows row0 + r·kRowsPerPass, r < R: each load instruction
// of a warp covers 32/(BV/4) whole rows of the tile.
template <typename In, int DK, int BV, int NW, StepUpdate U, StepDecay D>
__global__ void __launch_bounds__(NW * 32) recurrent_step_kernel(const Params p) {
    constexpr int kThreads = NW * 32;
    constexpr int kColVecs = BV / 4;
    constexpr int kRowsPerWarp = 32 / kColVecs;
    constexpr int kRowsPerPass = NW * kRowsPerWarp;
    constexpr int R = DK / kRowsPerPass;
    static_assert(BV % 4 == 0 && 32 % kColVecs == 0 && DK % kRowsPerPass == 0 && R >= 1, "tile shape");
    constexpr bool kDelta = U == StepUpdate::delta;
    constexpr bool kVector = D == StepDecay::vector;

    __shared__ float qa_s[DK];              // q ∘ a
    __shared__ float ka_s[kDelta ? DK : 1];  // k ∘ a
    __shared__ float k_s[DK];
    __shared__ float a_s[kVector ? DK : 1];
    __shared__ float qk_part[NW];
    __shared__ float4 red_q[NW][kColVecs];
    __shared__ float4 red_k[kDelta ? NW : 1][kColVecs];

    const int DV = p.value_dim, tiles = DV / BV;
    const int pair = blockIdx.x / tiles, tile = blockIdx.x % tiles;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int cv = lane % kColVecs, row0 = warp * kRowsPerWarp + lane / kColVecs;
    const int col = tile * BV + cv * 4;
    float* S = p.state + size_t(pair) * DK * DV + col;

    // The state tile first, so its loads are in flight while q, k, v and the gate arrive.
    float4 s[R];
#pragma unroll
    for (int r = 0; r < R; ++r) s[r] = *reinterpret_cast<const float4*>(S + size_t(row0 + r * kRowsPerPass) * DV);
    const float4 v = load4(static_cast<const In*>(p.v) + size_t(pair) * DV + col);
    float alpha = 1.f;
    if constexpr (D == StepDecay::scalar) alpha = __expf(p.log_gate[pair]);
    float beta = 0.f;
    if constexpr (kDelta) beta = p.beta[pair];

    const In* q = static_cast<const In*>(p.q) + size_t(pair) * DK;
    const In* k = static_cast<const In*>(p.k) + size_t(pair) * DK;
    float qk = 0.f;
    for (int i = threadIdx.x; i < DK; i += kThreads) {
        const float qi = load1(q + i), ki = load1(k + i);
        float ai = alpha;
        if constexpr (kVector) {
            ai = __expf(p.log_gate[size_t(pair) * DK + i]);
            a_s[i] = ai;
        }
        qa_s[i] = qi * ai;
        if constexpr (kDelta) ka_s[i] = ki * ai;
        k_s[i] = ki;
        qk = fmaf(qi, ki, qk);
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) qk += __shfl_xor_sync(0xffffffffu, qk, off);
    if (lane == 0) qk_part[warp] = qk;
    __syncthreads();

    // Column sums of the old state over this thread's rows, then its warp's, then the block's.
    float4 pq = make_float4(0.f, 0.f, 0.f, 0.f), pk = pq;
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int row = row0 + r * kRowsPerPass;
        pq = fma4(qa_s[row], s[r], pq);
        if constexpr (kDelta) pk = fma4(ka_s[row], s[r], pk);
    }
    pq = warp_sum_over_rows(pq, kColVecs);
    if constexpr (kDelta) pk = warp_sum_over_rows(pk, kColVecs);
    if (lane < kColVecs) {
        red_q[warp][cv] = pq;
        if constexpr (kDelta) red_k[warp][cv] = pk;
    }
    __syncthreads();
    float4 P = red_q[0][cv], K = make_float4(0.f, 0.f, 0.f, 0.f);
    if constexpr (kDelta) K = red_k[0][cv];
    qk = qk_part[0];
#pragma unroll
    for (int w = 1; w < NW; ++w) {
        P = add4(P, red_q[w][cv]);
        if constexpr (kDelta) K = add4(K, red_k[w][cv]);
        qk += qk_part[w];
    }
    float4 u = v;
    if constexpr (kDelta)
        u = make_float4(beta * (v.x - K.x), beta * (v.y - K.y), beta * (v.z - K.z), beta * (v.w - K.w));
    if (warp == 0 && lane < kColVecs) {
        const float4 o = make_float4(p.scale * fmaf(qk, u.x, P.x), p.scale * fmaf(qk, u.y, P.y),
                                     p.scale * fmaf(qk, u.z, P.z), p.scale * fmaf(qk, u.w, P.w));
        store4(static_cast<In*>(p.o) + size_t(pair) * DV + col, o);
    }
    // S_new = a_i S + k_i u, row by row.
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int row = row0 + r * kRowsPerPass;
        float ai = alpha;
        if constexpr (kVector) ai = a_s[row];
        float4 x = s[r];
        if constexpr (D != StepDecay::none) x = make_float4(ai * x.x, ai * x.y, ai * x.z, ai * x.w);
        *reinterpret_cast<float4*>(S + size_t(row) * DV) = fma4(k_s[row], u, x);
    }
}

const char* update_name(StepUpdate u) { return u == StepUpdate::additive ? "additive" : "delta"; }
const char* decay_name(StepDecay d) {
    return d == StepDecay::none ? "none" : d == StepDecay::scalar ? "scalar" : "vector";
}

template <typename In, int DK, int BV, int NW, StepUpdate U, StepDecay D>
void launch(const Params& p, int64_t pairs, const RecurrentStep& a) {
    const int64_t blocks = pairs * (a.value_dim / BV);
    recurrent_step_kernel<In, DK, BV, NW, U, D><<<unsigned(blocks), NW * 32, 0, cudaStreamPerThread>>>(p);
    const cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess)
        fail("CUDA kernel recurrent_step_kernel<{}, Dk={}, BV={}, warps={}, {}, decay {}> failed to launch: {}",
             a.fp32_io ? "fp32" : "bf16", DK, BV, NW, update_name(U), decay_name(D), cudaGetErrorString(status));
}

template <typename In, int DK, int BV, int NW>
void dispatch_mode(const Params& p, int64_t pairs, const RecurrentStep& a) {
    constexpr StepUpdate additive = StepUpdate::additive, delta = StepUpdate::delta;
    constexpr StepDecay none = StepDecay::none, scalar = StepDecay::scalar, vector = StepDecay::vector;
    if (a.update == additive) {
        if (a.decay == none) return launch<In, DK, BV, NW, additive, none>(p, pairs, a);
        if (a.decay == scalar) return launch<In, DK, BV, NW, additive, scalar>(p, pairs, a);
        return launch<In, DK, BV, NW, additive, vector>(p, pairs, a);
    }
    if (a.decay == none) return launch<In, DK, BV, NW, delta, none>(p, pairs, a);
    return launch<In, DK, BV, NW, delta, scalar>(p, pairs, a);
}

// Tiles of 64 columns (variant 2) from about two blocks per SM up: 95% of copy bandwidth at B=256, H=16;
// below that, tiles of 16 columns (variant 5) spread a small batch over more SMs: 7.5 vs 8.2 µs a step
// at B=8, the same 2.5 µs at B=1 (dev/cuda/NOTES_recurrent_step.md).
constexpr int64_t kWideTileFromBlocks = 512;

template <typename In, int DK> void dispatch_tile(const Params& p, int64_t pairs, const RecurrentStep& a) {
    if (a.value_dim % 64 == 0 && pairs * (a.value_dim / 64) >= kWideTileFromBlocks)
        dispatch_mode<In, DK, 64, 4>(p, pairs, a);
    else dispatch_mode<In, DK, 16, 4>(p, pairs, a);
}

}  // namespace

bool recurrent_step_supports(int64_t key_dim, int64_t value_dim) {
    return (key_dim == 64 || key_dim == 128) && value_dim > 0 && value_dim % 16 == 0;
}

void recurrent_step(const RecurrentStep& a) {
    LINARCH_CHECK(recurrent_step_supports(a.key_dim, a.value_dim),
                  "recurrent_step (CUDA): no kernel for Dk={}, Dv={}", a.key_dim, a.value_dim);
    LINARCH_CHECK(a.decay != StepDecay::vector || a.update == StepUpdate::additive,
                  "recurrent_step (CUDA): the delta rule takes no per-key-channel gate");
    const int64_t pairs = a.num_seqs * a.heads;
    LINARCH_CHECK(pairs >= 1 && pairs * (a.value_dim / 16) < (int64_t(1) << 31),
                  "recurrent_step (CUDA): N={}, H={} exceed the grid", a.num_seqs, a.heads);
    const Params p{a.q, a.k, a.v, a.log_gate, a.beta, a.state, a.o, int(a.value_dim), float(a.scale)};
    if (a.fp32_io) a.key_dim == 64 ? dispatch_tile<float, 64>(p, pairs, a) : dispatch_tile<float, 128>(p, pairs, a);
    else a.key_dim == 64 ? dispatch_tile<bf16, 64>(p, pairs, a) : dispatch_tile<bf16, 128>(p, pairs, a);
}

}  // namespace linarch::cuda
