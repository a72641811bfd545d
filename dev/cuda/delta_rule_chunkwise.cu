// Variant harness for the delta rule's chunkwise forward (src/backend/cuda/linear_attention_chunkwise.cu,
// included whole so the library's own kernels are timed): each kernel alone and the variants below,
// with CUDA events, B=8 T=2048 H=16 Dk=Dv=128 and B=1 T=32768. Variants are checked bit for bit against
// the library's configuration (which test_ops checks against float64). Notes: dev/cuda/NOTES_delta_rule.md.
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Isrc dev/cuda/delta_rule_chunkwise.cu -lfmt \
//        -o delta_rule_chunkwise && ./delta_rule_chunkwise
#include "backend/cuda/linear_attention_chunkwise.cu"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

namespace linarch::cuda {
namespace {

#define CHECK_CUDA(call)                                                                              \
    do {                                                                                              \
        cudaError_t e_ = (call);                                                                      \
        if (e_ != cudaSuccess) {                                                                      \
            std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            std::exit(1);                                                                             \
        }                                                                                             \
    } while (0)

template <typename Fn> float median_ms(Fn&& fn, int warmup = 3, int reps = 20) {
    cudaEvent_t a, b;
    CHECK_CUDA(cudaEventCreate(&a));
    CHECK_CUDA(cudaEventCreate(&b));
    for (int i = 0; i < warmup; ++i) fn();
    std::vector<float> times;
    for (int i = 0; i < reps; ++i) {
        CHECK_CUDA(cudaEventRecord(a, cudaStreamPerThread));
        fn();
        CHECK_CUDA(cudaEventRecord(b, cudaStreamPerThread));
        CHECK_CUDA(cudaEventSynchronize(b));
        float ms = 0;
        CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
        times.push_back(ms);
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
}

template <typename T> T* upload(const std::vector<T>& host) {
    T* d = nullptr;
    CHECK_CUDA(cudaMalloc(&d, host.size() * sizeof(T)));
    CHECK_CUDA(cudaMemcpy(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}

template <typename T> std::vector<T> download(const T* d, size_t n) {
    std::vector<T> host(n);
    CHECK_CUDA(cudaMemcpy(host.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
}

// ---- v1 (the library's first WY kernel): (I + A) x = rhs solved for every column of W and ũ, a column
// per thread, x in registers, A's rows read as float4 broadcasts. Exact in fp32, but every thread reads all
// of A: 256 columns × 8 KB of shared memory a chunk, bandwidth-bound (0.50 ms at B=8 T=2048, NOTES).
template <int DK> struct WyColumnsLayout {
    static constexpr int k_stride = DK + 8;
    static constexpr int k_off = 0;
    static constexpr int a_off = k_off + kChunk * k_stride * 2;  // A, fp32 [64][64], zero on and above the diagonal
    static constexpr int beta_off = a_off + kChunk * kChunk * 4;
    static constexpr int cum_off = beta_off + kChunk * 4;      // G_i, the cumulative log gate
    static constexpr int bytes = cum_off + kChunk * 4;
    static_assert(a_off % 16 == 0);
};

// x ← (I + A)⁻¹ x by forward substitution, x_i −= Σ_{j<i} A_ij x_j; the float4 reads of A's row run up
// to the next multiple of 4, where A is zero.
__device__ __forceinline__ void solve_columns(float (&x)[kChunk], const float* a_s) {
#pragma unroll
    for (int i = 1; i < kChunk; ++i) {
        const float4* row = reinterpret_cast<const float4*>(a_s + i * kChunk);
        float acc = x[i];
#pragma unroll
        for (int j4 = 0; j4 < (i + 3) / 4; ++j4) {
            const float4 r = row[j4];
            acc -= r.x * x[4 * j4] + r.y * x[4 * j4 + 1] + r.z * x[4 * j4 + 2] + r.w * x[4 * j4 + 3];
        }
        x[i] = acc;
        // Keeps the compiler from hoisting later rows' loads above this one: 64 live x plus prefetched
        // rows would spill.
        asm volatile("" ::: "memory");
    }
}

// One block per (chunk, head, batch row): A from k kᵀ on the tensor cores, then (I + A) x = rhs solved by
// forward substitution for every column of W (rhs β_i exp(G_i) k_i) and of ũ (rhs β_i v_i), a column per
// thread with x in registers and A's rows read as float4 broadcasts. Rows past the sequence end have
// k = v = β = 0, so they neither feed A nor are written.
template <int DK>
__global__ void __launch_bounds__(kThreads) wy_columns_kernel(const WyParams p) {
    using L = WyColumnsLayout<DK>;
    constexpr int KD = DK / 16;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* ks = reinterpret_cast<bf16*>(smem + L::k_off);
    float* a_s = reinterpret_cast<float*>(smem + L::a_off);
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

    // A = k kᵀ, this warp's 16 rows; the tiles right of the diagonal block stay zero.
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
    __syncthreads();

    // Token i of the chunk sits i · H rows after token 0. The pointers step row by row so the compiler
    // keeps no per-row offsets across columns (with 64 live x they would spill).
    const int rows = min(kChunk, T - t0);
    for (int c = threadIdx.x; c < DK + DV; c += kThreads) {
        asm volatile("" ::: "memory");  // (rereads β and G per column rather than keep 128 registers)
        const bool is_w = c < DK;
        const int width = is_w ? DK : DV, col = is_w ? c : c - DK, stride = H * width;
        float x[kChunk];
        const bf16* in = p.v + token(0) * DV + col;
#pragma unroll
        for (int i = 0; i < kChunk; ++i) {
            if (is_w) x[i] = beta_s[i] * __expf(cum_s[i]) * __bfloat162float(ks[i * L::k_stride + col]);
            else x[i] = i < rows ? beta_s[i] * __bfloat162float(*in) : 0.f;
            in += stride;
        }
        solve_columns(x, a_s);
        bf16* out = (is_w ? p.w : p.u) + token(0) * width + col;
#pragma unroll
        for (int i = 0; i < kChunk; ++i) {
            if (i < rows) *out = __float2bfloat16(x[i]);
            out += stride;
        }
    }
}

// ---- variant: the WY solve with two columns a thread interleaved (two independent dependency chains) ----
__device__ __forceinline__ void solve_unit_lower_x2(float (&x)[kChunk], float (&y)[kChunk], const float* a_s) {
#pragma unroll
    for (int i = 1; i < kChunk; ++i) {
        const float4* row = reinterpret_cast<const float4*>(a_s + i * kChunk);
        float acc = x[i], acc2 = y[i];
#pragma unroll
        for (int j4 = 0; j4 < (i + 3) / 4; ++j4) {
            const float4 r = row[j4];
            acc -= r.x * x[4 * j4] + r.y * x[4 * j4 + 1] + r.z * x[4 * j4 + 2] + r.w * x[4 * j4 + 3];
            acc2 -= r.x * y[4 * j4] + r.y * y[4 * j4 + 1] + r.z * y[4 * j4 + 2] + r.w * y[4 * j4 + 3];
        }
        x[i] = acc;
        y[i] = acc2;
        asm volatile("" ::: "memory");
    }
}

// The library's delta_rule_wy_kernel with thread t solving W's column t and ũ's column t together
// (Dk = Dv = 128 = the block's threads).
__global__ void __launch_bounds__(kThreads) wy_x2_kernel(const WyParams p) {
    constexpr int DK = 128;
    using L = WyColumnsLayout<DK>;
    constexpr int KD = DK / 16;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* ks = reinterpret_cast<bf16*>(smem + L::k_off);
    float* a_s = reinterpret_cast<float*>(smem + L::a_off);
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
    cp_async_commit();
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
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int i = row0 + g + (e >= 2 ? 8 : 0), j = nt * 8 + 2 * t4 + (e & 1);
            a_s[i * kChunk + j] = j < i ? beta_s[i] * a[nt][e] * __expf(cum_s[i] - cum_s[j]) : 0.f;
        }
    __syncthreads();
    const int rows = min(kChunk, T - t0);
    const int c = threadIdx.x;
    float x[kChunk], y[kChunk];
    const bf16* in = p.v + token(0) * DV + c;
#pragma unroll
    for (int i = 0; i < kChunk; ++i) {
        x[i] = beta_s[i] * __expf(cum_s[i]) * __bfloat162float(ks[i * L::k_stride + c]);
        y[i] = i < rows ? beta_s[i] * __bfloat162float(*in) : 0.f;
        in += H * DV;
    }
    solve_unit_lower_x2(x, y, a_s);
    bf16* ow = p.w + token(0) * DK + c;
    bf16* ou = p.u + token(0) * DV + c;
#pragma unroll
    for (int i = 0; i < kChunk; ++i) {
        if (i < rows) {
            *ow = __float2bfloat16(x[i]);
            *ou = __float2bfloat16(y[i]);
        }
        ow += H * DK;
        ou += H * DV;
    }
}

struct Run {
    int B, T, H;
};

void run_shape(const Run& r) {
    constexpr int D = 128;
    const size_t tokens = size_t(r.B) * r.T * r.H, n = tokens * D;
    std::mt19937 gen(1234);
    std::normal_distribution<float> normal(0.f, 1.f);
    std::uniform_real_distribution<float> uni(0.f, 1.f);
    std::vector<__nv_bfloat16> q(n), k(n), v(n);
    for (size_t i = 0; i < n; ++i) {
        q[i] = __float2bfloat16(normal(gen) / std::sqrt(float(D)));
        k[i] = __float2bfloat16(normal(gen) / std::sqrt(float(D)));
        v[i] = __float2bfloat16(normal(gen));
    }
    std::vector<float> beta(tokens), gate(tokens);
    for (size_t i = 0; i < tokens; ++i) {
        beta[i] = uni(gen);
        gate[i] = -0.001f - 0.2f * uni(gen);
    }
    bf16 *dq = upload(q), *dk = upload(k), *dv = upload(v), *o = nullptr, *o2 = nullptr, *w = nullptr, *u = nullptr;
    float *dbeta = upload(beta), *dgate = upload(gate);
    CHECK_CUDA(cudaMalloc(&o, n * 2));
    CHECK_CUDA(cudaMalloc(&o2, n * 2));
    CHECK_CUDA(cudaMalloc(&w, n * 2));
    CHECK_CUDA(cudaMalloc(&u, n * 2));
    const WyParams wy{dk, dv, dbeta, dgate, w, u, nullptr, r.T, r.H, D};
    const Params delta{dq, dk, u, w, dgate, nullptr, o, nullptr, nullptr, nullptr, r.T, r.H, D, 0.088f};
    const Params delta2{dq, dk, u, w, dgate, nullptr, o2, nullptr, nullptr, nullptr, r.T, r.H, D, 0.088f};
    const Params la{dq, dk, dv, nullptr, dgate, nullptr, o2, nullptr, nullptr, nullptr, r.T, r.H, D, 0.088f};

    launch_wy<D>(wy, r.B);
    launch<D, true, true, 1>(delta, r.B);
    launch<D, true, true, 2>(delta2, r.B);
    CHECK_CUDA(cudaDeviceSynchronize());
    const auto a = download(o, n), b = download(o2, n);
    const bool same = std::memcmp(a.data(), b.data(), n * 2) == 0;
    std::printf("B=%d T=%d H=%d D=%d: main kernel, 1 stage vs 2 stages: %s\n", r.B, r.T, r.H, D,
                same ? "identical" : "DIFFER");

    // v1 and the x2 variant (exact fp32 solves of every column) against the library's v2 (T in bf16,
    // products on the tensor cores): relative difference of W and ũ.
    const auto w_lib = download(w, n), u_lib = download(u, n);
    const dim3 wy_grid(unsigned((r.T + 63) / 64), unsigned(r.H), unsigned(r.B));
    auto rel_diff = [&](const std::vector<bf16>& x, const std::vector<bf16>& y) {
        double num = 0, den = 0;
        for (size_t i = 0; i < x.size(); ++i) {
            const double a = __bfloat162float(x[i]), b = __bfloat162float(y[i]);
            num += (a - b) * (a - b);
            den += b * b;
        }
        return std::sqrt(num / den);
    };
    constexpr int v1_bytes = WyColumnsLayout<D>::bytes;
    CHECK_CUDA(cudaFuncSetAttribute(wy_columns_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, v1_bytes));
    CHECK_CUDA(cudaFuncSetAttribute(wy_x2_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, v1_bytes));
    auto run_v1 = [&] { wy_columns_kernel<D><<<wy_grid, kThreads, v1_bytes, cudaStreamPerThread>>>(wy); };
    auto run_x2 = [&] { wy_x2_kernel<<<wy_grid, kThreads, v1_bytes, cudaStreamPerThread>>>(wy); };
    for (auto [name, run] : {std::pair<const char*, std::function<void()>>{"v1 (a column a thread)", run_v1},
                             std::pair<const char*, std::function<void()>>{"v1 x2 (two columns a thread)", run_x2}}) {
        run();
        CHECK_CUDA(cudaDeviceSynchronize());
        const double dw = rel_diff(download(w, n), w_lib), du = rel_diff(download(u, n), u_lib);
        std::printf("  wy %-30s %.3f ms   |W - W_lib|/|W_lib| %.2e, |u - u_lib|/|u_lib| %.2e\n", name,
                    median_ms(run), dw, du);
    }
    launch_wy<D>(wy, r.B);  // the library's W and ũ again, for the main kernel below
    const float t_wy = median_ms([&] { launch_wy<D>(wy, r.B); });
    const float t_main1 = median_ms([&] { launch<D, true, true, 1>(delta, r.B); });
    const float t_main2 = median_ms([&] { launch<D, true, true, 2>(delta2, r.B); });
    const float t_la = median_ms([&] { launch<D, true, false, 2>(la, r.B); });
    const float t_la1 = median_ms([&] { launch<D, true, false, 1>(la, r.B); });
    std::printf("  wy v2, the library's (%d blocks)  %.3f ms\n", (r.T + 63) / 64 * r.H * r.B, t_wy);
    std::printf("  main, delta, 1 stage              %.3f ms\n", t_main1);
    std::printf("  main, delta, 2 stages             %.3f ms\n", t_main2);
    std::printf("  main, linear attention (gated) 2 stages %.3f ms, 1 stage %.3f ms\n", t_la, t_la1);
    if (r.B * r.H * 2 < 132) {
        // Narrower value tiles for few (sequence, head) pairs: more blocks, each redoing q kᵀ.
        const float d32 = median_ms([&] { launch<D, true, true, 2, 32>(delta2, r.B); });
        const float d16 = median_ms([&] { launch<D, true, true, 2, 16>(delta2, r.B); });
        const float l32 = median_ms([&] { launch<D, true, false, 2, 32>(la, r.B); });
        const float l16 = median_ms([&] { launch<D, true, false, 2, 16>(la, r.B); });
        std::printf("  main, 2 stages, value tiles 64 / 32 / 16: delta %.3f / %.3f / %.3f ms, linear attention (gated) "
                    "%.3f / %.3f / %.3f ms\n", t_main2, d32, d16, t_la, l32, l16);
    }
    launch<D, true, true, 2, 64>(delta2, r.B);
    CHECK_CUDA(cudaDeviceSynchronize());
    const auto o_tile64 = download(o2, n);
    launch<D, true, true, 2, 16>(delta2, r.B);
    CHECK_CUDA(cudaDeviceSynchronize());
    std::printf("  value tile 16 against 64: %s\n",
                std::memcmp(o_tile64.data(), download(o2, n).data(), n * 2) == 0 ? "identical" : "DIFFER");
    std::printf("  forward (wy v2 + main, the library's choice)  %.3f ms\n", t_wy + (r.B * r.H * 2 >= 132 ? t_main1 : t_main2));
    for (void* p : {(void*)dq, (void*)dk, (void*)dv, (void*)o, (void*)o2, (void*)w, (void*)u, (void*)dbeta, (void*)dgate})
        CHECK_CUDA(cudaFree(p));
}

}  // namespace
}  // namespace linarch::cuda

int main() {
    linarch::cuda::run_shape({8, 2048, 16});
    linarch::cuda::run_shape({1, 32768, 16});
    return 0;
}
