// Counter-based random numbers (Philox4x32-10, Salmon et al., SC'11). A draw is a pure function
// of (seed, stream, counter), so a run is reproducible on any thread count and a resumed run
// continues exactly by restoring the counter: no hidden generator state to save.
#pragma once
#include <array>
#include <cstdint>

namespace linarch {

std::array<uint32_t, 4> philox4x32(uint64_t seed, uint64_t stream, uint64_t counter);

// One named sequence of draws. `stream` separates uses (initialisation of each parameter, data
// sampling, dropout...) so they never overlap; `counter` is the position within the stream.
class RngStream {
public:
    RngStream(uint64_t seed, uint64_t stream, uint64_t counter = 0)
        : seed_(seed), stream_(stream), counter_(counter) {}
    uint32_t next_u32();
    uint64_t next_u64();
    double uniform();            // [0, 1), 53 random bits
    double normal();             // standard normal (Box-Muller)
    uint64_t below(uint64_t n);  // uniform integer in [0, n), unbiased
    uint64_t counter() const { return counter_; }
    uint64_t seed() const { return seed_; }
    uint64_t stream() const { return stream_; }

private:
    uint64_t seed_, stream_, counter_;
    std::array<uint32_t, 4> block_{};
    int used_ = 4;  // words of block_ consumed; the block is a function of counter_-1
};

// Stable 64-bit id for a name (FNV-1a), to derive a stream per parameter from its name.
uint64_t stream_id(const char* name);

}  // namespace linarch
