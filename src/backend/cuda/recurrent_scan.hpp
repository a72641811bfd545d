// The exact fp32 path of the linear-attention family on CUDA: the recurrent form, token by token, in
// fp32 throughout, for the additive members (no decay, a fixed per-head decay, a scalar or a vector
// data-dependent gate: mixers.md §1-4) and the (gated) delta rule (§6). It is what `--device cuda`
// trains with in fp32 mode, where the run must match the CPU's to 1e-3; the bf16 tensor-core chunkwise
// kernels (linear_attention_chunkwise.hpp) are the fast path.
//
// Why the recurrence is cheap enough here: each column j of the state S [Dk,Dv] evolves on its own,
//     additive:  s_j ← a ⊙ s_j + k · v_j                       (a = exp(g): 1, per head or per channel)
//     delta:     s_j ← a · (s_j − β k (k·s_j)) + β k · v_j    (a per head)
//     o_j = scale · q·s_j
// so a thread owns one column (Dk values in registers) and a block one (sequence, head). The backward
// walks the tokens in reverse with ∂L/∂s_j in registers; the states it needs are recomputed one chunk at a
// time from checkpoints kept every kScanChunk tokens, and its sums over the columns (dq, dk, dβ, dg) are
// block reductions: no atomics, so the gradients are deterministic.
// Device pointers to contiguous fp32 arrays; the ops (ops/linear_attention.cpp, ops/delta_rule.cpp)
// check the shapes: q,k [B,T,H,Dk], v,o [B,T,H,Dv], beta [B,T,H], log_gate [B,T,H] or [B,T,H,Dk],
// log_decay [H], states [N,H,Dk,Dv].
#pragma once
#include <cstddef>
#include <cstdint>

namespace linarch::cuda {

inline constexpr int64_t kScanMaxKeyDim = 128;
inline constexpr int64_t kScanMaxValueDim = 512;  // the backward's reduction buffer stays under 48 KiB
inline constexpr int64_t kScanChunk = 32;

struct RecurrentScan {
    const float* q;
    const float* k;
    const float* v;
    const float* beta;           // null: additive; else the delta rule's β [B,T,H]
    const float* log_gate;       // null, [B,T,H] or (additive only) [B,T,H,Dk]
    bool vector_gate;            // log_gate is [B,T,H,Dk]
    const float* log_decay;      // [H] fixed decay or null (not with log_gate)
    const float* initial_state;  // null: zeros
    const int64_t* cu_seqlens;   // device offsets of N packed sequences (B = 1) or null: N = B
    int64_t sequences;           // N
    int64_t batch, seq_len, heads, key_dim, value_dim;
    double scale;
};

// o [B,T,H,Dv]; final_state [N,H,Dk,Dv] if non-null.
void recurrent_scan_forward(const RecurrentScan& args, float* o, float* final_state);

struct RecurrentScanGrads {
    const float* dout;           // [B,T,H,Dv]
    const float* dfinal_state;   // null: none
    float* dq;                   // += (all of these)
    float* dk;
    float* dv;
    float* dbeta;                // delta rule: [B,T,H]
    float* dlog_gate;            // null: not wanted
    float* dinitial_state;       // null: not wanted
    float* scratch;              // recurrent_scan_scratch_floats(...) floats
};

// max_length: the longest sequence (T without cu_seqlens).
size_t recurrent_scan_scratch_floats(const RecurrentScan& args, int64_t max_length);
void recurrent_scan_backward(const RecurrentScan& args, const RecurrentScanGrads& grads, int64_t max_length);

}  // namespace linarch::cuda
