// The inputs of `linarch data prepare`: which files a list of paths, directories and globs names,
// and each file's records, read in blocks so that memory stays flat whatever the file's size.
//   .jsonl   one record per non-blank line (a JSON object; its text field is read later, in parallel)
//   .txt     one record per document: a run of whole lines ending at the first line end once it
//            holds at least 16 KiB (a file's last document may be shorter). Whole runs of text go to
//            train or validation, so validation is unseen text rather than lines interleaved with
//            training lines. Text with no line end for over a megabyte is cut at a UTF-8 character
//            boundary.
// Either may be gzip-compressed (.jsonl.gz, .txt.gz).
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace linarch {

enum class InputFormat { text, jsonl };

struct InputFile {
    std::filesystem::path path;
    InputFormat format = InputFormat::text;
    bool gzip = false;
};

inline constexpr size_t kTextDocumentBytes = 16384;
inline constexpr size_t kTextLineCutBytes = size_t(1) << 20;

// Files as given; directories: every .txt, .jsonl, .txt.gz and .jsonl.gz file below them; glob
// patterns (`data/*.jsonl.gz`): their matches. Directories and globs expand in path order; a file
// named twice is read once. A missing path, a glob that matches nothing, a directory without
// inputs and a file of another type are errors naming the path.
std::vector<InputFile> expand_inputs(const std::vector<std::string>& inputs);

struct RecordSpan {
    size_t begin = 0, end = 0;  // bytes [begin, end) of RecordBlock::bytes
    int64_t line = 0;           // the file's line (1-based) where the record starts
};

// A run of whole records of one file.
struct RecordBlock {
    std::string bytes;
    std::vector<RecordSpan> records;
};

class RecordReader {
public:
    explicit RecordReader(const InputFile& file);
    ~RecordReader();
    RecordReader(const RecordReader&) = delete;
    RecordReader& operator=(const RecordReader&) = delete;
    // The next whole records, about `target_bytes` of them (more when one record is larger); false
    // once the file is done. An empty file (or a .jsonl of blank lines only) is an error.
    bool next(RecordBlock& block, size_t target_bytes);

private:
    bool fill();  // reads more bytes into pending_; false at end of file
    bool next_record(RecordBlock& block);
    struct Source;
    std::unique_ptr<Source> source_;
    InputFile file_;
    std::string pending_;     // bytes read and not yet handed out, from cursor_
    size_t cursor_ = 0;
    size_t search_from_ = 0;  // where the search for the current record's end resumes
    int64_t line_ = 1;        // line of pending_[cursor_]
    bool eof_ = false;
    int64_t bytes_read_ = 0, records_ = 0;
};

}  // namespace linarch
