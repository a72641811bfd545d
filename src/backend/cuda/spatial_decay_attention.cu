// LASAD's CUDA kernels (spatial_decay_attention.hpp).
#include "backend/cuda/spatial_decay_attention.hpp"

#include "backend/cuda/check.cuh"

namespace linarch::cuda {
namespace {

constexpr int kThreads = 256;

// D_ij for j ≤ i (else 0), the CPU's expression.
__device__ __forceinline__ float decay_of(int64_t i, int64_t j, const SpatialPair& p, double log_row, double log_col) {
    if (j > i) return 0.f;
    const int64_t W = p.grid_width;
    const int64_t columns = i % W > j % W ? i % W - j % W : j % W - i % W;
    return float(exp(log_row * double(i / W - j / W) + log_col * double(columns)));
}

__global__ void mask_kernel(float* scores, SpatialPair p) {
    const double log_row = p.log_decay_row[p.head], log_col = p.log_decay_col[p.head];
    const float scale = float(p.scale);
    const int64_t total = p.seq_len * p.seq_len;
    for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < total; n += int64_t(gridDim.x) * blockDim.x)
        scores[n] *= scale * decay_of(n / p.seq_len, n % p.seq_len, p, log_row, log_col);  // as the backward's
}

__global__ void mask_backward_kernel(float* raw, float* dprobs, double* partials, SpatialPair p) {
    __shared__ double sums[2][kThreads / 32];
    const double log_row = p.log_decay_row[p.head], log_col = p.log_decay_col[p.head];
    const float scale = float(p.scale);
    const int64_t T = p.seq_len, W = p.grid_width, total = T * T;
    double rows = 0, columns = 0;
    for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < total; n += int64_t(gridDim.x) * blockDim.x) {
        const int64_t i = n / T, j = n % T;
        const float d = scale * decay_of(i, j, p, log_row, log_col);
        const float score = raw[n] * d, dscore = dprobs[n] * d;
        const double e = double(dprobs[n]) * double(score);
        rows += e * double(i / W - j / W);
        columns += e * double(i % W > j % W ? i % W - j % W : j % W - i % W);
        raw[n] = score;
        dprobs[n] = dscore;
    }
    for (int o = 16; o > 0; o >>= 1) {
        rows += __shfl_xor_sync(0xffffffffu, rows, o);
        columns += __shfl_xor_sync(0xffffffffu, columns, o);
    }
    if (threadIdx.x % 32 == 0) sums[0][threadIdx.x / 32] = rows, sums[1][threadIdx.x / 32] = columns;
    __syncthreads();
    if (threadIdx.x < 2) {
        double total_sum = 0;
        for (int w = 0; w < kThreads / 32; ++w) total_sum += sums[threadIdx.x][w];
        partials[2 * blockIdx.x + threadIdx.x] = total_sum;
    }
}

// One thread per (head, axis): Σ over b and the blocks, in order.
__global__ void add_rate_gradients_kernel(float* dlog_row, float* dlog_col, const double* partials, int64_t B,
                                          int64_t H) {
    const int64_t h = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
    if (h >= H) return;
    for (int axis = 0; axis < 2; ++axis) {
        float* out = axis == 0 ? dlog_row : dlog_col;
        if (!out) continue;
        double sum = 0;
        for (int64_t b = 0; b < B; ++b)
            for (int k = 0; k < kSpatialReductionBlocks; ++k)
                sum += partials[((b * H + h) * kSpatialReductionBlocks + k) * 2 + axis];
        out[h] += float(sum);
    }
}

}  // namespace

void spatial_decay_mask(float* scores, const SpatialPair& pair) {
    const int64_t total = pair.seq_len * pair.seq_len;
    const unsigned blocks = unsigned(std::min<int64_t>((total + kThreads - 1) / kThreads, 4096));
    mask_kernel<<<blocks, kThreads, 0, cudaStreamPerThread>>>(scores, pair);
    check_launch("spatial_decay mask_kernel");
}

void spatial_decay_mask_backward(float* raw, float* dprobs, double* partials, const SpatialPair& pair) {
    mask_backward_kernel<<<kSpatialReductionBlocks, kThreads, 0, cudaStreamPerThread>>>(raw, dprobs, partials, pair);
    check_launch("spatial_decay mask_backward_kernel");
}

void spatial_decay_add_rate_gradients(float* dlog_decay_row, float* dlog_decay_col, const double* partials,
                                      int64_t batch, int64_t heads) {
    add_rate_gradients_kernel<<<unsigned((heads + 63) / 64), 64, 0, cudaStreamPerThread>>>(
        dlog_decay_row, dlog_decay_col, partials, batch, heads);
    check_launch("spatial_decay add_rate_gradients_kernel");
}

}  // namespace linarch::cuda
