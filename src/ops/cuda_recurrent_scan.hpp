// The ops' side of the exact fp32 CUDA path (backend/cuda/recurrent_scan.hpp): every tensor checked
// (on the GPU, f32, contiguous, its shape), then the recurrent scan. linear_attention.cpp and
// delta_rule.cpp call these for f32 CUDA tensors, in any of their forms (each is exact, so the
// recurrent form stands for all three). Internal to src/ops.
#pragma once
#include <vector>

#include "core/tensor.hpp"

namespace linarch::ops {

struct CudaScanInputs {
    const Tensor& q;
    const Tensor& k;
    const Tensor& v;
    const Tensor* beta;              // the delta rule's β [B,T,H], or null: additive
    const Tensor& log_gate;          // undefined, [B,T,H] or (additive) [B,T,H,Dk]
    const Tensor& log_decay;         // undefined or [H]
    const Tensor* initial_state;
    const std::vector<int64_t>& cu_seqlens;
    double scale;
};

void cuda_scan_forward(const char* op, Tensor& o, Tensor* final_state, const CudaScanInputs& in);

struct CudaScanGrads {
    Tensor& dq;
    Tensor& dk;
    Tensor& dv;
    Tensor* dbeta;           // with beta
    Tensor* dlog_gate;       // may be null
    Tensor* dinitial_state;  // may be null
    const Tensor& dout;
    const Tensor* dfinal_state;  // may be null
};

void cuda_scan_backward(const char* op, const CudaScanGrads& grads, const CudaScanInputs& in);

}  // namespace linarch::ops
