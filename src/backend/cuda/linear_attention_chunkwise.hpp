// CUDA chunkwise forward and backward of causal linear attention, no decay or a per-head scalar
// data-dependent log decay (Mamba-2 / simple GLA, mixers.md §1 and §3), of GLA's decay per key dimension
// (§4, gla_chunkwise.cu), and of the (gated) delta rule (§6). Developed, with their variants
// and figures, in dev/cuda/linear_attention_chunkwise{,_backward}.cu (notes in
// dev/cuda/NOTES_linear_attention.md).
//     S_t = exp(g_t) S_{t-1} + k_tᵀ v_t,   o_t = scale · q_t S_t      (g_t ≤ 0; g = 0 without decay)
// Device pointers to contiguous arrays; ops/linear_attention.cpp checks the shapes:
//     q,k [B,T,H,Dk] bf16   v,o [B,T,H,Dv] bf16   log_gate [B,T,H] fp32   states [B,H,Dk,Dv] fp32
// The products run on the tensor cores with bf16 operands and fp32 accumulation; the state is carried
// in fp32 (rounded to bf16 only as the operand of q·S), the gates' cumulative sums are fp32.
#pragma once
#include <cstddef>
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

// The (gated) delta rule's chunkwise forward (ops/delta_rule.hpp, mixers.md §6) on the same walk:
//     S_t = exp(g_t) (I − β_t k_tᵀ k_t) S_{t−1} + β_t k_tᵀ v_t,   o_t = scale · q_t S_t
// q, k [B,T,H,Dk], v, o [B,T,H,Dv] bf16; beta, log_gate [B,T,H] fp32; states fp32. w_scratch [B,T,H,Dk]
// and u_scratch [B,T,H,Dv] (bf16) receive the chunks' W and ũ (the WY form, see the .cu; u over ũ when the
// outputs are made apart from the walk, for a few long gated sequences). Keys should be L2-normalised, as
// the layers do: the chunk's triangular solve is then well conditioned. With a few long gated sequences the
// forward allocates the chunk states itself (bf16, B·⌈T/64⌉·H·Dk·Dv) unless chunk_states is given.
struct DeltaRuleForward {
    const void* q;
    const void* k;
    const void* v;
    const float* beta;
    const float* log_gate;       // null: the plain delta rule
    const float* initial_state;  // null: zero start
    void* o;                     // null: not wanted
    float* final_state;          // null: not wanted
    void* w_scratch;
    void* u_scratch;
    int64_t batch, seq_len, heads, key_dim, value_dim;
    double scale;
    void* chunk_states = nullptr;  // null, or S at every chunk's start, bf16 [B, ⌈T/64⌉, H, Dk, Dv]
    void* u_out = nullptr;         // null, or u = ũ − W·S, bf16 [B,T,H,Dv]
    void* t_out = nullptr;         // for the backward: T = (I + A)⁻¹ per chunk, bf16 [B, ⌈T/64⌉, H, 64, 64]
};

// Head sizes as linear_attention_chunkwise_supports.
void delta_rule_chunkwise_forward(const DeltaRuleForward& args);

// Its backward (delta_rule_chunkwise_backward.cu): dq, dk, dv (bf16) and dbeta, dlog_gate, dinitial_state
// (fp32) are added into (dlog_gate and dinitial_state may be null; dfinal_state too). `scratch` holds
// delta_rule_chunkwise_backward_scratch_bytes(...) of device memory (the recomputed forward's W, u and chunk
// states, and the passes' intermediate gradients).
struct DeltaRuleBackward {
    const void* q;
    const void* k;
    const void* v;
    const void* dout;
    const float* beta;
    const float* log_gate;       // null: the plain delta rule
    const float* initial_state;  // null: zero start
    const float* dfinal_state;   // null: no gradient into the final state
    void* dq;
    void* dk;
    void* dv;
    float* dbeta;
    float* dlog_gate;            // null: not wanted
    float* dinitial_state;       // null: not wanted
    void* scratch;
    int64_t batch, seq_len, heads, key_dim, value_dim;
    double scale;
};

// Head sizes the backward is built for: Dk and Dv 64 or 128.
bool delta_rule_chunkwise_backward_supports(int64_t key_dim, int64_t value_dim);
size_t delta_rule_chunkwise_backward_scratch_bytes(int64_t batch, int64_t seq_len, int64_t heads, int64_t key_dim,
                                                   int64_t value_dim);
void delta_rule_chunkwise_backward(const DeltaRuleBackward& args);

// Gated linear attention with a gate per key dimension (GLA, mixers.md §4; gla_chunkwise.cu):
//     S_t = diag(exp(g_t)) S_{t−1} + k_tᵀ v_t,   o_t = scale · q_t S_t      (g_t ≤ 0)
// q, k [B,T,H,Dk], v, o [B,T,H,Dv] bf16; log_gate [B,T,H,Dk] fp32; states fp32. `scratch` holds
// gla_chunkwise_forward_scratch_bytes(...) of device memory (the chunks' rescaled q, k and intra-chunk
// matrices).
struct GlaForward {
    const void* q;
    const void* k;
    const void* v;
    const float* log_gate;
    const float* initial_state;  // null: zero start
    void* o;                     // null: not wanted
    float* final_state;          // null: not wanted
    void* scratch;
    int64_t batch, seq_len, heads, key_dim, value_dim;
    double scale;
    void* chunk_states = nullptr;  // for the backward: S at every chunk's start, bf16 [B, ⌈T/64⌉, H, Dk, Dv]
};

// Head sizes the GLA kernels are built for: Dk and Dv 64 or 128.
bool gla_chunkwise_supports(int64_t key_dim, int64_t value_dim);
size_t gla_chunkwise_forward_scratch_bytes(int64_t batch, int64_t seq_len, int64_t heads, int64_t key_dim);
void gla_chunkwise_forward(const GlaForward& args);

// Its backward: dq, dk, dv (bf16), dlog_gate [B,T,H,Dk] and dinitial_state (fp32) are added into (the last
// two may be null; dfinal_state too); `scratch` holds gla_chunkwise_backward_scratch_bytes(...).
struct GlaBackward {
    const void* q;
    const void* k;
    const void* v;
    const void* dout;
    const float* log_gate;
    const float* initial_state;  // null: zero start
    const float* dfinal_state;   // null: no gradient into the final state
    void* dq;
    void* dk;
    void* dv;
    float* dlog_gate;            // null: not wanted
    float* dinitial_state;       // null: not wanted
    void* scratch;
    int64_t batch, seq_len, heads, key_dim, value_dim;
    double scale;                // non-zero
};
size_t gla_chunkwise_backward_scratch_bytes(int64_t batch, int64_t seq_len, int64_t heads, int64_t key_dim,
                                            int64_t value_dim);
void gla_chunkwise_backward(const GlaBackward& args);

// The walk of linear_attention_chunkwise.cu over GLA's precomputed chunk operands (gla_chunkwise.cu's
// forward): q̂ and k̂ in place of q and k, the intra-chunk matrices [B,T,H,64] in place of the masked
// q kᵀ, and the state's rows decayed by row_decay [B, ⌈T/64⌉, H, Dk] at every chunk's end.
struct GlaWalk {
    const void* q_hat;
    const void* k_hat;
    const void* v;
    const void* a_intra;
    const float* row_decay;
    const float* initial_state;
    void* o;
    float* final_state;
    void* chunk_states;
    int64_t batch, seq_len, heads, key_dim, value_dim;
    double scale;
};
void gla_walk(const GlaWalk& args);

// The backward (linear_attention_chunkwise_backward.cu): dq, dk, dv [B,T,H,·] bf16, dinitial_state
// [B,H,Dk,Dv] fp32 and dlog_gate [B,T,H] fp32 are added into (the last two may be null); dfinal_state
// may be null. Three chunk scans (dq walking forwards, dk and dv backwards, each with the state in
// registers) and, for dlog_gate, a reverse cumulative sum over partials held in gate_scratch.
struct LinearAttentionBackward {
    const void* q;
    const void* k;
    const void* v;
    const void* dout;
    const float* log_gate;       // null: no decay
    const float* initial_state;  // null: zero start
    const float* dfinal_state;   // null: no gradient into the final state
    void* dq;
    void* dk;
    void* dv;
    float* dinitial_state;       // null: not wanted
    float* dlog_gate;            // null: not wanted
    float* gate_scratch;         // backward_scratch_floats(...) floats when dlog_gate is wanted
    int64_t batch, seq_len, heads, key_dim, value_dim;
    double scale;                // non-zero
};

// Head sizes the backward is built for: Dk and Dv 64 or 128.
bool linear_attention_chunkwise_backward_supports(int64_t key_dim, int64_t value_dim);
size_t linear_attention_chunkwise_backward_scratch_floats(int64_t batch, int64_t seq_len, int64_t heads,
                                                          int64_t key_dim);
void linear_attention_chunkwise_backward(const LinearAttentionBackward& args);

}  // namespace linarch::cuda
