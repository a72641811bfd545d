// The LM head fused with softmax cross-entropy on the GPU (declared in dense.hpp). Per block of vocabulary
// columns [v0, v0 + width): cuBLASLt writes the fp32 logits hidden · weight[v0 : v0 + width]ᵀ into a buffer
// reused across blocks, then one kernel folds them into each row's running (max, Σ exp) — the online
// logsumexp — and picks out the target's logit. The backward recomputes each block, turns it into
// loss_scale · (softmax − onehot) in place and adds it through two GEMMs: dhidden += dlogits · W_block and
// dW_block += dlogitsᵀ · hidden. The full [N, V] logits never exist.
#include <algorithm>
#include <cmath>

#include "backend/cuda/check.cuh"
#include "backend/cuda/dense.hpp"
#include "backend/cuda/device.hpp"
#include "backend/cuda/gemm.hpp"

namespace linarch::cuda {
namespace {

constexpr int kThreads = 256;
// The logits buffer holds at most this many floats (256 MB), and a block at least 128 columns.
constexpr int64_t kBufferFloats = int64_t(64) << 20;

int64_t block_width(int64_t N, int64_t V) { return std::min(V, std::max<int64_t>(128, kBufferFloats / N)); }

// (max, Σ exp(x − max)) of the block's threads, in every thread.
__device__ void block_max_sum(float& max, float& sum) {
    __shared__ float maxes[kThreads / 32], sums[kThreads / 32];
    for (int offset = 16; offset > 0; offset /= 2) {
        const float other_max = __shfl_xor_sync(0xffffffffu, max, offset);
        const float other_sum = __shfl_xor_sync(0xffffffffu, sum, offset);
        const float m = fmaxf(max, other_max);
        sum = (m == -INFINITY) ? 0.f : sum * expf(max - m) + other_sum * expf(other_max - m);
        max = m;
    }
    const int warp = int(threadIdx.x) / 32;
    if (threadIdx.x % 32 == 0) {
        maxes[warp] = max;
        sums[warp] = sum;
    }
    __syncthreads();
    max = -INFINITY;
    sum = 0.f;
    for (int w = 0; w < kThreads / 32; ++w) {
        const float m = fmaxf(max, maxes[w]);
        sum = (m == -INFINITY) ? 0.f : sum * expf(max - m) + sums[w] * expf(maxes[w] - m);
        max = m;
    }
}

// One block per row: folds logits[row, 0 : width) (columns v0 + j) into running_max/running_sum and
// stores the target's logit when it falls in this block.
__global__ void fold_block_kernel(const float* logits, int64_t width, int64_t v0, const int32_t* targets,
                                  float* running_max, float* running_sum, float* target_logit) {
    const int64_t row = blockIdx.x;
    const float* l = logits + row * width;
    float max = -INFINITY, sum = 0.f;
    for (int64_t j = threadIdx.x; j < width; j += blockDim.x) {
        const float x = l[j];
        if (x > max) {
            sum = sum * expf(max - x) + 1.f;
            max = x;
        } else {
            sum += expf(x - max);
        }
    }
    block_max_sum(max, sum);
    if (threadIdx.x == 0) {
        const float m = fmaxf(running_max[row], max);
        running_sum[row] = running_sum[row] * expf(running_max[row] - m) + sum * expf(max - m);
        running_max[row] = m;
        const int64_t target = targets[row];
        if (target >= v0 && target < v0 + width) target_logit[row] = l[target - v0];
    }
}

__global__ void start_rows_kernel(float* running_max, float* running_sum, int64_t N) {
    const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (row >= N) return;
    running_max[row] = -INFINITY;
    running_sum[row] = 0.f;
}

__global__ void finish_rows_kernel(float* losses, float* logsumexp, const float* running_max,
                                   const float* running_sum, const float* target_logit, const int32_t* targets,
                                   int64_t N) {
    const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (row >= N) return;
    const float lse = running_max[row] + logf(running_sum[row]);
    logsumexp[row] = lse;
    losses[row] = targets[row] < 0 ? 0.f : lse - target_logit[row];
}

// logits[row, j] ← loss_scale · (exp(logit − lse) − [v0 + j = target]); 0 for ignored rows.
__global__ void softmax_gradient_kernel(float* logits, int64_t width, int64_t v0, const int32_t* targets,
                                        const float* logsumexp, float loss_scale) {
    const int64_t row = blockIdx.x;  // rows on x: up to 2³¹ − 1 blocks, where y allows 65535
    const int64_t j = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
    if (j >= width) return;
    float& x = logits[row * width + j];
    const int64_t target = targets[row];
    x = target < 0 ? 0.f : loss_scale * (expf(x - logsumexp[row]) - (v0 + j == target ? 1.f : 0.f));
}

unsigned blocks_for(int64_t n) { return unsigned(std::max<int64_t>((n + kThreads - 1) / kThreads, 1)); }

// The head's operands: hidden [N,D] and weight [V,D] as given (fp32), or, for mixed precision, bf16
// copies made once per call; the GEMMs' results stay fp32 either way.
class HeadOperands {
public:
    HeadOperands(const float* hidden, const float* weight, int64_t N, int64_t D, int64_t V, bool bf16)
        : D_(D), bf16_(bf16), copies_(bf16 ? size_t((N + V) * D) * 2 : 0) {
        if (!bf16) {
            hidden_ = hidden, weight_ = weight;
            return;
        }
        uint16_t* h = copies_.as<uint16_t>();
        to_bf16(h, hidden, N * D);
        to_bf16(h + N * D, weight, V * D);
        hidden_ = h, weight_ = h + N * D;
    }
    const void* hidden() const { return hidden_; }
    // Rows [v0, ...) of the weight.
    const void* weight_rows(int64_t v0) const {
        return static_cast<const char*>(weight_) + size_t(v0 * D_) * (bf16_ ? 2 : 4);
    }
    GemmType type() const { return bf16_ ? GemmType::bf16_to_fp32 : GemmType::fp32; }
    bool bf16() const { return bf16_; }

private:
    int64_t D_;
    bool bf16_;
    DeviceBuffer copies_;
    const void* hidden_ = nullptr;
    const void* weight_ = nullptr;
};

// The logits of columns [v0, v0 + width) into buffer [N, width].
void block_logits(float* buffer, const HeadOperands& head, int64_t v0, int64_t width, int64_t N, int64_t D) {
    // (nvcc compiles this file as C++17: GemmArgs in declaration order, no designated initialisers.)
    gemm({head.hidden(), head.weight_rows(v0), buffer, N, width, D, /*trans_a=*/false, /*trans_b=*/true, 1.f, 0.f,
          head.type()});
}

}  // namespace

void lm_head_cross_entropy_forward(float* losses, float* logsumexp, const float* hidden, const float* weight,
                                   const int32_t* targets, int64_t N, int64_t D, int64_t V, bool bf16) {
    if (N == 0) return;
    const HeadOperands head(hidden, weight, N, D, V, bf16);
    const int64_t width = block_width(N, V);
    DeviceBuffer buffer(size_t(N * width) * sizeof(float)), rows(size_t(3 * N) * sizeof(float));
    float* running_max = rows.as<float>();
    float* running_sum = running_max + N;
    float* target_logit = running_sum + N;
    start_rows_kernel<<<blocks_for(N), kThreads, 0, cudaStreamPerThread>>>(running_max, running_sum, N);
    check_launch("start_rows_kernel");
    for (int64_t v0 = 0; v0 < V; v0 += width) {
        const int64_t w = std::min(width, V - v0);
        block_logits(buffer.as<float>(), head, v0, w, N, D);
        fold_block_kernel<<<unsigned(N), kThreads, 0, cudaStreamPerThread>>>(buffer.as<float>(), w, v0, targets,
                                                                             running_max, running_sum, target_logit);
        check_launch("fold_block_kernel");
    }
    finish_rows_kernel<<<blocks_for(N), kThreads, 0, cudaStreamPerThread>>>(losses, logsumexp, running_max,
                                                                           running_sum, target_logit, targets, N);
    check_launch("finish_rows_kernel");
}

void lm_head_cross_entropy_backward(float* dhidden, float* dweight, const float* hidden, const float* weight,
                                    const int32_t* targets, const float* logsumexp, double loss_scale, int64_t N,
                                    int64_t D, int64_t V, bool bf16) {
    if (N == 0 || (!dhidden && !dweight)) return;
    const HeadOperands head(hidden, weight, N, D, V, bf16);
    const int64_t width = block_width(N, V);
    DeviceBuffer buffer(size_t(N * width) * sizeof(float)), dlogits16(bf16 ? size_t(N * width) * 2 : 0);
    for (int64_t v0 = 0; v0 < V; v0 += width) {
        const int64_t w = std::min(width, V - v0);
        float* dlogits = buffer.as<float>();
        block_logits(dlogits, head, v0, w, N, D);
        const dim3 grid(unsigned(N), blocks_for(w));
        softmax_gradient_kernel<<<grid, kThreads, 0, cudaStreamPerThread>>>(dlogits, w, v0, targets, logsumexp,
                                                                            float(loss_scale));
        check_launch("softmax_gradient_kernel");
        // dhidden[N,D] += dlogits[N,w] · W_block[w,D];   dW_block[w,D] += dlogits[N,w]ᵀ · hidden[N,D]
        const void* g = dlogits;
        if (head.bf16()) {
            to_bf16(dlogits16.as<uint16_t>(), dlogits, N * w);
            g = dlogits16.as<void>();
        }
        if (dhidden) gemm({g, head.weight_rows(v0), dhidden, N, D, w, false, false, 1.f, 1.f, head.type()});
        if (dweight)
            gemm({g, head.hidden(), dweight + v0 * D, w, D, N, /*trans_a=*/true, false, 1.f, 1.f, head.type()});
    }
}

}  // namespace linarch::cuda
