// The CUDA device as the rest of linarch sees it. Compiled from device.cu when the build has
// nvcc; otherwise from device_none.cpp, whose functions report that CUDA is absent.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace linarch::cuda {

bool built_with_cuda();
// Number of usable GPUs (0 without a driver or device).
int device_count();
// "NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB" or the reason there is none.
std::string describe_device(int index = 0);
// Throws Error saying what was asked and what is available when no usable GPU exists, or when GPU 0 is
// older than the code the build carries (sm_90a, compute_90).
void require_device(const std::string& what);

void* allocate(size_t bytes);
void release(void* ptr, size_t bytes);
void copy_to_device(void* dst, const void* src, size_t bytes);
// The same without waiting for the GPU, for small tables (offsets, positions, token ids): the bytes are
// staged in a pinned ring of the calling thread and copied in stream order on its cudaStreamPerThread (the
// data is there for that stream's later work, not for other streams), so `src` may go at once. A wrap of
// the 4 MiB ring waits for the stream; larger copies take copy_to_device.
void copy_to_device_async(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
void copy_on_device(void* dst, const void* src, size_t bytes);
// dst (contiguous) = the strided view at src: shape and strides in elements, at most 8 axes.
void copy_strided(void* dst, const void* src, const std::vector<int64_t>& shape, const std::vector<int64_t>& strides,
                  size_t element_bytes);
void fill_zero(void* ptr, size_t bytes);
// Waits for everything enqueued on the calling thread's stream (timings; host reads go through copies).
void synchronize();

// Device memory owned by one scope: a kernel's scratch, or a small host array copied over for one call
// (copy_to_device_async: ready for the calling thread's stream, in order).
class DeviceBuffer {
public:
    explicit DeviceBuffer(size_t bytes) : bytes_(bytes), ptr_(bytes > 0 ? allocate(bytes) : nullptr) {}
    template <typename T>
    explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size() * sizeof(T)) {
        if (bytes_ > 0) copy_to_device_async(ptr_, host.data(), bytes_);
    }
    ~DeviceBuffer() { release(ptr_, bytes_); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    template <typename T> T* as() const { return static_cast<T*>(ptr_); }

private:
    size_t bytes_;
    void* ptr_;
};

}  // namespace linarch::cuda
