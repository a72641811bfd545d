// CUDA chunkwise backward of causal linear attention (see the header; the kernels and their derivation
// are in linear_attention_chunkwise_backward.cuh, shared with the variant harness
// dev/cuda/linear_attention_chunkwise_backward.cu).
#include "backend/cuda/linear_attention_chunkwise_backward.cuh"

#include "backend/cuda/linear_attention_chunkwise.hpp"
#include "core/error.hpp"

namespace linarch::cuda {

bool linear_attention_chunkwise_backward_supports(int64_t key_dim, int64_t value_dim) {
    return (key_dim == 64 || key_dim == 128) && (value_dim == 64 || value_dim == 128);
}

size_t linear_attention_chunkwise_backward_scratch_floats(int64_t batch, int64_t seq_len, int64_t heads,
                                                          int64_t key_dim) {
    return la_backward::scratch_floats(int(batch), int(seq_len), int(heads), int(key_dim));
}

void linear_attention_chunkwise_backward(const LinearAttentionBackward& a) {
    LINARCH_CHECK(linear_attention_chunkwise_backward_supports(a.key_dim, a.value_dim),
                  "linear_attention_chunkwise_backward (CUDA): no kernel for Dk={}, Dv={}", a.key_dim, a.value_dim);
    LINARCH_CHECK(a.batch <= 65535 && a.heads <= 65535 && a.seq_len < (int64_t(1) << 31) &&
                      a.batch * a.heads < (int64_t(1) << 31),
                  "linear_attention_chunkwise_backward (CUDA): B={}, H={}, T={} exceed the grid", a.batch, a.heads,
                  a.seq_len);
    LINARCH_CHECK(a.scale != 0, "linear_attention_chunkwise_backward (CUDA): scale must be non-zero");
    LINARCH_CHECK(a.dlog_gate == nullptr || (a.log_gate != nullptr && a.gate_scratch != nullptr),
                  "linear_attention_chunkwise_backward (CUDA): dlog_gate needs log_gate and the scratch buffer");
    using la_backward::bf16;
    const la_backward::BackwardArgs args{static_cast<const bf16*>(a.q),    static_cast<const bf16*>(a.k),
                                         static_cast<const bf16*>(a.v),    static_cast<const bf16*>(a.dout),
                                         a.log_gate,                       a.initial_state,
                                         a.dfinal_state,                   static_cast<bf16*>(a.dq),
                                         static_cast<bf16*>(a.dk),         static_cast<bf16*>(a.dv),
                                         a.dinitial_state,                 a.dlog_gate,
                                         a.gate_scratch,                   int(a.batch),
                                         int(a.seq_len),                   int(a.heads),
                                         int(a.key_dim),                   int(a.value_dim),
                                         float(a.scale),                   true,
                                         2};
    const char* failed_kernel = "";
    const cudaError_t status = la_backward::backward(args, cudaStreamPerThread, &failed_kernel);
    if (status != cudaSuccess)
        fail("CUDA kernel {} of linear_attention_chunkwise_backward (Dk={}, Dv={}, gated={}) failed to launch: {}",
             failed_kernel, a.key_dim, a.value_dim, a.log_gate != nullptr, cudaGetErrorString(status));
}

}  // namespace linarch::cuda
