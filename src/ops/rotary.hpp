// Rotary position embedding (RoPE, Su et al. 2021), the canonical multiplicative GRAPE action
// (mixers.md §7.1): d/2 commuting rotations on the coordinate planes (2i, 2i+1) (interleaved
// pairs, GRAPE's canonical planes U_i = [e_2i, e_2i+1]; not the "rotate-half" pairing (i, i+D/2) of
// GPT-NeoX/Llama checkpoints). For x [B,T,H,D] at position p_t and angle φ = p_t · frequencies[i]:
//     out[2i]   = x[2i] cos φ − x[2i+1] sin φ
//     out[2i+1] = x[2i] sin φ + x[2i+1] cos φ
// so rotated q_m · rotated k_n depends only on m − n (the exact relative law). Angles are formed in
// float64 (position × frequency loses digits in f32 at long positions) and rounded once.
// Conventions as in ops/dense.hpp (backward adds into grads).
#pragma once
#include <cstdint>
#include <span>

#include "core/tensor.hpp"

namespace linarch::ops {

// out[B,T,H,D] = R(positions[t] · frequencies) x; positions has length T, or is empty for 0..T−1;
// frequencies [D/2]; D even. out may be x itself (in place).
void rope_forward(Tensor& out, const Tensor& x, std::span<const int64_t> positions, const Tensor& frequencies);
// dx[B,T,H,D] += R(−positions[t] · frequencies) dout   (a rotation's inverse is its transpose)
void rope_backward(Tensor& dx, const Tensor& dout, std::span<const int64_t> positions, const Tensor& frequencies);

// θ_i = base^(−2i/D), i = 0..D/2−1: log-uniform from 1 down to ~1/base (Su et al.; base 10000),
// computed in float64 and stored as `dtype`.
Tensor rope_frequencies(int64_t head_dim, double base = 10000.0, DType dtype = DType::f32);

}  // namespace linarch::ops
