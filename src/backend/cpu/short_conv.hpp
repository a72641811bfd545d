// CPU short causal depthwise convolution over time (mixers.md §12), optional SiLU after:
//     out[b,t,c] = act(Σ_{j<K} weight[c,j] · x[b, t−K+1+j, c])     (x before the sequence start is 0)
// Raw pointers to contiguous row-major arrays; shapes were checked by ops/linear_attention.cpp.
#pragma once
#include <cstdint>

namespace linarch::cpu {

struct ShortConvDims {
    int64_t batch, seq_len, channels, kernel_size;
};

// out, x [B,T,C]; weight [C,K]
template <typename T>
void short_conv_forward(T* out, const T* x, const T* weight, bool silu, const ShortConvDims& dims);
// dx [B,T,C] +=, dweight [C,K] +=; dout, x [B,T,C]. Recomputes the pre-activation when silu.
template <typename T>
void short_conv_backward(T* dx, T* dweight, const T* dout, const T* x, const T* weight, bool silu,
                         const ShortConvDims& dims);

}  // namespace linarch::cpu
