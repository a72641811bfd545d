// Float64 reference implementations of the dense ops: the definitions every fast path (CPU f32,
// CUDA) is checked against. Written as plainly as the math (triple loops, no BLAS, full logits)
// and independently of src/backend/cpu/dense.cpp, so a shared mistake is unlikely.
// Inputs and outputs are contiguous f64 CPU tensors; anything else is an Error.
#pragma once
#include <cstdint>
#include <span>

#include "core/tensor.hpp"
#include "ops/dense.hpp"

namespace linarch::reference {

// out[M,N] = inp[M,K] · weight[N,K]ᵀ
Tensor matmul(const Tensor& inp, const Tensor& weight);

// out[N,D] = table[ids[n], :]   (table [V,D])
Tensor embedding(std::span<const int32_t> ids, const Tensor& table);

// out[N,D] = x / sqrt(mean(x²) + eps) · weight[D];  rstd[N] = 1/sqrt(mean(x²) + eps)
struct RmsnormResult {
    Tensor out, rstd;
};
RmsnormResult rmsnorm(const Tensor& x, const Tensor& weight, double eps);

// out = silu(gate) · up   (any equal shapes)
Tensor swiglu(const Tensor& gate, const Tensor& up);

// logits[N,V] = hidden[N,D] · weight[V,D]ᵀ;  losses[N] = logsumexp − logit[target] (0 where target < 0);
// mean_loss over rows with target ≥ 0 (0 when there are none).
struct CrossEntropyResult {
    Tensor losses, logsumexp;
    double mean_loss;
};
CrossEntropyResult lm_head_cross_entropy(const Tensor& hidden, const Tensor& weight,
                                         std::span<const int32_t> targets);

// One AdamW step in place on f64 param, m, v (grad f64), as ops::adamw_update documents.
void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const ops::AdamWParams& hp);

}  // namespace linarch::reference
