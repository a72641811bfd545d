#include "backend/cpu/reference_dense.hpp"

#include <algorithm>
#include <cmath>

namespace linarch::reference {
namespace {

void require_f64(const Tensor& t, const char* op, const char* name) {
    LINARCH_CHECK(t.defined() && t.device() == Device::cpu && t.dtype() == DType::f64 && t.is_contiguous(),
                  "reference::{}: {} must be a contiguous f64 CPU tensor", op, name);
}

void require_rank(const Tensor& t, int64_t rank, const char* op, const char* name) {
    LINARCH_CHECK(t.dim() == rank, "reference::{}: {}: expected {} dimensions, got shape {}", op, name, rank,
                  shape_string(t.shape()));
}

}  // namespace

// out[M,N] = inp[M,K] · weight[N,K]ᵀ
Tensor matmul(const Tensor& inp, const Tensor& weight) {
    require_f64(inp, "matmul", "inp");
    require_f64(weight, "matmul", "weight");
    require_rank(inp, 2, "matmul", "inp");
    require_rank(weight, 2, "matmul", "weight");
    const int64_t M = inp.size(0), K = inp.size(1), N = weight.size(0);
    check_shape(weight, {N, K}, "reference::matmul: weight");
    Tensor out = Tensor::empty({M, N}, DType::f64);
    const double* a = inp.data<double>();
    const double* w = weight.data<double>();
    double* o = out.data<double>();
    for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
            double sum = 0;
            for (int64_t k = 0; k < K; ++k) sum += a[i * K + k] * w[j * K + k];
            o[i * N + j] = sum;
        }
    return out;
}

// out[N,D] = table[ids[n], :]
Tensor embedding(std::span<const int32_t> ids, const Tensor& table) {
    require_f64(table, "embedding", "table");
    require_rank(table, 2, "embedding", "table");
    const int64_t N = int64_t(ids.size()), V = table.size(0), D = table.size(1);
    Tensor out = Tensor::empty({N, D}, DType::f64);
    const double* t = table.data<double>();
    double* o = out.data<double>();
    for (int64_t n = 0; n < N; ++n) {
        LINARCH_CHECK(ids[size_t(n)] >= 0 && ids[size_t(n)] < V, "reference::embedding: ids[{}] = {} outside [0, {})",
                      n, ids[size_t(n)], V);
        for (int64_t d = 0; d < D; ++d) o[n * D + d] = t[ids[size_t(n)] * D + d];
    }
    return out;
}

// out[N,D] = x / sqrt(mean(x²) + eps) · weight[D]
RmsnormResult rmsnorm(const Tensor& x, const Tensor& weight, double eps) {
    require_f64(x, "rmsnorm", "x");
    require_f64(weight, "rmsnorm", "weight");
    require_rank(x, 2, "rmsnorm", "x");
    const int64_t N = x.size(0), D = x.size(1);
    check_shape(weight, {D}, "reference::rmsnorm: weight");
    RmsnormResult result{Tensor::empty({N, D}, DType::f64), Tensor::empty({N}, DType::f64)};
    const double* xs = x.data<double>();
    const double* w = weight.data<double>();
    double* o = result.out.data<double>();
    double* r = result.rstd.data<double>();
    for (int64_t n = 0; n < N; ++n) {
        double mean_sq = 0;
        for (int64_t d = 0; d < D; ++d) mean_sq += xs[n * D + d] * xs[n * D + d];
        mean_sq /= double(D);
        const double rms = std::sqrt(mean_sq + eps);
        r[n] = 1.0 / rms;
        for (int64_t d = 0; d < D; ++d) o[n * D + d] = xs[n * D + d] / rms * w[d];
    }
    return result;
}

// out = silu(gate) · up,  silu(g) = g / (1 + e^(−g))
Tensor swiglu(const Tensor& gate, const Tensor& up) {
    require_f64(gate, "swiglu", "gate");
    require_f64(up, "swiglu", "up");
    check_shape(up, gate.shape(), "reference::swiglu: up");
    Tensor out = Tensor::empty(gate.shape(), DType::f64);
    const double* g = gate.data<double>();
    const double* u = up.data<double>();
    double* o = out.data<double>();
    for (int64_t i = 0; i < gate.numel(); ++i) o[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
    return out;
}

// Full logits [N,V], then per row: lse = max + log Σ exp(l − max), loss = lse − l[target].
CrossEntropyResult lm_head_cross_entropy(const Tensor& hidden, const Tensor& weight,
                                         std::span<const int32_t> targets) {
    const Tensor logits = matmul(hidden, weight);
    const int64_t N = logits.size(0), V = logits.size(1);
    LINARCH_CHECK(int64_t(targets.size()) == N, "reference::lm_head_cross_entropy: {} targets for {} rows",
                  targets.size(), N);
    CrossEntropyResult result{Tensor::empty({N}, DType::f64), Tensor::empty({N}, DType::f64), 0.0};
    const double* l = logits.data<double>();
    double* losses = result.losses.data<double>();
    double* lse_out = result.logsumexp.data<double>();
    double total = 0;
    int64_t count = 0;
    for (int64_t n = 0; n < N; ++n) {
        const double* row = l + n * V;
        double row_max = row[0];
        for (int64_t v = 1; v < V; ++v) row_max = std::max(row_max, row[v]);
        double sum = 0;
        for (int64_t v = 0; v < V; ++v) sum += std::exp(row[v] - row_max);
        const double lse = row_max + std::log(sum);
        lse_out[n] = lse;
        const int32_t target = targets[size_t(n)];
        LINARCH_CHECK(target < V, "reference::lm_head_cross_entropy: targets[{}] = {} outside [0, {})", n, target, V);
        losses[n] = target < 0 ? 0.0 : lse - row[target];
        if (target >= 0) {
            total += losses[n];
            ++count;
        }
    }
    result.mean_loss = count > 0 ? total / double(count) : 0.0;
    return result;
}

// m = β1 m + (1−β1) g;  v = β2 v + (1−β2) g²;  p −= lr·(m̂/(sqrt(v̂)+eps) + wd·p)
void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const ops::AdamWParams& hp) {
    require_f64(param, "adamw_step", "param");
    require_f64(grad, "adamw_step", "grad");
    require_f64(m, "adamw_step", "m");
    require_f64(v, "adamw_step", "v");
    check_shape(grad, param.shape(), "reference::adamw_step: grad");
    check_shape(m, param.shape(), "reference::adamw_step: m");
    check_shape(v, param.shape(), "reference::adamw_step: v");
    LINARCH_CHECK(hp.step >= 1, "reference::adamw_step: step must be ≥ 1, got {}", hp.step);
    double* p = param.data<double>();
    const double* g = grad.data<double>();
    double* ms = m.data<double>();
    double* vs = v.data<double>();
    for (int64_t i = 0; i < param.numel(); ++i) {
        ms[i] = hp.beta1 * ms[i] + (1 - hp.beta1) * g[i];
        vs[i] = hp.beta2 * vs[i] + (1 - hp.beta2) * g[i] * g[i];
        const double m_hat = ms[i] / (1 - std::pow(hp.beta1, double(hp.step)));
        const double v_hat = vs[i] / (1 - std::pow(hp.beta2, double(hp.step)));
        p[i] = p[i] - hp.lr * (m_hat / (std::sqrt(v_hat) + hp.eps) + hp.weight_decay * p[i]);
    }
}

}  // namespace linarch::reference
