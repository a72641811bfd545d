// The evaluator pinned on scorers whose answers are known by hand: uniform logits (loss ln V,
// perplexity V, bits per byte from the manifest), an MQAR oracle (100%), a constant predictor
// (chance), and the model scorer against the training forward.
#include <gd.h>

#include <cmath>
#include <cstdio>

#include <gtest/gtest.h>

#include "core/rng.hpp"
#include "data/corpus.hpp"
#include "data/loader.hpp"
#include "eval/eval_report.hpp"
#include "eval/evaluate.hpp"
#include "model/language_model.hpp"
#include "support/models.hpp"
#include "support/process.hpp"
#include "support/testkit.hpp"

namespace linarch {
namespace {
using namespace testkit;

// Every position: the same logits over V tokens.
class UniformScorer final : public SequenceScorer {
public:
    explicit UniformScorer(int64_t vocab) : vocab_(vocab) {}
    int64_t vocab_size() const override { return vocab_; }
    void score(std::span<const int32_t> tokens, Tensor& logits) const override {
        ASSERT_EQ(logits.size(0), static_cast<int64_t>(tokens.size()));
        std::fill_n(logits.data<float>(), logits.numel(), 0.25f);
    }

private:
    int64_t vocab_;
};

// MQAR's rule read off the context: after token x, the token that followed x's first occurrence.
class RecallOracle final : public SequenceScorer {
public:
    explicit RecallOracle(int64_t vocab) : vocab_(vocab) {}
    int64_t vocab_size() const override { return vocab_; }
    void score(std::span<const int32_t> tokens, Tensor& logits) const override {
        std::fill_n(logits.data<float>(), logits.numel(), 0.0f);
        for (size_t t = 0; t < tokens.size(); ++t)
            for (size_t i = 0; i + 1 <= t; ++i)
                if (tokens[i] == tokens[t] && i + 1 < tokens.size()) {
                    logits.data<float>()[t * size_t(vocab_) + size_t(tokens[i + 1])] = 5.0f;
                    break;
                }
    }

private:
    int64_t vocab_;
};

// Always the same token.
class ConstantScorer final : public SequenceScorer {
public:
    ConstantScorer(int64_t vocab, int32_t token) : vocab_(vocab), token_(token) {}
    int64_t vocab_size() const override { return vocab_; }
    void score(std::span<const int32_t>, Tensor& logits) const override {
        std::fill_n(logits.data<float>(), logits.numel(), 0.0f);
        for (int64_t t = 0; t < logits.size(0); ++t) logits.data<float>()[t * vocab_ + token_] = 1.0f;
    }

private:
    int64_t vocab_;
    int32_t token_;
};

// A byte-level corpus of random words with a validation split of some thousands of tokens.
CorpusManifest small_corpus(const std::filesystem::path& dir) {
    RngStream rng(test_seed(), stream_id("eval corpus"));
    std::string text;
    for (int line = 0; line < 20000; ++line) {  // ~37 documents of 16 KiB
        const int words = 2 + int(rng.below(8));
        for (int w = 0; w < words; ++w) text += std::string(1 + rng.below(6), char('a' + rng.below(26))) + " ";
        text += "é.\n";
    }
    write_text(dir / "corpus.txt", text);
    PrepareOptions options;
    options.val_fraction = 0.5;
    return prepare_corpus({(dir / "corpus.txt").string()}, dir / "corpus", options).manifest;
}

TEST(Evaluate, TokenLossesMatchHandComputation) {
    // Row 0: logits (0, ln 2, 0) → p = (1/4, 1/2, 1/4); row 1 is skipped; row 2: uniform over 3.
    const Tensor logits = Tensor::from_vector({3, 3}, {0, std::log(2.0), 0, 9, 9, 9, 1, 1, 1});
    const std::vector<int32_t> targets = {2, -1, 1};
    const auto losses = token_losses(logits, targets);
    EXPECT_NEAR(losses[0], std::log(4.0), 1e-6);
    EXPECT_TRUE(std::isnan(losses[1]));
    EXPECT_NEAR(losses[2], std::log(3.0), 1e-6);
    const std::vector<int32_t> outside = {3, 0, 0};
    EXPECT_THROW(token_losses(logits, outside), Error);
}

TEST(Evaluate, UniformLogitsGiveLnVPerplexityVAndBitsPerByteFromTheManifest) {
    TempDir dir;
    const CorpusManifest manifest = small_corpus(dir.path());
    const CorpusSplit val = open_corpus_split(dir.path() / "corpus", "val");
    for (const int64_t vocab : {259, 300}) {
        LossOptions options;
        options.seq_len = 37;  // odd, not dividing the split
        options.max_windows = 40;
        const auto results = evaluate_loss(UniformScorer(vocab), val, options);
        ASSERT_EQ(results.size(), 3u);
        EXPECT_EQ(results[0].metric, "val_loss");
        EXPECT_NEAR(results[0].value, std::log(double(vocab)), 1e-9);
        EXPECT_EQ(results[0].count, 40 * 37);
        EXPECT_NEAR(results[1].value, double(vocab), 1e-6 * vocab);
        const double bpb = std::log2(double(vocab)) * double(manifest.val.tokens) / double(manifest.val.bytes);
        EXPECT_NEAR(results[2].value, bpb, 1e-9);
        // Byte tokens: one per byte, plus each document's EOS.
        EXPECT_GT(manifest.val.tokens, manifest.val.bytes);
    }
    // A model whose vocabulary cannot hold the corpus's tokens is refused.
    EXPECT_THROW(evaluate_loss(UniformScorer(100), val, LossOptions{}), Error);
    LossOptions too_long;
    too_long.seq_len = val.tokens.size();
    EXPECT_THROW(evaluate_loss(UniformScorer(259), val, too_long), Error);
}

TEST(Evaluate, MqarOracleScoresEverythingAndAConstantScoresChance) {
    MqarOptions options;
    options.vocab_size = 16;
    options.seq_lens = {32, 61};
    options.num_kv_pairs = {2, 4, 8};  // D = 8 needs V ≥ 2·8 + 2 = 18: that cell is left out
    options.examples = 50;
    options.seed = test_seed();
    const auto oracle = evaluate_mqar(RecallOracle(16), options);
    // Cells: T ∈ {32, 61} × D ∈ {2, 4} (D = 8 needs V ≥ 18), two metrics each.
    ASSERT_EQ(oracle.size(), 8u);
    for (const Measurement& m : oracle) {
        EXPECT_NE(m.num_kv_pairs, 8);
        if (m.metric == "accuracy") {
            EXPECT_EQ(m.value, 1.0) << m.seq_len << " " << m.num_kv_pairs;
            EXPECT_EQ(m.count, 50 * m.num_kv_pairs);
        } else {
            EXPECT_EQ(m.metric, "chance");
            EXPECT_DOUBLE_EQ(m.value, 1.0 / 8.0);
        }
    }
    // A constant value token is right exactly when it is the queried key's value: on average 1/8 of
    // the answers (values are distinct and uniform on [V/2, V)). An example's D answers are not
    // independent (at most one can be right), hence the doubled binomial standard deviation.
    options.seq_lens = {64};
    options.num_kv_pairs = {4};
    options.examples = 3000;
    const auto constant = evaluate_mqar(ConstantScorer(16, 11), options);
    const double sigma = std::sqrt(0.125 * 0.875 / double(3000 * 4)) * 2;  // ×2: answers correlate in an example
    EXPECT_NEAR(constant[0].value, 0.125, 5 * sigma);
    // A token that is never a value (keys are below V/2) scores nothing.
    EXPECT_EQ(evaluate_mqar(ConstantScorer(16, 3), options)[0].value, 0.0);
    // Nothing feasible, or a vocabulary larger than the model's: errors.
    options.num_kv_pairs = {40};
    EXPECT_THROW(evaluate_mqar(RecallOracle(16), options), Error);
    options.num_kv_pairs = {4};
    EXPECT_THROW(evaluate_mqar(RecallOracle(8), options), Error);
}

TEST(Evaluate, PositionBucketsDoubleAndCoverTheWindow) {
    using Buckets = std::vector<std::pair<int64_t, int64_t>>;
    EXPECT_EQ(position_buckets(100, 16), (Buckets{{0, 16}, {16, 32}, {32, 64}, {64, 100}}));
    EXPECT_EQ(position_buckets(64, 16), (Buckets{{0, 16}, {16, 32}, {32, 64}}));
    EXPECT_EQ(position_buckets(10, 16), (Buckets{{0, 10}}));
    EXPECT_THROW(position_buckets(0, 16), Error);
}

TEST(Evaluate, ExtrapolationCountsEveryPositionOfEveryWindowOnce) {
    TempDir dir;
    small_corpus(dir.path());
    const CorpusSplit val = open_corpus_split(dir.path() / "corpus", "val");
    ExtrapolationOptions options;
    options.train_seq_len = 40;
    options.multiples = {1, 3};
    options.windows = 5;
    options.first_bucket = 8;
    const auto results = evaluate_extrapolation(UniformScorer(259), val, options);
    std::map<int64_t, int64_t> counted;
    for (const Measurement& m : results) {
        EXPECT_NEAR(m.value, std::log(259.0), 1e-9);
        EXPECT_EQ(m.count, 5 * (m.position_end - m.position_begin));
        counted[m.multiple] += m.count;
    }
    EXPECT_EQ(counted[1], 5 * 40);
    EXPECT_EQ(counted[3], 5 * 120);
}

TEST(Evaluate, ModelScorerEqualsTheTrainingForwardInAnyPieces) {
    const ModelSpec spec = tiny_language_model();
    LanguageModel model(spec);
    model.initialize(test_seed());
    const int64_t T = 45;
    const auto tokens = random_ids(T + 1, int32_t(spec.vocab_size), stream_id("scorer tokens"));
    const std::vector<int32_t> inputs(tokens.begin(), tokens.end() - 1), targets(tokens.begin() + 1, tokens.end());
    const double forward = model.forward(inputs, targets, 1, T);
    for (const int64_t piece : {int64_t(1), int64_t(7), int64_t(512)}) {
        Tensor logits = Tensor::empty({T, spec.vocab_size});
        ModelScorer(model, piece).score(inputs, logits);
        double sum = 0;
        for (double loss : token_losses(logits, targets)) sum += loss;
        EXPECT_NEAR(sum / double(T), forward, 1e-4 * forward) << "piece " << piece;
    }
}

TEST(EvalReport, JsonCarriesOnlyTheCoordinatesThatApplyAndThePlotIsAPng) {
    EvalRun run;
    run.checkpoint = "runs/x/checkpoints/step-00000010";
    run.step = 10;
    run.corpus = "data/x";
    run.suites = {"loss", "mqar", "extrapolation"};
    Measurement loss{"loss", "val_loss", 1.5, 64, -1, -1, -1, -1, 640};
    Measurement mqar{"mqar", "accuracy", 0.75, 128, 8, -1, -1, -1, 64};
    Measurement chance{"mqar", "chance", 0.0078125, 128, 8, -1, -1, -1, 64};
    run.results = {loss, mqar, chance};
    for (int64_t k : {1, 2})
        for (const auto& [begin, end] : position_buckets(64 * k, 16))
            run.results.push_back({"extrapolation", "loss", 2.0 - 0.1 * double(begin) / 64.0, 64 * k, -1, k, begin,
                                   end, 4 * (end - begin)});
    const auto json = eval_json(run);
    EXPECT_EQ(json["format"], "linarch-eval");
    EXPECT_EQ(json["step"], 10);
    const auto& first = json["results"][0];
    EXPECT_EQ(first["metric"], "val_loss");
    EXPECT_FALSE(first.contains("num_kv_pairs"));
    EXPECT_FALSE(first.contains("multiple"));
    EXPECT_EQ(json["results"][1]["num_kv_pairs"], 8);
    EXPECT_EQ(json["results"][3]["position_end"], 16);
    const std::string table = eval_table(run);
    EXPECT_NE(table.find("0.750"), std::string::npos) << table;
    EXPECT_NE(table.find("[32, 64)"), std::string::npos) << table;

    TempDir dir;
    const auto png = dir.path() / "positions.png";
    write_position_loss_png(png, run);
    std::FILE* file = std::fopen(png.c_str(), "rb");
    ASSERT_NE(file, nullptr);
    gdImagePtr image = gdImageCreateFromPng(file);
    std::fclose(file);
    ASSERT_NE(image, nullptr);
    EXPECT_GT(gdImageSX(image), 100);
    gdImageDestroy(image);
    run.results = {loss};
    EXPECT_THROW(write_position_loss_png(png, run), Error);
}

}  // namespace
}  // namespace linarch
