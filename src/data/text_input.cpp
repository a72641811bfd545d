#include "data/text_input.hpp"

#include <fcntl.h>
#include <glob.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include "core/error.hpp"

namespace linarch {

namespace fs = std::filesystem;

namespace {

constexpr size_t kReadBytes = size_t(1) << 20;
constexpr const char* kSupported = ".txt, .jsonl, .txt.gz or .jsonl.gz";

bool ends_with(const std::string& text, const std::string& suffix) {
    return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The input kind from the file name; false when it is not one of ours.
bool classify(const fs::path& path, InputFile& file) {
    std::string name = path.filename().string();
    file.path = path;
    file.gzip = ends_with(name, ".gz");
    if (file.gzip) name.resize(name.size() - 3);
    if (ends_with(name, ".jsonl")) {
        file.format = InputFormat::jsonl;
        return true;
    }
    if (ends_with(name, ".txt")) {
        file.format = InputFormat::text;
        return true;
    }
    return false;
}

void add_path(const fs::path& path, std::vector<InputFile>& files) {
    InputFile file;
    if (fs::is_directory(path)) {
        std::vector<fs::path> found;
        for (const auto& entry : fs::recursive_directory_iterator(path))
            if (entry.is_regular_file() && classify(entry.path(), file)) found.push_back(entry.path());
        LINARCH_CHECK(!found.empty(), "input directory \"{}\" holds no {} files", path.string(), kSupported);
        std::sort(found.begin(), found.end());
        for (const auto& p : found) {
            classify(p, file);
            files.push_back(file);
        }
        return;
    }
    LINARCH_CHECK(classify(path, file), "input \"{}\": unsupported file type (expected {})", path.string(),
                  kSupported);
    files.push_back(file);
}

std::vector<fs::path> glob_matches(const std::string& pattern) {
    glob_t result{};
    const int status = ::glob(pattern.c_str(), 0, nullptr, &result);
    std::vector<fs::path> matches;
    if (status == 0)
        for (size_t i = 0; i < result.gl_pathc; ++i) matches.emplace_back(result.gl_pathv[i]);
    ::globfree(&result);
    LINARCH_CHECK(status == 0 || status == GLOB_NOMATCH, "input \"{}\": cannot expand the pattern", pattern);
    LINARCH_CHECK(!matches.empty(), "input \"{}\": the pattern matches no files", pattern);
    std::sort(matches.begin(), matches.end());
    return matches;
}

bool is_blank(const char* begin, const char* end) {
    for (const char* p = begin; p < end; ++p)
        if (*p != ' ' && *p != '\t' && *p != '\r') return false;
    return true;
}

}  // namespace

std::vector<InputFile> expand_inputs(const std::vector<std::string>& inputs) {
    LINARCH_CHECK(!inputs.empty(), "data prepare: no --input given");
    std::vector<InputFile> expanded;
    for (const std::string& input : inputs) {
        if (fs::exists(input)) {
            add_path(input, expanded);
        } else if (input.find_first_of("*?[") != std::string::npos) {
            for (const auto& match : glob_matches(input)) add_path(match, expanded);
        } else {
            fail("input \"{}\" does not exist", input);
        }
    }
    std::vector<InputFile> files;
    std::set<fs::path> seen;
    for (auto& file : expanded)
        if (seen.insert(fs::weakly_canonical(file.path)).second) files.push_back(std::move(file));
    return files;
}

// Plain files through read(2), gzip files through zlib's gz* reader.
struct RecordReader::Source {
    int fd = -1;
    gzFile gz = nullptr;
    std::string name;

    explicit Source(const InputFile& file) : name(file.path.string()) {
        if (file.gzip) {
            gz = ::gzopen(name.c_str(), "rb");
            if (!gz) fail("cannot open input \"{}\": {}", name, errno ? std::strerror(errno) : "out of memory");
            ::gzbuffer(gz, 1 << 18);
        } else {
            fd = ::open(name.c_str(), O_RDONLY | O_CLOEXEC);
            if (fd < 0) fail("cannot open input \"{}\": {}", name, std::strerror(errno));
        }
    }
    ~Source() {
        if (gz) ::gzclose(gz);
        if (fd >= 0) ::close(fd);
    }
    // Up to `size` bytes into `out`; 0 at end of file.
    size_t read(char* out, size_t size) {
        if (gz) {
            const int got = ::gzread(gz, out, unsigned(size));
            int status = Z_OK;
            const char* message = ::gzerror(gz, &status);
            // A truncated stream reads to its end and then reports Z_BUF_ERROR.
            if (got < 0 || (status != Z_OK && status != Z_STREAM_END))
                fail("input \"{}\": gzip error: {} (corrupted or truncated file)", name, message);
            return size_t(got);
        }
        while (true) {
            const ssize_t got = ::read(fd, out, size);
            if (got >= 0) return size_t(got);
            if (errno != EINTR) fail("cannot read input \"{}\": {}", name, std::strerror(errno));
        }
    }
};

RecordReader::RecordReader(const InputFile& file) : source_(std::make_unique<Source>(file)), file_(file) {}

RecordReader::~RecordReader() = default;

bool RecordReader::fill() {
    if (eof_) return false;
    // Drop what was handed out, once it is most of the buffer, so the buffer stays small.
    if (cursor_ > 0 && cursor_ >= pending_.size() / 2) {
        pending_.erase(0, cursor_);
        search_from_ -= cursor_;
        cursor_ = 0;
    }
    const size_t old_size = pending_.size();
    pending_.resize(old_size + kReadBytes);
    const size_t got = source_->read(pending_.data() + old_size, kReadBytes);
    pending_.resize(old_size + got);
    bytes_read_ += int64_t(got);
    if (got == 0) eof_ = true;
    return got > 0;
}

bool RecordReader::next_record(RecordBlock& block) {
    auto emit = [&](size_t end, size_t next) {
        const size_t begin = block.bytes.size();
        block.bytes.append(pending_, cursor_, end - cursor_);
        block.records.push_back({begin, block.bytes.size(), line_});
        ++records_;
        line_ += std::count(pending_.data() + cursor_, pending_.data() + next, '\n');
        cursor_ = search_from_ = next;
    };
    while (true) {
        const char* base = pending_.data();
        if (file_.format == InputFormat::jsonl) {
            search_from_ = std::max(search_from_, cursor_);
            const void* newline = std::memchr(base + search_from_, '\n', pending_.size() - search_from_);
            if (newline || (eof_ && cursor_ < pending_.size())) {
                const size_t end = newline ? size_t(static_cast<const char*>(newline) - base) : pending_.size();
                const size_t next = newline ? end + 1 : end;
                if (is_blank(base + cursor_, base + end)) {
                    ++line_;
                    cursor_ = search_from_ = next;
                    continue;
                }
                emit(end, next);
                return true;
            }
            search_from_ = pending_.size();
        } else {
            search_from_ = std::max(search_from_, cursor_ + kTextDocumentBytes - 1);
            const void* newline = search_from_ < pending_.size()
                                      ? std::memchr(base + search_from_, '\n', pending_.size() - search_from_)
                                      : nullptr;
            if (newline) {
                const size_t end = size_t(static_cast<const char*>(newline) - base) + 1;
                emit(end, end);
                return true;
            }
            if (pending_.size() - cursor_ >= kTextDocumentBytes + kTextLineCutBytes) {
                // No line end for over a megabyte: cut before a UTF-8 continuation byte.
                size_t end = cursor_ + kTextDocumentBytes + kTextLineCutBytes;
                for (int back = 0; back < 3 && (static_cast<unsigned char>(base[end]) & 0xC0) == 0x80; ++back) --end;
                emit(end, end);
                return true;
            }
            if (eof_ && cursor_ < pending_.size()) {
                emit(pending_.size(), pending_.size());
                return true;
            }
            search_from_ = std::max(search_from_, pending_.size());
        }
        if (eof_ || !fill()) {
            if (!eof_) continue;
            if (cursor_ < pending_.size()) continue;  // the last record has no line end
            LINARCH_CHECK(bytes_read_ > 0, "input \"{}\" is empty", file_.path.string());
            LINARCH_CHECK(records_ > 0, "input \"{}\" is empty (only blank lines)", file_.path.string());
            return false;
        }
    }
}

bool RecordReader::next(RecordBlock& block, size_t target_bytes) {
    block.bytes.clear();
    block.records.clear();
    while (block.bytes.size() < target_bytes && next_record(block)) {
    }
    return !block.records.empty();
}

}  // namespace linarch
