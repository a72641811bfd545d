// Exact sampling fused into the LM-head matmul (FlashSampling, Ruiz et al. 2026; notes in
// mission/inference.md §1): one token per row of hidden[B,D] from softmax(hidden · weightᵀ / T) with the
// plain sampler's top-k, top-p and min-p (infer/sampling.hpp), without a [B, V] logits tensor. The logits
// are formed one vocabulary tile at a time (a GEMM into a [rows, tile] buffer) and reduced at once.
//
// Noise. Row b's noise for vocabulary entry v is g_v = −log(−log u_v), u_v = (r + 1)/(2³² + 1), r
// word v mod 4 of philox4x32(seed, stream, counter + v/4) at the row's RngStream position: a pure
// function of (stream position, v), never of which tile or thread computes it. u_v lies strictly in
// (0, 1), so g_v is finite; the only departure from Gumbel(0,1) noise is u's grid of 2⁻³².
//
// Why each mode samples the plain sampler's distribution (score_v = l_v · (1/T) + g_v, ties to the
// lower index):
// - Temperature alone: Gumbel-max. argmax_v (l_v/T + g_v) over i.i.d. Gumbel(0,1) noise is distributed
//   as softmax(l/T) (Gumbel 1954; Maddison et al. 2014, "A* sampling"). The argmax of a row is the
//   argmax of its tiles' argmaxes (max decomposes over any partition), so the fused token IS the
//   full-row Gumbel-max token for the same noise: pathwise, not just in distribution. A token's exact
//   noise is skipped only when an upper bound of it (from r's leading bits) cannot lift its score to
//   the best so far, which is below the final best: skipping changes no draw.
// - Greedy (T = 0): argmax of the logits, first index on ties (top-k, top-p and min-p ignored, as the
//   plain sampler does). The RngStreams are not advanced.
// - Top-k: the tile pass keeps, per row, every logit that can still be among the k largest (a
//   threshold that only rises: a logit below the k-th largest kept so far has k logits ahead of it);
//   merged and sorted these give the exact top-k set (by logit, then index). The set depends on the
//   logits only, so the noise is independent of it, and Gumbel-max over the set samples softmax(l/T)
//   restricted to the set and renormalised: the plain sampler's distribution.
// - Top-p: the nucleus is the smallest prefix of the row sorted by descending logit whose mass
//   Σ exp((l − max)/T) reaches p times the total (over the row; over the top k when top-k is also set,
//   as in the plain sampler). The tile pass forms the row total as an online logsumexp (per-tile max and
//   sum, merged in tile order) and keeps the row's `candidates` largest logits. The candidates are a
//   prefix of the sorted row, so if their cumulated mass reaches p · total the nucleus is a prefix of
//   them; otherwise the row's logits are materialised (a second GEMM, 64 rows at a time into a
//   [64, V] buffer whatever B) and the nucleus's last entry is found by selection: weights bucketed by
//   (max − l)/T in 1/16 nat (monotone in l, so the buckets are ordered like the sorted row), whole
//   buckets summed, only the bucket where the mass reaches p · total sorted. Gumbel-max over the
//   nucleus then samples softmax restricted to it, as for top-k. The cut compares float64 sums formed
//   in another order than the plain sampler's, so the two can disagree only when a prefix's mass
//   equals p · total to ~1e-15. Top-k larger than `candidates` also materialises rows (selection by
//   nth_element).
// - Min-p: the tokens with exp((l − max)/T) ≥ min_p, again a prefix of the sorted row (applied after
//   top-k and top-p, as the plain sampler): decided on the candidates, or on a materialised row when
//   every candidate passes. The penalties of SamplingOptions need the token history and are refused.
// Tiling: the same seeds give the same tokens for every vocab_tile, candidates and thread count, given
// the same logits; BLAS may round a logit differently with the GEMM's width (a tile, or a materialised
// row), which can flip only a draw whose best two scores are within that rounding.
// Log-probabilities are log_softmax(logits)[token] at T = 1 (the model's own probability, as OpenAI's
// and vLLM's `logprobs`), from an online logsumexp over the tiles.
#pragma once
#include <cstdint>
#include <span>

#include "core/rng.hpp"
#include "core/tensor.hpp"
#include "infer/sampling.hpp"

namespace linarch::ops {

// How the vocabulary is cut; the result does not depend on it (above).
struct FusedSamplingTiling {
    int64_t vocab_tile = 256;    // vocabulary entries per GEMM tile
    int64_t candidates = 1024;   // largest logits kept per row for top-p and min-p; the largest top-k kept
    // CUDA (which cuts the vocabulary its own way and ignores the two above): rows whose logits are
    // materialised together for top-k, top-p and min-p; 0: as many as 256 MB of fp32 logits hold.
    int64_t materialised_rows = 0;
};

// tokens[B] ← one draw per row of hidden[B,D] · weight[V,D]ᵀ under `options` (as sample_token on the
// full logits); logprobs [B] (null = not wanted) ← log_softmax(logits)[token]. rngs[B]: one stream per
// row, each advanced past the ⌈V/4⌉ Philox blocks the draw used (not at T = 0). f32 or f64, CPU; or
// bf16 (or f32) CUDA tensors, logprobs f32 on the GPU: every mode, the same draws as the CPU for the same
// logits (backend/cuda/lm_head_sample.hpp).
void lm_head_sample(std::span<int32_t> tokens, Tensor* logprobs, const Tensor& hidden, const Tensor& weight,
                    const SamplingOptions& options, std::span<RngStream> rngs, const FusedSamplingTiling& tiling = {});

// g_v of the header comment for a stream at its current position (the noise the next draw uses).
// sample_token draws with it too.
double sampling_gumbel_noise(const RngStream& rng, int64_t vocab_index);
// Moves a stream past one draw over a vocabulary of V entries (the ⌈V/4⌉ Philox blocks its noise uses).
void advance_past_draw(RngStream& rng, int64_t vocab_size);

}  // namespace linarch::ops
