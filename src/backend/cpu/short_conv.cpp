// CPU short causal depthwise convolution (mixers.md §12). The weight is read transposed, [K,C], so
// every inner loop runs over contiguous channels of one [B,T,C] row and vectorises.
#include "backend/cpu/short_conv.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace linarch::cpu {
namespace {

// weight [C,K] → taps [K,C]
template <typename T> std::vector<T> taps_by_channel(const T* weight, const ShortConvDims& d) {
    std::vector<T> taps(size_t(d.kernel_size * d.channels));
    for (int64_t c = 0; c < d.channels; ++c)
        for (int64_t j = 0; j < d.kernel_size; ++j) taps[size_t(j * d.channels + c)] = weight[c * d.kernel_size + j];
    return taps;
}

// pre[C] = Σ_j taps[j,c] · x_seq[t−K+1+j, c] for one row t of one sequence x_seq [T,C]; taps that
// reach before the sequence start see zeros and are skipped.
template <typename T> void preactivation_row(T* pre, const T* x_seq, const T* taps, int64_t t, const ShortConvDims& d) {
    const int64_t C = d.channels, K = d.kernel_size;
    std::fill_n(pre, C, T(0));
    for (int64_t j = std::max<int64_t>(0, K - 1 - t); j < K; ++j) {
        const T* xs = x_seq + (t - K + 1 + j) * C;
        const T* w = taps + j * C;
        for (int64_t c = 0; c < C; ++c) pre[c] += w[c] * xs[c];
    }
}

// A parallel region costs microseconds to open (far more when cores are shared): tiny problems,
// such as the ones finite-difference checks evaluate thousands of times, run on the calling thread.
inline bool worth_threads(const ShortConvDims& d) {
    return d.batch * d.seq_len * d.channels * d.kernel_size >= (int64_t(1) << 16);
}

template <typename T> T sigmoid(T z) { return T(1) / (T(1) + std::exp(-z)); }

}  // namespace

// out, x [B,T,C]; weight [C,K]
template <typename T>
void short_conv_forward(T* out, const T* x, const T* weight, bool silu, const ShortConvDims& d) {
    const int64_t T_ = d.seq_len, C = d.channels;
    const std::vector<T> taps = taps_by_channel(weight, d);
#pragma omp parallel for collapse(2) schedule(static) if (worth_threads(d))
    for (int64_t b = 0; b < d.batch; ++b)
        for (int64_t t = 0; t < T_; ++t) {
            T* row = out + (b * T_ + t) * C;
            preactivation_row(row, x + b * T_ * C, taps.data(), t, d);
            if (silu)
                for (int64_t c = 0; c < C; ++c) row[c] *= sigmoid(row[c]);
        }
}

// dx [B,T,C] +=, dweight [C,K] +=; dout, x [B,T,C]
template <typename T>
void short_conv_backward(T* dx, T* dweight, const T* dout, const T* x, const T* weight, bool silu,
                         const ShortConvDims& d) {
    const int64_t T_ = d.seq_len, C = d.channels, K = d.kernel_size;
    const std::vector<T> taps = taps_by_channel(weight, d);

    // dpre [B,T,C]: dout through the activation, silu'(z) = σ(z)(1 + z(1 − σ(z))); dout itself without.
    std::vector<T> dpre_buffer;
    const T* dpre = dout;
    if (silu) {
        dpre_buffer.resize(size_t(d.batch * T_ * C));
#pragma omp parallel for collapse(2) schedule(static) if (worth_threads(d))
        for (int64_t b = 0; b < d.batch; ++b)
            for (int64_t t = 0; t < T_; ++t) {
                T* row = dpre_buffer.data() + (b * T_ + t) * C;
                const T* drow = dout + (b * T_ + t) * C;
                preactivation_row(row, x + b * T_ * C, taps.data(), t, d);
                for (int64_t c = 0; c < C; ++c) {
                    const T z = row[c], sig = sigmoid(z);
                    row[c] = drow[c] * sig * (T(1) + z * (T(1) - sig));
                }
            }
        dpre = dpre_buffer.data();
    }

    // dx[b,s,c] += Σ_j w[c,j] · dpre[b, s+K−1−j, c]: gathered per input row, so no two threads write
    // the same row.
#pragma omp parallel for collapse(2) schedule(static) if (worth_threads(d))
    for (int64_t b = 0; b < d.batch; ++b)
        for (int64_t s = 0; s < T_; ++s) {
            T* dxs = dx + (b * T_ + s) * C;
            for (int64_t j = std::max<int64_t>(0, s + K - T_); j < K; ++j) {
                const T* dp = dpre + (b * T_ + s + K - 1 - j) * C;
                const T* w = taps.data() + j * C;
                for (int64_t c = 0; c < C; ++c) dxs[c] += w[c] * dp[c];
            }
        }

    // dweight[c,j] += Σ_{b,t} dpre[b,t,c] · x[b,t−K+1+j,c]: split over blocks of channels, so each
    // thread owns its rows of dweight (no reduction, same result on any thread count).
    constexpr int64_t block = 16;
#pragma omp parallel for schedule(static) if (worth_threads(d))
    for (int64_t c0 = 0; c0 < C; c0 += block) {
        const int64_t width = std::min(block, C - c0);
        std::vector<T> acc(size_t(K * block), T(0));
        for (int64_t b = 0; b < d.batch; ++b)
            for (int64_t t = 0; t < T_; ++t) {
                const T* dp = dpre + (b * T_ + t) * C + c0;
                for (int64_t j = std::max<int64_t>(0, K - 1 - t); j < K; ++j) {
                    const T* xs = x + (b * T_ + t - K + 1 + j) * C + c0;
                    for (int64_t cc = 0; cc < width; ++cc) acc[size_t(j * block + cc)] += dp[cc] * xs[cc];
                }
            }
        for (int64_t cc = 0; cc < width; ++cc)
            for (int64_t j = 0; j < K; ++j) dweight[(c0 + cc) * K + j] += acc[size_t(j * block + cc)];
    }
}

template void short_conv_forward<float>(float*, const float*, const float*, bool, const ShortConvDims&);
template void short_conv_forward<double>(double*, const double*, const double*, bool, const ShortConvDims&);
template void short_conv_backward<float>(float*, float*, const float*, const float*, const float*, bool,
                                         const ShortConvDims&);
template void short_conv_backward<double>(double*, double*, const double*, const double*, const double*, bool,
                                          const ShortConvDims&);

}  // namespace linarch::cpu
