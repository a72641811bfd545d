// Memory for tensors. CpuPool caches freed blocks by size class so a training step reuses the
// previous step's activations instead of going back to malloc; Arena is a bump allocator for
// scratch space whose lifetime is one call (reset at the end). Device memory goes through the
// backend (cudaMallocAsync on the CUDA backend).
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

namespace linarch {

enum class Device : uint8_t { cpu, cuda };
const char* device_name(Device device);

// Alignment of every CPU block: a cache line, which is also what AVX-512 loads want.
inline constexpr size_t kCpuAlignment = 64;

class CpuPool {
public:
    static CpuPool& instance();
    void* allocate(size_t bytes);
    void release(void* ptr, size_t bytes);
    // Returns every cached block to the system (tests use it to check nothing is leaked).
    void trim();
    size_t cached_bytes() const;
    size_t live_bytes() const;
    ~CpuPool();

private:
    static size_t size_class(size_t bytes);
    mutable std::mutex mutex_;
    std::multimap<size_t, void*> free_blocks_;
    size_t cached_bytes_ = 0;
    size_t live_bytes_ = 0;
};

// Bump allocator over one growing list of blocks. Not thread safe: one per worker.
class Arena {
public:
    explicit Arena(size_t block_bytes = size_t(1) << 20) : block_bytes_(block_bytes) {}
    Arena(const Arena&) = delete;
    Arena& operator=(const Arena&) = delete;
    ~Arena();
    void* allocate(size_t bytes);
    template <typename T> T* allocate_array(size_t count) {
        return static_cast<T*>(allocate(count * sizeof(T)));
    }
    // Forgets every allocation but keeps the memory for the next round.
    void reset();
    size_t used_bytes() const;
    size_t capacity_bytes() const;

private:
    struct Block {
        char* data;
        size_t bytes;
        size_t used;
    };
    size_t block_bytes_;
    std::vector<Block> blocks_;
    size_t current_ = 0;
};

// Raw device memory; CPU memory comes from CpuPool. CUDA throws Error when the build has no CUDA.
void* device_allocate(Device device, size_t bytes);
void device_release(Device device, void* ptr, size_t bytes);

}  // namespace linarch
