// Batches of (input, target) windows from a prepared corpus split, for any number of data-parallel
// ranks.
//
// A split's shards are memory-mapped and read as one token sequence (windows may cross a shard
// boundary). A window is seq_len + 1 consecutive tokens; an epoch is batches_per_epoch() global
// batches of batch_size × ranks windows, and rank r fills rows [r·batch_size, (r+1)·batch_size) of
// each global batch, so ranks see disjoint shares whose union is what one rank with a global batch
// would see.
//   random      every row is a window at a uniform start drawn from a counter-based stream keyed by
//               (seed, global row number): no generator state, any thread count sees the same data.
//   sequential  the non-overlapping windows in order; the windows past the last whole global batch
//               of an epoch are left out of it, so every rank has the same number of batches.
// A batch is a pure function of its DataPosition, which is all a checkpoint needs to resume exactly.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "data/corpus.hpp"
#include "data/token_shard.hpp"

namespace linarch {

// Shards read as one sequence of tokens.
class TokenSequence {
public:
    TokenSequence() = default;
    explicit TokenSequence(const std::vector<std::filesystem::path>& shard_paths);
    int64_t size() const { return starts_.empty() ? 0 : starts_.back(); }
    int64_t vocab_size() const;
    // Copies tokens [start, start+out.size()) into out.
    void read(int64_t start, std::span<int32_t> out) const;
    const std::vector<std::unique_ptr<TokenShard>>& shards() const { return shards_; }
    std::string name() const;  // for messages: the shard's path, or "first … (N shards)"

private:
    std::vector<std::unique_ptr<TokenShard>> shards_;
    std::vector<int64_t> starts_;  // starts_[i] = tokens before shard i; starts_.back() = size
};

struct CorpusSplit {
    CorpusManifest manifest;
    std::string name;  // "train" or "val"
    TokenSequence tokens;
    const SplitInfo& info() const { return manifest.split(name); }
};

// Opens split `name` of the corpus in `dir` and checks every shard against the manifest: its
// checksum, token count, vocabulary and the tokenizer that wrote it; a mismatch names the shard.
CorpusSplit open_corpus_split(const std::filesystem::path& dir, const std::string& name);

struct Batch {
    int64_t batch_size = 0, seq_len = 0;
    std::vector<int32_t> inputs;   // [batch_size * seq_len]
    std::vector<int32_t> targets;  // inputs shifted by one
};

enum class WindowOrder { random, sequential };

struct DataPosition {
    int64_t epoch = 0;
    int64_t batch = 0;  // global batches done in this epoch
    bool operator==(const DataPosition&) const = default;
};

struct SamplerOptions {
    int64_t batch_size = 1;  // rows per rank
    int64_t seq_len = 1;
    uint64_t seed = 1;
    WindowOrder order = WindowOrder::random;
    int64_t rank = 0, ranks = 1;
};

class WindowSampler {
public:
    WindowSampler(const TokenSequence& tokens, const SamplerOptions& options);
    // This rank's rows of the global batch at `at`.
    void batch(const DataPosition& at, Batch& out) const;
    // The position after `at`.
    DataPosition next(const DataPosition& at) const;
    int64_t windows() const;            // non-overlapping windows in the sequence
    int64_t batches_per_epoch() const;  // global batches

private:
    void fill_row(Batch& batch, int64_t row, int64_t start) const;
    const TokenSequence& tokens_;
    SamplerOptions options_;
};

}  // namespace linarch
