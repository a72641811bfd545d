// Error checks shared by the CUDA back end: a failed call or launch is reported where it happens, naming
// the kernel or call, not as a later unrelated error.
#pragma once
#include <cuda_runtime.h>

#include <utility>

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

namespace linarch::cuda {

// Launches kernel<<<grid, threads, bytes>>> on the calling thread's stream, first raising the kernel's
// dynamic shared-memory limit to `bytes` (above 48 KiB it must be asked for). A failure names the kernel
// and the memory it asked for.
template <typename... Params, typename... Args>
void launch_with_shared_memory(void (*kernel)(Params...), const char* name, dim3 grid, int threads, int bytes,
                               Args&&... args) {
    cudaError_t status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (status == cudaSuccess) {
        kernel<<<grid, threads, bytes, cudaStreamPerThread>>>(std::forward<Args>(args)...);
        status = cudaGetLastError();
    }
    if (status != cudaSuccess)
        fail("CUDA kernel {} failed to launch with {} bytes of shared memory: {}", name, bytes,
             cudaGetErrorString(status));
}

}  // namespace linarch::cuda
