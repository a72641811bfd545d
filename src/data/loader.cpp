#include "data/loader.hpp"

#include "core/error.hpp"
#include "core/rng.hpp"

namespace linarch {

WindowSampler::WindowSampler(const TokenShard& shard, int64_t batch_size, int64_t seq_len, uint64_t seed)
    : shard_(shard), batch_size_(batch_size), seq_len_(seq_len), seed_(seed) {
    LINARCH_CHECK(shard.size() > seq_len + 1, "{}: {} tokens is too short for windows of seq_len {}",
                  shard.path().string(), shard.size(), seq_len);
}

int64_t WindowSampler::windows() const { return (shard_.size() - 1) / seq_len_; }

void WindowSampler::fill_row(Batch& batch, int64_t row, int64_t start) const {
    std::span<int32_t> inputs(batch.inputs.data() + row * seq_len_, size_t(seq_len_));
    shard_.read(start, inputs);
    std::span<int32_t> targets(batch.targets.data() + row * seq_len_, size_t(seq_len_));
    shard_.read(start + 1, targets);
}

void WindowSampler::random_batch(int64_t index, Batch& batch) const {
    batch.batch_size = batch_size_;
    batch.seq_len = seq_len_;
    batch.inputs.resize(size_t(batch_size_ * seq_len_));
    batch.targets.resize(batch.inputs.size());
    // One Philox block per row: the counter is the global row number.
    const uint64_t span = uint64_t(shard_.size() - seq_len_ - 1);
    for (int64_t row = 0; row < batch_size_; ++row) {
        RngStream rng(seed_, stream_id("train-windows"), uint64_t(index * batch_size_ + row) << 8);
        fill_row(batch, row, int64_t(rng.below(span)));
    }
}

void WindowSampler::sequential_batch(int64_t index, Batch& batch) const {
    batch.batch_size = batch_size_;
    batch.seq_len = seq_len_;
    batch.inputs.resize(size_t(batch_size_ * seq_len_));
    batch.targets.resize(batch.inputs.size());
    for (int64_t row = 0; row < batch_size_; ++row)
        fill_row(batch, row, ((index * batch_size_ + row) % windows()) * seq_len_);
}

}  // namespace linarch
