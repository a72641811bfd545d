#include "data/token_shard.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cstring>

#include "core/error.hpp"

namespace linarch {

namespace {
constexpr char kMagic[8] = {'L', 'N', 'R', 'T', 'O', 'K', 'S', '\0'};
constexpr size_t kFlushBytes = size_t(1) << 20;  // writer's buffer

template <typename T> void put(std::string& out, T value) {
    out.append(reinterpret_cast<const char*>(&value), sizeof(T));
}
template <typename T> T get(const char* p) {
    T value;
    std::memcpy(&value, p, sizeof(T));
    return value;
}

// Writes all `left` bytes at `data`, retrying short writes and EINTR. Returns 0 or the errno of the failure.
int write_all(int fd, const char* data, size_t left) {
    while (left > 0) {
        const ssize_t written = ::write(fd, data, left);
        if (written < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        data += written;
        left -= size_t(written);
    }
    return 0;
}

// A rename is durable once the directory entry is on disk (some file systems cannot sync one).
void sync_directory(const std::filesystem::path& file) {
    const std::filesystem::path directory = file.has_parent_path() ? file.parent_path() : ".";
    const int fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    ::fsync(fd);
    ::close(fd);
}
}  // namespace

struct TokenShardWriter::Checksum {
    XXH3_state_t* state = XXH3_createState();
    ~Checksum() { XXH3_freeState(state); }
};

TokenShardWriter::TokenShardWriter(const std::filesystem::path& path, int64_t vocab_size, uint64_t tokenizer_id)
    : path_(path),
      temp_(path.string() + fmt::format(".tmp-{}", ::getpid())),
      checksum_(std::make_unique<Checksum>()),
      token_bytes_(vocab_size <= 65536 ? 2 : 4),
      vocab_size_(vocab_size),
      tokenizer_id_(tokenizer_id) {
    LINARCH_CHECK(vocab_size >= 2, "{}: vocabulary size {} is too small", path.string(), vocab_size);
    LINARCH_CHECK(checksum_->state && XXH3_64bits_reset(checksum_->state) == XXH_OK,
                  "{}: cannot start the checksum", path.string());
    fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("cannot write token shard \"{}\": creating \"{}\": {}", path.string(), temp_.string(),
                      std::strerror(errno));
    // The header is written last, once count and checksum are known; its place is kept here.
    buffer_.reserve(kFlushBytes + 4);
    buffer_.assign(kShardHeaderBytes, '\0');
    flush_buffer();
}

TokenShardWriter::~TokenShardWriter() {
    if (fd_ >= 0) {
        ::close(fd_);
        ::unlink(temp_.c_str());
    }
}

void TokenShardWriter::flush_buffer() {
    if (int error = write_all(fd_, buffer_.data(), buffer_.size()))
        fail("cannot write token shard \"{}\": writing \"{}\": {}", path_.string(), temp_.string(),
             std::strerror(error));
    buffer_.clear();
}

void TokenShardWriter::append(std::span<const int32_t> tokens) {
    LINARCH_CHECK(fd_ >= 0, "{}: append after finish", path_.string());
    for (size_t i = 0; i < tokens.size(); ++i) {
        const int32_t t = tokens[i];
        LINARCH_CHECK(t >= 0 && t < vocab_size_, "{}: token {} at position {} is outside the vocabulary [0, {})",
                      path_.string(), t, count_ + int64_t(i), vocab_size_);
        if (token_bytes_ == 2)
            put<uint16_t>(buffer_, static_cast<uint16_t>(t));
        else
            put<int32_t>(buffer_, t);
        if (buffer_.size() >= kFlushBytes) {
            XXH3_64bits_update(checksum_->state, buffer_.data(), buffer_.size());
            flush_buffer();
        }
    }
    count_ += int64_t(tokens.size());
}

void TokenShardWriter::finish() {
    LINARCH_CHECK(fd_ >= 0, "{}: finished twice", path_.string());
    XXH3_64bits_update(checksum_->state, buffer_.data(), buffer_.size());
    flush_buffer();
    std::string header(kMagic, 8);
    put<uint32_t>(header, kShardVersion);
    put<uint32_t>(header, token_bytes_);
    put<uint64_t>(header, uint64_t(vocab_size_));
    put<uint64_t>(header, uint64_t(count_));
    put<uint64_t>(header, XXH3_64bits_digest(checksum_->state));
    put<uint64_t>(header, tokenizer_id_);
    const ssize_t written = ::pwrite(fd_, header.data(), header.size(), 0);
    const int error = written == ssize_t(header.size()) ? 0 : (written < 0 ? errno : EIO);
    if (error == 0 && ::fsync(fd_) == 0 && ::close(fd_) == 0) {
        fd_ = -1;
        if (::rename(temp_.c_str(), path_.c_str()) == 0) {
            sync_directory(path_);
            return;
        }
        const int rename_error = errno;
        ::unlink(temp_.c_str());
        fail("cannot write token shard \"{}\": renaming \"{}\": {}", path_.string(), temp_.string(),
             std::strerror(rename_error));
    }
    fail("cannot write token shard \"{}\": finishing \"{}\": {}", path_.string(), temp_.string(),
         std::strerror(error ? error : errno));
}

void write_token_shard(const std::filesystem::path& path, std::span<const int32_t> tokens, int64_t vocab_size,
                       uint64_t tokenizer_id) {
    TokenShardWriter writer(path, vocab_size, tokenizer_id);
    writer.append(tokens);
    writer.finish();
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
        tokenizer_id_ = get<uint64_t>(base + 40);
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
