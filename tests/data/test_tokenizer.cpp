// Tokenizers: the byte tokenizer, SentencePiece models trained here (BPE and unigram) and a model
// made elsewhere. The round trip must be exact on any byte string.
#include <gtest/gtest.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <chrono>
#include <set>

#include "core/rng.hpp"
#include "data/tokenizer.hpp"
#include "support/process.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using namespace linarch::testkit;
namespace fs = std::filesystem;

namespace {

// Lines of made-up words (some with accents, CJK and emoji) separated by spaces, with the odd tab
// and double space: enough for a few hundred pieces of each kind.
std::string make_corpus(uint64_t seed, int lines) {
    const char* syllables[] = {"ka", "ri", "to", "mo", "na", "shi", "ru", "e",  "ba",     "do",     "gu",
                               "ze", "pa", "lo", "vi", "é",  "ü",   "ñ",  "東", "京", "データ", "😀"};
    RngStream rng(seed, 21);
    std::vector<std::string> words(300);
    for (auto& word : words)
        for (int s = 0, n = 1 + int(rng.below(4)); s < n; ++s) word += syllables[rng.below(std::size(syllables))];
    std::string text;
    for (int line = 0; line < lines; ++line) {
        for (int w = 0, n = 3 + int(rng.below(10)); w < n; ++w) {
            if (w > 0) text += rng.below(20) == 0 ? (rng.below(2) ? "\t" : "  ") : " ";
            text += words[rng.below(words.size())];
        }
        text += ".\n";
    }
    return text;
}

// Byte strings built to hit the hard cases: pieces of the alphabet below (spaces, tabs, newlines,
// SentencePiece's own "▁", NUL, multibyte characters, invalid and truncated UTF-8, text that looks
// like special pieces) mixed with uniformly random bytes.
std::string random_bytes(RngStream& rng, size_t max_length) {
    static const std::vector<std::string> parts = {
        " ",     "  ",    "\t",     "\n",   "\r\n",    "\xE2\x96\x81",     "\xE2\x96\x81 ", "é",
        "東京",  "😀",    "kari",   "tomo ", "<s>",     "</s>",             "<unk>",         "<pad>",
        "<0x41>", "\xFF", "\xC3",   "\x80", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xE0\x80\xAF", "\xF0\x9F\x98",
        std::string(1, '\0')};
    const size_t length = rng.below(max_length + 1);
    std::string text;
    while (text.size() < length)
        text += rng.below(3) == 0 ? std::string(1, char(rng.below(256))) : parts[rng.below(parts.size())];
    return text;
}

// Two small models trained once for the whole suite (each well under a second).
class SentencePiece : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        dir = new TempDir;
        write_text(*dir / "corpus.txt", make_corpus(test_seed(), 3000));
        for (const char* type : {"bpe", "unigram"}) {
            SentencePieceTrainOptions options;
            options.model_type = type;
            options.vocab_size = 500;
            options.threads = 2;
            const auto summary = train_sentencepiece({*dir / "corpus.txt"}, model_path(type), options);
            EXPECT_EQ(summary.sentences, 3000);
        }
    }
    static void TearDownTestSuite() {
        delete dir;
        dir = nullptr;
    }
    static fs::path model_path(const std::string& type) { return *dir / (type + ".model"); }
    static std::vector<std::unique_ptr<Tokenizer>> models() {
        std::vector<std::unique_ptr<Tokenizer>> out;
        for (const char* type : {"bpe", "unigram"}) out.push_back(load_tokenizer(model_path(type).string()));
        return out;
    }
    static void expect_round_trip(const Tokenizer& tokenizer, const std::string& text) {
        const std::vector<int32_t> ids = tokenizer.encode(text);
        for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < tokenizer.vocab_size()) << id;
        for (int32_t special : {tokenizer.bos(), tokenizer.eos(), tokenizer.pad()})
            ASSERT_EQ(std::count(ids.begin(), ids.end(), special), 0) << "special " << special << " from text";
        const std::string back = tokenizer.decode(ids);
        ASSERT_EQ(back.size(), text.size()) << tokenizer.name();
        ASSERT_TRUE(back == text) << tokenizer.name() << ": round trip changed the text";
    }

    static TempDir* dir;
};
TempDir* SentencePiece::dir = nullptr;

}  // namespace

TEST(ByteTokenizer, RoundTripsEveryByteAndSpecialsDecodeToNothing) {
    const auto tokenizer = load_tokenizer("byte");
    EXPECT_EQ(tokenizer->name(), "byte");
    EXPECT_EQ(tokenizer->vocab_size(), 259);
    const std::set<int32_t> specials = {tokenizer->bos(), tokenizer->eos(), tokenizer->pad()};
    EXPECT_EQ(specials.size(), 3u);
    for (int32_t special : specials) EXPECT_TRUE(special >= 256 && special < 259);
    RngStream rng(test_seed(), 1);
    for (int trial = 0; trial < 50; ++trial) {
        const std::string text = random_bytes(rng, 500);
        const auto ids = tokenizer->encode(text);
        ASSERT_EQ(ids.size(), text.size());
        for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < 256);
        ASSERT_EQ(tokenizer->decode(ids), text);
    }
    std::vector<int32_t> ids = {tokenizer->bos(), 'h', 'i', tokenizer->eos(), tokenizer->pad(), -1, 9999};
    EXPECT_EQ(tokenizer->decode(ids), "hi");
    EXPECT_TRUE(tokenizer->encode("").empty());
}

TEST(Tokenizer, UnknownNamesAreClearErrors) {
    expect_error([] { load_tokenizer("missing.model"); }, {"missing.model", "byte"});
}

TEST_F(SentencePiece, SpecialsHaveFixedDistinctIdsAndDecodeToNothing) {
    for (const auto& tokenizer : models()) {
        EXPECT_EQ(tokenizer->vocab_size(), 500);
        EXPECT_EQ(tokenizer->bos(), 1);
        EXPECT_EQ(tokenizer->eos(), 2);
        EXPECT_EQ(tokenizer->pad(), 3);
        const std::vector<int32_t> specials = {tokenizer->bos(), tokenizer->eos(), tokenizer->pad()};
        EXPECT_EQ(tokenizer->decode(specials), "");
        std::vector<int32_t> ids = {tokenizer->bos()};
        for (int32_t id : tokenizer->encode(" kari\t")) ids.push_back(id);
        ids.insert(ids.end(), {tokenizer->eos(), tokenizer->pad(), -5, 500, 1 << 30});
        EXPECT_EQ(tokenizer->decode(ids), " kari\t");
    }
}

TEST_F(SentencePiece, RoundTripsRandomByteStrings) {
    RngStream rng(test_seed(), 2);
    for (const auto& tokenizer : models())
        for (int trial = 0; trial < 300; ++trial) expect_round_trip(*tokenizer, random_bytes(rng, 300));
}

TEST_F(SentencePiece, RoundTripsEdgeCases) {
    const std::vector<std::string> cases = {
        "", " ", "   ", " leading", "trailing ", "  both  ", "a  b   c", "\t", "\ttab\tand  \t space", "\n",
        "\n\nlines\n\n", "\r\n", std::string("nul\0byte", 8),
        // SentencePiece's space symbol "▁" in the text itself.
        "\xE2\x96\x81", "\xE2\x96\x81\xE2\x96\x81 \xE2\x96\x81x",
        "<s></s><pad><unk><0x41>",
        // Boundary code points: U+007F U+0080 U+07FF U+0800 U+D7FF U+E000 U+FFFD U+FFFF U+10000 U+10FFFF.
        "\x7F\xC2\x80\xDF\xBF\xE0\xA0\x80\xED\x9F\xBF\xEE\x80\x80"
        "\xEF\xBF\xBD\xEF\xBF\xBF\xF0\x90\x80\x80\xF4\x8F\xBF\xBF",
        // Ill-formed: overlong, surrogates, above U+10FFFF, lone continuation, truncated, bytes never used.
        "\xC0\x80", "\xC1\xBF", "\xE0\x80\x80", "\xED\xA0\x80", "\xED\xBF\xBF", "\xF0\x80\x80\x80", "\xF4\x90\x80\x80",
        "\x80", "\xBF", "\xC3", "a\xE6\x9D", "\xF0\x9F\x98", "\xF5\xF6\xF7\xF8\xFE\xFF", "é\xFFé", "\xFF kari \xFE",
    };
    for (const auto& tokenizer : models())
        for (const auto& text : cases) expect_round_trip(*tokenizer, text);
}

TEST_F(SentencePiece, RoundTripsAMegabyteLine) {
    // Corpus words and random bytes, no newline.
    RngStream rng(test_seed(), 3);
    std::string line = make_corpus(test_seed() + 1, 8000);
    std::replace(line.begin(), line.end(), '\n', ' ');
    line.resize(900000);
    while (line.size() < (1u << 20)) line += random_bytes(rng, 1000);
    for (const auto& tokenizer : models()) {
        const auto start = std::chrono::steady_clock::now();
        expect_round_trip(*tokenizer, line);
        EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(60)) << tokenizer->name();
    }
}

TEST_F(SentencePiece, CompressesTextLikeItsCorpus) {
    const std::string text = make_corpus(test_seed() + 2, 200);
    for (const auto& tokenizer : models()) {
        const auto ids = tokenizer->encode(text);
        EXPECT_LT(double(ids.size()), 0.5 * double(text.size())) << tokenizer->name();
        EXPECT_EQ(tokenizer->decode(ids), text);
    }
}

TEST_F(SentencePiece, TrainingIsDeterministicAndTheSampleFollowsTheSeed) {
    const std::string probe = make_corpus(test_seed() + 3, 50);
    for (const char* type : {"bpe", "unigram"}) {
        SentencePieceTrainOptions options;
        options.model_type = type;
        options.vocab_size = 400;
        options.threads = 2;
        options.input_sentence_size = 1000;
        options.seed = 7;
        const auto summary = train_sentencepiece({*dir / "corpus.txt"}, *dir / "a.model", options);
        EXPECT_EQ(summary.sentences, 1000);
        EXPECT_EQ(summary.not_sampled, 2000);
        train_sentencepiece({*dir / "corpus.txt"}, *dir / "b.model", options);
        options.seed = 8;
        train_sentencepiece({*dir / "corpus.txt"}, *dir / "c.model", options);
        EXPECT_EQ(read_text(*dir / "a.model"), read_text(*dir / "b.model")) << type;
        EXPECT_NE(read_text(*dir / "a.model"), read_text(*dir / "c.model")) << type;
        const auto a = load_tokenizer((*dir / "a.model").string());
        const auto b = load_tokenizer((*dir / "b.model").string());
        EXPECT_EQ(a->encode(probe), b->encode(probe)) << type;
    }
}

TEST_F(SentencePiece, TrainingErrorsSayWhatWasAskedAndLeaveNoFile) {
    TempDir work;
    write_text(work / "empty.txt", "");
    write_text(work / "blank.txt", "\n\n\n");
    write_text(work / "long.txt", std::string(5000, 'a') + "\n");
    const fs::path corpus = *dir / "corpus.txt";
    const fs::path out = work / "out.model";
    SentencePieceTrainOptions options;
    options.vocab_size = 400;
    expect_error([&] { train_sentencepiece({corpus, work / "nope.txt"}, out, options); }, {"nope.txt", "no such file"});
    expect_error([&] { train_sentencepiece({work / "empty.txt"}, out, options); }, {"empty.txt", "no training text"});
    expect_error([&] { train_sentencepiece({work / "blank.txt"}, out, options); }, {"blank.txt", "no training text"});
    expect_error([&] { train_sentencepiece({work / "long.txt"}, out, options); }, {"long.txt", "longer than"});
    expect_error([&] { train_sentencepiece({corpus}, work / "no-such-dir" / "x.model", options); },
                 {"x.model", "no-such-dir", "does not exist"});
    options.vocab_size = 270;  // 260 fixed pieces leave too few for the corpus's characters
    expect_error([&] { train_sentencepiece({corpus}, out, options); },
                 {"bpe", "vocab size 270", "corpus.txt", "Vocabulary size is smaller than required_chars"});
    options.vocab_size = 200;
    expect_error([&] { train_sentencepiece({corpus}, out, options); }, {"vocab size 200", "260"});
    options.vocab_size = 100000;
    options.model_type = "unigram";
    expect_error([&] { train_sentencepiece({corpus}, out, options); }, {"unigram", "vocab size 100000", "too high"});
    options.model_type = "word";
    expect_error([&] { train_sentencepiece({corpus}, out, options); }, {"\"word\"", "bpe, unigram"});
    // Nothing was written, not even a temporary file.
    EXPECT_EQ(std::distance(fs::directory_iterator(work.path()), fs::directory_iterator()), 3);
}

TEST_F(SentencePiece, TrainingReplacesAnExistingModel) {
    TempDir work;
    write_text(work / "m.model", "old");
    SentencePieceTrainOptions options;
    options.vocab_size = 400;
    train_sentencepiece({*dir / "corpus.txt"}, work / "m.model", options);
    EXPECT_EQ(load_tokenizer((work / "m.model").string())->vocab_size(), 400);
    EXPECT_EQ(std::distance(fs::directory_iterator(work.path()), fs::directory_iterator()), 1);
}

TEST_F(SentencePiece, MissingOrCorruptModelsAreClearErrors) {
    TempDir work;
    expect_error([&] { load_tokenizer((work / "gone.model").string()); }, {"gone.model", "no such file"});
    write_text(work / "junk.model", "this is not a protobuf \xFF\xFF\xFF");
    expect_error([&] { load_tokenizer((work / "junk.model").string()); }, {"junk.model", "not a SentencePiece model"});
    std::string truncated = read_text(model_path("bpe"));
    truncated.resize(truncated.size() / 2);
    write_text(work / "half.model", truncated);
    expect_error([&] { load_tokenizer((work / "half.model").string()); }, {"half.model", "not a SentencePiece model"});
}

// A model made with SentencePiece's defaults (NFKC normalisation, dummy prefix, no byte fallback,
// no <pad>) still loads and works as SentencePiece would; only the exact round trip is not promised.
TEST_F(SentencePiece, LoadsModelsMadeElsewhere) {
    TempDir work;
    const std::string prefix = (work / "plain").string();
    const auto status = sentencepiece::SentencePieceTrainer::Train(
        {{"input", (*dir / "corpus.txt").string()}, {"model_prefix", prefix}, {"vocab_size", "200"},
         {"minloglevel", "2"}});
    ASSERT_TRUE(status.ok()) << status.ToString();
    const auto tokenizer = load_tokenizer(prefix + ".model");
    EXPECT_EQ(tokenizer->vocab_size(), 200);
    EXPECT_EQ(tokenizer->bos(), 1);
    EXPECT_EQ(tokenizer->eos(), 2);
    EXPECT_EQ(tokenizer->pad(), -1);
    const std::string text = "kari tomo nashi";
    const auto ids = tokenizer->encode(text);
    for (int32_t id : ids) EXPECT_TRUE(id >= 0 && id < 200);
    EXPECT_EQ(tokenizer->decode(ids), text);
    // Invalid UTF-8 and unknown characters become <unk>: no crash, ids in range, lossy text.
    for (int32_t id : tokenizer->encode("\xFF\xFE Ω")) EXPECT_TRUE(id >= 0 && id < 200);
    EXPECT_EQ(tokenizer->decode(std::vector<int32_t>{1, 2, -1, 200}), "");
}
