#include <gtest/gtest.h>

#include <fstream>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "data/byte_corpus.hpp"
#include "data/loader.hpp"
#include "data/token_shard.hpp"
#include "support/process.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using namespace linarch::testkit;

namespace {
void expect_error(const std::function<void()>& body, const std::vector<std::string>& fragments) {
    try {
        body();
        ADD_FAILURE() << "expected an Error";
    } catch (const Error& e) {
        for (const auto& f : fragments) EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what();
    }
}
}  // namespace

TEST(TokenShard, RoundTripsBothWidths) {
    TempDir dir;
    for (int32_t vocab : {256, 70000}) {
        const auto tokens = random_ids(1001, vocab, uint64_t(vocab));
        write_token_shard(dir / "s.bin", tokens, vocab);
        TokenShard shard(dir / "s.bin");
        ASSERT_EQ(shard.size(), 1001);
        EXPECT_EQ(shard.vocab_size(), vocab);
        for (int64_t i = 0; i < shard.size(); ++i) ASSERT_EQ(shard[i], tokens[size_t(i)]);
        EXPECT_EQ(std::filesystem::file_size(dir / "s.bin"),
                  kShardHeaderBytes + 1001 * (vocab <= 65536 ? 2u : 4u));
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
    std::filesystem::resize_file(dir / "s.bin", kShardHeaderBytes + 300);
    expect_error([&] { TokenShard s(dir / "s.bin"); }, {"s.bin", "truncated"});
    write_text(dir / "junk.bin", std::string(100, 'x'));
    expect_error([&] { TokenShard s(dir / "junk.bin"); }, {"junk.bin", "magic"});
    expect_error([&] { TokenShard s(dir / "missing.bin"); }, {"missing.bin"});
    std::vector<int32_t> bad = {1, 2, 300};
    expect_error([&] { write_token_shard(dir / "b.bin", bad, 256); }, {"b.bin", "300", "position 2"});
    EXPECT_FALSE(std::filesystem::exists(dir / "b.bin"));
}

TEST(ByteCorpus, SplitsDeterministicallyAndKeepsEveryByte) {
    TempDir dir;
    std::string text;
    RngStream rng(test_seed(), 5);
    for (int line = 0; line < 4000; ++line) {
        const int length = int(rng.below(60));
        for (int c = 0; c < length; ++c) text += char(32 + rng.below(90));
        text += '\n';
    }
    write_text(dir / "in.txt", text);
    ByteCorpusOptions options;
    options.val_fraction = 0.2;
    options.block_bytes = 2048;
    const auto a = prepare_byte_corpus({dir / "in.txt"}, dir / "a", options);
    const auto b = prepare_byte_corpus({dir / "in.txt"}, dir / "b", options);
    EXPECT_EQ(a.val_tokens, b.val_tokens);
    EXPECT_EQ(a.train_tokens + a.val_tokens, int64_t(text.size()));
    EXPECT_GT(a.val_documents, 0);
    EXPECT_LT(a.val_documents, a.documents);
    EXPECT_EQ(read_text(dir / "a" / "train.bin"), read_text(dir / "b" / "train.bin"));
    EXPECT_EQ(read_text(dir / "a" / "val.bin"), read_text(dir / "b" / "val.bin"));
    options.seed = 2;
    prepare_byte_corpus({dir / "in.txt"}, dir / "c", options);
    EXPECT_NE(read_text(dir / "a" / "val.bin"), read_text(dir / "c" / "val.bin"));
    EXPECT_NE(read_text(dir / "a" / "manifest.json").find("\"tokenizer\": \"byte\""), std::string::npos);
}

TEST(WindowSampler, BatchesArePureFunctionsOfTheirIndex) {
    TempDir dir;
    const auto tokens = random_ids(5000, 256, 9);
    write_token_shard(dir / "s.bin", tokens, 256);
    TokenShard shard(dir / "s.bin");
    WindowSampler sampler(shard, 3, 16, 42);
    Batch first, again, other;
    sampler.random_batch(7, first);
    sampler.random_batch(3, other);
    sampler.random_batch(7, again);
    EXPECT_EQ(first.inputs, again.inputs);
    EXPECT_NE(first.inputs, other.inputs);
    for (int64_t row = 0; row < 3; ++row)
        for (int64_t t = 0; t + 1 < 16; ++t)
            EXPECT_EQ(first.targets[size_t(row * 16 + t)], first.inputs[size_t(row * 16 + t + 1)]);
    sampler.sequential_batch(0, first);
    for (int64_t i = 0; i < 16; ++i) EXPECT_EQ(first.inputs[size_t(i)], tokens[size_t(i)]);
    EXPECT_EQ(first.inputs[16], tokens[16]);
}
