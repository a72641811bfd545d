// The byte-level corpus: text files become token shards of raw bytes (vocabulary 256), split
// into train and validation by blocks of text chosen deterministically from the seed.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace linarch {

struct CorpusSummary {
    int64_t train_tokens = 0;
    int64_t val_tokens = 0;
    int64_t documents = 0;      // blocks the split chose between
    int64_t val_documents = 0;
};

struct ByteCorpusOptions {
    double val_fraction = 0.02;
    uint64_t seed = 1;
    // Texts are cut into blocks of about this many bytes at line ends; each block goes wholly to
    // train or validation, so validation is unseen text rather than interleaved lines.
    int64_t block_bytes = 16384;
};

// Writes out_dir/train.bin, out_dir/val.bin and out_dir/manifest.json.
CorpusSummary prepare_byte_corpus(const std::vector<std::filesystem::path>& inputs,
                                  const std::filesystem::path& out_dir, const ByteCorpusOptions& options);

}  // namespace linarch
