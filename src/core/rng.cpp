#include "core/rng.hpp"

#include <cmath>

namespace linarch {

std::array<uint32_t, 4> philox4x32(uint64_t seed, uint64_t stream, uint64_t counter) {
    constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
    constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
    uint32_t c0 = uint32_t(counter), c1 = uint32_t(counter >> 32);
    uint32_t c2 = uint32_t(stream), c3 = uint32_t(stream >> 32);
    uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
    for (int round = 0; round < 10; ++round) {
        const uint64_t p0 = uint64_t(kMul0) * c0;
        const uint64_t p1 = uint64_t(kMul1) * c2;
        const uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0;
        const uint32_t n1 = uint32_t(p1);
        const uint32_t n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
        const uint32_t n3 = uint32_t(p0);
        c0 = n0, c1 = n1, c2 = n2, c3 = n3;
        k0 += kWeyl0;
        k1 += kWeyl1;
    }
    return {c0, c1, c2, c3};
}

uint32_t RngStream::next_u32() {
    if (used_ == 4) {
        block_ = philox4x32(seed_, stream_, counter_++);
        used_ = 0;
    }
    return block_[used_++];
}

uint64_t RngStream::next_u64() {
    const uint64_t hi = next_u32();
    return (hi << 32) | next_u32();
}

double RngStream::uniform() { return double(next_u64() >> 11) * 0x1.0p-53; }

double RngStream::normal() {
    // 1 - uniform() is in (0, 1], so the log is finite.
    const double radius = std::sqrt(-2.0 * std::log(1.0 - uniform()));
    return radius * std::cos(2.0 * M_PI * uniform());
}

uint64_t RngStream::below(uint64_t n) {
    // Rejection keeps the draw unbiased for any n.
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = next_u64();
    while (x >= limit);
    return x % n;
}

uint64_t stream_id(const char* name) {
    uint64_t hash = 0xcbf29ce484222325ull;
    for (const char* p = name; *p; ++p) hash = (hash ^ uint8_t(*p)) * 0x100000001b3ull;
    return hash;
}

}  // namespace linarch
