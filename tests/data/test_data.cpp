#include <gtest/gtest.h>
#include <zlib.h>

#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "core/spec.hpp"
#include "data/corpus.hpp"
#include "data/loader.hpp"
#include "data/text_input.hpp"
#include "data/token_shard.hpp"
#include "data/tokenizer.hpp"
#include "support/process.hpp"
#include "support/testkit.hpp"
#include "train/trainer.hpp"

using namespace linarch;
using namespace linarch::testkit;
namespace fs = std::filesystem;

namespace {
const std::string kCli = LINARCH_CLI;
constexpr int32_t kEos = 257;  // the byte tokenizer's

// Words with multi-byte UTF-8, quotes and backslashes, so JSON escaping is exercised.
std::string random_text(RngStream& rng, size_t bytes) {
    static const char* words[] = {"the", "Lord", "said", "unto", "him", "naïve", "café", "東京", "\"quoted\"",
                                  "back\\slash", "tab\there", "end."};
    std::string text;
    while (text.size() < bytes) {
        text += words[rng.below(std::size(words))];
        text += rng.below(8) == 0 ? "\n" : " ";
    }
    return text;
}

std::string jsonl_line(const std::string& text) { return nlohmann::json{{"text", text}}.dump() + "\n"; }

// Documents of `count` texts, each starting with its number, and the JSONL file holding them.
std::vector<std::string> write_jsonl(const fs::path& path, int count, size_t bytes, uint64_t stream) {
    RngStream rng(test_seed(), stream);
    std::vector<std::string> texts;
    std::string file;
    for (int d = 0; d < count; ++d) {
        texts.push_back(fmt::format("doc {} {}: ", stream, d) + random_text(rng, bytes / 2 + rng.below(bytes)));
        file += jsonl_line(texts.back());
        if (d % 7 == 3) file += "\n";  // blank lines are not records
    }
    write_text(path, file);
    return texts;
}

void write_gzip(const fs::path& path, const std::string& content) {
    gzFile out = gzopen(path.c_str(), "wb");
    ASSERT_NE(out, nullptr);
    ASSERT_EQ(gzwrite(out, content.data(), unsigned(content.size())), int(content.size()));
    ASSERT_EQ(gzclose(out), Z_OK);
}

std::vector<int32_t> all_tokens(const TokenSequence& sequence) {
    std::vector<int32_t> tokens(size_t(sequence.size()));
    sequence.read(0, tokens);
    return tokens;
}

// A split's documents: byte tokens cut at each EOS (every document, the last included, ends with one).
std::vector<std::string> documents_of(const std::vector<int32_t>& tokens) {
    std::vector<std::string> docs;
    std::string current;
    for (int32_t t : tokens) {
        if (t == kEos) {
            docs.push_back(current);
            current.clear();
        } else {
            EXPECT_LT(t, 256);
            current += char(static_cast<unsigned char>(t));
        }
    }
    EXPECT_TRUE(current.empty()) << "the split does not end with EOS";
    return docs;
}

// The documented split rule: document d goes to validation when uniform(seed, d) < fraction.
bool goes_to_val(uint64_t seed, double fraction, int64_t document) {
    return RngStream(seed, stream_id("corpus-split"), uint64_t(document)).uniform() < fraction;
}

// Checks that `dir` holds exactly `docs` (in input order), split by the documented rule, with the
// manifest's counts.
void expect_corpus(const fs::path& dir, const std::vector<std::string>& docs, const PrepareOptions& options) {
    std::vector<std::string> expected_train, expected_val;
    int64_t train_bytes = 0, val_bytes = 0;
    for (size_t d = 0; d < docs.size(); ++d) {
        const bool val = goes_to_val(options.seed, options.val_fraction, int64_t(d));
        (val ? expected_val : expected_train).push_back(docs[d]);
        (val ? val_bytes : train_bytes) += int64_t(docs[d].size());
    }
    const CorpusSplit train = open_corpus_split(dir, "train"), val = open_corpus_split(dir, "val");
    EXPECT_EQ(documents_of(all_tokens(train.tokens)), expected_train);
    EXPECT_EQ(documents_of(all_tokens(val.tokens)), expected_val);
    const CorpusManifest& m = train.manifest;
    EXPECT_EQ(m.tokenizer, "byte");
    EXPECT_EQ(m.vocab_size, 259);
    EXPECT_EQ(m.eos, kEos);
    EXPECT_EQ(m.tokenizer_id, tokenizer_id(*load_tokenizer("byte")));
    EXPECT_EQ(m.train.documents, int64_t(expected_train.size()));
    EXPECT_EQ(m.val.documents, int64_t(expected_val.size()));
    EXPECT_EQ(m.train.bytes, train_bytes);
    EXPECT_EQ(m.val.bytes, val_bytes);
    EXPECT_EQ(m.train.tokens, train_bytes + m.train.documents);  // a byte per token plus one EOS per document
    EXPECT_EQ(m.val.tokens, val_bytes + m.val.documents);
}

std::set<std::string> files_in(const fs::path& dir) {
    std::set<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir)) names.insert(entry.path().filename().string());
    return names;
}
}  // namespace

TEST(TokenShard, RoundTripsBothWidths) {
    TempDir dir;
    for (int32_t vocab : {256, 70000}) {
        const auto tokens = random_ids(1001, vocab, uint64_t(vocab));
        write_token_shard(dir / "s.bin", tokens, vocab, 77);
        TokenShard shard(dir / "s.bin");
        ASSERT_EQ(shard.size(), 1001);
        EXPECT_EQ(shard.vocab_size(), vocab);
        EXPECT_EQ(shard.tokenizer_id(), 77u);
        for (int64_t i = 0; i < shard.size(); ++i) ASSERT_EQ(shard[i], tokens[size_t(i)]);
        EXPECT_EQ(fs::file_size(dir / "s.bin"), kShardHeaderBytes + 1001 * (vocab <= 65536 ? 2u : 4u));
    }
}

TEST(TokenShard, CorruptionTruncationAndBadTokensAreErrors) {
    TempDir dir;
    const auto tokens = random_ids(500, 256, 3);
    write_token_shard(dir / "s.bin", tokens, 256);
    {
        // Flip every bit of one payload byte: the stored bytes change whatever the token was.
        std::fstream f(dir / "s.bin", std::ios::in | std::ios::out | std::ios::binary);
        f.seekg(kShardHeaderBytes + 17);
        const char original = char(f.get());
        f.seekp(kShardHeaderBytes + 17);
        f.put(char(~original));
    }
    expect_error([&] { TokenShard s(dir / "s.bin"); }, {"s.bin", "checksum"});
    write_token_shard(dir / "s.bin", tokens, 256);
    fs::resize_file(dir / "s.bin", kShardHeaderBytes + 300);
    expect_error([&] { TokenShard s(dir / "s.bin"); }, {"s.bin", "truncated"});
    write_text(dir / "junk.bin", std::string(100, 'x'));
    expect_error([&] { TokenShard s(dir / "junk.bin"); }, {"junk.bin", "magic"});
    expect_error([&] { TokenShard s(dir / "missing.bin"); }, {"missing.bin"});
    std::vector<int32_t> bad = {1, 2, 300};
    expect_error([&] { write_token_shard(dir / "b.bin", bad, 256); }, {"b.bin", "300", "position 2"});
    EXPECT_FALSE(fs::exists(dir / "b.bin"));
}

TEST(TokenShardWriter, StreamsInPiecesAndRemovesUnfinishedFiles) {
    TempDir dir;
    const auto tokens = random_ids(3'000'000, 259, 4);  // more than the writer's buffer
    {
        TokenShardWriter writer(dir / "w.bin", 259, 5);
        for (size_t at = 0; at < tokens.size(); at += 700'001)
            writer.append(std::span<const int32_t>(tokens).subspan(at, std::min<size_t>(700'001, tokens.size() - at)));
        EXPECT_FALSE(fs::exists(dir / "w.bin"));  // only a temporary file until finish()
        writer.finish();
    }
    write_token_shard(dir / "whole.bin", tokens, 259, 5);
    EXPECT_EQ(read_text(dir / "w.bin"), read_text(dir / "whole.bin"));
    {
        TokenShardWriter abandoned(dir / "a.bin", 259);
        abandoned.append(tokens);
    }
    EXPECT_EQ(files_in(dir.path()), (std::set<std::string>{"w.bin", "whole.bin"}));
}

TEST(Prepare, ReadsTextJsonlGzipDirectoriesAndGlobs) {
    TempDir dir;
    fs::create_directories(dir / "in" / "sub");
    RngStream rng(test_seed(), 1);
    // .txt: documents are runs of whole lines of at least 16 KiB, the file's last one shorter.
    std::string text;
    while (text.size() < 70'000) text += random_text(rng, 100) + "\n";
    write_text(dir / "in" / "a.txt", text);
    std::vector<std::string> text_docs;
    for (size_t begin = 0; begin < text.size();) {
        const size_t newline = text.find('\n', begin + kTextDocumentBytes - 1);
        const size_t end = newline == std::string::npos ? text.size() : newline + 1;
        text_docs.push_back(text.substr(begin, end - begin));
        begin = end;
    }
    ASSERT_GE(text_docs.size(), 4u);
    const auto b_docs = write_jsonl(dir / "in" / "b.jsonl", 40, 300, 2);
    const auto c_docs = write_jsonl(dir / "c.jsonl", 30, 300, 3);  // gzip-compressed below
    write_gzip(dir / "in" / "sub" / "c.jsonl.gz", read_text(dir / "c.jsonl"));
    write_text(dir / "in" / "notes.md", "not an input\n");  // ignored in a directory

    PrepareOptions options;
    options.val_fraction = 0.25;
    options.seed = 3;
    // A directory: its inputs in path order.
    std::vector<std::string> all = text_docs;
    all.insert(all.end(), b_docs.begin(), b_docs.end());
    all.insert(all.end(), c_docs.begin(), c_docs.end());
    const auto from_dir = prepare_corpus({(dir / "in").string()}, dir / "from_dir", options);
    expect_corpus(dir / "from_dir", all, options);
    const auto manifest = nlohmann::json::parse(read_text(dir / "from_dir" / "manifest.json"));
    ASSERT_EQ(manifest["inputs"].size(), 3u);
    EXPECT_EQ(manifest["inputs"][2]["path"], (dir / "in" / "sub" / "c.jsonl.gz").string());
    EXPECT_EQ(manifest["inputs"][0]["documents"], text_docs.size());
    EXPECT_EQ(manifest["inputs"][1]["documents"], b_docs.size());
    EXPECT_EQ(manifest["splits"]["val"]["shards"][0]["file"], "val-00000.bin");
    EXPECT_EQ(manifest["splits"]["train"]["bytes"], from_dir.manifest.train.bytes);
    EXPECT_EQ(manifest["tokenizer"], "byte");
    EXPECT_EQ(manifest["vocab_size"], 259);

    // Files named one by one (the .gz alone, then the glob) give the same documents.
    prepare_corpus({(dir / "in" / "sub" / "c.jsonl.gz").string()}, dir / "gz", options);
    expect_corpus(dir / "gz", c_docs, options);
    prepare_corpus({(dir / "in" / "*.jsonl").string(), (dir / "in" / "b.jsonl").string()}, dir / "glob", options);
    expect_corpus(dir / "glob", b_docs, options);  // a file named twice is read once
    prepare_corpus({(dir / "in" / "a.txt").string()}, dir / "txt", options);
    expect_corpus(dir / "txt", text_docs, options);
}

TEST(Prepare, OutputIsIndependentOfThreadsAndFollowsTheSeed) {
    TempDir dir;
    // ~3 MB: several blocks of parallel work and, at 400k tokens a shard, several shards per split.
    write_jsonl(dir / "a.jsonl", 1500, 2000, 4);
    PrepareOptions options;
    options.val_fraction = 0.3;
    options.shard_tokens = 400'000;
    std::map<int, std::map<std::string, std::string>> outputs;
    for (int threads : {1, 2, 3}) {
        options.threads = threads;
        const fs::path out = dir / fmt::format("t{}", threads);
        prepare_corpus({(dir / "a.jsonl").string()}, out, options);
        for (const auto& name : files_in(out)) outputs[threads][name] = read_text(out / name);
    }
    EXPECT_GE(outputs[1].size(), 1u + 4u);  // manifest and several shards
    EXPECT_EQ(outputs[1], outputs[2]);
    EXPECT_EQ(outputs[1], outputs[3]);
    options.seed = 2;
    prepare_corpus({(dir / "a.jsonl").string()}, dir / "seed2", options);
    EXPECT_NE(read_text(dir / "seed2" / "val-00000.bin"), outputs[1]["val-00000.bin"]);
}

TEST(Prepare, SplitsByWholeDocumentsWithEosAfterEach) {
    TempDir dir;
    const auto docs = write_jsonl(dir / "a.jsonl", 400, 200, 5);
    PrepareOptions options;
    options.val_fraction = 0.2;
    options.seed = test_seed();
    prepare_corpus({(dir / "a.jsonl").string()}, dir / "out", options);
    const auto train = documents_of(all_tokens(open_corpus_split(dir / "out", "train").tokens));
    const auto val = documents_of(all_tokens(open_corpus_split(dir / "out", "val").tokens));
    // Every document whole in exactly one split.
    std::multiset<std::string> seen(train.begin(), train.end());
    seen.insert(val.begin(), val.end());
    EXPECT_EQ(seen, std::multiset<std::string>(docs.begin(), docs.end()));
    for (const auto& doc : val) EXPECT_EQ(std::count(train.begin(), train.end(), doc), 0);
    EXPECT_GT(val.size(), 40u);
    EXPECT_LT(val.size(), 120u);
    expect_corpus(dir / "out", docs, options);
}

TEST(Prepare, MalformedJsonlFailsOrIsSkippedWithACount) {
    TempDir dir;
    std::string file;
    for (int d = 0; d < 60; ++d) file += jsonl_line(fmt::format("good document {}", d));
    file += "{\"text\": 17}\n";                    // line 61
    file += "{\"text\": \"unterminated}\n";        // line 62
    file += "[\"an array\"]\n";                    // line 63
    file += "{\"body\": \"another field\"}\n";     // line 64
    file += jsonl_line("last good document");       // line 65
    write_text(dir / "bad.jsonl", file);
    PrepareOptions options;
    options.val_fraction = 0.5;
    expect_error([&] { prepare_corpus({(dir / "bad.jsonl").string()}, dir / "out", options); },
                 {"bad.jsonl:61:", "\"text\" is number, expected a string", "--on-error skip"});
    EXPECT_FALSE(fs::exists(dir / "out" / "manifest.json"));

    options.on_error = OnError::skip;
    const auto result = prepare_corpus({(dir / "bad.jsonl").string()}, dir / "out", options);
    EXPECT_EQ(result.manifest.skipped_records, 4);
    EXPECT_NE(result.first_skipped.find("bad.jsonl:61:"), std::string::npos) << result.first_skipped;
    EXPECT_EQ(result.manifest.train.documents + result.manifest.val.documents, 61);
    EXPECT_EQ(nlohmann::json::parse(read_text(dir / "out" / "manifest.json"))["skipped_records"], 4);

    // Each fault is named with its line; the text field can be another one.
    options.on_error = OnError::fail;
    const std::vector<std::pair<std::string, std::string>> faults = {
        {"{\"text\": \"unterminated}\n", "x.jsonl:2: malformed JSONL record: not valid JSON"},
        {"[\"an array\"]\n", "x.jsonl:2: malformed JSONL record: expected a JSON object, got array"},
        {"{\"body\": \"x\"}\n", "x.jsonl:2: malformed JSONL record: no \"text\" field"},
    };
    for (const auto& [line, message] : faults) {
        write_text(dir / "x.jsonl", jsonl_line("fine") + line);
        expect_error([&] { prepare_corpus({(dir / "x.jsonl").string()}, dir / "x", options); }, {message});
    }
    std::string bodies;
    int64_t body_bytes = 0;
    for (int d = 0; d < 40; ++d) {
        const std::string body = fmt::format("body {}", d);
        bodies += nlohmann::json{{"body", body}, {"id", d}}.dump() + "\n";
        body_bytes += int64_t(body.size());
    }
    write_text(dir / "body.jsonl", bodies);
    options.text_field = "body";
    const auto body = prepare_corpus({(dir / "body.jsonl").string()}, dir / "body", options);
    EXPECT_EQ(body.manifest.train.bytes + body.manifest.val.bytes, body_bytes);
}

TEST(Prepare, BadInputsAreErrorsNamingTheFile) {
    TempDir dir;
    const auto prepare = [&](const std::vector<std::string>& inputs) {
        prepare_corpus(inputs, dir / "out", PrepareOptions{});
    };
    write_text(dir / "empty.txt", "");
    expect_error([&] { prepare({(dir / "empty.txt").string()}); }, {"empty.txt", "is empty"});
    write_text(dir / "blank.jsonl", "\n  \n\n");
    expect_error([&] { prepare({(dir / "blank.jsonl").string()}); }, {"blank.jsonl", "is empty"});
    write_gzip(dir / "empty.txt.gz", "");
    expect_error([&] { prepare({(dir / "empty.txt.gz").string()}); }, {"empty.txt.gz", "is empty"});
    expect_error([&] { prepare({(dir / "nope.txt").string()}); }, {"nope.txt", "does not exist"});
    expect_error([&] { prepare({(dir / "*.nothing").string()}); }, {"*.nothing", "matches no files"});
    expect_error([&] { prepare({}); }, {"no --input"});
    write_text(dir / "notes.md", "x");
    expect_error([&] { prepare({(dir / "notes.md").string()}); }, {"notes.md", "unsupported file type"});
    fs::create_directories(dir / "nothing_here");
    expect_error([&] { prepare({(dir / "nothing_here").string()}); }, {"nothing_here", "holds no"});
    // A truncated gzip stream.
    RngStream rng(test_seed(), 6);
    write_gzip(dir / "whole.txt.gz", random_text(rng, 200'000));
    const std::string gz = read_text(dir / "whole.txt.gz");
    write_text(dir / "cut.txt.gz", gz.substr(0, gz.size() / 2));
    expect_error([&] { prepare({(dir / "cut.txt.gz").string()}); }, {"cut.txt.gz", "gzip"});
    // Too little text for two splits.
    write_text(dir / "short.txt", "one short document\n");
    expect_error([&] { prepare({(dir / "short.txt").string()}); }, {"of 1 documents in validation", "give more text"});
    expect_error([&] { prepare_corpus({(dir / "short.txt").string()}, dir / "out", {.tokenizer = "nope"}); },
                 {"nope"});
    EXPECT_FALSE(fs::exists(dir / "out" / "manifest.json"));
}

TEST(Prepare, FailureLeavesNoManifestAndNoShards) {
    TempDir dir;
    write_jsonl(dir / "a.jsonl", 300, 1000, 7);
    PrepareOptions options;
    options.val_fraction = 0.3;
    options.shard_tokens = 20'000;
    prepare_corpus({(dir / "a.jsonl").string()}, dir / "out", options);
    ASSERT_TRUE(fs::exists(dir / "out" / "manifest.json"));
    write_text(dir / "out" / "keep.txt", "not ours");
    // Several shards are complete before the bad record at the end of the second input is reached.
    write_text(dir / "z.jsonl", jsonl_line("fine") + "oops\n");
    expect_error([&] { prepare_corpus({(dir / "a.jsonl").string(), (dir / "z.jsonl").string()}, dir / "out", options); },
                 {"z.jsonl:2:"});
    EXPECT_EQ(files_in(dir / "out"), std::set<std::string>{"keep.txt"});
    expect_error([&] { open_corpus_split(dir / "out", "train"); }, {"out", "no manifest.json"});
}

TEST(Corpus, CorruptForeignOrOldShardsAreRefusedNamingTheFile) {
    TempDir dir;
    write_jsonl(dir / "a.jsonl", 200, 300, 8);
    PrepareOptions options;
    options.val_fraction = 0.3;
    prepare_corpus({(dir / "a.jsonl").string()}, dir / "out", options);
    {
        std::fstream f(dir / "out" / "val-00000.bin", std::ios::in | std::ios::out | std::ios::binary);
        f.seekg(kShardHeaderBytes + 5);
        const char original = char(f.get());
        f.seekp(kShardHeaderBytes + 5);
        f.put(char(~original));
    }
    expect_error([&] { open_corpus_split(dir / "out", "val"); }, {"val-00000.bin", "checksum"});
    const fs::path shard = dir / "out" / "train-00000.bin";
    const auto tokens = all_tokens(open_corpus_split(dir / "out", "train").tokens);
    // Same tokens and vocabulary, another tokenizer's fingerprint.
    write_token_shard(shard, tokens, 259, 12345);
    expect_error([&] { open_corpus_split(dir / "out", "train"); },
                 {"train-00000.bin", "another tokenizer", "\"byte\""});
    write_token_shard(shard, tokens, 300, tokenizer_id(*load_tokenizer("byte")));
    expect_error([&] { open_corpus_split(dir / "out", "train"); }, {"train-00000.bin", "vocabulary 259", "300"});
    write_token_shard(shard, std::span<const int32_t>(tokens).first(100), 259, tokenizer_id(*load_tokenizer("byte")));
    expect_error([&] { open_corpus_split(dir / "out", "train"); }, {"train-00000.bin", "holds 100 tokens"});
    fs::remove(shard);
    expect_error([&] { open_corpus_split(dir / "out", "train"); }, {"train-00000.bin"});
    expect_error([&] { open_corpus_split(dir / "out", "test"); }, {"manifest.json", "no split \"test\""});
    auto manifest = nlohmann::json::parse(read_text(dir / "out" / "manifest.json"));
    manifest["version"] = 1;
    write_text(dir / "out" / "manifest.json", manifest.dump());
    expect_error([&] { open_corpus_split(dir / "out", "val"); }, {"manifest.json", "version 1", "prepare the corpus"});
}

TEST(Corpus, ModelVocabularySmallerThanTheCorpusIsAnError) {
    TempDir dir;
    write_jsonl(dir / "a.jsonl", 200, 300, 9);
    prepare_corpus({(dir / "a.jsonl").string()}, dir / "corpus", {.val_fraction = 0.3});
    const Spec spec = parse_spec(fmt::format("[model]\nvocab_size = 256\nd_model = 8\nn_layers = 1\nn_heads = 1\n"
                                             "head_dim = 8\n[data]\ncorpus = \"{}\"\nseq_len = 8\nbatch_size = 2\n",
                                             (dir / "corpus").string()),
                                 "small.toml");
    TrainOptions train_options;
    train_options.out_dir = dir / "run";
    expect_error([&] { train(spec, train_options); },
                 {"train-00000.bin", "vocabulary (259 tokens", "model.vocab_size 256 in small.toml"});
    EXPECT_FALSE(fs::exists(dir / "run"));
}

TEST(Corpus, BitsPerByteUseTheSplitsBytesPerToken) {
    SplitInfo split;
    split.tokens = 300;
    split.bytes = 1200;  // 4 bytes a token
    EXPECT_DOUBLE_EQ(split.bits_per_byte(std::log(2.0) * 2), 0.5);
}

TEST(Loader, ReadsAListOfShardsAsOneSequence) {
    TempDir dir;
    write_jsonl(dir / "a.jsonl", 300, 300, 10);
    PrepareOptions options;
    options.val_fraction = 0.2;
    prepare_corpus({(dir / "a.jsonl").string()}, dir / "one", options);
    options.shard_tokens = 1000;
    const auto result = prepare_corpus({(dir / "a.jsonl").string()}, dir / "many", options);
    EXPECT_GT(result.manifest.train.shards.size(), 20u);
    const CorpusSplit one = open_corpus_split(dir / "one", "train"), many = open_corpus_split(dir / "many", "train");
    EXPECT_EQ(many.tokens.shards().size(), result.manifest.train.shards.size());
    EXPECT_EQ(all_tokens(many.tokens), all_tokens(one.tokens));
    std::vector<int32_t> across(2500), expected(2500);
    many.tokens.read(1500, across);  // spans three shards
    one.tokens.read(1500, expected);
    EXPECT_EQ(across, expected);
    // Windows are the same whatever the sharding.
    const WindowSampler a(one.tokens, {.batch_size = 3, .seq_len = 64, .seed = 5});
    const WindowSampler b(many.tokens, {.batch_size = 3, .seq_len = 64, .seed = 5});
    Batch from_one, from_many;
    a.batch({0, 7}, from_one);
    b.batch({0, 7}, from_many);
    EXPECT_EQ(from_one.inputs, from_many.inputs);
}

namespace {
// A sequence whose token i is i (vocabulary 70000), so a window's first input names its start.
struct CountingSequence {
    TempDir dir;
    TokenSequence tokens;
    explicit CountingSequence(int32_t count) {
        std::vector<int32_t> ids(static_cast<size_t>(count));
        for (int32_t i = 0; i < count; ++i) ids[size_t(i)] = i;
        const auto half = std::span<const int32_t>(ids).first(size_t(count / 2));
        write_token_shard(dir / "a.bin", half, 70000);
        write_token_shard(dir / "b.bin", std::span<const int32_t>(ids).subspan(size_t(count / 2)), 70000);
        tokens = TokenSequence({dir / "a.bin", dir / "b.bin"});
    }
};
}  // namespace

TEST(Loader, RanksSeeDisjointSharesThatCoverAnEpoch) {
    const CountingSequence sequence(10'001);  // 1250 windows of 8
    const int64_t ranks = 3, rows = 4, seq_len = 8;
    for (WindowOrder order : {WindowOrder::sequential, WindowOrder::random}) {
        std::vector<WindowSampler> samplers;
        for (int64_t r = 0; r < ranks; ++r)
            samplers.emplace_back(sequence.tokens, SamplerOptions{.batch_size = rows, .seq_len = seq_len, .seed = 9,
                                                                  .order = order, .rank = r, .ranks = ranks});
        const WindowSampler global(sequence.tokens, {.batch_size = rows * ranks, .seq_len = seq_len, .seed = 9,
                                                     .order = order});
        ASSERT_EQ(samplers[0].batches_per_epoch(), 1250 / 12);
        std::multiset<int32_t> starts;
        Batch batch, whole;
        for (DataPosition at; at.epoch == 0; at = samplers[0].next(at)) {
            global.batch(at, whole);
            for (int64_t r = 0; r < ranks; ++r) {
                samplers[size_t(r)].batch(at, batch);
                // Rank r's rows are rows [r·rows, (r+1)·rows) of the one-rank global batch.
                EXPECT_TRUE(std::equal(batch.inputs.begin(), batch.inputs.end(),
                                       whole.inputs.begin() + r * rows * seq_len));
                for (int64_t row = 0; row < rows; ++row) starts.insert(batch.inputs[size_t(row * seq_len)]);
            }
        }
        if (order == WindowOrder::sequential) {
            // Every window of the epoch's whole global batches exactly once, across all ranks.
            std::multiset<int32_t> expected;
            for (int32_t w = 0; w < 1250 / 12 * 12; ++w) expected.insert(w * int32_t(seq_len));
            EXPECT_EQ(starts, expected);
        }
    }
    EXPECT_THROW(WindowSampler(sequence.tokens, {.batch_size = 1, .seq_len = 8, .rank = 3, .ranks = 3}), Error);
    expect_error([&] { WindowSampler(sequence.tokens, {.batch_size = 700, .seq_len = 8, .ranks = 2}); },
                 {"a.bin", "1250 windows", "700 rows × 2 ranks"});
}

TEST(Loader, SequentialEpochsResumeExactly) {
    const CountingSequence sequence(2'001);  // 250 windows of 8: 20 batches of 12, 10 windows left out
    const SamplerOptions options{.batch_size = 6, .seq_len = 8, .order = WindowOrder::sequential, .rank = 1, .ranks = 2};
    const WindowSampler sampler(sequence.tokens, options);
    ASSERT_EQ(sampler.batches_per_epoch(), 20);
    std::vector<std::vector<int32_t>> straight;
    std::vector<DataPosition> positions;
    Batch batch;
    DataPosition at;
    for (int i = 0; i < 55; ++i, at = sampler.next(at)) {
        positions.push_back(at);
        sampler.batch(at, batch);
        straight.push_back(batch.inputs);
        for (int64_t t = 0; t + 1 < 8; ++t) EXPECT_EQ(batch.targets[size_t(t)], batch.inputs[size_t(t + 1)]);
    }
    EXPECT_EQ(positions[20], (DataPosition{1, 0}));
    EXPECT_EQ(positions[54], (DataPosition{2, 14}));
    EXPECT_EQ(straight[0][0], 6 * 8);          // rank 1 starts at window 6
    EXPECT_EQ(straight[20], straight[0]);      // the next epoch starts again in order
    // A fresh sampler resumed at a saved position continues exactly.
    const WindowSampler resumed(sequence.tokens, options);
    DataPosition from = positions[37];
    for (int i = 37; i < 55; ++i, from = resumed.next(from)) {
        resumed.batch(from, batch);
        EXPECT_EQ(batch.inputs, straight[size_t(i)]) << "batch " << i;
    }
}

TEST(Loader, RandomBatchesArePureFunctionsOfTheirPosition) {
    const CountingSequence sequence(5'000);
    const WindowSampler sampler(sequence.tokens, {.batch_size = 3, .seq_len = 16, .seed = 42});
    Batch first, again, other;
    sampler.batch({0, 7}, first);
    sampler.batch({0, 3}, other);
    sampler.batch({0, 7}, again);
    EXPECT_EQ(first.inputs, again.inputs);
    EXPECT_NE(first.inputs, other.inputs);
    for (int64_t row = 0; row < 3; ++row)
        for (int64_t t = 0; t + 1 < 16; ++t)
            EXPECT_EQ(first.targets[size_t(row * 16 + t)], first.inputs[size_t(row * 16 + t + 1)]);
    // The position after an epoch's last batch is the next epoch's first.
    sampler.batch(sampler.next({0, sampler.batches_per_epoch() - 1}), other);
    Batch zero;
    sampler.batch({1, 0}, zero);
    EXPECT_EQ(other.inputs, zero.inputs);
}

TEST(DataPrepareCli, OptionsReachTheLibrary) {
    TempDir dir;
    std::string file;
    for (int d = 0; d < 50; ++d) file += jsonl_line(fmt::format("document {}", d));
    file += "{\"oops\n";
    write_text(dir / "a.jsonl", file);
    auto failed = run_command({kCli, "data", "prepare", "--input", (dir / "a.jsonl").string(), "--out",
                               (dir / "o").string(), "--val-fraction", "0.3"});
    EXPECT_EQ(failed.exit_code, 1);
    EXPECT_NE(failed.output.find("a.jsonl:51: malformed JSONL record"), std::string::npos) << failed.output;
    auto skipped = run_command({kCli, "data", "prepare", "--input", (dir / "*.jsonl").string(), "--out",
                                (dir / "o").string(), "--val-fraction", "0.3", "--on-error", "skip", "--tokenizer",
                                "byte", "--seed", "4", "--threads", "2", "--shard-tokens", "100"});
    ASSERT_EQ(skipped.exit_code, 0) << skipped.output;
    EXPECT_NE(skipped.output.find("skipped 1 malformed records; the first: " + (dir / "a.jsonl").string() + ":51:"),
              std::string::npos) << skipped.output;
    const auto manifest = nlohmann::json::parse(read_text(dir / "o" / "manifest.json"));
    EXPECT_EQ(manifest["seed"], 4);
    EXPECT_GT(manifest["splits"]["train"]["shards"].size(), 1u);
    auto bad_option = run_command({kCli, "data", "prepare", "--input", "x.txt", "--out", "o", "--on-error", "ignore"});
    EXPECT_NE(bad_option.exit_code, 0);
}
