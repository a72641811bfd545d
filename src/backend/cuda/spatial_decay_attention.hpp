// LASAD's CUDA kernels (ops/spatial_decay_attention.hpp): on the GPU every form is the masked parallel one,
// one (batch, head) pair at a time, its [T,T] products from cuBLASLt GEMMs (ops/spatial_decay_attention.cpp)
// and these kernels between them: the 2-D decay D_ij = exp(λ_r |r_i − r_j| + λ_c |c_i − c_j|) (float64, rounded
// once, as on the CPU) and the raster-order causal mask, and in the backward the decay rates' gradients.
// Device pointers; the log decays are the op's [H] tensors, read at `head`.
#pragma once
#include <cstdint>

namespace linarch::cuda {

struct SpatialPair {
    int64_t seq_len, grid_width;  // T = grid_height · grid_width
    const float* log_decay_row;   // [H]
    const float* log_decay_col;   // [H]
    int64_t head;
    double scale;
};

// scores [T,T] ← scale · scores ⊙ D ⊙ (j ≤ i), in place.
void spatial_decay_mask(float* scores, const SpatialPair& pair);

// Blocks of spatial_decay_mask_backward's reduction: its partial sums per pair are 2 · this many doubles.
inline constexpr int kSpatialReductionBlocks = 64;

// The backward of one pair, in place: raw (= q kᵀ) becomes the scores scale · raw ⊙ D ⊙ (j ≤ i), and
// dprobs (= dO vᵀ) becomes dS = scale · dprobs ⊙ D ⊙ (j ≤ i); partials [kSpatialReductionBlocks, 2] get the
// block sums of e_ij·|Δr| and e_ij·|Δc|, e = dprobs ⊙ scores (the decay rates' gradients).
void spatial_decay_mask_backward(float* raw, float* dprobs, double* partials, const SpatialPair& pair);

// dlog_decay_row[h], dlog_decay_col[h] (+=; either may be null) from the partials of the pairs
// [B, H, kSpatialReductionBlocks, 2], summed in a fixed order.
void spatial_decay_add_rate_gradients(float* dlog_decay_row, float* dlog_decay_col, const double* partials,
                                      int64_t batch, int64_t heads);

}  // namespace linarch::cuda
