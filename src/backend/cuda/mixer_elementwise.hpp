// CUDA kernels of the mixer layer's element-wise and per-row ops and its short convolution
// (ops/elementwise.hpp and ops/linear_attention.hpp say what each computes; those files check the
// operands and call these with contiguous fp32 device arrays). The same formulas as
// backend/cpu/elementwise.cpp and short_conv.cpp, one thread per element or row. Backward kernels
// add into their gradients. All run on cudaStreamPerThread.
#pragma once
#include <cstdint>

namespace linarch::cuda {

// map: 0 identity, 1 elu+1, 2 relu, 3 softmax over each row of `dim`.
void feature_map_forward(float* out, const float* x, int64_t rows, int64_t dim, int map);
void feature_map_backward(float* dx, const float* dout, const float* x, int64_t rows, int64_t dim, int map);
void l2norm_forward(float* out, float* inv_norm, const float* x, int64_t rows, int64_t dim, double eps);
void l2norm_backward(float* dx, const float* dout, const float* out, const float* inv_norm, int64_t rows,
                     int64_t dim);
void add_bias_forward(float* out, const float* x, const float* bias, int64_t rows, int64_t cols);
// Sums over rows (here and in the parameter gradients below) run a block per output in a fixed order:
// deterministic.
void add_bias_backward(float* dbias, const float* dout, int64_t rows, int64_t cols);
void mamba2_decay_forward(float* log_gate, const float* x, const float* a_log, const float* dt_bias, int64_t rows,
                          int64_t heads);
void mamba2_decay_backward(float* dx, float* da_log, float* ddt_bias, const float* dlog_gate, const float* x,
                           const float* a_log, const float* dt_bias, int64_t rows, int64_t heads);
void logsigmoid_decay_forward(float* log_gate, const float* x, int64_t n, double temperature);
void logsigmoid_decay_backward(float* dx, const float* dlog_gate, const float* x, int64_t n, double temperature);
void lower_bounded_decay_forward(float* log_gate, const float* x, int64_t n, double lower_bound);
void lower_bounded_decay_backward(float* dx, const float* dlog_gate, const float* x, int64_t n, double lower_bound);
void key_from_decay_forward(float* key, const float* log_gate, int64_t n);
void key_from_decay_backward(float* dlog_gate, const float* dkey, const float* log_gate, int64_t n);
// act: 0 sigmoid, 1 swish.
void output_gate_forward(float* out, const float* y, const float* z, int64_t n, int act);
void output_gate_backward(float* dy, float* dz, const float* dout, const float* y, const float* z, int64_t n, int act);
void sigmoid_forward(float* out, const float* x, int64_t n);
void sigmoid_backward(float* dx, const float* dout, const float* out, int64_t n);

// Causal depthwise convolution: x, out [B,T,C], weight [C,K], optional SiLU after.
void short_conv_forward(float* out, const float* x, const float* weight, bool silu, int64_t batch, int64_t seq_len,
                        int64_t channels, int64_t kernel_size);
// dx [B,T,C] +=, dweight [C,K] += (a block per channel and tap sums over B·T in a fixed order).
void short_conv_backward(float* dx, float* dweight, const float* dout, const float* x, const float* weight, bool silu,
                         int64_t batch, int64_t seq_len, int64_t channels, int64_t kernel_size);

}  // namespace linarch::cuda
