// The CUDA device as the rest of linarch sees it. Compiled from device.cu when the build has
// nvcc; otherwise from device_none.cpp, whose functions report that CUDA is absent.
#pragma once
#include <cstddef>
#include <string>

namespace linarch::cuda {

bool built_with_cuda();
// Number of usable GPUs (0 without a driver or device).
int device_count();
// "NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB" or the reason there is none.
std::string describe_device(int index = 0);
// Throws Error saying what was asked and what is available when no usable GPU exists.
void require_device(const std::string& what);

void* allocate(size_t bytes);
void release(void* ptr, size_t bytes);
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);

}  // namespace linarch::cuda
