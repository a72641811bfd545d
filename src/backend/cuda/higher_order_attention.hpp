// Second-order HLA (ops/higher_order_attention.hpp, mixers.md §8) on CUDA in fp32: the chunkwise forward and
// its backward, the CPU's chunk step (backend/cpu/higher_order_attention_internal.hpp: the same matrices,
// products and decay factors, in the same order) carried out by one thread block per (sequence, head)
// slice, its chunk matrices in a global scratch area of its own. It is what `--device cuda` trains HLA
// with, in fp32 and under mixed precision alike (exact, like the recurrent scan of recurrent_scan.hpp),
// and what a decode step runs (a chunk of one token). Correct first: fp32 SIMT products on shared-memory
// tiles, not tensor cores.
// Device pointers to contiguous fp32 arrays; the op (ops/higher_order_attention.cpp) checks the shapes:
// q,k [B,T,H,Dk], v,o [B,T,H,Dv], log_decay [H], log_gate [B,T,H], S [N,H,Dk,Dk], C and G [N,H,Dk,Dv].
#pragma once
#include <cstddef>
#include <cstdint>

namespace linarch::cuda {

// The three moments of a state (G null when unmasked; any of them null: not given / not wanted).
struct HigherOrderMoments {
    float* key_moment;          // S
    float* query_value_moment;  // C
    float* correction;          // G
};

struct HigherOrderAttention {
    const float* q;
    const float* k;
    const float* v;
    const float* log_decay;       // [H] or null
    const float* log_gate;        // [B,T,H] or null (not with log_decay)
    HigherOrderMoments initial;   // read only; null moments are zeros
    const int64_t* cu_seqlens;    // device offsets of N packed sequences (B = 1), or null: N = B
    int64_t sequences;            // N
    int64_t batch, seq_len, heads, key_dim, value_dim;
    int64_t chunk;                // the chunk length: min(chunk_size, longest sequence)
    int64_t max_length;           // the longest sequence
    bool masked;
    double scale;
};

// Floats of global scratch the forward (backward = false) or the backward needs.
size_t higher_order_attention_scratch_floats(const HigherOrderAttention& args, bool backward);

// o [B,T,H,Dv]; final moments written where non-null.
void higher_order_attention_forward(const HigherOrderAttention& args, float* o, HigherOrderMoments final_state,
                                    float* scratch);

struct HigherOrderAttentionGrads {
    const float* dout;                // [B,T,H,Dv]
    HigherOrderMoments dfinal_state;  // null moments: zero
    float* dq;                        // += (all of these)
    float* dk;
    float* dv;
    float* dlog_gate;                 // null: not wanted (only with log_gate)
    HigherOrderMoments dinitial_state;  // null moments: not wanted
};

void higher_order_attention_backward(const HigherOrderAttention& args, const HigherOrderAttentionGrads& grads,
                                     float* scratch);

}  // namespace linarch::cuda
