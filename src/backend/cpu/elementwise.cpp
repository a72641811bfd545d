#include "backend/cpu/elementwise.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace linarch::cpu {

namespace {
constexpr int64_t kParallelMinWork = int64_t(1) << 15;

template <typename T> T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }
// softplus(x) = log(1 + e^x), stable for large |x|.
template <typename T> T softplus(T x) { return x > T(20) ? x : std::log1p(std::exp(x)); }
// logsigmoid(x) = −softplus(−x), stable on both sides.
// log σ(x) = −log(1 + e^{−x}), written so that neither side overflows or loses relative precision.
template <typename T> T log_sigmoid(T x) { return x < T(0) ? x - std::log1p(std::exp(x)) : -std::log1p(std::exp(-x)); }
}  // namespace

// softmax of one row; the maximum is subtracted, so no exp overflows.
template <typename T> void softmax_row(T* out, const T* x, int64_t dim) {
    T max = x[0];
    for (int64_t d = 1; d < dim; ++d) max = std::max(max, x[d]);
    T sum = 0;
    for (int64_t d = 0; d < dim; ++d) sum += out[d] = std::exp(x[d] - max);
    for (int64_t d = 0; d < dim; ++d) out[d] /= sum;
}

template <typename T> void feature_map_forward(T* out, const T* x, int64_t rows, int64_t dim, int map) {
    if (map == 3) {
#pragma omp parallel for schedule(static) if (rows * dim >= kParallelMinWork)
        for (int64_t r = 0; r < rows; ++r) softmax_row(out + r * dim, x + r * dim, dim);
        return;
    }
    const int64_t n = rows * dim;
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
    for (int64_t i = 0; i < n; ++i) {
        const T v = x[i];
        out[i] = map == 0 ? v : map == 1 ? (v > 0 ? v + T(1) : std::exp(v)) : (v > 0 ? v : T(0));
    }
}

template <typename T>
void feature_map_backward(T* dx, const T* dout, const T* x, int64_t rows, int64_t dim, int map) {
    if (map == 3) {
#pragma omp parallel for schedule(static) if (rows * dim >= kParallelMinWork)
        for (int64_t r = 0; r < rows; ++r) {
            std::vector<T> y(static_cast<size_t>(dim));
            softmax_row(y.data(), x + r * dim, dim);
            const T* g = dout + r * dim;
            T dot = 0;
            for (int64_t d = 0; d < dim; ++d) dot += g[d] * y[size_t(d)];
            for (int64_t d = 0; d < dim; ++d) dx[r * dim + d] += y[size_t(d)] * (g[d] - dot);
        }
        return;
    }
    const int64_t n = rows * dim;
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
    for (int64_t i = 0; i < n; ++i) {
        const T v = x[i];
        const T slope = map == 0 ? T(1) : map == 1 ? (v > 0 ? T(1) : std::exp(v)) : (v > 0 ? T(1) : T(0));
        dx[i] += dout[i] * slope;
    }
}

template <typename T> void l2norm_forward(T* out, T* inv_norm, const T* x, int64_t rows, int64_t dim, double eps) {
#pragma omp parallel for schedule(static) if (rows * dim >= kParallelMinWork)
    for (int64_t r = 0; r < rows; ++r) {
        const T* row = x + r * dim;
        T sum = 0;
        for (int64_t d = 0; d < dim; ++d) sum += row[d] * row[d];
        const T inv = T(1) / std::sqrt(sum + T(eps));
        inv_norm[r] = inv;
        for (int64_t d = 0; d < dim; ++d) out[r * dim + d] = row[d] * inv;
    }
}

template <typename T>
void l2norm_backward(T* dx, const T* dout, const T* out, const T* inv_norm, int64_t rows, int64_t dim) {
#pragma omp parallel for schedule(static) if (rows * dim >= kParallelMinWork)
    for (int64_t r = 0; r < rows; ++r) {
        const T* y = out + r * dim;
        const T* g = dout + r * dim;
        T dot = 0;
        for (int64_t d = 0; d < dim; ++d) dot += g[d] * y[d];
        for (int64_t d = 0; d < dim; ++d) dx[r * dim + d] += (g[d] - y[d] * dot) * inv_norm[r];
    }
}

template <typename T> void add_bias_forward(T* out, const T* x, const T* bias, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMinWork)
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = x[r * cols + c] + bias[c];
}

// Serial over rows per column: deterministic on any thread count.
template <typename T> void add_bias_backward(T* dbias, const T* dout, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMinWork)
    for (int64_t c = 0; c < cols; ++c) {
        T sum = 0;
        for (int64_t r = 0; r < rows; ++r) sum += dout[r * cols + c];
        dbias[c] += sum;
    }
}

template <typename T>
void mamba2_decay_forward(T* log_gate, const T* x, const T* a_log, const T* dt_bias, int64_t rows, int64_t heads) {
#pragma omp parallel for schedule(static) if (rows * heads >= kParallelMinWork)
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t h = 0; h < heads; ++h)
            log_gate[r * heads + h] = -std::exp(a_log[h]) * softplus(x[r * heads + h] + dt_bias[h]);
}

// g = −e^a · softplus(u), u = x + b:  ∂g/∂u = −e^a · sigmoid(u),  ∂g/∂a = g.
template <typename T>
void mamba2_decay_backward(T* dx, T* da_log, T* ddt_bias, const T* dlog_gate, const T* x, const T* a_log,
                           const T* dt_bias, int64_t rows, int64_t heads) {
#pragma omp parallel for schedule(static) if (rows * heads >= kParallelMinWork)
    for (int64_t h = 0; h < heads; ++h) {
        const T scale = std::exp(a_log[h]);
        T da = 0, db = 0;
        for (int64_t r = 0; r < rows; ++r) {
            const int64_t i = r * heads + h;
            const T u = x[i] + dt_bias[h];
            const T du = -scale * sigmoid(u) * dlog_gate[i];
            dx[i] += du;
            db += du;
            da += -scale * softplus(u) * dlog_gate[i];
        }
        da_log[h] += da;
        ddt_bias[h] += db;
    }
}

template <typename T> void logsigmoid_decay_forward(T* log_gate, const T* x, int64_t n, double temperature) {
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
    for (int64_t i = 0; i < n; ++i) log_gate[i] = log_sigmoid(x[i]) / T(temperature);
}

// d logsigmoid(x)/dx = sigmoid(−x)
template <typename T>
void logsigmoid_decay_backward(T* dx, const T* dlog_gate, const T* x, int64_t n, double temperature) {
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
    for (int64_t i = 0; i < n; ++i) dx[i] += dlog_gate[i] * sigmoid(-x[i]) / T(temperature);
}

// log α = log(1 − (1 − λ)·sigmoid(−x)) (α = λ + (1 − λ)·sigmoid(x)): log1p keeps α near 1 exact; with
// λ = 0 the argument reaches −1 for very negative x, where logsigmoid is the exact form.
template <typename T> T lower_bounded_log_decay(T x, T lower_bound) {
    return lower_bound == T(0) ? log_sigmoid(x) : std::log1p(-(T(1) - lower_bound) * sigmoid(-x));
}

template <typename T> void lower_bounded_decay_forward(T* log_gate, const T* x, int64_t n, double lower_bound) {
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
    for (int64_t i = 0; i < n; ++i) log_gate[i] = lower_bounded_log_decay(x[i], T(lower_bound));
}

// d log α/dx = (1 − λ)·sigmoid(x)·sigmoid(−x)/α
template <typename T>
void lower_bounded_decay_backward(T* dx, const T* dlog_gate, const T* x, int64_t n, double lower_bound) {
    const T lb = T(lower_bound);
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
    for (int64_t i = 0; i < n; ++i) {
        const T alpha = std::exp(lower_bounded_log_decay(x[i], lb));
        dx[i] += dlog_gate[i] * (T(1) - lb) * sigmoid(x[i]) * sigmoid(-x[i]) / alpha;
    }
}

// −expm1 keeps 1 − e^g accurate when g is near 0 (slow decay, tiny keys).
template <typename T> void key_from_decay_forward(T* key, const T* log_gate, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
    for (int64_t i = 0; i < n; ++i) key[i] = -std::expm1(log_gate[i]);
}

template <typename T> void key_from_decay_backward(T* dlog_gate, const T* dkey, const T* log_gate, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
    for (int64_t i = 0; i < n; ++i) dlog_gate[i] -= std::exp(log_gate[i]) * dkey[i];
}

template <typename T> void output_gate_forward(T* out, const T* y, const T* z, int64_t n, int act) {
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
    for (int64_t i = 0; i < n; ++i) {
        const T s = sigmoid(z[i]);
        out[i] = y[i] * (act == 0 ? s : z[i] * s);
    }
}

template <typename T>
void output_gate_backward(T* dy, T* dz, const T* dout, const T* y, const T* z, int64_t n, int act) {
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
    for (int64_t i = 0; i < n; ++i) {
        const T s = sigmoid(z[i]);
        const T a = act == 0 ? s : z[i] * s;
        const T da = act == 0 ? s * (T(1) - s) : s * (T(1) + z[i] * (T(1) - s));
        dy[i] += dout[i] * a;
        dz[i] += dout[i] * y[i] * da;
    }
}

template <typename T> void sigmoid_forward(T* out, const T* x, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
    for (int64_t i = 0; i < n; ++i) out[i] = sigmoid(x[i]);
}

template <typename T> void sigmoid_backward(T* dx, const T* dout, const T* out, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
    for (int64_t i = 0; i < n; ++i) dx[i] += dout[i] * out[i] * (T(1) - out[i]);
}

#define LINARCH_INSTANTIATE(T)                                                                                   \
    template void feature_map_forward<T>(T*, const T*, int64_t, int64_t, int);                                   \
    template void feature_map_backward<T>(T*, const T*, const T*, int64_t, int64_t, int);                        \
    template void lower_bounded_decay_forward<T>(T*, const T*, int64_t, double);                                 \
    template void lower_bounded_decay_backward<T>(T*, const T*, const T*, int64_t, double);                      \
    template void l2norm_forward<T>(T*, T*, const T*, int64_t, int64_t, double);                                 \
    template void l2norm_backward<T>(T*, const T*, const T*, const T*, int64_t, int64_t);                        \
    template void add_bias_forward<T>(T*, const T*, const T*, int64_t, int64_t);                                \
    template void add_bias_backward<T>(T*, const T*, int64_t, int64_t);                                          \
    template void mamba2_decay_forward<T>(T*, const T*, const T*, const T*, int64_t, int64_t);                   \
    template void mamba2_decay_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, int64_t, int64_t); \
    template void logsigmoid_decay_forward<T>(T*, const T*, int64_t, double);                                    \
    template void logsigmoid_decay_backward<T>(T*, const T*, const T*, int64_t, double);                         \
    template void key_from_decay_forward<T>(T*, const T*, int64_t);                                              \
    template void key_from_decay_backward<T>(T*, const T*, const T*, int64_t);                                   \
    template void output_gate_forward<T>(T*, const T*, const T*, int64_t, int);                                  \
    template void output_gate_backward<T>(T*, T*, const T*, const T*, const T*, int64_t, int);                   \
    template void sigmoid_forward<T>(T*, const T*, int64_t);                                                     \
    template void sigmoid_backward<T>(T*, const T*, const T*, int64_t);
LINARCH_INSTANTIATE(float)
LINARCH_INSTANTIATE(double)
#undef LINARCH_INSTANTIATE

}  // namespace linarch::cpu
