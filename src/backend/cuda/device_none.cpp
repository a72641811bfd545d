// Stand-in for device.cu in builds without nvcc: every entry point says CUDA is not built in.
#include "backend/cuda/device.hpp"
#include "core/error.hpp"

namespace linarch::cuda {

bool built_with_cuda() { return false; }
int device_count() { return 0; }
std::string describe_device(int) { return "no CUDA: linarch was built without nvcc"; }

void require_device(const std::string& what) {
    fail("{} needs a CUDA GPU, but this linarch was built without CUDA (rebuild with nvcc on PATH "
         "or at /usr/local/cuda)", what);
}

void* allocate(size_t) {
    require_device("allocating device memory");
    return nullptr;
}
void release(void*, size_t) {}
void copy_to_device(void*, const void*, size_t) { require_device("copying to the GPU"); }
void copy_to_device_async(void*, const void*, size_t) { require_device("copying to the GPU"); }
void copy_to_host(void*, const void*, size_t) { require_device("copying from the GPU"); }
void copy_on_device(void*, const void*, size_t) { require_device("copying on the GPU"); }
void copy_strided(void*, const void*, const std::vector<int64_t>&, const std::vector<int64_t>&, size_t) {
    require_device("copying on the GPU");
}
void fill_zero(void*, size_t) { require_device("zeroing GPU memory"); }
void synchronize() {}

}  // namespace linarch::cuda
