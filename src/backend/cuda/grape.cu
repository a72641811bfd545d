// GRAPE-M's row kernels on CUDA (grape.hpp).
#include "backend/cuda/grape.hpp"

#include "backend/cuda/check.cuh"

namespace linarch::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ double position_of(const GrapeRows& d, int64_t t) {
    return d.positions ? double(d.positions[t]) : double(t);
}

// One thread per (row, plane): the angle n·ω_i in float64, cos and sin rounded to float as on the CPU.
__global__ void rotate_planes_kernel(float* coords, const double* frequencies, double sign, GrapeRows d) {
    const int64_t pairs = d.width / 2, total = d.batch * d.seq_len * d.heads * pairs;
    for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < total; n += int64_t(gridDim.x) * blockDim.x) {
        const int64_t i = n % pairs, t = (n / (pairs * d.heads)) % d.seq_len;
        double s, c;
        sincos(sign * position_of(d, t) * frequencies[i], &s, &c);
        const float cf = float(c), sf = float(s);
        float* v = coords + 2 * n;
        const float v0 = v[0], v1 = v[1];
        v[0] = v0 * cf - v1 * sf;
        v[1] = v0 * sf + v1 * cf;
    }
}

// One block per token: per plane, Σ over the token's rows (b, h) in double into scratch[t, i].
__global__ void frequency_sums_kernel(double* per_token, const float* rotated, const float* drotated, GrapeRows d) {
    const int64_t t = blockIdx.x, pairs = d.width / 2, row = d.heads * d.width;
    for (int64_t i = threadIdx.x; i < pairs; i += blockDim.x) {
        double sum = 0;
        for (int64_t b = 0; b < d.batch; ++b)
            for (int64_t h = 0; h < d.heads; ++h) {
                const int64_t at = (b * d.seq_len + t) * row + h * d.width + 2 * i;
                sum += double(drotated[at + 1]) * double(rotated[at]) - double(drotated[at]) * double(rotated[at + 1]);
            }
        per_token[t * pairs + i] = sum;
    }
}

// One thread per plane: Σ_t n_t · per_token[t, i], tokens in order.
__global__ void frequency_total_kernel(double* dfrequencies, const double* per_token, GrapeRows d) {
    const int64_t pairs = d.width / 2;
    const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
    if (i >= pairs) return;
    double sum = 0;
    for (int64_t t = 0; t < d.seq_len; ++t) sum += position_of(d, t) * per_token[t * pairs + i];
    dfrequencies[i] += sum;
}

// One thread per output entry: dst[row, a] = Σ_c src[row, c] · M[c, a].
__global__ void multiply_rows_kernel(float* dst, const float* src, const float* matrices, const int64_t* index_of_token,
                                     GrapeRows d) {
    const int64_t r = d.width, total = d.batch * d.seq_len * d.heads * r;
    for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < total; n += int64_t(gridDim.x) * blockDim.x) {
        const int64_t a = n % r, row = n / r, t = (row / d.heads) % d.seq_len;
        const float* M = matrices + index_of_token[t] * r * r;
        const float* x = src + row * r;
        float sum = 0.f;
        for (int64_t c = 0; c < r; ++c) sum += x[c] * M[c * r + a];
        dst[n] = sum;
    }
}

// One block per token, one thread per (a, c): Σ over the token's rows of dmoved[a] · coords[c] in double.
__global__ void power_gradient_kernel(double* dpowers, const float* dmoved, const float* coords, GrapeRows d) {
    const int64_t t = blockIdx.x, r = d.width;
    for (int64_t e = threadIdx.x; e < r * r; e += blockDim.x) {
        const int64_t a = e / r, c = e % r;
        double sum = 0;
        for (int64_t b = 0; b < d.batch; ++b)
            for (int64_t h = 0; h < d.heads; ++h) {
                const int64_t row = ((b * d.seq_len + t) * d.heads + h) * r;
                sum += double(dmoved[row + a]) * double(coords[row + c]);
            }
        dpowers[t * r * r + e] = sum;
    }
}

unsigned blocks_for(int64_t total) {
    return unsigned(std::min<int64_t>((total + kThreads - 1) / kThreads, 65535));
}

}  // namespace

void grape_rotate_planes(float* coords, const double* frequencies, double sign, const GrapeRows& rows) {
    const int64_t total = rows.batch * rows.seq_len * rows.heads * (rows.width / 2);
    rotate_planes_kernel<<<blocks_for(total), kThreads, 0, cudaStreamPerThread>>>(coords, frequencies, sign, rows);
    check_launch("grape rotate_planes_kernel");
}

void grape_frequency_gradient(double* dfrequencies, const float* rotated, const float* drotated, double* scratch,
                              const GrapeRows& rows) {
    frequency_sums_kernel<<<unsigned(rows.seq_len), kThreads, 0, cudaStreamPerThread>>>(scratch, rotated, drotated,
                                                                                      rows);
    check_launch("grape frequency_sums_kernel");
    const int64_t pairs = rows.width / 2;
    frequency_total_kernel<<<unsigned((pairs + kThreads - 1) / kThreads), kThreads, 0, cudaStreamPerThread>>>(
        dfrequencies, scratch, rows);
    check_launch("grape frequency_total_kernel");
}

void grape_multiply_rows(float* dst, const float* src, const float* matrices, const int64_t* index_of_token,
                         const GrapeRows& rows) {
    const int64_t total = rows.batch * rows.seq_len * rows.heads * rows.width;
    multiply_rows_kernel<<<blocks_for(total), kThreads, 0, cudaStreamPerThread>>>(dst, src, matrices, index_of_token,
                                                                                 rows);
    check_launch("grape multiply_rows_kernel");
}

void grape_power_gradient(double* dpowers, const float* dmoved, const float* coords, const GrapeRows& rows) {
    power_gradient_kernel<<<unsigned(rows.seq_len), kThreads, 0, cudaStreamPerThread>>>(dpowers, dmoved, coords, rows);
    check_launch("grape power_gradient_kernel");
}

}  // namespace linarch::cuda
