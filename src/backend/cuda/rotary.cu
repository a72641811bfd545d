#include "backend/cuda/rotary.hpp"

#include <algorithm>

#include "backend/cuda/check.cuh"

namespace linarch::cuda {
namespace {

constexpr int kThreads = 256;

// A thread per coordinate pair: dst = R(sign · φ) src, or dst += it.
__global__ void rotate_kernel(float* dst, const float* src, const int64_t* positions, const float* frequencies,
                              int64_t pairs_total, int64_t seq_len, int64_t heads, int64_t pairs, double sign,
                              bool accumulate) {
    const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (n >= pairs_total) return;
    const int64_t i = n % pairs, t = (n / (pairs * heads)) % seq_len;
    const double position = positions ? double(positions[t]) : double(t);
    const double angle = sign * position * double(frequencies[i]);
    const float c = float(cos(angle)), s = float(sin(angle));
    const float x0 = src[2 * n], x1 = src[2 * n + 1];
    const float y0 = x0 * c - x1 * s, y1 = x0 * s + x1 * c;
    if (accumulate) {
        dst[2 * n] += y0;
        dst[2 * n + 1] += y1;
    } else {
        dst[2 * n] = y0;
        dst[2 * n + 1] = y1;
    }
}

void rotate(const char* name, float* dst, const float* src, const int64_t* positions, const float* frequencies,
            int64_t batch, int64_t seq_len, int64_t heads, int64_t head_dim, double sign, bool accumulate) {
    const int64_t pairs = head_dim / 2, total = batch * seq_len * heads * pairs;
    if (total == 0) return;
    const unsigned blocks = unsigned((total + kThreads - 1) / kThreads);
    rotate_kernel<<<blocks, kThreads, 0, cudaStreamPerThread>>>(dst, src, positions, frequencies, total, seq_len,
                                                                heads, pairs, sign, accumulate);
    check_launch(name);
}

}  // namespace

void rope_forward(float* out, const float* x, const int64_t* positions, const float* frequencies, int64_t batch,
                  int64_t seq_len, int64_t heads, int64_t head_dim) {
    rotate("rope_forward", out, x, positions, frequencies, batch, seq_len, heads, head_dim, 1.0, false);
}

void rope_backward(float* dx, const float* dout, const int64_t* positions, const float* frequencies, int64_t batch,
                   int64_t seq_len, int64_t heads, int64_t head_dim) {
    rotate("rope_backward", dx, dout, positions, frequencies, batch, seq_len, heads, head_dim, -1.0, true);
}

}  // namespace linarch::cuda
