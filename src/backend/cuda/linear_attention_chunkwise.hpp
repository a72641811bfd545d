// CUDA chunkwise forward of causal linear attention, no decay or a per-head scalar data-dependent log
// decay (Mamba-2 / simple GLA, mixers.md §1 and §3). Developed, with its variants and figures, in
// dev/cuda/linear_attention_chunkwise.cu (notes in dev/cuda/NOTES_linear_attention.md).
//     S_t = exp(g_t) S_{t-1} + k_tᵀ v_t,   o_t = scale · q_t S_t      (g_t ≤ 0; g = 0 without decay)
// Device pointers to contiguous arrays; ops/linear_attention.cpp checks the shapes:
//     q,k [B,T,H,Dk] bf16   v,o [B,T,H,Dv] bf16   log_gate [B,T,H] fp32   states [B,H,Dk,Dv] fp32
// The products run on the tensor cores with bf16 operands and fp32 accumulation; the state is carried
// in fp32 (rounded to bf16 only as the operand of q·S), the gates' cumulative sums are fp32.
#pragma once
#include <cstdint>

namespace linarch::cuda {

struct LinearAttentionForward {
    const void* q;
    const void* k;
    const void* v;
    const float* log_gate;       // null: no decay
    const float* initial_state;  // null: zero start
    void* o;
    float* final_state;          // null: not wanted
    int64_t batch, seq_len, heads, key_dim, value_dim;
    double scale;
};

// Head sizes the kernel is built for: Dk 64 or 128, Dv a multiple of 64.
bool linear_attention_chunkwise_supports(int64_t key_dim, int64_t value_dim);
// Enqueues the forward on the calling thread's default stream (cudaStreamPerThread, as the allocator).
void linear_attention_chunkwise_forward(const LinearAttentionForward& args);

}  // namespace linarch::cuda
