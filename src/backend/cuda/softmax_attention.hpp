// CUDA causal softmax attention in fp32 (ops/softmax_attention.hpp says what it computes; that file checks
// the operands). FlashAttention-2's algorithm (Dao 2023) on 64×64 tiles of queries × keys, with the same
// biases (ALiBi, FoX's cumulative forget gate), window and packed sequences as the CPU backend:
//     q,k [tokens,H,Dk]   v,out [tokens,H,Dv]   logsumexp, log_forget [tokens,H]   alibi_slopes [H]
// where tokens = B·T, and the sequences are [starts[s], starts[s+1]): B rows of T tokens, or the packed
// sequences of cu_seqlens. Head sizes up to kMaxSoftmaxHeadDim.
#pragma once
#include <cstdint>
#include <vector>

namespace linarch::cuda {

inline constexpr int64_t kMaxSoftmaxHeadDim = 128;

struct SoftmaxAttentionLayout {
    std::vector<int64_t> starts;  // S+1 offsets: sequence s is the tokens [starts[s], starts[s+1])
    int64_t heads = 0, key_dim = 0, value_dim = 0;
    double scale = 0;
    int64_t window = 0;                 // 0 = full causal
    const float* alibi_slopes = nullptr;  // [H] or null
    const float* log_forget = nullptr;    // [tokens,H] or null
};

bool softmax_attention_supports(int64_t key_dim, int64_t value_dim);

// out =, logsumexp = (the backward's saved row statistics).
void softmax_attention_forward(float* out, float* logsumexp, const float* q, const float* k, const float* v,
                               const SoftmaxAttentionLayout& layout);

// dq, dk, dv +=; dlog_forget += when non-null (FoX only). Recomputes the probabilities from logsumexp: one
// kernel per key block for dk, dv and one per query block for dq, so every gradient row has one writer.
void softmax_attention_backward(float* dq, float* dk, float* dv, float* dlog_forget, const float* dout,
                                const float* q, const float* k, const float* v, const float* out,
                                const float* logsumexp, const SoftmaxAttentionLayout& layout);

// One decode step: the query q [H,Dk] at position t = cached − 1 against a KV cache keys [≥cached,H,Dk],
// values [≥cached,H,Dv] and, for FoX, the cached tokens' log forget gates [≥cached,H] (else null); o [H,Dv].
// The same biases and window as the forward. A block per head.
void softmax_attention_decode(float* o, const float* q, const float* keys, const float* values,
                              const float* log_forget, const float* alibi_slopes, int64_t cached, int64_t heads,
                              int64_t key_dim, int64_t value_dim, double scale, int64_t window);

}  // namespace linarch::cuda
