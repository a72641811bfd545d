// One recurrent (decode) step of the linear-attention family on the GPU, for every sequence and head at
// once, with the fp32 state updated in place. Standalone variant harness (llm.c's dev/cuda): every variant
// is checked against a float64 recurrence on fresh random inputs (‖out − ref‖ / ‖ref‖ for o and the new
// state), then timed with CUDA events (warm-ups, median of repeats, two state/input sets alternated) next
// to the machine's own device-to-device copy bandwidth, measured in the same run.
//
//     additive:   S ← Diag(exp(g)) S + kᵀ v                         g: none, [N,H] scalar, [N,H,Dk] (GLA)
//     delta rule: S ← exp(g) (I − β kᵀ k) S + β kᵀ v                 g: none or [N,H] scalar; β [N,H]
//     o = scale · q S   (with the updated S)
//     q,k [N,H,Dk]  v,o [N,H,Dv]  (bf16 or fp32)   log_gate, beta fp32   state [N,H,Dk,Dv] fp32
//
// Build and run (H100):
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a dev/cuda/recurrent_step.cu -o recurrent_step
//   ./recurrent_step
//
// The step is memory-bound: it reads and writes the state once (64 KB a head at 128×128) and does
// 4–6 flops per state element. Every variant is one kernel; a block owns one (sequence, head, tile of BV
// value columns), NW warps; a thread holds R rows × 4 columns of the tile in registers (one 16-byte load
// and store per row). Read once, written once, via the closed form (D = Diag(a), a = exp(g)):
//     S_new = D S + kᵀ u,     o = scale · (q D S + (q·k) u)
//     u = v (additive)   or   u = β (v − k D S) (delta rule: the Householder update, mixers.md §6)
// so the column sums p = (q∘a) S and r = (k∘a) S of the OLD state (one cross-warp reduction through
// shared memory, one barrier) are all that o and u need; then the thread writes its rows of S_new.
// Variants differ in the tile (BV, NW) and the cache hints on the state:
//   v1: BV = 128, 8 warps (a warp covers one 512-byte row per load)
//   v2: BV = 64, 4 warps: the library's from about two blocks per SM up (B ≥ 16 at H = 16)
//   v3: BV = 32, 4 warps
//   v4: BV = 32, 8 warps
//   v5: BV = 16, 4 warps (more blocks for small batches): the library's below that
//   v6: v3 with streaming (evict-first) loads and stores of the state
// Figures and what each change predicted: dev/cuda/NOTES_recurrent_step.md.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#define CHECK_CUDA(call)                                                                               \
    do {                                                                                               \
        cudaError_t e_ = (call);                                                                       \
        if (e_ != cudaSuccess) {                                                                       \
            std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__,     \
                         __LINE__, #call);                                                             \
            std::exit(1);                                                                              \
        }                                                                                              \
    } while (0)

using bf16 = __nv_bfloat16;

// ------------------------------------------------------------------------------------------------
// Kernel
// ------------------------------------------------------------------------------------------------

enum class Update { additive, delta };
enum class Decay { none, scalar, vector };

struct Params {
    const void* q;
    const void* k;
    const void* v;
    const float* log_gate;  // [N,H] (scalar) or [N,H,Dk] (vector); unused without decay
    const float* beta;      // [N,H]; delta rule only
    float* state;           // [N,H,Dk,Dv], updated in place
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

template <bool STREAM> __device__ __forceinline__ float4 load_state(const float* p) {
    if constexpr (STREAM) return __ldcs(reinterpret_cast<const float4*>(p));
    else return *reinterpret_cast<const float4*>(p);
}
template <bool STREAM> __device__ __forceinline__ void store_state(float* p, float4 x) {
    if constexpr (STREAM) __stcs(reinterpret_cast<float4*>(p), x);
    else *reinterpret_cast<float4*>(p) = x;
}

__device__ __forceinline__ float4 fma4(float a, float4 x, float4 acc) {
    return make_float4(fmaf(a, x.x, acc.x), fmaf(a, x.y, acc.y), fmaf(a, x.z, acc.z), fmaf(a, x.w, acc.w));
}
__device__ __forceinline__ float4 add4(float4 a, float4 b) {
    return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

// Grid: one block per (pair = n·H + h, tile of BV columns), flattened (N·H·Dv/BV blocks).
template <typename In, int DK, int BV, int NW, Update U, Decay D, bool STREAM>
__global__ void __launch_bounds__(NW * 32) recurrent_step_kernel(const Params p) {
    constexpr int kThreads = NW * 32;
    constexpr int kColVecs = BV / 4;                 // lanes across one row of the tile
    constexpr int kRowsPerWarp = 32 / kColVecs;      // rows one warp covers per load
    constexpr int kRowsPerPass = NW * kRowsPerWarp;  // rows the block covers per load
    constexpr int R = DK / kRowsPerPass;             // rows per thread
    static_assert(BV % 4 == 0 && 32 % kColVecs == 0 && DK % kRowsPerPass == 0 && R >= 1, "tile shape");
    constexpr bool kDelta = U == Update::delta;

    __shared__ float qa_s[DK];                 // q ∘ a
    __shared__ float ka_s[kDelta ? DK : 1];    // k ∘ a (delta rule)
    __shared__ float k_s[DK];
    __shared__ float a_s[D == Decay::vector ? DK : 1];
    __shared__ float qk_part[NW];
    __shared__ float4 red_q[NW][kColVecs];
    __shared__ float4 red_k[kDelta ? NW : 1][kColVecs];

    const int DV = p.value_dim, tiles = DV / BV;
    const int pair = blockIdx.x / tiles, tile = blockIdx.x % tiles;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int cv = lane % kColVecs, row0 = warp * kRowsPerWarp + lane / kColVecs;
    const int col = tile * BV + cv * 4;
    float* S = p.state + size_t(pair) * DK * DV + col;

    // The state tile first: its loads are in flight while q, k, the gate and v arrive.
    float4 s[R];
#pragma unroll
    for (int r = 0; r < R; ++r) s[r] = load_state<STREAM>(S + size_t(row0 + r * kRowsPerPass) * DV);
    const float4 v = load4(static_cast<const In*>(p.v) + size_t(pair) * DV + col);
    float alpha = 1.f;
    if constexpr (D == Decay::scalar) alpha = __expf(p.log_gate[pair]);
    float beta = 0.f;
    if constexpr (kDelta) beta = p.beta[pair];

    const In* q = static_cast<const In*>(p.q) + size_t(pair) * DK;
    const In* k = static_cast<const In*>(p.k) + size_t(pair) * DK;
    float qk = 0.f;
    for (int i = threadIdx.x; i < DK; i += kThreads) {
        const float qi = load1(q + i), ki = load1(k + i);
        float ai = alpha;
        if constexpr (D == Decay::vector) {
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

    // Column sums of the old state: p = (q∘a) S, r = (k∘a) S, over this thread's rows, then its warp's.
    float4 pq = make_float4(0.f, 0.f, 0.f, 0.f), pk = pq;
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int row = row0 + r * kRowsPerPass;
        pq = fma4(qa_s[row], s[r], pq);
        if constexpr (kDelta) pk = fma4(ka_s[row], s[r], pk);
    }
#pragma unroll
    for (int off = kColVecs; off < 32; off *= 2) {
        pq.x += __shfl_xor_sync(0xffffffffu, pq.x, off);
        pq.y += __shfl_xor_sync(0xffffffffu, pq.y, off);
        pq.z += __shfl_xor_sync(0xffffffffu, pq.z, off);
        pq.w += __shfl_xor_sync(0xffffffffu, pq.w, off);
        if constexpr (kDelta) {
            pk.x += __shfl_xor_sync(0xffffffffu, pk.x, off);
            pk.y += __shfl_xor_sync(0xffffffffu, pk.y, off);
            pk.z += __shfl_xor_sync(0xffffffffu, pk.z, off);
            pk.w += __shfl_xor_sync(0xffffffffu, pk.w, off);
        }
    }
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
    // u = v, or β (v − (k∘a) S); o = scale · ((q∘a) S + (q·k) u).
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
        if constexpr (D == Decay::vector) ai = a_s[row];
        const float ki = k_s[row];
        float4 x = s[r];
        if constexpr (D != Decay::none) x = make_float4(ai * x.x, ai * x.y, ai * x.z, ai * x.w);
        store_state<STREAM>(S + size_t(row) * DV, fma4(ki, u, x));
    }
}

// ------------------------------------------------------------------------------------------------
// Dispatch
// ------------------------------------------------------------------------------------------------

struct Mode {
    Update update;
    Decay decay;
    const char* name;
};
const Mode kModes[] = {
    {Update::additive, Decay::none, "additive, no decay"},
    {Update::additive, Decay::scalar, "additive, scalar gate"},
    {Update::additive, Decay::vector, "additive, vector gate (GLA)"},
    {Update::delta, Decay::none, "delta rule"},
    {Update::delta, Decay::scalar, "gated delta rule"},
};

struct Variant {
    int id, bv, warps;
    bool stream;
};
const Variant kVariants[] = {{1, 128, 8, false}, {2, 64, 4, false}, {3, 32, 4, false},
                             {4, 32, 8, false},  {5, 16, 4, false}, {6, 32, 4, true}};

using LaunchFn = void (*)(const Params&, int pairs, cudaStream_t);

template <typename In, int DK, int BV, int NW, Update U, Decay D, bool STREAM>
void launch(const Params& p, int pairs, cudaStream_t stream) {
    const int blocks = pairs * (p.value_dim / BV);
    recurrent_step_kernel<In, DK, BV, NW, U, D, STREAM><<<blocks, NW * 32, 0, stream>>>(p);
}

template <typename In, int DK, int BV, int NW, bool STREAM> LaunchFn pick_mode(const Mode& m) {
    if (m.update == Update::additive) {
        if (m.decay == Decay::none) return launch<In, DK, BV, NW, Update::additive, Decay::none, STREAM>;
        if (m.decay == Decay::scalar) return launch<In, DK, BV, NW, Update::additive, Decay::scalar, STREAM>;
        return launch<In, DK, BV, NW, Update::additive, Decay::vector, STREAM>;
    }
    if (m.decay == Decay::none) return launch<In, DK, BV, NW, Update::delta, Decay::none, STREAM>;
    return launch<In, DK, BV, NW, Update::delta, Decay::scalar, STREAM>;
}

template <typename In, int DK> LaunchFn pick_dk(const Variant& v, const Mode& m) {
    switch (v.id) {
    case 1: return pick_mode<In, DK, 128, 8, false>(m);
    case 2: return pick_mode<In, DK, 64, 4, false>(m);
    case 3: return pick_mode<In, DK, 32, 4, false>(m);
    case 4: return pick_mode<In, DK, 32, 8, false>(m);
    case 5: return pick_mode<In, DK, 16, 4, false>(m);
    default: return pick_mode<In, DK, 32, 4, true>(m);
    }
}

template <typename In> LaunchFn pick(const Variant& v, const Mode& m, int dk) {
    return dk == 64 ? pick_dk<In, 64>(v, m) : pick_dk<In, 128>(v, m);
}

// ------------------------------------------------------------------------------------------------
// Inputs, reference, check
// ------------------------------------------------------------------------------------------------

struct Shape {
    int N, H, DK, DV;
    size_t pairs() const { return size_t(N) * H; }
    size_t state_elems() const { return pairs() * DK * DV; }
};

// Values as the kernel sees them (bf16 inputs already rounded), in float.
struct HostInputs {
    std::vector<float> q, k, v, gate_scalar, gate_vector, beta, state;
};

float round_bf16(float x) { return __bfloat162float(__float2bfloat16(x)); }

// q, k rows of unit norm (the models L2-normalise them), v ~ N(0,1), Mamba-2 style log gates
// −a·softplus(x − 1) with a ∈ [1/16, 1], β ∈ (0,1), initial state ~ N(0, 0.5²).
HostInputs make_inputs(const Shape& s, bool bf, std::mt19937_64& rng) {
    std::normal_distribution<float> normal(0.f, 1.f);
    std::uniform_real_distribution<float> uniform(0.f, 1.f);
    HostInputs in;
    auto unit_rows = [&](std::vector<float>& x) {
        x.resize(s.pairs() * s.DK);
        for (size_t r = 0; r < s.pairs(); ++r) {
            double norm = 0;
            for (int c = 0; c < s.DK; ++c) {
                const float z = normal(rng);
                x[r * s.DK + c] = z;
                norm += double(z) * z;
            }
            for (int c = 0; c < s.DK; ++c) {
                const float z = float(x[r * s.DK + c] / std::sqrt(norm));
                x[r * s.DK + c] = bf ? round_bf16(z) : z;
            }
        }
    };
    unit_rows(in.q);
    unit_rows(in.k);
    in.v.resize(s.pairs() * s.DV);
    for (float& x : in.v) x = bf ? round_bf16(normal(rng)) : normal(rng);
    auto gate = [&] { return -(1.f / 16 + uniform(rng) * 15.f / 16) * std::log1p(std::exp(normal(rng) - 1.f)); };
    in.gate_scalar.resize(s.pairs());
    for (float& x : in.gate_scalar) x = gate();
    in.gate_vector.resize(s.pairs() * s.DK);
    for (float& x : in.gate_vector) x = gate();
    in.beta.resize(s.pairs());
    for (float& x : in.beta) x = uniform(rng);
    in.state.resize(s.state_elems());
    for (float& x : in.state) x = 0.5f * normal(rng);
    return in;
}

// The float64 step, written as the recurrence itself (not the kernel's closed form):
//     S' = Diag(a) S;  u = v or β (v − k S');  S = S' + kᵀ u;  o = scale · q S
void reference_step(const Shape& s, const HostInputs& in, const Mode& m, double scale, std::vector<double>& o,
                    std::vector<double>& state) {
    const int DK = s.DK, DV = s.DV;
    o.assign(s.pairs() * DV, 0.0);
    state.assign(in.state.begin(), in.state.end());
    std::vector<double> u(static_cast<size_t>(DV));
    for (size_t pr = 0; pr < s.pairs(); ++pr) {
        double* S = state.data() + pr * DK * DV;
        for (int i = 0; i < DK; ++i) {
            double a = 1.0;
            if (m.decay == Decay::scalar) a = std::exp(double(in.gate_scalar[pr]));
            if (m.decay == Decay::vector) a = std::exp(double(in.gate_vector[pr * DK + i]));
            for (int j = 0; j < DV; ++j) S[i * DV + j] *= a;
        }
        const float* k = &in.k[pr * DK];
        const float* v = &in.v[pr * DV];
        const float* q = &in.q[pr * DK];
        for (int j = 0; j < DV; ++j) {
            if (m.update == Update::additive) {
                u[size_t(j)] = v[j];
            } else {
                double ks = 0;
                for (int i = 0; i < DK; ++i) ks += double(k[i]) * S[i * DV + j];
                u[size_t(j)] = double(in.beta[pr]) * (double(v[j]) - ks);
            }
        }
        for (int i = 0; i < DK; ++i)
            for (int j = 0; j < DV; ++j) S[i * DV + j] += double(k[i]) * u[size_t(j)];
        for (int j = 0; j < DV; ++j) {
            double acc = 0;
            for (int i = 0; i < DK; ++i) acc += double(q[i]) * S[i * DV + j];
            o[pr * DV + j] = scale * acc;
        }
    }
}

struct DeviceBuffers {
    void *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr;
    float *gate_scalar = nullptr, *gate_vector = nullptr, *beta = nullptr, *state = nullptr;
    void release() {
        for (void* ptr : {q, k, v, o, static_cast<void*>(gate_scalar), static_cast<void*>(gate_vector),
                          static_cast<void*>(beta), static_cast<void*>(state)})
            CHECK_CUDA(cudaFree(ptr));
    }
};

template <typename In> void* upload(const std::vector<float>& x) {
    std::vector<In> host(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
        if constexpr (std::is_same_v<In, bf16>) host[i] = __float2bfloat16(x[i]);
        else host[i] = x[i];
    }
    void* d = nullptr;
    CHECK_CUDA(cudaMalloc(&d, host.size() * sizeof(In)));
    CHECK_CUDA(cudaMemcpy(d, host.data(), host.size() * sizeof(In), cudaMemcpyHostToDevice));
    return d;
}

DeviceBuffers to_device(const Shape& s, const HostInputs& in, bool bf) {
    DeviceBuffers d;
    d.q = bf ? upload<bf16>(in.q) : upload<float>(in.q);
    d.k = bf ? upload<bf16>(in.k) : upload<float>(in.k);
    d.v = bf ? upload<bf16>(in.v) : upload<float>(in.v);
    d.gate_scalar = static_cast<float*>(upload<float>(in.gate_scalar));
    d.gate_vector = static_cast<float*>(upload<float>(in.gate_vector));
    d.beta = static_cast<float*>(upload<float>(in.beta));
    d.state = static_cast<float*>(upload<float>(in.state));
    CHECK_CUDA(cudaMalloc(&d.o, s.pairs() * s.DV * (bf ? 2 : 4)));
    CHECK_CUDA(cudaMemset(d.o, 0xff, s.pairs() * s.DV * (bf ? 2 : 4)));  // NaN in bf16 and fp32
    return d;
}

Params params_of(const Shape& s, const DeviceBuffers& d, const Mode& m, float scale) {
    return {d.q, d.k, d.v, m.decay == Decay::vector ? d.gate_vector : d.gate_scalar, d.beta, d.state, d.o, s.DV,
            scale};
}

struct CheckResult {
    double err_o, err_state;
    size_t non_finite;
};

double rel_err(const std::vector<float>& x, const std::vector<double>& ref) {
    double e = 0, n = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        e += (double(x[i]) - ref[i]) * (double(x[i]) - ref[i]);
        n += ref[i] * ref[i];
    }
    return std::sqrt(e / n);
}

CheckResult check(const Shape& s, bool bf, const Variant& var, const Mode& m, uint64_t seed, int steps) {
    std::mt19937_64 rng(seed);
    HostInputs in = make_inputs(s, bf, rng);
    DeviceBuffers d = to_device(s, in, bf);
    const float scale = 1.f / std::sqrt(float(s.DK));
    const LaunchFn fn = bf ? pick<bf16>(var, m, s.DK) : pick<float>(var, m, s.DK);
    CheckResult r{0, 0, 0};
    std::vector<double> ro, rs;
    for (int step = 0; step < steps; ++step) {
        if (step > 0) {  // fresh token inputs, the state carried over
            HostInputs next = make_inputs(s, bf, rng);
            next.state = in.state;
            in = next;
            d.release();
            d = to_device(s, in, bf);
        }
        fn(params_of(s, d, m, scale), int(s.pairs()), 0);
        CHECK_CUDA(cudaGetLastError());
        CHECK_CUDA(cudaDeviceSynchronize());
        std::vector<float> o(s.pairs() * s.DV), st(s.state_elems());
        if (bf) {
            std::vector<bf16> ob(o.size());
            CHECK_CUDA(cudaMemcpy(ob.data(), d.o, ob.size() * 2, cudaMemcpyDeviceToHost));
            for (size_t i = 0; i < o.size(); ++i) o[i] = __bfloat162float(ob[i]);
        } else {
            CHECK_CUDA(cudaMemcpy(o.data(), d.o, o.size() * 4, cudaMemcpyDeviceToHost));
        }
        CHECK_CUDA(cudaMemcpy(st.data(), d.state, st.size() * 4, cudaMemcpyDeviceToHost));
        reference_step(s, in, m, scale, ro, rs);
        for (float x : o) r.non_finite += !std::isfinite(x);
        for (float x : st) r.non_finite += !std::isfinite(x);
        r.err_o = std::max(r.err_o, rel_err(o, ro));
        r.err_state = std::max(r.err_state, rel_err(st, rs));
        // Carry the GPU's state (as the model would), so the next reference starts from the same point.
        in.state = st;
    }
    d.release();
    return r;
}

// ------------------------------------------------------------------------------------------------
// Timing
// ------------------------------------------------------------------------------------------------

template <typename Fn> float median_ms(Fn&& fn, int warmup, int reps, cudaStream_t stream = 0) {
    for (int i = 0; i < warmup; ++i) fn();
    CHECK_CUDA(cudaDeviceSynchronize());
    std::vector<float> times;
    cudaEvent_t start, stop;
    CHECK_CUDA(cudaEventCreate(&start));
    CHECK_CUDA(cudaEventCreate(&stop));
    for (int i = 0; i < reps; ++i) {
        CHECK_CUDA(cudaEventRecord(start, stream));
        fn();
        CHECK_CUDA(cudaEventRecord(stop, stream));
        CHECK_CUDA(cudaEventSynchronize(stop));
        float ms = 0;
        CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
        times.push_back(ms);
    }
    CHECK_CUDA(cudaGetLastError());
    CHECK_CUDA(cudaEventDestroy(start));
    CHECK_CUDA(cudaEventDestroy(stop));
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
}

float copy_ms(size_t bytes) {
    void *a, *b;
    CHECK_CUDA(cudaMalloc(&a, bytes));
    CHECK_CUDA(cudaMalloc(&b, bytes));
    CHECK_CUDA(cudaMemset(a, 1, bytes));
    CHECK_CUDA(cudaMemset(b, 2, bytes));
    const float ms = median_ms([&] { CHECK_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); }, 3, 30);
    CHECK_CUDA(cudaFree(a));
    CHECK_CUDA(cudaFree(b));
    return ms;
}

// In place, read and written once, nothing else: the floor of this access pattern.
__global__ void scale_in_place_kernel(float4* x, size_t n, float factor) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
        float4 y = x[i];
        x[i] = make_float4(y.x * factor, y.y * factor, y.z * factor, y.w * factor);
    }
}

double host_median_us(std::vector<double> t) {
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

int main(int argc, char** argv) {
    const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
    cudaDeviceProp prop{};
    CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s, %d SMs, L2 %.0f MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize / 1e6);

    // ---- correctness: every variant × mode × input type on fresh random inputs, 3 steps carrying the
    // state; the float64 reference restarts each step from the GPU's state ----
    const Shape check_shapes[] = {
        {3, 4, 128, 128}, {2, 3, 64, 64}, {2, 2, 64, 128}, {1, 2, 128, 64}, {64, 16, 128, 128}};
    int failures = 0;
    uint64_t seed = 1000;
    for (const Shape& s : check_shapes)
        for (const Variant& var : kVariants)
            for (const Mode& m : kModes)
                for (bool bf : {true, false}) {
                    if (s.DV % var.bv != 0) continue;
                    if (s.N == 64 && !bf && var.id != 3) continue;  // keep the check short
                    const CheckResult r = check(s, bf, var, m, seed++, s.N == 64 ? 1 : 3);
                    // bf16: o rounded to bf16 (2^-9 relative per element); the state stays fp32.
                    const double tol_o = bf ? 1e-2 : 1e-5, tol_s = 1e-5;
                    const bool ok = r.non_finite == 0 && r.err_o < tol_o && r.err_state < tol_s;
                    failures += !ok;
                    if (!ok || s.N == 64 || var.id == 3)
                        std::printf("check v%d N=%d H=%d Dk=%d Dv=%d %-28s %s: rel err o %.2e, state %.2e, "
                                    "non-finite %zu %s\n",
                                    var.id, s.N, s.H, s.DK, s.DV, m.name, bf ? "bf16" : "fp32", r.err_o, r.err_state,
                                    r.non_finite, ok ? "ok" : "FAIL");
                }
    std::printf("checks: %d failures\n\n", failures);

    // ---- the machine's copy bandwidth, in this run ----
    const float copy_gib = copy_ms(size_t(1) << 30);
    const double copy_bw = 2.0 * double(size_t(1) << 30) / (copy_gib * 1e-3);  // read + write
    const Shape big{256, 16, 128, 128};
    const size_t big_state_bytes = big.state_elems() * 4;
    const float copy_same = copy_ms(big_state_bytes);
    std::printf("D2D copy 1 GiB: %.4f ms = %.3f TB/s (read+write);  D2D copy of the B=256 state (%.0f MB): %.4f ms = "
                "%.3f TB/s\n",
                copy_gib, copy_bw / 1e12, big_state_bytes / 1e6, copy_same,
                2.0 * big_state_bytes / (copy_same * 1e-3) / 1e12);
    {
        float* x;
        CHECK_CUDA(cudaMalloc(&x, big_state_bytes * 2));
        CHECK_CUDA(cudaMemset(x, 0, big_state_bytes * 2));
        const size_t n4 = big_state_bytes / 16;
        int which = 0;
        const float ms = median_ms(
            [&] {
                float4* half = reinterpret_cast<float4*>(x) + which * n4;
                scale_in_place_kernel<<<prop.multiProcessorCount * 16, 256>>>(half, n4, 1.f);
                which ^= 1;
            },
            5, 30);
        std::printf("in-place scale kernel over the B=256 state: %.4f ms = %.3f TB/s = %.1f%% of copy\n", ms,
                    2.0 * big_state_bytes / (ms * 1e-3) / 1e12, 100.0 * 2.0 * big_state_bytes / (ms * 1e-3) / copy_bw);
        CHECK_CUDA(cudaFree(x));
    }

    // ---- kernel time at B = 1, 64, 256 (H=16, Dk=Dv=128) ----
    struct Row {
        int n, variant;
        const Mode* mode;
        bool bf;
        float ms;
    };
    std::vector<Row> rows;
    for (int n : {1, 64, 256}) {
        const Shape s{n, 16, 128, 128};
        for (bool bf : {true, false}) {
            if (!bf && (quick || n != 256)) continue;
            std::mt19937_64 rng(99 + n);
            const HostInputs in = make_inputs(s, bf, rng);
            // Two sets (state 268 MB each at B=256, more than L2); at B=1 and 64 the state fits L2 anyway.
            DeviceBuffers sets[2] = {to_device(s, in, bf), to_device(s, in, bf)};
            for (const Variant& var : kVariants)
                for (const Mode& m : kModes) {
                    if (!bf && var.id != 2 && var.id != 3) continue;
                    const LaunchFn fn = bf ? pick<bf16>(var, m, 128) : pick<float>(var, m, 128);
                    int which = 0;
                    const float ms = median_ms(
                        [&] {
                            fn(params_of(s, sets[which], m, 0.088f), n * 16, 0);
                            which ^= 1;
                        },
                        10, n == 1 ? 200 : 50);
                    rows.push_back({n, var.id, &m, bf, ms});
                }
            for (auto& d : sets) d.release();
        }
    }
    std::printf("\nH=16 Dk=Dv=128, kernel time (CUDA events around one launch, median; state traffic = state read + "
                "written once in fp32)\n");
    std::printf("fla fused_recurrent gated delta rule (anchors.md): B=1 0.134 ms, B=64 0.149 ms, B=256 0.225 ms\n");
    std::printf("| B | variant | inputs | mode | ms | state TB/s | of copy bw | vs fla |\n"
                "|---|---|---|---|---|---|---|---|\n");
    for (const Row& r : rows) {
        const double bytes = 2.0 * double(r.n) * 16 * 128 * 128 * 4;
        const double fla = r.n == 1 ? 0.134 : r.n == 64 ? 0.149 : 0.225;
        std::printf("| %d | v%d | %s | %s | %.4f | %.3f | %.1f%% | %.2fx |\n", r.n, r.variant, r.bf ? "bf16" : "fp32",
                    r.mode->name, r.ms, bytes / (r.ms * 1e-3) / 1e12, 100.0 * bytes / (r.ms * 1e-3) / copy_bw,
                    fla / r.ms);
    }

    // ---- B=1 as the host sees it: one launch + synchronise (wall clock), back-to-back launches, and a
    // CUDA graph of 24 layers' steps (each layer its own state) ----
    {
        const Shape s{1, 16, 128, 128};
        constexpr int kLayers = 24;
        std::mt19937_64 rng(7);
        const HostInputs in = make_inputs(s, true, rng);
        std::vector<DeviceBuffers> layers;
        for (int l = 0; l < kLayers; ++l) layers.push_back(to_device(s, in, true));
        cudaStream_t stream;
        CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        const Mode& gdn = kModes[4];
        std::printf("\nB=1, H=16, 128x128, gated delta rule, bf16, as the host sees it (fla: 0.134 ms per step)\n");
        for (int vid : {1, 2, 3, 5}) {
            const Variant& var = kVariants[vid - 1];
            const LaunchFn fn = pick<bf16>(var, gdn, 128);
            for (int i = 0; i < 50; ++i) fn(params_of(s, layers[0], gdn, 0.088f), 16, stream);
            CHECK_CUDA(cudaStreamSynchronize(stream));
            std::vector<double> roundtrip, enqueue;
            for (int i = 0; i < 500; ++i) {
                const auto t0 = std::chrono::steady_clock::now();
                fn(params_of(s, layers[i % kLayers], gdn, 0.088f), 16, stream);
                const auto t1 = std::chrono::steady_clock::now();
                CHECK_CUDA(cudaStreamSynchronize(stream));
                const auto t2 = std::chrono::steady_clock::now();
                enqueue.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
                roundtrip.push_back(std::chrono::duration<double, std::micro>(t2 - t0).count());
            }
            // Back to back: 24 launches (one per layer) between two events.
            const float b2b = median_ms(
                [&] {
                    for (int l = 0; l < kLayers; ++l) fn(params_of(s, layers[l], gdn, 0.088f), 16, stream);
                },
                5, 100, stream);
            // The same 24 launches captured once as a graph, replayed.
            cudaGraph_t graph;
            cudaGraphExec_t exec;
            CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
            for (int l = 0; l < kLayers; ++l) fn(params_of(s, layers[l], gdn, 0.088f), 16, stream);
            CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
            CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
            const float graph_ms = median_ms([&] { CHECK_CUDA(cudaGraphLaunch(exec, stream)); }, 5, 100, stream);
            std::vector<double> graph_rt;
            for (int i = 0; i < 200; ++i) {
                const auto t0 = std::chrono::steady_clock::now();
                CHECK_CUDA(cudaGraphLaunch(exec, stream));
                CHECK_CUDA(cudaStreamSynchronize(stream));
                graph_rt.push_back(
                    std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
            }
            CHECK_CUDA(cudaGraphExecDestroy(exec));
            CHECK_CUDA(cudaGraphDestroy(graph));
            std::printf("v%d: launch call %.1f us; launch + sync round trip %.1f us; %d back-to-back launches %.1f us "
                        "(%.2f us/step); graph of %d steps %.1f us on device (%.2f us/step), %.1f us round trip "
                        "(%.2f us/step)\n",
                        var.id, host_median_us(enqueue), host_median_us(roundtrip), kLayers, b2b * 1e3,
                        b2b * 1e3 / kLayers, kLayers, graph_ms * 1e3, graph_ms * 1e3 / kLayers,
                        host_median_us(graph_rt), host_median_us(graph_rt) / kLayers);
        }
        CHECK_CUDA(cudaStreamDestroy(stream));
        for (auto& d : layers) d.release();
    }
    // ---- small batches, device time per step: a CUDA graph of 24 layers' steps (each its own state),
    // replayed; gated delta rule, bf16 ----
    {
        constexpr int kLayers = 24;
        const Mode& gdn = kModes[4];
        cudaStream_t stream;
        CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        std::printf("\nsmall batches, gated delta rule, bf16, H=16, 128x128: us per step in a graph of %d layers' "
                    "steps\n",
                    kLayers);
        std::printf("| B | v1 | v2 | v3 | v5 |\n|---|---|---|---|---|\n");
        for (int n : {1, 2, 4, 8, 16, 32, 64}) {
            const Shape s{n, 16, 128, 128};
            std::mt19937_64 rng(11 + n);
            const HostInputs in = make_inputs(s, true, rng);
            std::vector<DeviceBuffers> layers;
            for (int l = 0; l < kLayers; ++l) layers.push_back(to_device(s, in, true));
            std::printf("| %d |", n);
            for (int vid : {1, 2, 3, 5}) {
                const LaunchFn fn = pick<bf16>(kVariants[vid - 1], gdn, 128);
                cudaGraph_t graph;
                cudaGraphExec_t exec;
                CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
                for (int l = 0; l < kLayers; ++l) fn(params_of(s, layers[l], gdn, 0.088f), n * 16, stream);
                CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
                CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
                const float ms = median_ms([&] { CHECK_CUDA(cudaGraphLaunch(exec, stream)); }, 5, 50, stream);
                CHECK_CUDA(cudaGraphExecDestroy(exec));
                CHECK_CUDA(cudaGraphDestroy(graph));
                std::printf(" %.2f |", ms * 1e3 / kLayers);
            }
            std::printf("\n");
            for (auto& d : layers) d.release();
        }
        CHECK_CUDA(cudaStreamDestroy(stream));
    }
    std::printf("\n%s: %d check failures\n", failures ? "FAILED" : "all checks passed", failures);
    return failures ? 1 : 0;
}
