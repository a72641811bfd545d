// Token shards: a 48-byte header then raw little-endian tokens.
//   magic "LNRTOKS\0" | version u32 | token_bytes u32 (2 or 4) | vocab_size u64 | count u64 |
//   checksum u64 (XXH3-64 of the token bytes) | tokenizer_id u64 (0 = not recorded)
// The width follows the vocabulary (uint16 up to 65536 symbols), so byte and BPE corpora share
// one format. tokenizer_id is the fingerprint of the tokenizer that wrote the shard (corpus.hpp),
// so a shard that does not belong to its corpus's manifest is caught when the corpus is opened.
// Shards are memory-mapped for reading and written under a temporary name, renamed when complete.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace linarch {

inline constexpr uint32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderBytes = 48;

// Streams tokens into a shard: memory stays flat however many are appended. The file appears under
// its name only when finish() returns; a writer destroyed before that removes its temporary file.
class TokenShardWriter {
public:
    TokenShardWriter(const std::filesystem::path& path, int64_t vocab_size, uint64_t tokenizer_id = 0);
    ~TokenShardWriter();
    TokenShardWriter(const TokenShardWriter&) = delete;
    TokenShardWriter& operator=(const TokenShardWriter&) = delete;
    void append(std::span<const int32_t> tokens);
    // Writes the header, syncs the file and renames it into place.
    void finish();
    int64_t size() const { return count_; }
    const std::filesystem::path& path() const { return path_; }

private:
    void flush_buffer();
    std::filesystem::path path_, temp_;
    int fd_ = -1;
    struct Checksum;  // streaming XXH3 state
    std::unique_ptr<Checksum> checksum_;
    uint32_t token_bytes_;
    int64_t vocab_size_;
    uint64_t tokenizer_id_;
    int64_t count_ = 0;
    std::string buffer_;  // encoded tokens not yet written
};

void write_token_shard(const std::filesystem::path& path, std::span<const int32_t> tokens, int64_t vocab_size,
                       uint64_t tokenizer_id = 0);

// A read-only mapping of one shard; the checksum is verified on open.
class TokenShard {
public:
    explicit TokenShard(const std::filesystem::path& path);
    ~TokenShard();
    TokenShard(const TokenShard&) = delete;
    TokenShard& operator=(const TokenShard&) = delete;
    int64_t size() const { return count_; }
    int64_t vocab_size() const { return vocab_size_; }
    uint64_t tokenizer_id() const { return tokenizer_id_; }
    int32_t operator[](int64_t i) const {
        return token_bytes_ == 2 ? int32_t(static_cast<const uint16_t*>(tokens_)[i])
                                 : static_cast<const int32_t*>(tokens_)[i];
    }
    // Copies tokens [start, start+out.size()) into out.
    void read(int64_t start, std::span<int32_t> out) const;
    const std::filesystem::path& path() const { return path_; }

private:
    std::filesystem::path path_;
    void* mapping_ = nullptr;
    size_t mapping_bytes_ = 0;
    const void* tokens_ = nullptr;
    uint32_t token_bytes_ = 2;
    int64_t vocab_size_ = 0;
    uint64_t tokenizer_id_ = 0;
    int64_t count_ = 0;
};

}  // namespace linarch
