// CUDA device management: stream-ordered allocation and clear errors naming what was asked.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "backend/cuda/device.hpp"
#include "core/error.hpp"

namespace linarch::cuda {

namespace {
void check(cudaError_t status, const char* what) {
    if (status != cudaSuccess) fail("CUDA error in {}: {}", what, cudaGetErrorString(status));
}

constexpr int kMaxAxes = 8;

struct StridedView {
    int axes;
    int64_t shape[kMaxAxes], strides[kMaxAxes];
};

// dst[i] = src[offset of the i-th element in row-major order]: a thread per element.
template <typename Word> __global__ void copy_strided_kernel(Word* dst, const Word* src, StridedView view, int64_t n) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int64_t rest = i, offset = 0;
    for (int axis = view.axes - 1; axis >= 0; --axis) {
        offset += rest % view.shape[axis] * view.strides[axis];
        rest /= view.shape[axis];
    }
    dst[i] = src[offset];
}
}  // namespace

bool built_with_cuda() { return true; }

int device_count() {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no device" status
        return 0;
    }
    return count;
}

std::string describe_device(int index) {
    if (device_count() <= index) return "no CUDA device visible";
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, index), "cudaGetDeviceProperties");
    return fmt::format("{}, sm_{}{}, {:.1f} GiB", prop.name, prop.major, prop.minor,
                       double(prop.totalGlobalMem) / double(1ull << 30));
}

namespace {
// Why GPU 0 cannot run this build's kernels, or "" when it can. Asked once: the answer does not change,
// and allocation asks on every call.
const std::string& device_problem() {
    static const std::string problem = []() -> std::string {
        if (device_count() == 0) return fmt::format("none is usable here ({})", describe_device());
        cudaDeviceProp prop{};
        check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
        // sm_90a code runs on Hopper; the compute_90 PTX beside it JIT-compiles for newer GPUs, never older.
        if (prop.major < 9)
            return fmt::format("GPU 0 is {} (sm_{}{}), and this linarch carries code for sm_90a and compute_90 only: "
                               "rebuild with -gencode for sm_{}{} (CMAKE_CUDA_FLAGS in CMakeLists.txt)",
                               prop.name, prop.major, prop.minor, prop.major, prop.minor);
        return "";
    }();
    return problem;
}
}  // namespace

void require_device(const std::string& what) {
    if (!device_problem().empty()) fail("{} needs a CUDA GPU, but {}", what, device_problem());
}

// The default pool would hand its memory back to the driver at every synchronisation (release threshold
// 0), and the next call maps it again (the delta rule's forward op took 1.22 ms around 0.78 ms of kernels,
// bench/NOTES.md); it keeps what it has instead, as PyTorch's caching allocator does, and gives it up when
// an allocation would fail.
cudaMemPool_t caching_pool() {
    static const cudaMemPool_t pool = [] {
        int device = 0;
        check(cudaGetDevice(&device), "cudaGetDevice");
        cudaMemPool_t default_pool = nullptr;
        check(cudaDeviceGetDefaultMemPool(&default_pool, device), "cudaDeviceGetDefaultMemPool");
        uint64_t keep_everything = UINT64_MAX;
        check(cudaMemPoolSetAttribute(default_pool, cudaMemPoolAttrReleaseThreshold, &keep_everything),
              "cudaMemPoolSetAttribute");
        return default_pool;
    }();
    return pool;
}

void* allocate(size_t bytes) {
    require_device("allocating device memory");
    const cudaMemPool_t pool = caching_pool();
    void* ptr = nullptr;
    cudaError_t status = cudaMallocAsync(&ptr, bytes, cudaStreamPerThread);
    if (status == cudaErrorMemoryAllocation) {  // return the pool's unused memory, then try once more
        cudaGetLastError();
        check(cudaStreamSynchronize(cudaStreamPerThread), "cudaStreamSynchronize");
        check(cudaMemPoolTrimTo(pool, 0), "cudaMemPoolTrimTo");
        status = cudaMallocAsync(&ptr, bytes, cudaStreamPerThread);
    }
    if (status == cudaErrorMemoryAllocation) {
        size_t free_bytes = 0, total_bytes = 0;
        cudaGetLastError();
        cudaMemGetInfo(&free_bytes, &total_bytes);
        fail("out of GPU memory: asked for {:.1f} MiB, {:.1f} MiB free of {:.1f} MiB",
             bytes / 1048576.0, free_bytes / 1048576.0, total_bytes / 1048576.0);
    }
    check(status, "cudaMallocAsync");
    return ptr;
}

void release(void* ptr, size_t) {
    if (ptr != nullptr) cudaFreeAsync(ptr, cudaStreamPerThread);
}

void copy_to_device(void* dst, const void* src, size_t bytes) {
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cudaStreamPerThread), "copy to GPU");
    check(cudaStreamSynchronize(cudaStreamPerThread), "copy to GPU");
}

namespace {

// The calling thread's pinned staging ring for small uploads (copy_to_device_async), freed when the thread
// ends (errors ignored: at process exit the runtime may be gone first).
struct UploadRing {
    static constexpr size_t kBytes = size_t(4) << 20;
    char* base = nullptr;
    size_t used = 0;
    cudaEvent_t lap = nullptr;  // recorded when the ring wraps: everything queued before, its copies too, is done after it
    ~UploadRing() {
        if (lap) cudaEventDestroy(lap);
        if (base) cudaFreeHost(base);
    }
};
thread_local UploadRing upload_ring;

}  // namespace

void copy_to_device_async(void* dst, const void* src, size_t bytes) {
    UploadRing& ring = upload_ring;
    if (bytes > UploadRing::kBytes / 4) return copy_to_device(dst, src, bytes);
    if (!ring.base) {
        check(cudaMallocHost(reinterpret_cast<void**>(&ring.base), UploadRing::kBytes), "cudaMallocHost (upload ring)");
        check(cudaEventCreateWithFlags(&ring.lap, cudaEventDisableTiming), "cudaEventCreate (upload ring)");
    }
    if (ring.used + bytes > UploadRing::kBytes) {  // the ring's start is reused: its copies (and the stream) must have run
        check(cudaEventRecord(ring.lap, cudaStreamPerThread), "cudaEventRecord (upload ring)");
        check(cudaEventSynchronize(ring.lap), "cudaEventSynchronize (upload ring)");
        ring.used = 0;
    }
    char* staged = ring.base + ring.used;
    std::memcpy(staged, src, bytes);
    check(cudaMemcpyAsync(dst, staged, bytes, cudaMemcpyHostToDevice, cudaStreamPerThread), "copy to GPU");
    ring.used += (bytes + 255) / 256 * 256;
}

void copy_to_host(void* dst, const void* src, size_t bytes) {
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cudaStreamPerThread), "copy from GPU");
    check(cudaStreamSynchronize(cudaStreamPerThread), "copy from GPU");
}

// Stream-ordered on cudaStreamPerThread like every kernel, so no synchronisation is needed.
void copy_on_device(void* dst, const void* src, size_t bytes) {
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cudaStreamPerThread), "copy on GPU");
}

void copy_strided(void* dst, const void* src, const std::vector<int64_t>& shape, const std::vector<int64_t>& strides,
                  size_t element_bytes) {
    LINARCH_CHECK(shape.size() == strides.size() && shape.size() <= size_t(kMaxAxes),
                  "copy_strided: {} axes with {} strides (at most {})", shape.size(), strides.size(), kMaxAxes);
    StridedView view{int(shape.size()), {}, {}};
    int64_t n = 1;
    for (size_t a = 0; a < shape.size(); ++a) {
        view.shape[a] = shape[a];
        view.strides[a] = strides[a];
        n *= shape[a];
    }
    if (n == 0) return;
    const unsigned blocks = unsigned((n + 255) / 256);
    auto launch = [&](auto word) {
        using Word = decltype(word);
        copy_strided_kernel<<<blocks, 256, 0, cudaStreamPerThread>>>(static_cast<Word*>(dst),
                                                                     static_cast<const Word*>(src), view, n);
    };
    switch (element_bytes) {
        case 1: launch(uint8_t{}); break;
        case 2: launch(uint16_t{}); break;
        case 4: launch(uint32_t{}); break;
        case 8: launch(uint64_t{}); break;
        default: fail("copy_strided: elements of {} bytes", element_bytes);
    }
    check(cudaGetLastError(), "copy_strided_kernel");
}

void fill_zero(void* ptr, size_t bytes) {
    check(cudaMemsetAsync(ptr, 0, bytes, cudaStreamPerThread), "cudaMemsetAsync");
}

void synchronize() { check(cudaStreamSynchronize(cudaStreamPerThread), "cudaStreamSynchronize"); }

}  // namespace linarch::cuda
