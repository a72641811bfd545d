// CUDA LM head fused with sampling (ops/fused_sampling.hpp). Temperature and greedy: per vocabulary chunk
// a cuBLASLt GEMM writes fp32 logits [B, chunk] into a reused buffer, and a reduction kernel folds them
// into per-(row, 2048 entries) partials (exact Gumbel-max argmax with the CPU's noise,
// backend/gumbel_noise.hpp; logsumexp at T = 1); a last kernel merges each row's partials. No [B, V]
// logits tensor. Developed, with its variants and figures, in dev/cuda/lm_head_sample.cu
// (notes in dev/cuda/NOTES_lm_head_sample.md).
// Top-k, top-p and min-p: the kept set is a prefix of the row sorted by (logit descending, index
// ascending), so it is all entries whose 64-bit order key (the logit's order bits, then the index) is at
// most the row's boundary key. Rows are materialised (up to 256 MB of fp32 logits at a time); a kernel per row finds
// the boundary by radix selection over the keys (by count for top-k; by weight exp((l − max)/T), summed
// in double, for top-p; the last key of weight ≥ min_p for min-p), and the same reduction draws over the
// entries within it (the logsumexp still over the whole row).
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
    double temperature;             // 0 = greedy (the filters below are then ignored, as on the CPU)
    int64_t top_k;                  // 0 = off
    double top_p;                   // 1 = off
    double min_p;                   // 0 = off
    int64_t materialised_rows;      // rows materialised together for the filters; 0: 256 MB's worth
    int32_t* tokens;                // host [B]
    float* logprobs;                // device [B]; null = not wanted
    int64_t B, D, V;
};

// Runs on the calling thread's default stream (cudaStreamPerThread) and waits for it: the tokens are
// copied back to the host.
void lm_head_sample(const LmHeadSample& args);

}  // namespace linarch::cuda
