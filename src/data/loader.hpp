// Batches of (input, target) windows from a token shard. Window positions are a pure function of
// (seed, batch index), drawn from a counter-based stream, so resuming at step s needs no saved
// loader state beyond s itself and any thread count sees the same data.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "data/token_shard.hpp"

namespace linarch {

struct Batch {
    int64_t batch_size = 0, seq_len = 0;
    std::vector<int32_t> inputs;   // [batch_size * seq_len]
    std::vector<int32_t> targets;  // inputs shifted by one
};

class WindowSampler {
public:
    WindowSampler(const TokenShard& shard, int64_t batch_size, int64_t seq_len, uint64_t seed);
    // Random windows for training batch number `index` (step · grad_accum + micro-step).
    void random_batch(int64_t index, Batch& batch) const;
    // The `index`-th batch of consecutive, non-overlapping windows (evaluation; wraps around).
    void sequential_batch(int64_t index, Batch& batch) const;
    int64_t windows() const;  // non-overlapping windows in the shard

private:
    void fill_row(Batch& batch, int64_t row, int64_t start) const;
    const TokenShard& shard_;
    int64_t batch_size_, seq_len_;
    uint64_t seed_;
};

}  // namespace linarch
