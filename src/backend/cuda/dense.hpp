// CUDA kernels of the dense ops (ops/dense.hpp says what each computes; that file checks the operands
// and calls these with contiguous fp32 device arrays). Matrix products go through gemm.hpp. Backward
// kernels add into their gradients, as every op's backward does. All run on cudaStreamPerThread.
#pragma once
#include <cstdint>
#include <vector>

namespace linarch::cuda {

// ids: N device ints, each in [0, V) (checked on the host by the op).
void embedding_forward(float* out, const int32_t* ids, const float* table, int64_t N, int64_t D);
// Rows that share an id add with atomics, so the order of their sums varies from run to run.
void embedding_backward(float* dtable, const int32_t* ids, const float* dout, int64_t N, int64_t D);

void rmsnorm_forward(float* out, float* rstd, const float* x, const float* weight, int64_t N, int64_t D, double eps);
// dx, dweight may be null.
void rmsnorm_backward(float* dx, float* dweight, const float* dout, const float* x, const float* weight,
                      const float* rstd, int64_t N, int64_t D);

// rows = N·groups rows of dim channels each; weight and bias [groups·dim]. A thread per row (heads are
// narrow: 64-128 channels), two passes as on the CPU.
void group_norm_forward(float* out, float* mean, float* rstd, const float* x, const float* weight, const float* bias,
                        int64_t rows, int64_t dim, int64_t groups, double eps);
// dweight, dbias: a thread per channel sums its rows in order (deterministic).
void group_norm_backward(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                         const float* weight, const float* mean, const float* rstd, int64_t rows, int64_t dim,
                         int64_t groups);

void swiglu_forward(float* out, const float* gate, const float* up, int64_t n);
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n);

// out = a + b (out may alias a);  dst += src.
void add(float* out, const float* a, const float* b, int64_t n);
void add_into(float* dst, const float* src, int64_t n);

// Mixed precision's conversions: out = bf16(x) (round to nearest even), and dst += float(x).
void to_bf16(uint16_t* out, const float* x, int64_t n);
void add_bf16_into(float* dst, const uint16_t* x, int64_t n);

// Row moves for packed sequences (ops/cuda_operands.hpp's PaddedBatch), rows of row_bytes bytes:
// gather: dst row r = src row rows[r], or zeros where rows[r] < 0;  scatter: dst row rows[r] = src row r
// where rows[r] ≥ 0. rows: count device ints.
void gather_rows(void* dst, const void* src, const int64_t* rows, int64_t count, int64_t row_bytes);
void scatter_rows(void* dst, const void* src, const int64_t* rows, int64_t count, int64_t row_bytes);

// Σ x² over every array, accumulated in double (one synchronisation: the result comes back to the host).
struct FloatArray {
    const float* data;
    int64_t n;
};
double sum_squares(const std::vector<FloatArray>& arrays);
void scale(float* x, int64_t n, double factor);
// One AdamW step as cpu::adamw_update computes it (bias corrections formed in double on the host).
void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, double lr, double beta1,
                  double beta2, double eps, double weight_decay, int64_t step);

// The tied LM head with softmax cross-entropy (lm_head_cross_entropy.cu): logits are made one block of
// vocabulary columns at a time by cuBLASLt into a reused fp32 buffer, never whole. targets: N device
// ints, < 0 for ignored rows. The forward writes losses[N] (0 where ignored) and logsumexp[N]; the
// backward recomputes each block and adds loss_scale · (softmax − onehot) through two GEMMs. With bf16
// (mixed precision) every GEMM takes bf16 copies of its operands; logits and sums stay fp32.
void lm_head_cross_entropy_forward(float* losses, float* logsumexp, const float* hidden, const float* weight,
                                   const int32_t* targets, int64_t N, int64_t D, int64_t V, bool bf16);
void lm_head_cross_entropy_backward(float* dhidden, float* dweight, const float* hidden, const float* weight,
                                    const int32_t* targets, const float* logsumexp, double loss_scale, int64_t N,
                                    int64_t D, int64_t V, bool bf16);

}  // namespace linarch::cuda
