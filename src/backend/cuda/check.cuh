// Error checks shared by the CUDA back end: a failed call or launch is reported where it happens, naming
// the kernel or call, not as a later unrelated error.
#pragma once
#include <cuda_runtime.h>

#include "core/error.hpp"

namespace linarch::cuda {

inline void check_cuda(cudaError_t status, const char* what) {
    if (status != cudaSuccess) fail("CUDA error in {}: {}", what, cudaGetErrorString(status));
}

// After a <<<...>>> launch: configuration errors (too many threads, too much shared memory) surface here.
inline void check_launch(const char* kernel) {
    const cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess) fail("CUDA kernel {} failed to launch: {}", kernel, cudaGetErrorString(status));
}

}  // namespace linarch::cuda
