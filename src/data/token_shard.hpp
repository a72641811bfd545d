// Token shards: a 48-byte header then raw little-endian tokens.
//   magic "LNRTOKS\0" | version u32 | token_bytes u32 (2 or 4) | vocab_size u64 | count u64 |
//   checksum u64 (XXH3-64 of the token bytes) | reserved u64
// The width follows the vocabulary (uint16 up to 65536 symbols), so byte and BPE corpora share
// one format. Shards are memory-mapped for reading and written atomically.
#pragma once
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace linarch {

inline constexpr uint32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderBytes = 48;

void write_token_shard(const std::filesystem::path& path, std::span<const int32_t> tokens, int64_t vocab_size);

// A read-only mapping of one shard; the checksum is verified on open.
class TokenShard {
public:
    explicit TokenShard(const std::filesystem::path& path);
    ~TokenShard();
    TokenShard(const TokenShard&) = delete;
    TokenShard& operator=(const TokenShard&) = delete;
    int64_t size() const { return count_; }
    int64_t vocab_size() const { return vocab_size_; }
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
    int64_t count_ = 0;
};

}  // namespace linarch
