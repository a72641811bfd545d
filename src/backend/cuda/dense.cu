#include "backend/cuda/dense.hpp"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "backend/cuda/check.cuh"
#include "backend/cuda/device.hpp"

namespace linarch::cuda {
namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) { return unsigned(std::max<int64_t>((n + kThreads - 1) / kThreads, 1)); }

__global__ void embedding_forward_kernel(float* out, const int32_t* ids, const float* table, int64_t D) {
    const int64_t row = blockIdx.x;
    const float* src = table + int64_t(ids[row]) * D;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) out[row * D + d] = src[d];
}

__global__ void embedding_backward_kernel(float* dtable, const int32_t* ids, const float* dout, int64_t D) {
    const int64_t row = blockIdx.x;
    float* dst = dtable + int64_t(ids[row]) * D;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) atomicAdd(dst + d, dout[row * D + d]);
}

// RMSNorm: a warp per row, 8 rows a block; lanes stride the row (four columns at a time when D is a multiple
// of 4 and the rows are 16-byte aligned), shuffles reduce it, no block barriers. The second pass over a row
// reads it from cache.
__device__ float warp_sum(float value) {
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
    return value;
}

// The row this warp owns, or −1.
__device__ int64_t warp_row(int64_t N) {
    const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    return row < N ? row : -1;
}

// Σ_d f(d, width) over the lane's columns of a row of D: f gets the first column and how many (1 or 4).
template <bool VEC, typename F> __device__ void for_lane_columns(int64_t D, F f) {
    const int lane = int(threadIdx.x) % 32;
    if constexpr (VEC)
        for (int64_t d = 4 * lane; d < D; d += 128) f(d);
    else
        for (int64_t d = lane; d < D; d += 32) f(d);
}

template <bool VEC> __device__ float4 load4(const float* p, int64_t d) {
    if constexpr (VEC) return *reinterpret_cast<const float4*>(p + d);
    return make_float4(p[d], 0.f, 0.f, 0.f);
}
template <bool VEC> __device__ void store4(float* p, int64_t d, float4 v) {
    if constexpr (VEC) *reinterpret_cast<float4*>(p + d) = v;
    else p[d] = v.x;
}
__device__ float4 operator*(float4 a, float4 b) { return make_float4(a.x * b.x, a.y * b.y, a.z * b.z, a.w * b.w); }
__device__ float4 operator*(float4 a, float s) { return make_float4(a.x * s, a.y * s, a.z * s, a.w * s); }
__device__ float4 operator-(float4 a, float4 b) { return make_float4(a.x - b.x, a.y - b.y, a.z - b.z, a.w - b.w); }
__device__ float4 operator+(float4 a, float4 b) { return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w); }
__device__ float total(float4 a) { return (a.x + a.y) + (a.z + a.w); }

template <bool VEC>
__global__ void rmsnorm_forward_kernel(float* out, float* rstd, const float* x, const float* weight, int64_t N,
                                       int64_t D, float eps) {
    const int64_t row = warp_row(N);
    if (row < 0) return;
    const float* xr = x + row * D;
    float squares = 0.f;
    for_lane_columns<VEC>(D, [&](int64_t d) {
        const float4 v = load4<VEC>(xr, d);
        squares += total(v * v);
    });
    const float r = rsqrtf(warp_sum(squares) / float(D) + eps);
    if (threadIdx.x % 32 == 0) rstd[row] = r;
    for_lane_columns<VEC>(D, [&](int64_t d) {
        store4<VEC>(out + row * D, d, load4<VEC>(xr, d) * r * load4<VEC>(weight, d));
    });
}

// dx += rstd · (w·dout − x̂ · mean(w·dout·x̂)),  x̂ = x · rstd.
template <bool VEC>
__global__ void rmsnorm_backward_dx_kernel(float* dx, const float* dout, const float* x, const float* weight,
                                           const float* rstd, int64_t N, int64_t D) {
    const int64_t row = warp_row(N);
    if (row < 0) return;
    const float* xr = x + row * D;
    const float* gr = dout + row * D;
    const float r = rstd[row];
    float dot = 0.f;
    for_lane_columns<VEC>(D, [&](int64_t d) {
        dot += total(load4<VEC>(weight, d) * load4<VEC>(gr, d) * load4<VEC>(xr, d)) * r;
    });
    const float mean = warp_sum(dot) / float(D);
    float* dr = dx + row * D;
    for_lane_columns<VEC>(D, [&](int64_t d) {
        const float4 g = load4<VEC>(weight, d) * load4<VEC>(gr, d);
        store4<VEC>(dr, d, load4<VEC>(dr, d) + (g - load4<VEC>(xr, d) * (r * mean)) * r);
    });
}

// Whether rows of D floats at these addresses can be read four at a time.
bool rows_vectorizable(int64_t D, std::initializer_list<const void*> pointers) {
    if (D % 4 != 0) return false;
    for (const void* p : pointers)
        if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
    return true;
}

unsigned warp_row_blocks(int64_t N) { return unsigned((N * 32 + kThreads - 1) / kThreads); }

// dweight[d] += Σ_rows dout·x·rstd: a thread per column sums a slab of rows, then one atomic per slab.
constexpr int64_t kRowsPerSlab = 64;
__global__ void rmsnorm_backward_dweight_kernel(float* dweight, const float* dout, const float* x, const float* rstd,
                                                int64_t N, int64_t D) {
    const int64_t d = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (d >= D) return;
    const int64_t begin = int64_t(blockIdx.y) * kRowsPerSlab, end = min(begin + kRowsPerSlab, N);
    float sum = 0.f;
    for (int64_t row = begin; row < end; ++row) sum += dout[row * D + d] * x[row * D + d] * rstd[row];
    atomicAdd(dweight + d, sum);
}

__global__ void group_norm_forward_kernel(float* out, float* mean, float* rstd, const float* x, const float* weight,
                                          const float* bias, int64_t rows, int64_t dim, int64_t groups, float eps) {
    const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    const float* xr = x + r * dim;
    const int64_t channel0 = (r % groups) * dim;
    float sum = 0.f, sum_sq = 0.f;
    for (int64_t d = 0; d < dim; ++d) sum += xr[d];
    const float mu = sum / float(dim);
    for (int64_t d = 0; d < dim; ++d) sum_sq += (xr[d] - mu) * (xr[d] - mu);
    const float rs = rsqrtf(sum_sq / float(dim) + eps);
    mean[r] = mu;
    rstd[r] = rs;
    for (int64_t d = 0; d < dim; ++d) out[r * dim + d] = (xr[d] - mu) * rs * weight[channel0 + d] + bias[channel0 + d];
}

// With g = dout·w:  dx = rstd · (g − mean(g) − x̂ · mean(g·x̂)). A thread per row.
__global__ void group_norm_backward_dx_kernel(float* dx, const float* dout, const float* x, const float* weight,
                                              const float* mean, const float* rstd, int64_t rows, int64_t dim,
                                              int64_t groups) {
    const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    const float* xr = x + r * dim;
    const float* gr = dout + r * dim;
    const float* w = weight + (r % groups) * dim;
    float g_sum = 0.f, gx_sum = 0.f;
    for (int64_t d = 0; d < dim; ++d) {
        const float xhat = (xr[d] - mean[r]) * rstd[r];
        g_sum += gr[d] * w[d];
        gx_sum += gr[d] * w[d] * xhat;
    }
    const float g_mean = g_sum / float(dim), gx_mean = gx_sum / float(dim);
    for (int64_t d = 0; d < dim; ++d) {
        const float xhat = (xr[d] - mean[r]) * rstd[r];
        dx[r * dim + d] += rstd[r] * (gr[d] * w[d] - g_mean - xhat * gx_mean);
    }
}

__global__ void group_norm_backward_params_kernel(float* dweight, float* dbias, const float* dout, const float* x,
                                                  const float* mean, const float* rstd, int64_t rows, int64_t dim,
                                                  int64_t groups) {
    const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (c >= groups * dim) return;
    const int64_t group = c / dim, d = c % dim;
    float dw = 0.f, db = 0.f;
    for (int64_t r = group; r < rows; r += groups) {
        const float g = dout[r * dim + d];
        dw += g * (x[r * dim + d] - mean[r]) * rstd[r];
        db += g;
    }
    dweight[c] += dw;
    dbias[c] += db;
}

__device__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

__global__ void swiglu_forward_kernel(float* out, const float* gate, const float* up, int64_t n) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) out[i] = gate[i] * sigmoid(gate[i]) * up[i];
}

// silu'(g) = σ(g) · (1 + g · (1 − σ(g)))
__global__ void swiglu_backward_kernel(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                                       int64_t n) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = gate[i], s = sigmoid(g);
    dgate[i] += dout[i] * up[i] * s * (1.f + g * (1.f - s));
    dup[i] += dout[i] * g * s;
}

__global__ void add_kernel(float* out, const float* a, const float* b, int64_t n) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}

__global__ void add_into_kernel(float* dst, const float* src, int64_t n) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) dst[i] += src[i];
}

// Grid-stride squares in double per thread, a block sum, one atomic per block.
__global__ void sum_squares_kernel(double* total, const float* x, int64_t n) {
    double sum = 0;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
        sum += double(x[i]) * double(x[i]);
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    __shared__ double warp_sums[kThreads / 32];
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        double block = 0;
        for (int w = 0; w < kThreads / 32; ++w) block += warp_sums[w];
        atomicAdd(total, block);
    }
}

__global__ void scale_kernel(float* x, int64_t n, float factor) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= factor;
}

struct AdamW {
    float b1, b2, one_minus_b1, one_minus_b2, inv_bias1, inv_bias2, lr, eps, wd;
};

__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v, int64_t n, AdamW h) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = grad[i];
    const float mi = h.b1 * m[i] + h.one_minus_b1 * g;
    const float vi = h.b2 * v[i] + h.one_minus_b2 * g * g;
    m[i] = mi;
    v[i] = vi;
    const float m_hat = mi * h.inv_bias1, v_hat = vi * h.inv_bias2;
    param[i] -= h.lr * (m_hat / (sqrtf(v_hat) + h.eps) + h.wd * param[i]);
}

}  // namespace

void embedding_forward(float* out, const int32_t* ids, const float* table, int64_t N, int64_t D) {
    if (N == 0) return;
    embedding_forward_kernel<<<unsigned(N), kThreads, 0, cudaStreamPerThread>>>(out, ids, table, D);
    check_launch("embedding_forward_kernel");
}

void embedding_backward(float* dtable, const int32_t* ids, const float* dout, int64_t N, int64_t D) {
    if (N == 0) return;
    embedding_backward_kernel<<<unsigned(N), kThreads, 0, cudaStreamPerThread>>>(dtable, ids, dout, D);
    check_launch("embedding_backward_kernel");
}

void rmsnorm_forward(float* out, float* rstd, const float* x, const float* weight, int64_t N, int64_t D, double eps) {
    if (N == 0) return;
    if (rows_vectorizable(D, {out, x, weight}))
        rmsnorm_forward_kernel<true><<<warp_row_blocks(N), kThreads, 0, cudaStreamPerThread>>>(out, rstd, x, weight, N,
                                                                                             D, float(eps));
    else
        rmsnorm_forward_kernel<false><<<warp_row_blocks(N), kThreads, 0, cudaStreamPerThread>>>(out, rstd, x, weight,
                                                                                              N, D, float(eps));
    check_launch("rmsnorm_forward_kernel");
}

void rmsnorm_backward(float* dx, float* dweight, const float* dout, const float* x, const float* weight,
                      const float* rstd, int64_t N, int64_t D) {
    if (N == 0) return;
    if (dx) {
        if (rows_vectorizable(D, {dx, dout, x, weight}))
            rmsnorm_backward_dx_kernel<true><<<warp_row_blocks(N), kThreads, 0, cudaStreamPerThread>>>(
                dx, dout, x, weight, rstd, N, D);
        else
            rmsnorm_backward_dx_kernel<false><<<warp_row_blocks(N), kThreads, 0, cudaStreamPerThread>>>(
                dx, dout, x, weight, rstd, N, D);
        check_launch("rmsnorm_backward_dx_kernel");
    }
    if (dweight) {
        const dim3 grid(blocks_for(D), unsigned((N + kRowsPerSlab - 1) / kRowsPerSlab));
        rmsnorm_backward_dweight_kernel<<<grid, kThreads, 0, cudaStreamPerThread>>>(dweight, dout, x, rstd, N, D);
        check_launch("rmsnorm_backward_dweight_kernel");
    }
}

void group_norm_forward(float* out, float* mean, float* rstd, const float* x, const float* weight, const float* bias,
                        int64_t rows, int64_t dim, int64_t groups, double eps) {
    group_norm_forward_kernel<<<blocks_for(rows), kThreads, 0, cudaStreamPerThread>>>(out, mean, rstd, x, weight, bias,
                                                                                     rows, dim, groups, float(eps));
    check_launch("group_norm_forward_kernel");
}

void group_norm_backward(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                         const float* weight, const float* mean, const float* rstd, int64_t rows, int64_t dim,
                         int64_t groups) {
    group_norm_backward_dx_kernel<<<blocks_for(rows), kThreads, 0, cudaStreamPerThread>>>(dx, dout, x, weight, mean,
                                                                                         rstd, rows, dim, groups);
    check_launch("group_norm_backward_dx_kernel");
    group_norm_backward_params_kernel<<<blocks_for(groups * dim), kThreads, 0, cudaStreamPerThread>>>(
        dweight, dbias, dout, x, mean, rstd, rows, dim, groups);
    check_launch("group_norm_backward_params_kernel");
}

void swiglu_forward(float* out, const float* gate, const float* up, int64_t n) {
    swiglu_forward_kernel<<<blocks_for(n), kThreads, 0, cudaStreamPerThread>>>(out, gate, up, n);
    check_launch("swiglu_forward_kernel");
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n) {
    swiglu_backward_kernel<<<blocks_for(n), kThreads, 0, cudaStreamPerThread>>>(dgate, dup, dout, gate, up, n);
    check_launch("swiglu_backward_kernel");
}

void add(float* out, const float* a, const float* b, int64_t n) {
    add_kernel<<<blocks_for(n), kThreads, 0, cudaStreamPerThread>>>(out, a, b, n);
    check_launch("add_kernel");
}

void add_into(float* dst, const float* src, int64_t n) {
    add_into_kernel<<<blocks_for(n), kThreads, 0, cudaStreamPerThread>>>(dst, src, n);
    check_launch("add_into_kernel");
}

namespace {
__global__ void to_bf16_kernel(uint16_t* out, const float* x, int64_t n) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __bfloat16_as_ushort(__float2bfloat16_rn(x[i]));
}

__global__ void add_bf16_into_kernel(float* dst, const uint16_t* x, int64_t n) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) dst[i] += __bfloat162float(__ushort_as_bfloat16(x[i]));
}

// The same, four elements a thread through 16-byte fp32 and 8-byte bf16 accesses (mixed precision casts
// every GEMM operand: 17% of a Gated DeltaNet step's GPU time with the scalar kernel; 1.64× faster, ncu,
// bench/NOTES.md); n a multiple of 4.
__global__ void to_bf16_x4_kernel(uint2* out, const float4* x, int64_t quads) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= quads) return;
    const float4 v = x[i];
    const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
    out[i] = make_uint2(*reinterpret_cast<const uint32_t*>(&lo), *reinterpret_cast<const uint32_t*>(&hi));
}

__global__ void add_bf16_into_x4_kernel(float4* dst, const uint2* x, int64_t quads) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= quads) return;
    const uint2 packed = x[i];
    const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&packed.x));
    const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&packed.y));
    float4 d = dst[i];
    d.x += lo.x, d.y += lo.y, d.z += hi.x, d.w += hi.y;
    dst[i] = d;
}

bool vectorizable(const void* fp32, const void* bf16, int64_t n) {
    return n % 4 == 0 && reinterpret_cast<uintptr_t>(fp32) % 16 == 0 && reinterpret_cast<uintptr_t>(bf16) % 8 == 0;
}

// A thread per word of every destination row; Word is the widest unit that divides the rows.
template <typename Word>
__global__ void move_rows_kernel(Word* dst, const Word* src, const int64_t* rows, int64_t count, int64_t words,
                                 bool gather) {
    const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (e >= count * words) return;
    const int64_t r = e / words, w = e % words, other = rows[r];
    if (gather) dst[e] = other >= 0 ? src[other * words + w] : Word{};
    else if (other >= 0) dst[other * words + w] = src[e];
}

void move_rows(void* dst, const void* src, const int64_t* rows, int64_t count, int64_t row_bytes, bool gather) {
    if (count == 0 || row_bytes == 0) return;
    auto launch = [&](auto word) {
        using Word = decltype(word);
        const int64_t words = row_bytes / int64_t(sizeof(Word));
        move_rows_kernel<<<blocks_for(count * words), kThreads, 0, cudaStreamPerThread>>>(
            static_cast<Word*>(dst), static_cast<const Word*>(src), rows, count, words, gather);
    };
    // The widest word that divides the rows and both addresses.
    const auto fits = [&](int64_t word) {
        return row_bytes % word == 0 && reinterpret_cast<uintptr_t>(dst) % word == 0 &&
               reinterpret_cast<uintptr_t>(src) % word == 0;
    };
    if (fits(16)) launch(uint4{});
    else if (fits(4)) launch(uint32_t{});
    else if (fits(2)) launch(uint16_t{});
    else launch(uint8_t{});
    check_launch(gather ? "gather_rows" : "scatter_rows");
}

}  // namespace

void to_bf16(uint16_t* out, const float* x, int64_t n) {
    if (n == 0) return;
    if (vectorizable(x, out, n))
        to_bf16_x4_kernel<<<blocks_for(n / 4), kThreads, 0, cudaStreamPerThread>>>(
            reinterpret_cast<uint2*>(out), reinterpret_cast<const float4*>(x), n / 4);
    else to_bf16_kernel<<<blocks_for(n), kThreads, 0, cudaStreamPerThread>>>(out, x, n);
    check_launch("to_bf16_kernel");
}

void add_bf16_into(float* dst, const uint16_t* x, int64_t n) {
    if (n == 0) return;
    if (vectorizable(dst, x, n))
        add_bf16_into_x4_kernel<<<blocks_for(n / 4), kThreads, 0, cudaStreamPerThread>>>(
            reinterpret_cast<float4*>(dst), reinterpret_cast<const uint2*>(x), n / 4);
    else add_bf16_into_kernel<<<blocks_for(n), kThreads, 0, cudaStreamPerThread>>>(dst, x, n);
    check_launch("add_bf16_into_kernel");
}

double sum_squares(const std::vector<FloatArray>& arrays) {
    double* total = static_cast<double*>(allocate(sizeof(double)));
    check_cuda(cudaMemsetAsync(total, 0, sizeof(double), cudaStreamPerThread), "cudaMemsetAsync");
    for (const FloatArray& array : arrays) {
        if (array.n == 0) continue;
        const unsigned blocks = unsigned(std::min<int64_t>(blocks_for(array.n), 1024));
        sum_squares_kernel<<<blocks, kThreads, 0, cudaStreamPerThread>>>(total, array.data, array.n);
        check_launch("sum_squares_kernel");
    }
    double result = 0;
    copy_to_host(&result, total, sizeof(double));
    release(total, sizeof(double));
    return result;
}

void scale(float* x, int64_t n, double factor) {
    scale_kernel<<<blocks_for(n), kThreads, 0, cudaStreamPerThread>>>(x, n, float(factor));
    check_launch("scale_kernel");
}

void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, double lr, double beta1,
                  double beta2, double eps, double weight_decay, int64_t step) {
    // Bias corrections in double: 1 − β^step loses most of its digits in f32 when β is near 1.
    const AdamW h{float(beta1),
                  float(beta2),
                  float(1.0 - beta1),
                  float(1.0 - beta2),
                  float(1.0 / (1.0 - std::pow(beta1, double(step)))),
                  float(1.0 / (1.0 - std::pow(beta2, double(step)))),
                  float(lr),
                  float(eps),
                  float(weight_decay)};
    adamw_kernel<<<blocks_for(n), kThreads, 0, cudaStreamPerThread>>>(param, grad, m, v, n, h);
    check_launch("adamw_kernel");
}

void gather_rows(void* dst, const void* src, const int64_t* rows, int64_t count, int64_t row_bytes) {
    move_rows(dst, src, rows, count, row_bytes, true);
}

void scatter_rows(void* dst, const void* src, const int64_t* rows, int64_t count, int64_t row_bytes) {
    move_rows(dst, src, rows, count, row_bytes, false);
}

}  // namespace linarch::cuda
