// CPU rotary position embedding (ops/rotary.hpp): interleaved pairs (2i, 2i+1) rotated by
// positions[t] · frequencies[i]. Raw pointers to contiguous row-major arrays; shapes were checked
// by ops/rotary.cpp.   x, out [B,T,H,D]   positions [T] or null (0..T−1)   frequencies [D/2]
#pragma once
#include <cstdint>

namespace linarch::cpu {

struct RopeDims {
    int64_t batch, seq_len, heads, head_dim;
};

// out = R(φ) x (out may equal x)
template <typename T>
void rope_forward(T* out, const T* x, const int64_t* positions, const T* frequencies, const RopeDims& dims);
// dx += R(−φ) dout
template <typename T>
void rope_backward(T* dx, const T* dout, const int64_t* positions, const T* frequencies, const RopeDims& dims);

}  // namespace linarch::cpu
