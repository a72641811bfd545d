// CUDA rotary position embedding (ops/rotary.hpp says what it computes; that file checks the operands).
// x, out [B,T,H,D] fp32 on the device, positions: T device ints or null for 0..T−1, frequencies [D/2].
// Angles and their cos/sin are formed in float64, as on the CPU, and rounded once.
#pragma once
#include <cstdint>

namespace linarch::cuda {

// out = R(positions · frequencies) x (out may be x).
void rope_forward(float* out, const float* x, const int64_t* positions, const float* frequencies, int64_t batch,
                  int64_t seq_len, int64_t heads, int64_t head_dim);
// dx += R(−positions · frequencies) dout.
void rope_backward(float* dx, const float* dout, const int64_t* positions, const float* frequencies, int64_t batch,
                   int64_t seq_len, int64_t heads, int64_t head_dim);

}  // namespace linarch::cuda
