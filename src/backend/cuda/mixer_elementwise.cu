#include "backend/cuda/mixer_elementwise.hpp"

#include <algorithm>

#include "backend/cuda/check.cuh"
#include "backend/cuda/device.hpp"
#include "core/error.hpp"

namespace linarch::cuda {
namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) { return unsigned(std::max<int64_t>((n + kThreads - 1) / kThreads, 1)); }

__device__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }
__device__ float softplus(float x) { return x > 20.f ? x : log1pf(expf(x)); }
__device__ float log_sigmoid(float x) { return x < 0.f ? x - log1pf(expf(x)) : -log1pf(expf(-x)); }
__device__ float lower_bounded_log_decay(float x, float lower_bound) {
    return lower_bound == 0.f ? log_sigmoid(x) : log1pf(-(1.f - lower_bound) * sigmoid(-x));
}

// Launches `body(i)` for i in [0, n), a thread each.
template <typename Body> __global__ void for_each_kernel(int64_t n, Body body) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) body(i);
}

template <typename Body> void for_each(const char* name, int64_t n, Body body) {
    if (n == 0) return;
    for_each_kernel<<<blocks_for(n), kThreads, 0, cudaStreamPerThread>>>(n, body);
    check_launch(name);
}

// out[o] += Σ_{r < rows} term(o, r): a block per output, its threads striding over the rows, then a
// fixed-order tree over the block. Deterministic, and parallel however few the outputs are (a bias per
// head over every token).
template <typename Term> __global__ void sum_rows_kernel(float* out, int64_t rows, Term term) {
    __shared__ float partial[kThreads];
    const int64_t o = blockIdx.x;
    float sum = 0.f;
    for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) sum += term(o, r);
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int width = kThreads / 2; width > 0; width /= 2) {
        if (int(threadIdx.x) < width) partial[threadIdx.x] += partial[threadIdx.x + width];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[o] += partial[0];
}

template <typename Term> void sum_rows(const char* name, float* out, int64_t outputs, int64_t rows, Term term) {
    if (outputs == 0) return;
    sum_rows_kernel<<<unsigned(outputs), kThreads, 0, cudaStreamPerThread>>>(out, rows, term);
    check_launch(name);
}

}  // namespace

void feature_map_forward(float* out, const float* x, int64_t rows, int64_t dim, int map) {
    if (map == 3) {
        for_each("feature_map_forward (softmax)", rows, [=] __device__(int64_t r) {
            const float* xr = x + r * dim;
            float max = xr[0], sum = 0.f;
            for (int64_t d = 1; d < dim; ++d) max = fmaxf(max, xr[d]);
            for (int64_t d = 0; d < dim; ++d) sum += out[r * dim + d] = expf(xr[d] - max);
            for (int64_t d = 0; d < dim; ++d) out[r * dim + d] /= sum;
        });
        return;
    }
    for_each("feature_map_forward", rows * dim, [=] __device__(int64_t i) {
        const float v = x[i];
        out[i] = map == 0 ? v : map == 1 ? (v > 0.f ? v + 1.f : expf(v)) : fmaxf(v, 0.f);
    });
}

void feature_map_backward(float* dx, const float* dout, const float* x, int64_t rows, int64_t dim, int map) {
    if (map == 3) {
        // y ⊙ (dout − Σ dout·y), y recomputed from x.
        for_each("feature_map_backward (softmax)", rows, [=] __device__(int64_t r) {
            const float* xr = x + r * dim;
            const float* g = dout + r * dim;
            float max = xr[0], sum = 0.f, dot = 0.f;
            for (int64_t d = 1; d < dim; ++d) max = fmaxf(max, xr[d]);
            for (int64_t d = 0; d < dim; ++d) sum += expf(xr[d] - max);
            for (int64_t d = 0; d < dim; ++d) dot += g[d] * expf(xr[d] - max) / sum;
            for (int64_t d = 0; d < dim; ++d) dx[r * dim + d] += expf(xr[d] - max) / sum * (g[d] - dot);
        });
        return;
    }
    for_each("feature_map_backward", rows * dim, [=] __device__(int64_t i) {
        const float v = x[i];
        const float slope = map == 0 ? 1.f : map == 1 ? (v > 0.f ? 1.f : expf(v)) : (v > 0.f ? 1.f : 0.f);
        dx[i] += dout[i] * slope;
    });
}

namespace {
// A warp per row: its lanes read the row together (a thread per row read 32 rows' worth of cache lines a
// step: the backward's four calls in a 2-layer Gated DeltaNet step took 7.2 ms, 0.33 ms now; bench/NOTES.md).
__device__ float warp_sum(float x) {
#pragma unroll
    for (int off = 16; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}

__global__ void l2norm_forward_kernel(float* out, float* inv_norm, const float* x, int64_t rows, int64_t dim,
                                      float eps) {
    const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (r >= rows) return;
    const float* row = x + r * dim;
    float sum = 0.f;
    for (int64_t d = lane; d < dim; d += 32) sum += row[d] * row[d];
    const float inv = 1.f / sqrtf(warp_sum(sum) + eps);
    if (lane == 0) inv_norm[r] = inv;
    for (int64_t d = lane; d < dim; d += 32) out[r * dim + d] = row[d] * inv;
}

__global__ void l2norm_backward_kernel(float* dx, const float* dout, const float* out, const float* inv_norm,
                                       int64_t rows, int64_t dim) {
    const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (r >= rows) return;
    const float* y = out + r * dim;
    const float* g = dout + r * dim;
    float dot = 0.f;
    for (int64_t d = lane; d < dim; d += 32) dot += g[d] * y[d];
    dot = warp_sum(dot);
    const float inv = inv_norm[r];
    for (int64_t d = lane; d < dim; d += 32) dx[r * dim + d] += (g[d] - y[d] * dot) * inv;
}
}  // namespace

void l2norm_forward(float* out, float* inv_norm, const float* x, int64_t rows, int64_t dim, double eps) {
    if (rows == 0) return;
    l2norm_forward_kernel<<<blocks_for(rows * 32), kThreads, 0, cudaStreamPerThread>>>(out, inv_norm, x, rows, dim,
                                                                                         float(eps));
    check_launch("l2norm_forward");
}

void l2norm_backward(float* dx, const float* dout, const float* out, const float* inv_norm, int64_t rows,
                     int64_t dim) {
    if (rows == 0) return;
    l2norm_backward_kernel<<<blocks_for(rows * 32), kThreads, 0, cudaStreamPerThread>>>(dx, dout, out, inv_norm, rows,
                                                                                          dim);
    check_launch("l2norm_backward");
}

void add_bias_forward(float* out, const float* x, const float* bias, int64_t rows, int64_t cols) {
    for_each("add_bias_forward", rows * cols, [=] __device__(int64_t i) { out[i] = x[i] + bias[i % cols]; });
}

void add_bias_backward(float* dbias, const float* dout, int64_t rows, int64_t cols) {
    sum_rows("add_bias_backward", dbias, cols, rows,
             [=] __device__(int64_t c, int64_t r) { return dout[r * cols + c]; });
}

void mamba2_decay_forward(float* log_gate, const float* x, const float* a_log, const float* dt_bias, int64_t rows,
                          int64_t heads) {
    for_each("mamba2_decay_forward", rows * heads, [=] __device__(int64_t i) {
        const int64_t h = i % heads;
        log_gate[i] = -expf(a_log[h]) * softplus(x[i] + dt_bias[h]);
    });
}

// g = −e^a · softplus(u), u = x + b:  ∂g/∂u = −e^a · sigmoid(u),  ∂g/∂a = g.
void mamba2_decay_backward(float* dx, float* da_log, float* ddt_bias, const float* dlog_gate, const float* x,
                           const float* a_log, const float* dt_bias, int64_t rows, int64_t heads) {
    auto du = [=] __device__(int64_t h, int64_t r) {
        const int64_t i = r * heads + h;
        return -expf(a_log[h]) * sigmoid(x[i] + dt_bias[h]) * dlog_gate[i];
    };
    sum_rows("mamba2_decay_backward (dt_bias)", ddt_bias, heads, rows, du);
    sum_rows("mamba2_decay_backward (a_log)", da_log, heads, rows, [=] __device__(int64_t h, int64_t r) {
        const int64_t i = r * heads + h;
        return -expf(a_log[h]) * softplus(x[i] + dt_bias[h]) * dlog_gate[i];
    });
    for_each("mamba2_decay_backward (x)", rows * heads,
             [=] __device__(int64_t i) { dx[i] += du(i % heads, i / heads); });
}

void logsigmoid_decay_forward(float* log_gate, const float* x, int64_t n, double temperature) {
    const float t = float(temperature);
    for_each("logsigmoid_decay_forward", n, [=] __device__(int64_t i) { log_gate[i] = log_sigmoid(x[i]) / t; });
}

void logsigmoid_decay_backward(float* dx, const float* dlog_gate, const float* x, int64_t n, double temperature) {
    const float t = float(temperature);
    for_each("logsigmoid_decay_backward", n,
             [=] __device__(int64_t i) { dx[i] += dlog_gate[i] * sigmoid(-x[i]) / t; });
}

void lower_bounded_decay_forward(float* log_gate, const float* x, int64_t n, double lower_bound) {
    const float lb = float(lower_bound);
    for_each("lower_bounded_decay_forward", n,
             [=] __device__(int64_t i) { log_gate[i] = lower_bounded_log_decay(x[i], lb); });
}

void lower_bounded_decay_backward(float* dx, const float* dlog_gate, const float* x, int64_t n, double lower_bound) {
    const float lb = float(lower_bound);
    for_each("lower_bounded_decay_backward", n, [=] __device__(int64_t i) {
        const float alpha = expf(lower_bounded_log_decay(x[i], lb));
        dx[i] += dlog_gate[i] * (1.f - lb) * sigmoid(x[i]) * sigmoid(-x[i]) / alpha;
    });
}

void key_from_decay_forward(float* key, const float* log_gate, int64_t n) {
    for_each("key_from_decay_forward", n, [=] __device__(int64_t i) { key[i] = -expm1f(log_gate[i]); });
}

void key_from_decay_backward(float* dlog_gate, const float* dkey, const float* log_gate, int64_t n) {
    for_each("key_from_decay_backward", n,
             [=] __device__(int64_t i) { dlog_gate[i] -= expf(log_gate[i]) * dkey[i]; });
}

void output_gate_forward(float* out, const float* y, const float* z, int64_t n, int act) {
    for_each("output_gate_forward", n, [=] __device__(int64_t i) {
        const float s = sigmoid(z[i]);
        out[i] = y[i] * (act == 0 ? s : z[i] * s);
    });
}

void output_gate_backward(float* dy, float* dz, const float* dout, const float* y, const float* z, int64_t n,
                          int act) {
    for_each("output_gate_backward", n, [=] __device__(int64_t i) {
        const float s = sigmoid(z[i]);
        const float a = act == 0 ? s : z[i] * s;
        const float da = act == 0 ? s * (1.f - s) : s * (1.f + z[i] * (1.f - s));
        dy[i] += dout[i] * a;
        dz[i] += dout[i] * y[i] * da;
    });
}

void sigmoid_forward(float* out, const float* x, int64_t n) {
    for_each("sigmoid_forward", n, [=] __device__(int64_t i) { out[i] = sigmoid(x[i]); });
}

void sigmoid_backward(float* dx, const float* dout, const float* out, int64_t n) {
    for_each("sigmoid_backward", n, [=] __device__(int64_t i) { dx[i] += dout[i] * out[i] * (1.f - out[i]); });
}

namespace {
// Σ_j w[c,j] · x[b, t−K+1+j, c], zeros before the sequence start.
__device__ float conv_preactivation(const float* x, const float* weight, int64_t b, int64_t t, int64_t c,
                                    int64_t T, int64_t C, int64_t K) {
    float pre = 0.f;
    for (int64_t j = max(int64_t(0), K - 1 - t); j < K; ++j) pre += weight[c * K + j] * x[(b * T + t - K + 1 + j) * C + c];
    return pre;
}

// ∂out/∂pre: silu'(z) = σ(z)(1 + z(1 − σ(z))), or 1.
__device__ float conv_dpre(const float* dout, const float* x, const float* weight, bool silu, int64_t b, int64_t t,
                           int64_t c, int64_t T, int64_t C, int64_t K) {
    const float g = dout[(b * T + t) * C + c];
    if (!silu) return g;
    const float z = conv_preactivation(x, weight, b, t, c, T, C, K), s = sigmoid(z);
    return g * s * (1.f + z * (1.f - s));
}
}  // namespace

void short_conv_forward(float* out, const float* x, const float* weight, bool silu, int64_t batch, int64_t seq_len,
                        int64_t channels, int64_t kernel_size) {
    const int64_t T = seq_len, C = channels, K = kernel_size;
    for_each("short_conv_forward", batch * T * C, [=] __device__(int64_t i) {
        const int64_t c = i % C, t = (i / C) % T, b = i / (C * T);
        const float pre = conv_preactivation(x, weight, b, t, c, T, C, K);
        out[i] = silu ? pre * sigmoid(pre) : pre;
    });
}

namespace {
constexpr int kConvRowsPerBlock = 256;  // tokens a block of the weight gradient's first pass sums
constexpr int kMaxConvTaps = 8;         // ops::short_conv_* refuse more

// First pass of dweight: block (token block, channel tile) sums dpre[row, c] · x[row − K + 1 + j, c] over its
// tokens for every tap j, a thread per channel (reads coalesced over c), into partial[block][c][j].
__global__ void short_conv_dweight_partial_kernel(float* partial, const float* dpre, const float* x, int64_t rows,
                                                  int64_t T, int64_t C, int64_t K) {
    const int64_t c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float acc[kMaxConvTaps] = {};
    const int64_t first = int64_t(blockIdx.x) * kConvRowsPerBlock, last = min(rows, first + kConvRowsPerBlock);
    for (int64_t row = first; row < last; ++row) {
        const int64_t t = row % T;
        const float d = dpre[row * C + c];
#pragma unroll
        for (int j = 0; j < kMaxConvTaps; ++j)
            if (j < K && t >= K - 1 - j) acc[j] += d * x[(row - K + 1 + j) * C + c];
    }
    float* out = partial + (int64_t(blockIdx.x) * C + c) * K;
#pragma unroll
    for (int j = 0; j < kMaxConvTaps; ++j)
        if (j < K) out[j] = acc[j];
}
}  // namespace

void short_conv_backward(float* dx, float* dweight, const float* dout, const float* x, const float* weight, bool silu,
                         int64_t batch, int64_t seq_len, int64_t channels, int64_t kernel_size) {
    const int64_t T = seq_len, C = channels, K = kernel_size, rows = batch * T;
    LINARCH_CHECK(K <= kMaxConvTaps, "short_conv_backward (CUDA): at most {} taps, got {}", kMaxConvTaps, K);
    if (rows == 0 || C == 0) return;
    // dpre = ∂out/∂pre once (recomputing it per tap and per weight cost K² loads an element: 12 ms a step).
    const float* dpre = dout;
    DeviceBuffer dpre_buffer(silu ? size_t(rows * C) * sizeof(float) : 0);
    if (silu) {
        float* buffer = dpre_buffer.as<float>();
        for_each("short_conv_backward (dpre)", rows * C, [=] __device__(int64_t i) {
            const int64_t c = i % C, t = (i / C) % T, b = i / (C * T);
            buffer[i] = conv_dpre(dout, x, weight, true, b, t, c, T, C, K);
        });
        dpre = buffer;
    }
    // dx[b,s,c] += Σ_j w[c,j] · dpre[b, s+K−1−j, c].
    for_each("short_conv_backward (dx)", rows * C, [=] __device__(int64_t i) {
        const int64_t c = i % C, s = (i / C) % T;
        float sum = 0.f;
        for (int64_t j = max(int64_t(0), s + K - T); j < K; ++j) sum += weight[c * K + j] * dpre[i + (K - 1 - j) * C];
        dx[i] += sum;
    });
    // dweight[c,j] += Σ_{b,t} dpre[b,t,c] · x[b, t−K+1+j, c]: token blocks, then their partials in a fixed order.
    const int64_t blocks = (rows + kConvRowsPerBlock - 1) / kConvRowsPerBlock;
    LINARCH_CHECK(C <= int64_t(65535) * kThreads, "short_conv_backward (CUDA): {} channels exceed the grid", C);
    DeviceBuffer partial(size_t(blocks * C * K) * sizeof(float));
    float* partials = partial.as<float>();
    short_conv_dweight_partial_kernel<<<dim3(unsigned(blocks), blocks_for(C)), kThreads, 0, cudaStreamPerThread>>>(
        partials, dpre, x, rows, T, C, K);
    check_launch("short_conv_backward (dweight partials)");
    for_each("short_conv_backward (dweight)", C * K, [=] __device__(int64_t i) {
        float sum = 0.f;
        for (int64_t blk = 0; blk < blocks; ++blk) sum += partials[blk * C * K + i];
        dweight[i] += sum;
    });
}

}  // namespace linarch::cuda
