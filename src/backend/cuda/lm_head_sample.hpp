// CUDA LM head fused with sampling (ops/fused_sampling.hpp), temperature and greedy modes: per vocabulary
// chunk a cuBLASLt GEMM writes fp32 logits [B, chunk] into a reused buffer, and a reduction kernel folds
// them into per-(row, 2048 entries) partials (exact Gumbel-max argmax with the CPU's noise,
// backend/gumbel_noise.hpp; logsumexp at T = 1); a last kernel merges each row's partials. No [B, V]
// logits tensor. Developed, with its variants and figures, in dev/cuda/lm_head_sample.cu
// (notes in dev/cuda/NOTES_lm_head_sample.md).
//     hidden [B,D]   weight [V,D]   (both bf16, or both fp32; fp32 accumulation)   logprobs [B] fp32
// Device pointers to contiguous arrays except `keys` and `tokens` (host); ops/fused_sampling.cpp checks
// shapes and options.
#pragma once
#include <cstdint>

#include "backend/gumbel_noise.hpp"

namespace linarch::cuda {

struct LmHeadSample {
    const void* hidden;
    const void* weight;
    bool fp32_inputs;               // false: bf16
    const noise::NoiseKey* keys;    // host [B]: each row's stream position
    double temperature;             // 0 = greedy
    int32_t* tokens;                // host [B]
    float* logprobs;                // device [B]; null = not wanted
    int64_t B, D, V;
};

// Runs on the calling thread's default stream (cudaStreamPerThread) and waits for it: the tokens are
// copied back to the host.
void lm_head_sample(const LmHeadSample& args);

}  // namespace linarch::cuda
