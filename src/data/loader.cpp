#include "data/loader.hpp"

#include <algorithm>

#include "core/error.hpp"
#include "core/rng.hpp"

namespace linarch {

namespace fs = std::filesystem;

TokenSequence::TokenSequence(const std::vector<fs::path>& shard_paths) {
    LINARCH_CHECK(!shard_paths.empty(), "a token sequence needs at least one shard");
    starts_.push_back(0);
    for (const auto& path : shard_paths) {
        shards_.push_back(std::make_unique<TokenShard>(path));
        starts_.push_back(starts_.back() + shards_.back()->size());
    }
}

int64_t TokenSequence::vocab_size() const {
    int64_t vocab = 0;
    for (const auto& shard : shards_) vocab = std::max(vocab, shard->vocab_size());
    return vocab;
}

std::string TokenSequence::name() const {
    if (shards_.size() == 1) return shards_[0]->path().string();
    return fmt::format("{} … ({} shards)", shards_.empty() ? "" : shards_[0]->path().string(), shards_.size());
}

void TokenSequence::read(int64_t start, std::span<int32_t> out) const {
    LINARCH_CHECK(start >= 0 && start + int64_t(out.size()) <= size(), "{}: read of [{}, {}) past {} tokens", name(),
                  start, start + int64_t(out.size()), size());
    // The shard holding `start`: the last one that starts at or before it.
    size_t shard = size_t(std::upper_bound(starts_.begin(), starts_.end(), start) - starts_.begin()) - 1;
    size_t done = 0;
    while (done < out.size()) {
        const int64_t offset = start + int64_t(done) - starts_[shard];
        const size_t take = std::min(out.size() - done, size_t(shards_[shard]->size() - offset));
        shards_[shard]->read(offset, out.subspan(done, take));
        done += take;
        ++shard;
    }
}

CorpusSplit open_corpus_split(const fs::path& dir, const std::string& name) {
    CorpusSplit split;
    split.manifest = read_corpus_manifest(dir);
    split.name = name;
    const CorpusManifest& manifest = split.manifest;
    const SplitInfo& info = manifest.split(name);
    LINARCH_CHECK(!info.shards.empty(), "{}: split \"{}\" lists no shards", manifest.path().string(), name);
    std::vector<fs::path> paths;
    for (const auto& shard : info.shards) paths.push_back(dir / shard.file);
    split.tokens = TokenSequence(paths);
    for (size_t i = 0; i < paths.size(); ++i) {
        const TokenShard& shard = *split.tokens.shards()[i];
        LINARCH_CHECK(shard.vocab_size() == manifest.vocab_size && shard.tokenizer_id() == manifest.tokenizer_id,
                      "token shard \"{}\" was written by another tokenizer than {} names (\"{}\", vocabulary {}; the "
                      "shard's vocabulary is {}); prepare the corpus again", paths[i].string(),
                      manifest.path().string(), manifest.tokenizer, manifest.vocab_size, shard.vocab_size());
        LINARCH_CHECK(shard.size() == info.shards[i].tokens, "token shard \"{}\" holds {} tokens but {} lists {}",
                      paths[i].string(), shard.size(), manifest.path().string(), info.shards[i].tokens);
    }
    return split;
}

WindowSampler::WindowSampler(const TokenSequence& tokens, const SamplerOptions& options)
    : tokens_(tokens), options_(options) {
    LINARCH_CHECK(options.batch_size >= 1 && options.seq_len >= 1, "window sampler: batch_size {} and seq_len {} "
                  "must be ≥ 1", options.batch_size, options.seq_len);
    LINARCH_CHECK(options.ranks >= 1 && options.rank >= 0 && options.rank < options.ranks,
                  "window sampler: rank {} of {} ranks", options.rank, options.ranks);
    LINARCH_CHECK(tokens.size() > options.seq_len && batches_per_epoch() >= 1,
                  "{}: {} tokens make {} windows of seq_len {}, fewer than one batch of {} rows × {} ranks",
                  tokens.name(), tokens.size(), tokens.size() > 0 ? windows() : 0, options.seq_len, options.batch_size,
                  options.ranks);
}

int64_t WindowSampler::windows() const { return (tokens_.size() - 1) / options_.seq_len; }

int64_t WindowSampler::batches_per_epoch() const { return windows() / (options_.batch_size * options_.ranks); }

void WindowSampler::fill_row(Batch& batch, int64_t row, int64_t start) const {
    const size_t seq_len = size_t(options_.seq_len);
    tokens_.read(start, std::span<int32_t>(batch.inputs.data() + size_t(row) * seq_len, seq_len));
    tokens_.read(start + 1, std::span<int32_t>(batch.targets.data() + size_t(row) * seq_len, seq_len));
}

void WindowSampler::batch(const DataPosition& at, Batch& out) const {
    LINARCH_CHECK(at.epoch >= 0 && at.batch >= 0, "data position (epoch {}, batch {}) is negative", at.epoch, at.batch);
    const int64_t rows = options_.batch_size, seq_len = options_.seq_len;
    out.batch_size = rows;
    out.seq_len = seq_len;
    out.inputs.resize(size_t(rows * seq_len));
    out.targets.resize(out.inputs.size());
    // A position past the end of an epoch (the batch size or corpus changed since it was saved)
    // counts on into the next epochs.
    const int64_t per_epoch = batches_per_epoch();
    const int64_t global_batch = at.epoch * per_epoch + at.batch;
    const int64_t global_rows = rows * options_.ranks;
    for (int64_t row = 0; row < rows; ++row) {
        const int64_t global_row = options_.rank * rows + row;
        if (options_.order == WindowOrder::random) {
            // One Philox block per row: the counter is the row's number across all batches and ranks.
            RngStream rng(options_.seed, stream_id("train-windows"), uint64_t(global_batch * global_rows + global_row) << 8);
            fill_row(out, row, int64_t(rng.below(uint64_t(tokens_.size() - seq_len))));
        } else {
            const int64_t window = (global_batch % per_epoch) * global_rows + global_row;
            fill_row(out, row, window * seq_len);
        }
    }
}

DataPosition WindowSampler::next(const DataPosition& at) const {
    const int64_t per_epoch = batches_per_epoch();
    const int64_t global_batch = at.epoch * per_epoch + at.batch + 1;
    return {global_batch / per_epoch, global_batch % per_epoch};
}

}  // namespace linarch
