#include "data/token_shard.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cstring>

#include "core/atomic_file.hpp"
#include "core/error.hpp"

namespace linarch {

namespace {
constexpr char kMagic[8] = {'L', 'N', 'R', 'T', 'O', 'K', 'S', '\0'};

template <typename T> void put(std::string& out, T value) {
    out.append(reinterpret_cast<const char*>(&value), sizeof(T));
}
template <typename T> T get(const char* p) {
    T value;
    std::memcpy(&value, p, sizeof(T));
    return value;
}
}  // namespace

void write_token_shard(const std::filesystem::path& path, std::span<const int32_t> tokens, int64_t vocab_size) {
    LINARCH_CHECK(vocab_size >= 2, "{}: vocabulary size {} is too small", path.string(), vocab_size);
    const uint32_t token_bytes = vocab_size <= 65536 ? 2 : 4;
    std::string payload(tokens.size() * token_bytes, '\0');
    for (size_t i = 0; i < tokens.size(); ++i) {
        const int32_t t = tokens[i];
        LINARCH_CHECK(t >= 0 && t < vocab_size, "{}: token {} at position {} is outside the vocabulary [0, {})",
                      path.string(), t, i, vocab_size);
        if (token_bytes == 2) {
            const uint16_t narrow = static_cast<uint16_t>(t);
            std::memcpy(&payload[i * 2], &narrow, 2);
        } else {
            std::memcpy(&payload[i * 4], &t, 4);
        }
    }
    std::string file(kMagic, 8);
    put<uint32_t>(file, kShardVersion);
    put<uint32_t>(file, token_bytes);
    put<uint64_t>(file, uint64_t(vocab_size));
    put<uint64_t>(file, tokens.size());
    put<uint64_t>(file, XXH3_64bits(payload.data(), payload.size()));
    put<uint64_t>(file, 0);
    file += payload;
    write_file_atomic(path, file);
}

TokenShard::TokenShard(const std::filesystem::path& path) : path_(path) {
    const std::string name = path.string();
    const int fd = ::open(name.c_str(), O_RDONLY);
    if (fd < 0) fail("cannot open token shard \"{}\": {}", name, std::strerror(errno));
    struct stat st {};
    ::fstat(fd, &st);
    mapping_bytes_ = size_t(st.st_size);
    if (mapping_bytes_ < kShardHeaderBytes) {
        ::close(fd);
        fail("token shard \"{}\" is {} bytes, shorter than its {}-byte header (truncated?)", name, mapping_bytes_,
             kShardHeaderBytes);
    }
    mapping_ = ::mmap(nullptr, mapping_bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (mapping_ == MAP_FAILED) {
        mapping_ = nullptr;
        fail("cannot map token shard \"{}\": {}", name, std::strerror(errno));
    }
    const char* base = static_cast<const char*>(mapping_);
    try {
        LINARCH_CHECK(std::memcmp(base, kMagic, 8) == 0, "\"{}\" is not a linarch token shard (bad magic)", name);
        const uint32_t version = get<uint32_t>(base + 8);
        LINARCH_CHECK(version == kShardVersion, "token shard \"{}\" has format version {}, expected {}", name,
                      version, kShardVersion);
        token_bytes_ = get<uint32_t>(base + 12);
        LINARCH_CHECK(token_bytes_ == 2 || token_bytes_ == 4, "token shard \"{}\": token width {} (expected 2 or 4)",
                      name, token_bytes_);
        vocab_size_ = int64_t(get<uint64_t>(base + 16));
        count_ = int64_t(get<uint64_t>(base + 24));
        const uint64_t checksum = get<uint64_t>(base + 32);
        const size_t payload_bytes = size_t(count_) * token_bytes_;
        LINARCH_CHECK(kShardHeaderBytes + payload_bytes == mapping_bytes_,
                      "token shard \"{}\": header says {} tokens ({} bytes) but the file holds {} bytes after the "
                      "header (truncated or corrupted)", name, count_, payload_bytes, mapping_bytes_ - kShardHeaderBytes);
        tokens_ = base + kShardHeaderBytes;
        LINARCH_CHECK(XXH3_64bits(tokens_, payload_bytes) == checksum,
                      "token shard \"{}\": checksum mismatch (the file is corrupted)", name);
    } catch (...) {
        ::munmap(mapping_, mapping_bytes_);
        mapping_ = nullptr;
        throw;
    }
}

TokenShard::~TokenShard() {
    if (mapping_) ::munmap(mapping_, mapping_bytes_);
}

void TokenShard::read(int64_t start, std::span<int32_t> out) const {
    LINARCH_CHECK(start >= 0 && start + int64_t(out.size()) <= count_, "{}: read of [{}, {}) past {} tokens",
                  path_.string(), start, start + int64_t(out.size()), count_);
    for (size_t i = 0; i < out.size(); ++i) out[i] = (*this)[start + int64_t(i)];
}

}  // namespace linarch
