// CPU LM head fused with sampling (ops/fused_sampling.hpp): the logits are made one vocabulary tile
// at a time into a [rows, tile] buffer and reduced at once (Gumbel-max, top-k candidates, logsumexp
// partials), so no [B, V] logits tensor exists. Raw pointers to contiguous row-major arrays; shapes
// and options were checked by ops/fused_sampling.cpp.   hidden [B,D]   weight [V,D]   tokens, logprobs [B]
#pragma once
#include <cstdint>

#include "backend/gumbel_noise.hpp"

namespace linarch::cpu {

// Where a row's noise comes from: vocabulary entry v draws word v mod 4 of
// philox4x32(seed, stream, counter + v/4) (an RngStream's position, see core/rng.hpp).
using noise::NoiseKey;

struct FusedSamplingParams {
    double temperature;   // 0 = greedy
    int64_t top_k;        // 0 = off
    double top_p;         // 1 = off
    double min_p;         // 0 = off
    int64_t vocab_tile;   // vocabulary entries per GEMM tile
    int64_t candidates;   // largest top-k kept in the tile pass; the top-p pass keeps this many logits
};

// The Gumbel(0,1) noise of `vocab_index` under `key` (backend/gumbel_noise.hpp, shared with CUDA).
using noise::gumbel_noise;

// tokens[b] = one draw from row b's distribution; logprobs (null = not wanted) [b] = log_softmax(logits)
// of the chosen token, at temperature 1 (the model's own probability).
template <typename T>
void lm_head_sample(int32_t* tokens, T* logprobs, const T* hidden, const T* weight, const NoiseKey* keys,
                    const FusedSamplingParams& params, int64_t B, int64_t D, int64_t V);

}  // namespace linarch::cpu
