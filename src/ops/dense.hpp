// Dense ops of a transformer-style block, forward and backward side by side.
//
// Conventions for every op in src/ops/:
// - Tensors are CPU, contiguous, and all of one dtype: f32 (the fast path) or f64 (the reference
//   precision used by finite-difference gradient checks). Shapes and dtypes are checked and a
//   mismatch throws Error naming the op and the tensor.
// - Backward passes ADD into the gradient tensors they are given (llm.c's convention): callers
//   zero them first; this makes residual branches and gradient accumulation free.
// - A null gradient pointer means "not needed" and skips that work.
// Each op dispatches on the device to a backend (src/backend/<device>/); model code never calls
// OpenBLAS or CUDA itself.
#pragma once
#include <cstdint>
#include <span>

#include "core/tensor.hpp"

namespace linarch::ops {

// out[M,N] = inp[M,K] · weight[N,K]ᵀ   (weights stored [out_features, in_features], as PyTorch)
// With accumulate, adds into out instead of overwriting it.
void matmul_forward(Tensor& out, const Tensor& inp, const Tensor& weight, bool accumulate = false);
// dinp[M,K] += dout[M,N] · weight[N,K];   dweight[N,K] += dout[M,N]ᵀ · inp[M,K]
void matmul_backward(Tensor* dinp, Tensor* dweight, const Tensor& dout, const Tensor& inp, const Tensor& weight);

// out[N,D] = table[ids[n], :];   ids in [0, V), table [V,D]
void embedding_forward(Tensor& out, std::span<const int32_t> ids, const Tensor& table);
// dtable[ids[n], :] += dout[n, :]
void embedding_backward(Tensor& dtable, std::span<const int32_t> ids, const Tensor& dout);

// out[N,D] = x[N,D] / sqrt(mean(x²) + eps) · weight[D];  rstd[N] = 1/sqrt(mean(x²)+eps) is saved
void rmsnorm_forward(Tensor& out, Tensor& rstd, const Tensor& x, const Tensor& weight, double eps);
// dx[N,D] += ...;  dweight[D] += Σ_n dout · x · rstd
void rmsnorm_backward(Tensor* dx, Tensor* dweight, const Tensor& dout, const Tensor& x, const Tensor& weight,
                      const Tensor& rstd);

// GroupNorm (Wu & He 2018; RetNet's per-head output norm): each row of x[N, G·D] splits into G groups
// of D, each normalised to zero mean and unit variance, then scaled and shifted per channel:
//   out = (x − mean) · rstd · weight[G·D] + bias[G·D];  mean, rstd [N·G] are saved.
void group_norm_forward(Tensor& out, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& weight,
                        const Tensor& bias, int64_t groups, double eps);
// dx += ..., dweight += Σ_n dout·x̂, dbias += Σ_n dout   (x̂ the normalised input)
void group_norm_backward(Tensor& dx, Tensor& dweight, Tensor& dbias, const Tensor& dout, const Tensor& x,
                         const Tensor& weight, const Tensor& mean, const Tensor& rstd, int64_t groups);

// out[N,F] = silu(gate[N,F]) · up[N,F]      (SwiGLU; Shazeer 2020)
void swiglu_forward(Tensor& out, const Tensor& gate, const Tensor& up);
// dgate += dout · up · silu'(gate);  dup += dout · silu(gate)
void swiglu_backward(Tensor& dgate, Tensor& dup, const Tensor& dout, const Tensor& gate, const Tensor& up);

// out = a + b  (any equal shapes; out may alias a). The backward is dout added to both inputs'
// gradients, which callers express with add_into.
void add_forward(Tensor& out, const Tensor& a, const Tensor& b);
// dst += src
void add_into(Tensor& dst, const Tensor& src);

// Tied LM head fused with softmax cross-entropy. logits = hidden[N,D] · weight[V,D]ᵀ are made one
// block of rows at a time and never stored whole. targets[n] < 0 are ignored (padding).
// losses[N] receives each row's loss (0 for ignored rows); logsumexp[N] is saved for backward.
// Returns the mean loss over rows that are not ignored.
double lm_head_cross_entropy_forward(Tensor& losses, Tensor& logsumexp, const Tensor& hidden,
                                     const Tensor& weight, std::span<const int32_t> targets);
// Gradient of loss_scale · Σ_n losses[n]: dhidden[N,D] += ..., dweight[V,D] += ...
// (pass loss_scale = 1/count for the mean). Recomputes logits blockwise.
void lm_head_cross_entropy_backward(Tensor* dhidden, Tensor* dweight, const Tensor& hidden, const Tensor& weight,
                                    std::span<const int32_t> targets, const Tensor& logsumexp, double loss_scale);
// logits[N,V] for sampling (generation needs the full row).
void lm_head_logits(Tensor& logits, const Tensor& hidden, const Tensor& weight);

// Σ x² over all elements (for the global gradient norm), accumulated in double; of several tensors on one
// device, with one synchronisation on the GPU.
double sum_squares(const Tensor& x);
double sum_squares(std::span<const Tensor* const> xs);
// x *= factor
void scale_inplace(Tensor& x, double factor);

// One AdamW step (Loshchilov & Hutter, decoupled weight decay) with bias correction, in place:
// m = β1 m + (1-β1) g;  v = β2 v + (1-β2) g²;  p -= lr·(m̂/(sqrt(v̂)+eps) + wd·p), step counted from 1.
struct AdamWParams {
    double lr, beta1, beta2, eps, weight_decay;
    int64_t step;
};
void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWParams& hp);

}  // namespace linarch::ops
