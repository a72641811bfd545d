// Chunkwise BACKWARD of causal linear attention on the GPU, no decay or a per-head scalar data-dependent
// log gate (Mamba-2 / simple GLA, mixers.md §1 and §3): dq, dk, dv, d initial_state and dlog_gate.
// Standalone variant harness (llm.c's dev/cuda): every variant is checked against a float64 backward
// computed from the recurrence itself (all states kept; the gate gradient as a_t·⟨Λ_t, S_{t−1}⟩, an
// independent route from the kernels' q·dq − k·dk identity), on fresh random inputs, relative error per
// gradient; then timed with CUDA events next to the machine's own bf16 GEMM rate and copy bandwidth.
//
//     S_t = exp(g_t) S_{t-1} + k_tᵀ v_t,    o_t = scale · q_t S_t      (g_t ≤ 0; g = 0 without decay)
//     q,k,dq,dk [B,T,H,Dk]  v,do,dv [B,T,H,Dv]  log_gate [B,T,H] fp32  states [B,H,Dk,Dv] fp32
//
// The kernels are the library's (src/backend/cuda/linear_attention_chunkwise_backward.cuh, included
// here): three "chunk scans" (dq forwards; dk, dv backwards), each the forward kernel's algorithm with
// other operands, plus one small kernel for the gate's reverse cumulative sum.
//   1: the epilogue reads the previous gradient (+=) and the dot operand (q or k, for dlog_gate) from
//      global memory where it needs them.
//   2: those reads are issued at the chunk's start into registers (the library's).
//
// Build and run (H100), from the repository root:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Isrc -lcublas \
//        dev/cuda/linear_attention_chunkwise_backward.cu -o la_backward && ./la_backward
// Figures: dev/cuda/NOTES_linear_attention.md.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/linear_attention_chunkwise_backward.cuh"

#define CHECK_CUDA(call)                                                                               \
    do {                                                                                               \
        cudaError_t e_ = (call);                                                                       \
        if (e_ != cudaSuccess) {                                                                       \
            std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__,     \
                         __LINE__, #call);                                                             \
            std::exit(1);                                                                              \
        }                                                                                              \
    } while (0)
#define CHECK_CUBLAS(call)                                                                             \
    do {                                                                                               \
        cublasStatus_t s_ = (call);                                                                    \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                             \
            std::fprintf(stderr, "cuBLAS error %d at %s:%d\n", int(s_), __FILE__, __LINE__);           \
            std::exit(1);                                                                              \
        }                                                                                              \
    } while (0)

namespace bwd = linarch::cuda::la_backward;
using bf16 = __nv_bfloat16;

struct Shape {
    int B, T, H, DK, DV;
};

struct HostInputs {
    std::vector<float> q, k, v, dout, gate, s0, dfinal;  // values as the kernels see them (bf16-rounded)
};

static float round_bf16(float x) { return __bfloat162float(__float2bfloat16(x)); }

HostInputs make_inputs(const Shape& s, bool with_states, std::mt19937_64& rng) {
    std::normal_distribution<float> normal(0.f, 1.f);
    const size_t nqk = size_t(s.B) * s.T * s.H * s.DK, nv = size_t(s.B) * s.T * s.H * s.DV;
    HostInputs in;
    in.q.resize(nqk);
    in.k.resize(nqk);
    in.v.resize(nv);
    in.dout.resize(nv);
    in.gate.resize(size_t(s.B) * s.T * s.H);
    // q, k with unit-norm rows (the models L2-normalise them), v, dout ~ N(0, 1).
    auto fill_unit_rows = [&](std::vector<float>& x) {
        for (size_t r = 0; r < x.size() / s.DK; ++r) {
            double norm = 0;
            for (int d = 0; d < s.DK; ++d) {
                x[r * s.DK + d] = normal(rng);
                norm += double(x[r * s.DK + d]) * x[r * s.DK + d];
            }
            const float inv = float(1.0 / std::sqrt(norm));
            for (int d = 0; d < s.DK; ++d) x[r * s.DK + d] *= inv;
        }
    };
    fill_unit_rows(in.q);
    fill_unit_rows(in.k);
    for (auto& x : in.v) x = normal(rng);
    for (auto& x : in.dout) x = normal(rng);
    // Mamba-2 style log decay −a·softplus(x − 2), a in [1/16, 1].
    std::uniform_real_distribution<float> uni(0.f, 1.f);
    for (auto& x : in.gate) {
        const float a = (1.f + 15.f * uni(rng)) / 16.f, dt = std::log1p(std::exp(normal(rng) - 2.f));
        x = -a * dt;
    }
    if (with_states) {
        in.s0.resize(size_t(s.B) * s.H * s.DK * s.DV);
        in.dfinal.resize(in.s0.size());
        for (auto& x : in.s0) x = 0.5f * normal(rng);
        for (auto& x : in.dfinal) x = 0.5f * normal(rng);
    }
    for (auto* x : {&in.q, &in.k, &in.v, &in.dout})
        for (auto& e : *x) e = round_bf16(e);
    return in;
}

struct HeadGrads {
    std::vector<double> dq, dk, dv, dg, ds0;  // [T,Dk], [T,Dk], [T,Dv], [T], [Dk,Dv]
};

// float64 backward for one (b, h) straight from the recurrence: keeps S_0 .. S_T, then walks back with
// Λ (the adjoint of S_t): dq_t = s·do_t S_tᵀ, dk_t = v_t Λ_tᵀ, dv_t = k_t Λ_t, dg_t = a_t ⟨Λ_t, S_{t−1}⟩.
void reference_head(const Shape& s, const HostInputs& in, bool gated, double scale, int b, int h, HeadGrads& out) {
    const int DK = s.DK, DV = s.DV, T = s.T;
    const size_t SZ = size_t(DK) * DV;
    std::vector<double> states(size_t(T + 1) * SZ, 0.0);
    if (!in.s0.empty())
        for (size_t i = 0; i < SZ; ++i) states[i] = in.s0[(size_t(b) * s.H + h) * SZ + i];
    auto tok = [&](int t) { return (size_t(b) * T + t) * s.H + h; };
    auto decay = [&](int t) { return gated ? std::exp(double(in.gate[tok(t)])) : 1.0; };
    out.dq.assign(size_t(T) * DK, 0.0);
    out.dk.assign(size_t(T) * DK, 0.0);
    out.dv.assign(size_t(T) * DV, 0.0);
    out.dg.assign(size_t(T), 0.0);
    for (int t = 0; t < T; ++t) {
        const double a = decay(t);
        const float* kt = &in.k[tok(t) * DK];
        const float* vt = &in.v[tok(t) * DV];
        const float* dot = &in.dout[tok(t) * DV];
        const double* prev = &states[size_t(t) * SZ];
        double* cur = &states[size_t(t + 1) * SZ];
        for (int d = 0; d < DK; ++d)
            for (int c = 0; c < DV; ++c) cur[size_t(d) * DV + c] = a * prev[size_t(d) * DV + c] + double(kt[d]) * vt[c];
        for (int d = 0; d < DK; ++d) {
            double acc = 0;
            for (int c = 0; c < DV; ++c) acc += double(dot[c]) * cur[size_t(d) * DV + c];
            out.dq[size_t(t) * DK + d] = scale * acc;
        }
    }
    std::vector<double> lam(SZ, 0.0);
    if (!in.dfinal.empty())
        for (size_t i = 0; i < SZ; ++i) lam[i] = in.dfinal[(size_t(b) * s.H + h) * SZ + i];
    for (int t = T - 1; t >= 0; --t) {
        const float* qt = &in.q[tok(t) * DK];
        const float* kt = &in.k[tok(t) * DK];
        const float* vt = &in.v[tok(t) * DV];
        const float* dot = &in.dout[tok(t) * DV];
        for (int d = 0; d < DK; ++d)
            for (int c = 0; c < DV; ++c) lam[size_t(d) * DV + c] += scale * double(qt[d]) * dot[c];
        for (int d = 0; d < DK; ++d) {
            double acc = 0;
            for (int c = 0; c < DV; ++c) acc += lam[size_t(d) * DV + c] * vt[c];
            out.dk[size_t(t) * DK + d] = acc;
        }
        for (int c = 0; c < DV; ++c) {
            double acc = 0;
            for (int d = 0; d < DK; ++d) acc += double(kt[d]) * lam[size_t(d) * DV + c];
            out.dv[size_t(t) * DV + c] = acc;
        }
        const double a = decay(t);
        const double* prev = &states[size_t(t) * SZ];
        double dot_prev = 0;
        for (size_t i = 0; i < SZ; ++i) dot_prev += lam[i] * prev[i];
        out.dg[size_t(t)] = a * dot_prev;
        for (auto& x : lam) x *= a;
    }
    out.ds0 = lam;
}

struct DeviceBuffers {
    bf16 *q = nullptr, *k = nullptr, *v = nullptr, *dout = nullptr, *dq = nullptr, *dk = nullptr, *dv = nullptr,
         *o = nullptr;
    float *gate = nullptr, *s0 = nullptr, *dfinal = nullptr, *ds0 = nullptr, *dg = nullptr, *scratch = nullptr;
    void release() {
        for (void* p : {(void*)q, (void*)k, (void*)v, (void*)dout, (void*)dq, (void*)dk, (void*)dv, (void*)o,
                        (void*)gate, (void*)s0, (void*)dfinal, (void*)ds0, (void*)dg, (void*)scratch})
            if (p) CHECK_CUDA(cudaFree(p));
    }
};

template <typename T> T* upload(const std::vector<float>& src) {
    std::vector<T> tmp(src.size());
    for (size_t i = 0; i < src.size(); ++i) {
        if constexpr (sizeof(T) == 2) tmp[i] = __float2bfloat16(src[i]);
        else tmp[i] = src[i];
    }
    T* dst = nullptr;
    CHECK_CUDA(cudaMalloc(&dst, tmp.size() * sizeof(T)));
    CHECK_CUDA(cudaMemcpy(dst, tmp.data(), tmp.size() * sizeof(T), cudaMemcpyHostToDevice));
    return dst;
}

DeviceBuffers to_device(const Shape& s, const HostInputs& in) {
    DeviceBuffers d;
    d.q = upload<bf16>(in.q);
    d.k = upload<bf16>(in.k);
    d.v = upload<bf16>(in.v);
    d.dout = upload<bf16>(in.dout);
    d.gate = upload<float>(in.gate);
    if (!in.s0.empty()) {
        d.s0 = upload<float>(in.s0);
        d.dfinal = upload<float>(in.dfinal);
    }
    const size_t nqk = size_t(s.B) * s.T * s.H * s.DK, nv = size_t(s.B) * s.T * s.H * s.DV;
    CHECK_CUDA(cudaMalloc(&d.dq, nqk * 2));
    CHECK_CUDA(cudaMalloc(&d.dk, nqk * 2));
    CHECK_CUDA(cudaMalloc(&d.dv, nv * 2));
    CHECK_CUDA(cudaMalloc(&d.o, nv * 2));
    CHECK_CUDA(cudaMalloc(&d.ds0, size_t(s.B) * s.H * s.DK * s.DV * 4));
    CHECK_CUDA(cudaMalloc(&d.dg, size_t(s.B) * s.T * s.H * 4));
    CHECK_CUDA(cudaMalloc(&d.scratch, bwd::scratch_floats(s.B, s.T, s.H, s.DK) * 4));
    return d;
}

bwd::BackwardArgs args_of(const Shape& s, const DeviceBuffers& d, bool gated, bool with_states, float scale,
                          int variant = 2, bool accumulate = false) {
    bwd::BackwardArgs a{};
    a.q = d.q; a.k = d.k; a.v = d.v; a.dout = d.dout;
    a.log_gate = gated ? d.gate : nullptr;
    a.initial_state = with_states ? d.s0 : nullptr;
    a.dfinal_state = with_states ? d.dfinal : nullptr;
    a.dq = d.dq; a.dk = d.dk; a.dv = d.dv;
    a.dinitial_state = d.ds0;
    a.dlog_gate = gated ? d.dg : nullptr;
    a.gate_scratch = d.scratch;
    a.batch = s.B; a.seq_len = s.T; a.heads = s.H; a.key_dim = s.DK; a.value_dim = s.DV;
    a.scale = scale;
    a.accumulate = accumulate;
    a.variant = variant;
    return a;
}

// The forward (for fwd+bwd timing): the forward chunk scan with the operands in their own roles.
cudaError_t forward(const Shape& s, const DeviceBuffers& d, bool gated, float scale) {
    bwd::ScanParams p{};
    p.rows = d.q; p.cols = d.k; p.values = d.v; p.log_gate = gated ? d.gate : nullptr;
    p.initial_scale = 1.f; p.out = d.o;
    p.seq_len = s.T; p.heads = s.H; p.value_dim = s.DV; p.scale = scale;
    return bwd::scan(p, s.DK, gated, false, s.B, 0);
}

void run_backward(const bwd::BackwardArgs& a) {
    const char* failed = "";
    const cudaError_t status = bwd::backward(a, 0, &failed);
    if (status != cudaSuccess) {
        std::fprintf(stderr, "%s: %s\n", failed, cudaGetErrorString(status));
        std::exit(1);
    }
}

struct CheckResult {
    double err[5];  // dq, dk, dv, ds0, dg
    size_t non_finite;
};

std::vector<float> download_bf16(const bf16* src, size_t n) {
    std::vector<bf16> tmp(n);
    CHECK_CUDA(cudaMemcpy(tmp.data(), src, n * 2, cudaMemcpyDeviceToHost));
    std::vector<float> out(n);
    for (size_t i = 0; i < n; ++i) out[i] = __bfloat162float(tmp[i]);
    return out;
}
std::vector<float> download_f32(const float* src, size_t n) {
    std::vector<float> out(n);
    CHECK_CUDA(cudaMemcpy(out.data(), src, n * 4, cudaMemcpyDeviceToHost));
    return out;
}

// Runs the backward once on NaN-poisoned outputs and compares the heads in `heads` with float64.
CheckResult check(const Shape& s, bool gated, bool with_states, const std::vector<std::pair<int, int>>& heads,
                  uint64_t seed, int variant) {
    std::mt19937_64 rng(seed);
    const HostInputs in = make_inputs(s, with_states, rng);
    DeviceBuffers d = to_device(s, in);
    const size_t nqk = size_t(s.B) * s.T * s.H * s.DK, nv = size_t(s.B) * s.T * s.H * s.DV;
    const size_t ns = size_t(s.B) * s.H * s.DK * s.DV, ng = size_t(s.B) * s.T * s.H;
    CHECK_CUDA(cudaMemset(d.dq, 0xff, nqk * 2));  // NaN in bf16 and fp32: every element must be written
    CHECK_CUDA(cudaMemset(d.dk, 0xff, nqk * 2));
    CHECK_CUDA(cudaMemset(d.dv, 0xff, nv * 2));
    CHECK_CUDA(cudaMemset(d.ds0, 0xff, ns * 4));
    CHECK_CUDA(cudaMemset(d.dg, 0xff, ng * 4));
    CHECK_CUDA(cudaMemset(d.scratch, 0xff, bwd::scratch_floats(s.B, s.T, s.H, s.DK) * 4));
    const float scale = 1.0f / std::sqrt(float(s.DK));
    run_backward(args_of(s, d, gated, with_states, scale, variant));
    CHECK_CUDA(cudaDeviceSynchronize());
    const std::vector<float> dq = download_bf16(d.dq, nqk), dk = download_bf16(d.dk, nqk), dv = download_bf16(d.dv, nv);
    const std::vector<float> ds0 = download_f32(d.ds0, ns);
    const std::vector<float> dg = gated ? download_f32(d.dg, ng) : std::vector<float>();
    d.release();
    CheckResult r{{0, 0, 0, 0, 0}, 0};
    for (const auto* x : {&dq, &dk, &dv, &ds0, &dg})
        for (float e : *x) r.non_finite += !std::isfinite(e);
    double num[5] = {0, 0, 0, 0, 0}, den[5] = {0, 0, 0, 0, 0};
    auto add = [&](int which, double x, double y) {
        num[which] += (x - y) * (x - y);
        den[which] += y * y;
    };
    HeadGrads ref;
    for (auto [b, h] : heads) {
        reference_head(s, in, gated, scale, b, h, ref);
        for (int t = 0; t < s.T; ++t) {
            const size_t tok = (size_t(b) * s.T + t) * s.H + h;
            for (int c = 0; c < s.DK; ++c) {
                add(0, dq[tok * s.DK + c], ref.dq[size_t(t) * s.DK + c]);
                add(1, dk[tok * s.DK + c], ref.dk[size_t(t) * s.DK + c]);
            }
            for (int c = 0; c < s.DV; ++c) add(2, dv[tok * s.DV + c], ref.dv[size_t(t) * s.DV + c]);
            if (gated) add(4, dg[tok], ref.dg[size_t(t)]);
        }
        for (size_t i = 0; i < ref.ds0.size(); ++i) add(3, ds0[(size_t(b) * s.H + h) * s.DK * s.DV + i], ref.ds0[i]);
    }
    for (int i = 0; i < 5; ++i) r.err[i] = den[i] > 0 ? std::sqrt(num[i] / den[i]) : 0.0;
    return r;
}

template <typename Fn> float median_ms(Fn&& fn, int warmup, int reps) {
    for (int i = 0; i < warmup; ++i) fn();
    CHECK_CUDA(cudaDeviceSynchronize());
    std::vector<float> times;
    cudaEvent_t start, stop;
    CHECK_CUDA(cudaEventCreate(&start));
    CHECK_CUDA(cudaEventCreate(&stop));
    for (int i = 0; i < reps; ++i) {
        CHECK_CUDA(cudaEventRecord(start));
        fn();
        CHECK_CUDA(cudaEventRecord(stop));
        CHECK_CUDA(cudaEventSynchronize(stop));
        float ms = 0;
        CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
        times.push_back(ms);
    }
    CHECK_CUDA(cudaEventDestroy(start));
    CHECK_CUDA(cudaEventDestroy(stop));
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
}

// cuBLAS bf16 GEMM (fp32 accumulation) m×n×k on random data; returns the median ms.
float gemm_ms(cublasHandle_t handle, int m, int n, int k) {
    std::mt19937_64 rng(7);
    std::normal_distribution<float> normal(0.f, 1.f);
    std::vector<bf16> ha(size_t(m) * k), hb(size_t(k) * n);
    for (auto& x : ha) x = __float2bfloat16(normal(rng));
    for (auto& x : hb) x = __float2bfloat16(normal(rng));
    bf16 *a, *bm, *c;
    CHECK_CUDA(cudaMalloc(&a, ha.size() * 2));
    CHECK_CUDA(cudaMalloc(&bm, hb.size() * 2));
    CHECK_CUDA(cudaMalloc(&c, size_t(m) * n * 2));
    CHECK_CUDA(cudaMemcpy(a, ha.data(), ha.size() * 2, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(bm, hb.data(), hb.size() * 2, cudaMemcpyHostToDevice));
    const float alpha = 1.f, beta = 0.f;
    auto run = [&] {
        CHECK_CUBLAS(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &alpha, a, CUDA_R_16BF, m, bm,
                                  CUDA_R_16BF, k, &beta, c, CUDA_R_16BF, m, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
    };
    const float ms = median_ms(run, 5, 20);
    CHECK_CUDA(cudaFree(a));
    CHECK_CUDA(cudaFree(bm));
    CHECK_CUDA(cudaFree(c));
    return ms;
}

float copy_ms(size_t bytes) {
    void *a, *b;
    CHECK_CUDA(cudaMalloc(&a, bytes));
    CHECK_CUDA(cudaMalloc(&b, bytes));
    CHECK_CUDA(cudaMemset(a, 1, bytes));
    const float ms = median_ms([&] { CHECK_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); }, 3, 20);
    CHECK_CUDA(cudaFree(a));
    CHECK_CUDA(cudaFree(b));
    return ms;
}

int main() {
    cudaDeviceProp prop{};
    CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s, %d SMs, L2 %.0f MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize / 1e6);

    // ---- correctness: fresh random inputs, float64 reference on every head of small shapes, sampled
    // heads of the benchmark shape ----
    struct Case {
        Shape s;
        bool with_states;
        std::vector<std::pair<int, int>> heads;
    };
    const Shape big{8, 2048, 16, 128, 128};
    const std::vector<Case> cases = {
        {{2, 300, 3, 128, 128}, true, {{0, 0}, {0, 1}, {0, 2}, {1, 0}, {1, 1}, {1, 2}}},
        {{2, 300, 3, 128, 128}, false, {{0, 0}, {1, 2}}},
        {{3, 77, 2, 64, 64}, true, {{0, 0}, {1, 1}, {2, 0}, {2, 1}}},
        {{1, 1, 2, 128, 64}, true, {{0, 0}, {0, 1}}},
        {{2, 64, 2, 64, 128}, false, {{0, 0}, {1, 1}}},
        {{2, 130, 2, 128, 64}, true, {{0, 0}, {1, 1}}},
        {big, true, {{0, 0}, {7, 15}}},
    };
    int failures = 0;
    uint64_t seed = 2000;
    for (const Case& c : cases)
        for (int variant : {1, 2})
        for (bool gated : {false, true}) {
            if (variant == 1 && &c == &cases.back()) continue;  // keep the check short
            const CheckResult r = check(c.s, gated, c.with_states, c.heads, seed++, variant);
            // bf16 operands, fp32 accumulation; the gate gradient is a long sum of differences.
            const bool ok = r.non_finite == 0 && r.err[0] < 2e-2 && r.err[1] < 2e-2 && r.err[2] < 2e-2 &&
                            r.err[3] < 2e-2 && r.err[4] < 5e-2;
            failures += !ok;
            std::printf("check v%d B=%d T=%d H=%d Dk=%d Dv=%d %s states=%d: rel err dq %.2e dk %.2e dv %.2e ds0 %.2e "
                        "dg %.2e, non-finite %zu %s\n",
                        variant, c.s.B, c.s.T, c.s.H, c.s.DK, c.s.DV, gated ? "scalar-gate" : "no-decay", int(c.with_states),
                        r.err[0], r.err[1], r.err[2], c.with_states ? r.err[3] : 0.0, r.err[4], r.non_finite,
                        ok ? "ok" : "FAIL");
            std::fflush(stdout);
        }

    // ---- timing ----
    cublasHandle_t handle;
    CHECK_CUBLAS(cublasCreate(&handle));
    const float gemm_big = gemm_ms(handle, 8192, 8192, 8192);
    const double gemm_rate = 2.0 * 8192.0 * 8192.0 * 8192.0 / (gemm_big * 1e-3);
    const float copy = copy_ms(size_t(1) << 30);
    const double copy_bw = 2.0 * double(size_t(1) << 30) / (copy * 1e-3);
    std::printf("bf16 GEMM 8192^3: %.3f ms = %.0f TFLOP/s;  D2D copy 1 GiB: %.3f ms = %.2f TB/s\n", gemm_big,
                gemm_rate / 1e12, copy, copy_bw / 1e12);

    std::mt19937_64 rng(99);
    const HostInputs in = make_inputs(big, false, rng);
    // Two input sets (67 MB per tensor) alternated so repeats never time the cache.
    DeviceBuffers sets[2] = {to_device(big, in), to_device(big, in)};
    const float scale = 1.0f / std::sqrt(128.f);
    struct Row {
        int variant;
        bool accumulate, gated;
        float fwd, bwd, both;
    };
    std::vector<Row> rows;
    for (int variant : {1, 2})
        for (bool accumulate : {false, true})
            for (bool gated : {false, true}) {
                int which = 0;
                auto fwd = [&] {
                    CHECK_CUDA(forward(big, sets[which], gated, scale));
                    which ^= 1;
                };
                auto bwd_only = [&] {
                    run_backward(args_of(big, sets[which], gated, false, scale, variant, accumulate));
                    which ^= 1;
                };
                auto both = [&] {
                    CHECK_CUDA(forward(big, sets[which], gated, scale));
                    run_backward(args_of(big, sets[which], gated, false, scale, variant, accumulate));
                    which ^= 1;
                };
                Row r{variant, accumulate, gated, median_ms(fwd, 5, 30), median_ms(bwd_only, 5, 30),
                      median_ms(both, 5, 30)};
                rows.push_back(r);
            }
    // Where the backward's time goes: each scan alone, and the gated backward without dlog_gate.
    std::vector<std::pair<std::string, float>> parts;
    const char* pass_names[3] = {"dq scan (fwd)", "dk scan (rev)", "dv scan (rev)"};
    for (bool gated : {false, true}) {
        for (int pass = 0; pass < 3; ++pass) {
            int which = 0;
            auto run_pass = [&] {
                const DeviceBuffers& d = sets[which];
                bwd::ScanParams p{};
                p.variant = 2;
                p.log_gate = gated ? d.gate : nullptr;
                p.initial_scale = 1.f;
                p.seq_len = big.T;
                p.heads = big.H;
                p.value_dim = big.DK;
                p.scale = scale;
                const bf16* operands[3][4] = {{d.dout, d.v, d.k, d.q}, {d.v, d.dout, d.q, d.k}, {d.k, d.q, d.dout, nullptr}};
                bf16* outs[3] = {d.dq, d.dk, d.dv};
                p.rows = operands[pass][0];
                p.cols = operands[pass][1];
                p.values = operands[pass][2];
                p.out = outs[pass];
                p.dot_with = gated ? operands[pass][3] : nullptr;
                p.dot_out = d.scratch;
                CHECK_CUDA(bwd::scan(p, 128, gated, pass != 0, big.B, 0));
                which ^= 1;
            };
            parts.push_back({std::string(gated ? "scalar gate, " : "none, ") + pass_names[pass] +
                                 (gated && pass < 2 ? " + dot" : ""),
                             median_ms(run_pass, 5, 30)});
        }
    }
    {
        int which = 0;
        auto run_without_gate_gradient = [&] {
            bwd::BackwardArgs a = args_of(big, sets[which], true, false, scale, 2);
            a.dlog_gate = nullptr;
            run_backward(a);
            which ^= 1;
        };
        parts.push_back({"scalar gate, whole backward without dlog_gate", median_ms(run_without_gate_gradient, 5, 30)});
    }
    for (auto& d : sets) d.release();
    // Forward work as the forward harness counts it; the backward is three scans of the same work.
    const double tokens = double(big.B) * big.T * big.H;
    const double fwd_flops = tokens * (2.0 * 64 * big.DK + 2.0 * 64 * big.DV + 4.0 * big.DK * big.DV);
    const double bwd_flops = 3 * fwd_flops;
    const double fwd_bytes = tokens * (2.0 * big.DK + 2.0 * big.DV) * 2;             // q, k, v, o
    const double bwd_bytes = tokens * (3.0 * big.DK + 4.0 * big.DV) * 2;             // q,k,v,do in; dq,dk,dv out
    std::printf("\nB=%d T=%d H=%d Dk=%d Dv=%d, chunk 64: forward %.1f GFLOP, %.0f MB; backward %.1f GFLOP, %.0f MB\n",
                big.B, big.T, big.H, big.DK, big.DV, fwd_flops / 1e9, fwd_bytes / 1e6, bwd_flops / 1e9, bwd_bytes / 1e6);
    std::printf("floors (fwd+bwd): GEMM-rate %.4f ms, copy-bandwidth %.4f ms\n",
                (fwd_flops + bwd_flops) / gemm_rate * 1e3, (fwd_bytes + bwd_bytes) / copy_bw * 1e3);
    std::printf("fla (anchors.md): chunk_linear_attn fwd 0.361 ms, fwd+bwd 1.451 ms; target fwd+bwd <= 0.97 ms\n\n");
    std::printf("| variant | grads | decay | fwd ms | bwd ms | fwd+bwd ms | vs fla 1.451 | bwd of copy floor | bwd of GEMM floor |\n"
                "|---|---|---|---|---|---|---|---|---|\n");
    for (const Row& r : rows)
        std::printf("| v%d | %s | %s | %.4f | %.4f | %.4f | %.2fx | %.0f%% | %.0f%% |\n", r.variant,
                    r.accumulate ? "+=" : "=", r.gated ? "scalar gate" : "none",
                    r.fwd, r.bwd, r.both, 1.451 / r.both, 100.0 * bwd_bytes / copy_bw * 1e3 / r.bwd,
                    100.0 * bwd_flops / gemm_rate * 1e3 / r.bwd);
    for (const auto& [name, ms] : parts) std::printf("part: %-60s %.4f ms\n", name.c_str(), ms);
    CHECK_CUBLAS(cublasDestroy(handle));
    std::printf("\n%s: %d check failures\n", failures ? "FAILED" : "all checks passed", failures);
    return failures ? 1 : 0;
}
