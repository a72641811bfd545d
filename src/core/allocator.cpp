#include "core/allocator.hpp"

#include <cstdlib>
#include <new>

#include "backend/cuda/device.hpp"
#include "core/error.hpp"

namespace linarch {

const char* device_name(Device device) { return device == Device::cpu ? "cpu" : "cuda"; }

CpuPool& CpuPool::instance() {
    static CpuPool pool;
    return pool;
}

// Powers of two up to 1 MiB, then whole MiB: bounded waste, few classes.
size_t CpuPool::size_class(size_t bytes) {
    if (bytes == 0) bytes = 1;
    if (bytes <= (size_t(1) << 20)) {
        size_t cls = kCpuAlignment;
        while (cls < bytes) cls <<= 1;
        return cls;
    }
    const size_t mib = size_t(1) << 20;
    return (bytes + mib - 1) / mib * mib;
}

void* CpuPool::allocate(size_t bytes) {
    const size_t cls = size_class(bytes);
    {
        std::lock_guard lock(mutex_);
        auto it = free_blocks_.find(cls);
        if (it != free_blocks_.end()) {
            void* ptr = it->second;
            free_blocks_.erase(it);
            cached_bytes_ -= cls;
            live_bytes_ += cls;
            return ptr;
        }
    }
    void* ptr = std::aligned_alloc(kCpuAlignment, cls);
    if (ptr == nullptr) fail("out of host memory: could not allocate {} bytes", cls);
    std::lock_guard lock(mutex_);
    live_bytes_ += cls;
    return ptr;
}

void CpuPool::release(void* ptr, size_t bytes) {
    if (ptr == nullptr) return;
    const size_t cls = size_class(bytes);
    std::lock_guard lock(mutex_);
    // Newest first within a size class: the block just released is the one most likely in cache.
    free_blocks_.emplace_hint(free_blocks_.lower_bound(cls), cls, ptr);
    cached_bytes_ += cls;
    live_bytes_ -= cls;
}

void CpuPool::trim() {
    std::lock_guard lock(mutex_);
    for (auto& [cls, ptr] : free_blocks_) std::free(ptr);
    free_blocks_.clear();
    cached_bytes_ = 0;
}

size_t CpuPool::cached_bytes() const {
    std::lock_guard lock(mutex_);
    return cached_bytes_;
}

size_t CpuPool::live_bytes() const {
    std::lock_guard lock(mutex_);
    return live_bytes_;
}

CpuPool::~CpuPool() { trim(); }

Arena::~Arena() {
    for (auto& block : blocks_) std::free(block.data);
}

void* Arena::allocate(size_t bytes) {
    bytes = (bytes + kCpuAlignment - 1) / kCpuAlignment * kCpuAlignment;
    while (current_ < blocks_.size()) {
        Block& block = blocks_[current_];
        if (block.bytes - block.used >= bytes) {
            void* ptr = block.data + block.used;
            block.used += bytes;
            return ptr;
        }
        ++current_;
    }
    const size_t size = bytes > block_bytes_ ? bytes : block_bytes_;
    char* data = static_cast<char*>(std::aligned_alloc(kCpuAlignment, size));
    if (data == nullptr) fail("out of host memory: arena could not allocate {} bytes", size);
    blocks_.push_back({data, size, bytes});
    current_ = blocks_.size() - 1;
    return data;
}

void Arena::reset() {
    for (auto& block : blocks_) block.used = 0;
    current_ = 0;
}

size_t Arena::used_bytes() const {
    size_t total = 0;
    for (const auto& block : blocks_) total += block.used;
    return total;
}

size_t Arena::capacity_bytes() const {
    size_t total = 0;
    for (const auto& block : blocks_) total += block.bytes;
    return total;
}

void* device_allocate(Device device, size_t bytes) {
    if (device == Device::cpu) return CpuPool::instance().allocate(bytes);
    return cuda::allocate(bytes);
}

void device_release(Device device, void* ptr, size_t bytes) {
    if (device == Device::cpu) return CpuPool::instance().release(ptr, bytes);
    cuda::release(ptr, bytes);
}

}  // namespace linarch
