#include "backend/cuda/mixer_elementwise.hpp"

#include <algorithm>
#include <type_traits>

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

// ---- short causal convolution ---------------------------------------------------------------------------
// A thread owns one channel over kConvRowsPerThread consecutive rows (tokens); a block is 32 channels
// (coalesced) × 8 row stretches. Each thread loads its stretch's inputs, with the K − 1 rows around it, in
// one go (every load in flight at once: one per row at a time left the kernels latency-bound), and the
// taps are a template parameter, so every array index is a compile-time one and the arrays stay in
// registers. Rows of another sequence count as zeros: t is the row's position in its sequence.
namespace {
constexpr int kMaxConvTaps = 8;  // ops::short_conv_* refuse more
constexpr int kConvRowsPerThread = 16;
constexpr int kConvChannels = 32, kConvStretches = 8;

dim3 conv_grid(int64_t rows, int64_t C) {
    const int64_t rows_per_block = int64_t(kConvStretches) * kConvRowsPerThread;
    const int64_t block_rows = (rows + rows_per_block - 1) / rows_per_block;
    LINARCH_CHECK(block_rows <= 65535, "short_conv (CUDA): {} tokens exceed the grid ({} at most)", rows,
                  65535 * rows_per_block);
    return dim3(unsigned((C + kConvChannels - 1) / kConvChannels), unsigned(block_rows));
}

// The thread's channel and first row; false when it has none.
__device__ bool conv_thread(int64_t rows, int64_t C, int64_t& c, int64_t& first) {
    c = int64_t(blockIdx.x) * kConvChannels + threadIdx.x;
    first = (int64_t(blockIdx.y) * kConvStretches + threadIdx.y) * kConvRowsPerThread;
    return c < C && first < rows;
}

// values[i] = a[(first + offset + i) · C + c] for rows inside [0, rows), else 0.
template <int N>
__device__ void load_column(float (&values)[N], const float* __restrict__ a, int64_t first, int offset, int64_t rows,
                            int64_t C, int64_t c) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
        const int64_t row = first + offset + i;
        values[i] = row >= 0 && row < rows ? a[row * C + c] : 0.f;
    }
}

// out = act(pre), or with `dout` given, dpre = dout · act'(pre): both need the pre-activation
// pre[s] = Σ_j w[j] · x[s − K + 1 + j] (the CPU's order, tap by tap).
template <int K>
__global__ void __launch_bounds__(kConvChannels * kConvStretches)
    short_conv_rows_kernel(float* __restrict__ out, const float* __restrict__ dout, const float* __restrict__ x,
                           const float* __restrict__ weight, bool silu, int64_t rows, int64_t T, int64_t C) {
    constexpr int R = kConvRowsPerThread;
    int64_t c, first;
    if (!conv_thread(rows, C, c, first)) return;
    float w[K], xs[K - 1 + R], gs[R];
#pragma unroll
    for (int j = 0; j < K; ++j) w[j] = weight[c * K + j];
    load_column(xs, x, first, -(K - 1), rows, C, c);  // xs[i + j] = x[first + i − (K − 1 − j)]
    if (dout != nullptr) load_column(gs, dout, first, 0, rows, C, c);
    int64_t t = first % T;
#pragma unroll
    for (int i = 0; i < R; ++i) {
        const int64_t row = first + i;
        if (row >= rows) break;
        float pre = 0.f;
#pragma unroll
        for (int j = 0; j < K; ++j) pre += w[j] * (t >= K - 1 - j ? xs[i + j] : 0.f);
        if (dout == nullptr) {
            out[row * C + c] = silu ? pre * sigmoid(pre) : pre;
        } else {
            const float s = sigmoid(pre);  // silu'(z) = σ(z)(1 + z(1 − σ(z)))
            out[row * C + c] = gs[i] * s * (1.f + pre * (1.f - s));
        }
        if (++t == T) t = 0;
    }
}

// dx[s] += Σ_j w[j] · dpre[s + K − 1 − j] (inside the sequence; the CPU's order), and this block's share of
// dweight[c, j] = Σ_s dpre[s] · x[s − K + 1 + j]: each thread sums its rows, the block's 8 stretches are
// added in order, and partial[block row][c][j] holds the result.
template <int K>
__global__ void __launch_bounds__(kConvChannels * kConvStretches)
    short_conv_backward_kernel(float* __restrict__ dx, float* __restrict__ partial, const float* __restrict__ dpre,
                               const float* __restrict__ x, const float* __restrict__ weight, int64_t rows, int64_t T,
                               int64_t C) {
    constexpr int R = kConvRowsPerThread;
    __shared__ float shares[kConvStretches][kConvChannels][K];
    int64_t c, first;
    float acc[K] = {};
    if (conv_thread(rows, C, c, first)) {
        float w[K], xs[K - 1 + R], ds[R + K - 1], dxs[R];
#pragma unroll
        for (int j = 0; j < K; ++j) w[j] = weight[c * K + j];
        load_column(xs, x, first, -(K - 1), rows, C, c);  // xs[i + j] = x[first + i − (K − 1 − j)]
        load_column(ds, dpre, first, 0, rows, C, c);      // ds[i + a] = dpre[first + i + a]
        load_column(dxs, dx, first, 0, rows, C, c);
        int64_t t = first % T;
#pragma unroll
        for (int i = 0; i < R; ++i) {
            const int64_t row = first + i;
            if (row >= rows) break;
            float sum = 0.f;
#pragma unroll
            for (int j = 0; j < K; ++j) sum += w[j] * (t + K - 1 - j < T ? ds[i + K - 1 - j] : 0.f);
            dx[row * C + c] = dxs[i] + sum;
#pragma unroll
            for (int j = 0; j < K; ++j) acc[j] += ds[i] * (t >= K - 1 - j ? xs[i + j] : 0.f);
            if (++t == T) t = 0;
        }
    }
#pragma unroll
    for (int j = 0; j < K; ++j) shares[threadIdx.y][threadIdx.x][j] = acc[j];
    __syncthreads();
    c = int64_t(blockIdx.x) * kConvChannels + threadIdx.x;
    if (threadIdx.y != 0 || c >= C) return;
#pragma unroll
    for (int j = 0; j < K; ++j) {
        float total = 0.f;
        for (int y = 0; y < kConvStretches; ++y) total += shares[y][threadIdx.x][j];
        partial[(int64_t(blockIdx.y) * C + c) * K + j] = total;
    }
}

// Calls launch with the taps as a compile-time constant.
template <typename Launch> void with_taps(int64_t K, Launch launch) {
    switch (K) {
        case 1: return launch(std::integral_constant<int, 1>{});
        case 2: return launch(std::integral_constant<int, 2>{});
        case 3: return launch(std::integral_constant<int, 3>{});
        case 4: return launch(std::integral_constant<int, 4>{});
        case 5: return launch(std::integral_constant<int, 5>{});
        case 6: return launch(std::integral_constant<int, 6>{});
        case 7: return launch(std::integral_constant<int, 7>{});
        case 8: return launch(std::integral_constant<int, 8>{});
        default: fail("short_conv (CUDA): 1 to {} taps, got {}", kMaxConvTaps, K);
    }
}
}  // namespace

void short_conv_forward(float* out, const float* x, const float* weight, bool silu, int64_t batch, int64_t seq_len,
                        int64_t channels, int64_t kernel_size) {
    const int64_t rows = batch * seq_len, C = channels;
    if (rows == 0 || C == 0) return;
    with_taps(kernel_size, [&](auto taps) {
        short_conv_rows_kernel<decltype(taps)::value>
            <<<conv_grid(rows, C), dim3(kConvChannels, kConvStretches), 0, cudaStreamPerThread>>>(
                out, nullptr, x, weight, silu, rows, seq_len, C);
    });
    check_launch("short_conv_rows_kernel (forward)");
}

void short_conv_backward(float* dx, float* dweight, const float* dout, const float* x, const float* weight, bool silu,
                         int64_t batch, int64_t seq_len, int64_t channels, int64_t kernel_size) {
    const int64_t T = seq_len, C = channels, K = kernel_size, rows = batch * T;
    if (rows == 0 || C == 0) return;
    const dim3 grid = conv_grid(rows, C), block(kConvChannels, kConvStretches);
    // dpre = ∂out/∂pre once (recomputing it per tap would cost K² loads an element).
    const float* dpre = dout;
    DeviceBuffer dpre_buffer(silu ? size_t(rows * C) * sizeof(float) : 0);
    DeviceBuffer partial(size_t(grid.y) * size_t(C * K) * sizeof(float));
    float* partials = partial.as<float>();
    with_taps(K, [&](auto taps) {
        constexpr int kTaps = decltype(taps)::value;
        if (silu) {
            short_conv_rows_kernel<kTaps><<<grid, block, 0, cudaStreamPerThread>>>(dpre_buffer.as<float>(), dout, x,
                                                                                  weight, true, rows, T, C);
            check_launch("short_conv_rows_kernel (dpre)");
            dpre = dpre_buffer.as<float>();
        }
        short_conv_backward_kernel<kTaps><<<grid, block, 0, cudaStreamPerThread>>>(dx, partials, dpre, x, weight, rows,
                                                                                  T, C);
        check_launch("short_conv_backward_kernel");
    });
    // The block rows' partials in a fixed order: deterministic.
    const int64_t block_rows = grid.y;
    for_each("short_conv_backward (dweight)", C * K, [=] __device__(int64_t i) {
        float sum = 0.f;
        for (int64_t blk = 0; blk < block_rows; ++blk) sum += partials[blk * C * K + i];
        dweight[i] += sum;
    });
}

}  // namespace linarch::cuda
