// The row kernels of GRAPE-M on CUDA (ops/grape.hpp; the CPU's are backend/cpu/grape.cpp): between the basis
// GEMMs (cuBLASLt, in ops/grape.cpp) the rows of each token are moved by its position. fp32 rows, float64
// angles and gradient sums, as on the CPU. Device pointers to contiguous arrays:
//     coords, rotated, drotated [B,T,H,D] (commuting) or [B,T,H,r] (mixture)   positions [T] (null: 0..T−1)
#pragma once
#include <cstdint>

namespace linarch::cuda {

struct GrapeRows {
    int64_t batch, seq_len, heads, width;  // width: D (planes) or r (mixture)
    const int64_t* positions;              // device [T], or null
};

// coords = R(sign · n ω) coords on the planes (2i, 2i+1), in place; frequencies [D/2] float64.
void grape_rotate_planes(float* coords, const double* frequencies, double sign, const GrapeRows& rows);
// dfrequencies [D/2] (float64, +=) += Σ_rows n · (dv_2i+1 v_2i − dv_2i v_2i+1): sums per token, then over
// the tokens in order (deterministic). scratch: seq_len · D/2 doubles.
void grape_frequency_gradient(double* dfrequencies, const float* rotated, const float* drotated, double* scratch,
                              const GrapeRows& rows);
// dst[row] = src[row] · M_{j(t)} for the rows of each token t: matrices [m,r,r], index_of_token [T].
void grape_multiply_rows(float* dst, const float* src, const float* matrices, const int64_t* index_of_token,
                         const GrapeRows& rows);
// dpowers [T,r,r] (float64, =) = Σ over the token's rows of dmoved ⊗ coords: ∂loss/∂(the token's power).
void grape_power_gradient(double* dpowers, const float* dmoved, const float* coords, const GrapeRows& rows);

}  // namespace linarch::cuda
