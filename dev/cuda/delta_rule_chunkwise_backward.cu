// Variant harness for the delta rule's chunkwise backward (src/backend/cuda/delta_rule_chunkwise_backward.cu,
// included whole so the library's own kernels are timed; the recomputed forward links from liblinarch):
// each of its steps alone with CUDA events, B=8 T=2048 H=16 Dk=Dv=128 and B=1 T=32768. Correctness is
// test_ops' CudaDeltaRule.ChunkwiseBackwardMatchesF64. Notes: dev/cuda/NOTES_delta_rule.md.
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Isrc dev/cuda/delta_rule_chunkwise_backward.cu \
//        build-cuda-sample/liblinarch.a -lfmt -o delta_rule_backward && ./delta_rule_backward
#include "backend/cuda/delta_rule_chunkwise_backward.cu"

#include <algorithm>
#include <cmath>
#include <cstdio>
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

template <typename Fn> float median_ms(Fn&& fn, int warmup = 3, int reps = 15) {
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

void* device_random(size_t count, bool bf16_values, float lo, float hi, uint32_t seed) {
    std::mt19937 gen(seed);
    std::uniform_real_distribution<float> dist(lo, hi);
    void* d = nullptr;
    if (bf16_values) {
        std::vector<bf16> host(count);
        for (auto& x : host) x = __float2bfloat16(dist(gen));
        CHECK_CUDA(cudaMalloc(&d, count * 2));
        CHECK_CUDA(cudaMemcpy(d, host.data(), count * 2, cudaMemcpyHostToDevice));
    } else {
        std::vector<float> host(count);
        for (auto& x : host) x = dist(gen);
        CHECK_CUDA(cudaMalloc(&d, count * 4));
        CHECK_CUDA(cudaMemcpy(d, host.data(), count * 4, cudaMemcpyHostToDevice));
    }
    return d;
}

void run_shape(int B, int T, int H) {
    constexpr int D = 128;
    const size_t tokens = size_t(B) * T * H, n = tokens * D;
    const float r = 1.f / std::sqrt(float(D)) * 1.7f;
    void *q = device_random(n, true, -r, r, 1), *k = device_random(n, true, -r, r, 2), *v = device_random(n, true, -1, 1, 3);
    void *dout = device_random(n, true, -1, 1, 4), *beta = device_random(tokens, false, 0, 1, 5);
    void *gate = device_random(tokens, false, -0.2f, -0.001f, 6);
    void *dq = device_random(n, true, 0, 0, 7), *dk = device_random(n, true, 0, 0, 8), *dv = device_random(n, true, 0, 0, 9);
    void *dbeta = device_random(tokens, false, 0, 0, 10), *dgate = device_random(tokens, false, 0, 0, 11);
    const size_t scratch_bytes = delta_rule_chunkwise_backward_scratch_bytes(B, T, H, D, D);
    void* scratch = nullptr;
    CHECK_CUDA(cudaMalloc(&scratch, scratch_bytes));
    const DeltaRuleBackward args{q, k, v, dout, static_cast<float*>(beta), static_cast<float*>(gate), nullptr, nullptr,
                                 dq, dk, dv, static_cast<float*>(dbeta), static_cast<float*>(dgate), nullptr, scratch,
                                 B, T, H, D, D, 0.0884};
    const float whole = median_ms([&] { delta_rule_chunkwise_backward(args); });
    // The steps alone, on the scratch the whole call left (same carving as the library's).
    const int chunks = (T + kChunk - 1) / kChunk;
    const size_t states = size_t(B) * chunks * H * D * D * 2;
    auto round = [](size_t bytes) { return (bytes + 255) / 256 * 256; };
    unsigned char* next = static_cast<unsigned char*>(scratch);
    auto take = [&](size_t bytes) { void* p = next; next += round(bytes); return p; };
    void *w = take(n * 2), *dw = take(n * 2), *u = take(n * 2), *du = take(n * 2), *cs = take(states), *ds = take(states);
    void* tm = take(size_t(B) * chunks * H * kChunk * kChunk * 2);
    void *dk_part = take(n * 4), *dg_part = take(tokens * 4);
    DeltaRuleForward forward{q, k, v, static_cast<float*>(beta), static_cast<float*>(gate), nullptr, nullptr, nullptr,
                             w, u, B, T, H, D, D, 0.0884};
    forward.chunk_states = cs;
    forward.u_out = u;
    forward.t_out = tm;
    const BackwardParams p{static_cast<const bf16*>(q), static_cast<const bf16*>(k), static_cast<const bf16*>(v),
                           static_cast<const bf16*>(dout), static_cast<float*>(beta), static_cast<float*>(gate), nullptr,
                           static_cast<const bf16*>(w), static_cast<const bf16*>(u), static_cast<const bf16*>(cs),
                           static_cast<const bf16*>(tm),
                           static_cast<bf16*>(ds), static_cast<bf16*>(du), static_cast<bf16*>(dw),
                           static_cast<float*>(dk_part), static_cast<float*>(dg_part), static_cast<bf16*>(dq),
                           static_cast<bf16*>(dk), static_cast<bf16*>(dv), static_cast<float*>(dbeta),
                           static_cast<float*>(dgate), nullptr, T, H, D, chunks, 0.0884f};
    const dim3 per_chunk{unsigned(chunks), unsigned(H), unsigned(B)};
    const float t_forward = median_ms([&] { delta_rule_chunkwise_forward(forward); });
    const float t_state = median_ms([&] {
        launch_kernel(delta_rule_state_backward_kernel<D>, "state", dim3(D / kValueTile, H, B),
                      StateBackwardLayout<D>::bytes, p);
    });
    const float t_grads = median_ms([&] {
        launch_kernel(&delta_rule_chunk_grads_kernel<128, 128>, "grads", per_chunk, ChunkGradsLayout<D, D>::bytes, p);
    });
    const float t_wy = median_ms([&] {
        launch_kernel(&delta_rule_wy_backward_kernel<128, 128>, "wy", per_chunk, WyBackwardLayout<D, D>::bytes, p);
    });
    std::printf("B=%d T=%d H=%d D=%d: backward %.3f ms = forward again (with chunk states) %.3f + state walk %.3f + "
                "chunk grads %.3f + WY backward %.3f (shared memory: %d, %d, %d bytes)\n",
                B, T, H, D, whole, t_forward, t_state, t_grads, t_wy, StateBackwardLayout<D>::bytes,
                ChunkGradsLayout<D, D>::bytes, WyBackwardLayout<D, D>::bytes);
    for (void* ptr : {q, k, v, dout, beta, gate, dq, dk, dv, dbeta, dgate, scratch}) CHECK_CUDA(cudaFree(ptr));
}

}  // namespace
}  // namespace linarch::cuda

int main() {
    linarch::cuda::run_shape(8, 2048, 16);
    linarch::cuda::run_shape(1, 32768, 16);
    return 0;
}
