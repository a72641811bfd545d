#include "data/corpus.hpp"

#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <string_view>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "core/rng.hpp"
#include "data/text_input.hpp"
#include "data/token_shard.hpp"
#include "data/tokenizer.hpp"

namespace linarch {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr int kManifestVersion = 2;
constexpr size_t kWorkBytes = size_t(1) << 20;  // text per unit of parallel work

// One block of records on its way from the reader, through a worker, to the writer.
struct WorkItem {
    int64_t sequence = 0;
    size_t input = 0;          // index into the input list
    RecordBlock block;
    std::exception_ptr error;  // reading or tokenizing failed here; raised when the writer gets here
    // A worker's output: every accepted document's tokens, each followed by EOS.
    std::vector<int32_t> tokens;
    struct Document {
        size_t token_end = 0;
        int64_t bytes = 0;
    };
    std::vector<Document> documents;
    int64_t skipped = 0;
    std::string first_skipped;
};

// The text of a JSONL record, or the reason it has none.
bool jsonl_text(std::string_view line, const std::string& field, std::string& text, std::string& fault) {
    json record;
    try {
        record = json::parse(line);
    } catch (const json::parse_error& e) {
        std::string what = e.what();
        if (const size_t bracket = what.find("] "); bracket != std::string::npos) what.erase(0, bracket + 2);
        if (what.rfind("parse error at line 1, ", 0) == 0) what.replace(0, 23, "at ");
        fault = "not valid JSON (" + what + ")";
        return false;
    }
    if (!record.is_object()) {
        fault = fmt::format("expected a JSON object, got {}", record.type_name());
        return false;
    }
    const auto found = record.find(field);
    if (found == record.end()) {
        fault = fmt::format("no \"{}\" field (choose the field with --text-field)", field);
        return false;
    }
    if (!found->is_string()) {
        fault = fmt::format("\"{}\" is {}, expected a string", field, found->type_name());
        return false;
    }
    text = found->get_ref<const std::string&>();
    return true;
}

void tokenize(WorkItem& item, const InputFile& file, const Tokenizer& tokenizer, const PrepareOptions& options) {
    std::string text;
    std::string fault;
    for (const RecordSpan& record : item.block.records) {
        std::string_view raw(item.block.bytes.data() + record.begin, record.end - record.begin);
        if (file.format == InputFormat::jsonl) {
            if (!jsonl_text(raw, options.text_field, text, fault)) {
                const std::string where = fmt::format("{}:{}: malformed JSONL record: {}", file.path.string(),
                                                      record.line, fault);
                if (options.on_error == OnError::fail)
                    fail("{} (pass --on-error skip to skip such records)", where);
                if (item.skipped++ == 0) item.first_skipped = where;
                continue;
            }
            raw = text;
        }
        const std::vector<int32_t> ids = tokenizer.encode(raw);
        item.tokens.insert(item.tokens.end(), ids.begin(), ids.end());
        item.tokens.push_back(tokenizer.eos());
        item.documents.push_back({item.tokens.size(), int64_t(raw.size())});
    }
    item.block = {};  // the text is no longer needed; free it before the item waits for the writer
}

// Reader → workers → writer, with at most `max_in_flight` blocks read and not yet written.
class Pipeline {
public:
    Pipeline(const std::vector<InputFile>& files, const Tokenizer& tokenizer, const PrepareOptions& options)
        : files_(files), tokenizer_(tokenizer), options_(options) {
        const int workers = options.threads > 0 ? options.threads
                                                : std::max(1, int(std::thread::hardware_concurrency()));
        max_in_flight_ = 2 * workers + 2;
        threads_.emplace_back([this] { read_all(); });
        for (int w = 0; w < workers; ++w) threads_.emplace_back([this] { work(); });
    }
    ~Pipeline() {
        {
            std::lock_guard lock(mutex_);
            stop_ = true;
        }
        changed_.notify_all();
        for (auto& thread : threads_) thread.join();
    }

    // The next block in reading order (null after the last); raises the block's error.
    std::unique_ptr<WorkItem> next() {
        std::unique_lock lock(mutex_);
        changed_.wait(lock, [&] { return done_.count(next_sequence_) || (reading_done_ && next_sequence_ == total_); });
        const auto found = done_.find(next_sequence_);
        if (found == done_.end()) return nullptr;
        std::unique_ptr<WorkItem> item = std::move(found->second);
        done_.erase(found);
        ++next_sequence_;
        --in_flight_;
        lock.unlock();
        changed_.notify_all();
        if (item->error) std::rethrow_exception(item->error);
        return item;
    }

private:
    void read_all() {
        int64_t sequence = 0;
        try {
            for (size_t input = 0; input < files_.size(); ++input) {
                RecordReader reader(files_[input]);
                while (true) {
                    auto item = std::make_unique<WorkItem>();
                    item->sequence = sequence;
                    item->input = input;
                    if (!reader.next(item->block, kWorkBytes)) break;
                    std::unique_lock lock(mutex_);
                    changed_.wait(lock, [&] { return stop_ || in_flight_ < max_in_flight_; });
                    if (stop_) return;
                    ++in_flight_;
                    ++sequence;
                    queue_.push_back(std::move(item));
                    changed_.notify_all();
                }
            }
        } catch (...) {
            // Delivered in order: the writer raises it after every block read before it.
            auto item = std::make_unique<WorkItem>();
            item->sequence = sequence++;
            item->error = std::current_exception();
            std::lock_guard lock(mutex_);
            ++in_flight_;
            done_[item->sequence] = std::move(item);
        }
        {
            std::lock_guard lock(mutex_);
            reading_done_ = true;
            total_ = sequence;
        }
        changed_.notify_all();
    }

    void work() {
        while (true) {
            std::unique_ptr<WorkItem> item;
            {
                std::unique_lock lock(mutex_);
                changed_.wait(lock, [&] { return stop_ || !queue_.empty() || reading_done_; });
                if (stop_ || queue_.empty()) return;
                item = std::move(queue_.front());
                queue_.pop_front();
            }
            try {
                tokenize(*item, files_[item->input], tokenizer_, options_);
            } catch (...) {
                item->error = std::current_exception();
            }
            {
                std::lock_guard lock(mutex_);
                done_[item->sequence] = std::move(item);
            }
            changed_.notify_all();
        }
    }

    const std::vector<InputFile>& files_;
    const Tokenizer& tokenizer_;
    const PrepareOptions& options_;
    std::mutex mutex_;
    std::condition_variable changed_;  // any change to the state below
    std::deque<std::unique_ptr<WorkItem>> queue_;         // read, waiting for a worker
    std::map<int64_t, std::unique_ptr<WorkItem>> done_;  // tokenized, waiting for the writer
    int64_t in_flight_ = 0, max_in_flight_ = 0, next_sequence_ = 0, total_ = -1;
    bool reading_done_ = false, stop_ = false;
    std::vector<std::thread> threads_;
};

// One split's shards, cut every `shard_tokens` tokens; shards already finished are removed again
// if the preparation fails.
class SplitWriter {
public:
    SplitWriter(fs::path dir, std::string name, int64_t vocab_size, uint64_t tokenizer, int64_t shard_tokens)
        : dir_(std::move(dir)), name_(std::move(name)), vocab_size_(vocab_size), tokenizer_(tokenizer),
          shard_tokens_(shard_tokens) {}
    ~SplitWriter() {
        if (finished_) return;
        std::error_code ignored;
        for (const auto& shard : info.shards) fs::remove(dir_ / shard.file, ignored);
    }
    void append(std::span<const int32_t> tokens, int64_t bytes) {
        ++info.documents;
        info.bytes += bytes;
        info.tokens += int64_t(tokens.size());
        while (!tokens.empty()) {
            if (!current_)
                current_ = std::make_unique<TokenShardWriter>(
                    dir_ / fmt::format("{}-{:05}.bin", name_, info.shards.size()), vocab_size_, tokenizer_);
            const size_t take = std::min(tokens.size(), size_t(shard_tokens_ - current_->size()));
            current_->append(tokens.first(take));
            tokens = tokens.subspan(take);
            if (current_->size() == shard_tokens_) close_shard();
        }
    }
    void finish() {
        if (current_) close_shard();
    }
    void keep() { finished_ = true; }
    SplitInfo info;

private:
    void close_shard() {
        current_->finish();
        info.shards.push_back({current_->path().filename().string(), current_->size()});
        current_.reset();
    }
    fs::path dir_;
    std::string name_;
    int64_t vocab_size_;
    uint64_t tokenizer_;
    int64_t shard_tokens_;
    std::unique_ptr<TokenShardWriter> current_;
    bool finished_ = false;
};

json split_json(const SplitInfo& split) {
    json shards = json::array();
    for (const auto& shard : split.shards) shards.push_back({{"file", shard.file}, {"tokens", shard.tokens}});
    return {{"shards", shards}, {"tokens", split.tokens}, {"documents", split.documents}, {"bytes", split.bytes}};
}

SplitInfo split_from_json(const json& split) {
    SplitInfo info;
    for (const auto& shard : split.at("shards"))
        info.shards.push_back({shard.at("file").get<std::string>(), shard.at("tokens").get<int64_t>()});
    info.tokens = split.at("tokens").get<int64_t>();
    info.documents = split.at("documents").get<int64_t>();
    info.bytes = split.at("bytes").get<int64_t>();
    return info;
}

// What a previous preparation left in `dir` (its manifest first, then its shards and the temporary
// files of one that was killed): replaced by this one's.
// (std::regex would do, but GCC 12's <regex> trips -Wmaybe-uninitialized in the sanitizer build.)
bool is_shard_name(std::string_view name) {
    const auto digits = [](std::string_view s) {
        return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
    };
    for (const std::string_view split : {"train-", "val-"}) {
        if (!name.starts_with(split)) continue;
        std::string_view rest = name.substr(split.size());
        if (rest.size() < 9 || !digits(rest.substr(0, 5)) || rest.substr(5, 4) != ".bin") return false;
        rest = rest.substr(9);  // "" or ".tmp-<digits>"
        return rest.empty() || (rest.starts_with(".tmp-") && digits(rest.substr(5)));
    }
    return false;
}

void remove_previous_corpus(const fs::path& dir) {
    fs::remove(dir / "manifest.json");
    for (const auto& entry : fs::directory_iterator(dir))
        if (is_shard_name(entry.path().filename().string())) fs::remove(entry.path());
}

}  // namespace

double SplitInfo::bits_per_byte(double nats_per_token) const {
    return nats_per_token / std::log(2.0) * double(tokens) / double(bytes);
}

const SplitInfo& CorpusManifest::split(const std::string& name) const {
    if (name == "train") return train;
    if (name == "val") return val;
    fail("{}: no split \"{}\" (a corpus has \"train\" and \"val\")", path().string(), name);
}

uint64_t tokenizer_id(const Tokenizer& tokenizer) {
    XXH3_state_t* state = XXH3_createState();
    LINARCH_CHECK(state, "tokenizer fingerprint: out of memory");
    XXH3_64bits_reset(state);
    auto add = [&](int64_t value) { XXH3_64bits_update(state, &value, sizeof value); };
    add(tokenizer.vocab_size());
    add(tokenizer.bos());
    add(tokenizer.eos());
    add(tokenizer.pad());
    for (int32_t id = 0; id < int32_t(tokenizer.vocab_size()); ++id) {
        const std::string piece = tokenizer.decode(std::span<const int32_t>(&id, 1));
        add(int64_t(piece.size()));
        XXH3_64bits_update(state, piece.data(), piece.size());
    }
    for (int32_t id : tokenizer.encode("In the beginning, 1611: naïve café — 東京 ¿qué? <tag>\n\tend")) add(id);
    const uint64_t id = XXH3_64bits_digest(state);
    XXH3_freeState(state);
    return id == 0 ? 1 : id;
}

PrepareResult prepare_corpus(const std::vector<std::string>& inputs, const fs::path& out_dir,
                             const PrepareOptions& options) {
    LINARCH_CHECK(options.val_fraction > 0 && options.val_fraction < 1,
                  "data prepare: --val-fraction must be in (0, 1), got {}", options.val_fraction);
    LINARCH_CHECK(options.shard_tokens >= 1, "data prepare: --shard-tokens must be ≥ 1, got {}",
                  options.shard_tokens);
    LINARCH_CHECK(!options.text_field.empty(), "data prepare: --text-field must not be empty");
    const auto tokenizer = load_tokenizer(options.tokenizer);
    const std::vector<InputFile> files = expand_inputs(inputs);

    PrepareResult result;
    CorpusManifest& manifest = result.manifest;
    manifest.dir = out_dir;
    manifest.tokenizer = tokenizer->name();
    manifest.tokenizer_id = tokenizer_id(*tokenizer);
    manifest.vocab_size = tokenizer->vocab_size();
    manifest.eos = tokenizer->eos();

    fs::create_directories(out_dir);
    remove_previous_corpus(out_dir);
    SplitWriter train(out_dir, "train", manifest.vocab_size, manifest.tokenizer_id, options.shard_tokens);
    SplitWriter val(out_dir, "val", manifest.vocab_size, manifest.tokenizer_id, options.shard_tokens);
    std::vector<int64_t> input_documents(files.size(), 0);
    {
        Pipeline pipeline(files, *tokenizer, options);
        const uint64_t split_stream = stream_id("corpus-split");
        int64_t document = 0;
        while (const auto item = pipeline.next()) {
            size_t begin = 0;
            for (const auto& doc : item->documents) {
                const bool to_val = RngStream(options.seed, split_stream, uint64_t(document++)).uniform() <
                                    options.val_fraction;
                (to_val ? val : train)
                    .append(std::span<const int32_t>(item->tokens).subspan(begin, doc.token_end - begin), doc.bytes);
                begin = doc.token_end;
            }
            input_documents[item->input] += int64_t(item->documents.size());
            if (item->skipped > 0 && manifest.skipped_records == 0) result.first_skipped = item->first_skipped;
            manifest.skipped_records += item->skipped;
        }
    }
    const int64_t documents = train.info.documents + val.info.documents;
    LINARCH_CHECK(train.info.documents > 0 && val.info.documents > 0,
                  "data prepare: the split put {} of {} documents in validation, leaving {} empty; give more text, "
                  "change --val-fraction ({}) or --seed ({})", val.info.documents, documents,
                  val.info.documents == 0 ? "validation" : "train", options.val_fraction, options.seed);
    train.finish();
    val.finish();
    manifest.train = train.info;
    manifest.val = val.info;

    json input_list = json::array();
    for (size_t i = 0; i < files.size(); ++i)
        input_list.push_back({{"path", files[i].path.string()}, {"documents", input_documents[i]}});
    char id_hex[17];
    std::snprintf(id_hex, sizeof id_hex, "%016llx", static_cast<unsigned long long>(manifest.tokenizer_id));
    const json out = {
        {"format", "linarch-corpus"},
        {"version", kManifestVersion},
        {"tokenizer", manifest.tokenizer},
        {"tokenizer_id", id_hex},
        {"vocab_size", manifest.vocab_size},
        {"eos", manifest.eos},
        {"token_bytes", manifest.vocab_size <= 65536 ? 2 : 4},
        {"val_fraction", options.val_fraction},
        {"seed", options.seed},
        {"text_field", options.text_field},
        {"txt_document_bytes", kTextDocumentBytes},
        {"skipped_records", manifest.skipped_records},
        {"inputs", input_list},
        {"splits", {{"train", split_json(manifest.train)}, {"val", split_json(manifest.val)}}},
    };
    write_file_atomic(manifest.path(), out.dump(2) + "\n");
    train.keep();
    val.keep();
    return result;
}

CorpusManifest read_corpus_manifest(const fs::path& dir) {
    CorpusManifest manifest;
    manifest.dir = dir;
    const fs::path path = manifest.path();
    LINARCH_CHECK(fs::exists(path),
                  "\"{}\" is not a prepared corpus: it has no manifest.json (run `linarch data prepare --out {}`; a "
                  "preparation that did not finish leaves none)", dir.string(), dir.string());
    const json in = json::parse(read_file(path, "corpus manifest"), nullptr, false);
    LINARCH_CHECK(!in.is_discarded() && in.is_object(), "{}: not valid JSON", path.string());
    LINARCH_CHECK(in.value("format", "") == "linarch-corpus", "{}: not a linarch corpus manifest", path.string());
    const int version = in.value("version", 0);
    LINARCH_CHECK(version == kManifestVersion,
                  "{}: corpus format version {} (this linarch reads version {}); prepare the corpus again with "
                  "`linarch data prepare`", path.string(), version, kManifestVersion);
    try {
        manifest.tokenizer = in.at("tokenizer").get<std::string>();
        manifest.tokenizer_id = std::stoull(in.at("tokenizer_id").get<std::string>(), nullptr, 16);
        manifest.vocab_size = in.at("vocab_size").get<int64_t>();
        manifest.eos = in.at("eos").get<int32_t>();
        manifest.skipped_records = in.value("skipped_records", int64_t(0));
        manifest.train = split_from_json(in.at("splits").at("train"));
        manifest.val = split_from_json(in.at("splits").at("val"));
    } catch (const std::exception& e) {
        fail("{}: malformed corpus manifest ({})", path.string(), e.what());
    }
    return manifest;
}

}  // namespace linarch
