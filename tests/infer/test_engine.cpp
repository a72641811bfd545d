// The generation engine: a request's tokens do not depend on the batch it runs in (requests joining
// and leaving between steps), stop conditions end it with the right reason, forked and rolled-back
// states continue exactly. (test_engine_long.cpp: a linear model's memory stays flat over 64k tokens.)
#include <gtest/gtest.h>

#include <map>

#include "core/error.hpp"
#include "core/spec.hpp"
#include "infer/engine.hpp"
#include "support/models.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using namespace linarch::testkit;

namespace {
GenerationRequest request(int64_t prompt_length, int64_t max_tokens, uint64_t seed, uint64_t stream) {
    GenerationRequest r;
    r.prompt = random_ids(prompt_length, 256, stream);
    r.max_tokens = max_tokens;
    r.seed = seed;
    r.sampling.temperature = 1.0;
    r.sampling.top_k = 50;
    return r;
}

// Runs the engine until idle; returns each request's tokens and finish reason, submitting the
// requests in `later` once `after` rounds have run.
struct Outcome {
    std::vector<int32_t> tokens;
    FinishReason finish = FinishReason::none;
};
std::map<int64_t, Outcome> run(Engine& engine, std::vector<GenerationRequest> now, std::vector<GenerationRequest> later,
                               int after) {
    std::map<int64_t, Outcome> out;
    for (auto& r : now) engine.submit(r);
    for (int round = 0; !engine.idle() || !later.empty(); ++round) {
        if (round == after)
            for (auto& r : later) engine.submit(r);
        if (round >= after) later.clear();
        for (const TokenEvent& e : engine.step()) {
            out[e.request].tokens.push_back(e.token);
            if (e.finish != FinishReason::none) out[e.request].finish = e.finish;
        }
    }
    return out;
}

}  // namespace


TEST(Engine, ARequestGivesTheSameTokensAloneOrInAnyBatch) {
    for (const std::vector<std::string>& overrides : {std::vector<std::string>{}, {"model.hybrid_every=2"}}) {
        SCOPED_TRACE(overrides.empty() ? "linear" : "hybrid");
        LanguageModel model(tiny_language_model(overrides), DType::f64);
        model.initialize(test_seed());
        std::vector<GenerationRequest> requests = {request(5, 12, 1, 1), request(9, 7, 2, 2), request(1, 15, 3, 3),
                                                   request(13, 4, 4, 4), request(3, 10, 5, 5)};
        requests[1].sampling.top_p = 0.8;
        requests[2].sampling.temperature = 0;  // greedy beside sampled ones
        requests[3].sampling.min_p = 0.05;
        requests[4].sampling.frequency_penalty = 0.5;
        requests[4].sampling.repetition_penalty = 1.3;
        std::vector<std::vector<int32_t>> alone;
        for (const auto& r : requests) {
            Engine engine(model, nullptr, 1);
            alone.push_back(run(engine, {r}, {}, 0).begin()->second.tokens);
            EXPECT_EQ(int64_t(alone.back().size()), r.max_tokens);
        }
        // Batch of 2 with a queue, three more joining after three rounds.
        Engine engine(model, nullptr, 2);
        const auto together = run(engine, {requests[0], requests[1]}, {requests[2], requests[3], requests[4]}, 3);
        ASSERT_EQ(together.size(), requests.size());
        for (size_t i = 0; i < requests.size(); ++i) {
            EXPECT_EQ(together.at(int64_t(i)).tokens, alone[i]) << "request " << i;
            EXPECT_EQ(together.at(int64_t(i)).finish, FinishReason::length);
        }
    }
}

// Decode steps sample fused into the LM head unless a request needs the whole logits row (top-n
// logprobs, penalties); the two paths draw the same tokens from the same seed, in one batch or apart,
// and the fused path's chosen-token logprob is the row's log-softmax.
TEST(Engine, FusedAndFullRowSamplingDrawTheSameTokens) {
    LanguageModel model(tiny_language_model(), DType::f32);
    model.initialize(test_seed());
    std::vector<GenerationRequest> requests;
    for (uint64_t seed : {11, 12, 13}) {
        GenerationRequest fused = request(6, 20, seed, seed);
        fused.sampling.top_p = 0.9;
        fused.top_logprobs = 0;        // the chosen token's logprob: available from the fused path
        GenerationRequest row = fused;
        row.top_logprobs = 2;          // top-n logprobs: the full row
        GenerationRequest penalized = fused;
        penalized.sampling.repetition_penalty = 1.0 + 1e-12;  // a penalty (numerically nothing): the full row
        requests.insert(requests.end(), {fused, row, penalized});
    }
    Engine engine(model, nullptr, 16);
    std::map<int64_t, std::vector<TokenEvent>> events;
    for (const GenerationRequest& r : requests) engine.submit(r);
    while (!engine.idle())
        for (TokenEvent& e : engine.step()) events[e.request].push_back(std::move(e));
    for (int64_t seed = 0; seed < 3; ++seed) {
        const auto& fused = events[3 * seed];
        const auto& row = events[3 * seed + 1];
        const auto& penalized = events[3 * seed + 2];
        ASSERT_EQ(fused.size(), 20u);
        ASSERT_EQ(row.size(), fused.size());
        ASSERT_EQ(penalized.size(), fused.size());
        for (size_t t = 0; t < fused.size(); ++t) {
            EXPECT_EQ(fused[t].token, row[t].token) << "seed " << seed << " token " << t;
            EXPECT_EQ(fused[t].token, penalized[t].token) << "seed " << seed << " token " << t;
            ASSERT_TRUE(fused[t].logprobs && row[t].logprobs);
            EXPECT_NEAR(fused[t].logprobs->logprob, row[t].logprobs->logprob, 1e-4);
            EXPECT_EQ(row[t].logprobs->top.size(), 2u);
        }
    }
}

TEST(Engine, StopTokensAndStringsEndARequest) {
    LanguageModel model(tiny_language_model(), DType::f64);
    model.initialize(test_seed() + 1);
    auto tokenizer = load_tokenizer("byte");
    GenerationRequest greedy = request(4, 40, 7, 7);
    greedy.sampling.temperature = 0;
    Engine reference(model, tokenizer.get(), 1);
    const auto tokens = run(reference, {greedy}, {}, 0).begin()->second.tokens;
    // Stop at the 6th token's id: generation ends at its first occurrence, which is reported.
    GenerationRequest stop_token = greedy;
    stop_token.stop_tokens = {tokens[5]};
    Engine engine(model, tokenizer.get(), 4);
    const auto first = size_t(std::find(tokens.begin(), tokens.end(), tokens[5]) - tokens.begin());
    auto stopped = run(engine, {stop_token}, {}, 0).begin()->second;
    EXPECT_EQ(stopped.finish, FinishReason::stop);
    EXPECT_EQ(stopped.tokens, std::vector<int32_t>(tokens.begin(), tokens.begin() + std::ptrdiff_t(first) + 1));
    // A stop string made of generated tokens 3..4 (bytes).
    GenerationRequest stop_string = greedy;
    stop_string.stop_strings = {tokenizer->decode(std::vector<int32_t>(tokens.begin() + 3, tokens.begin() + 5))};
    Engine engine2(model, tokenizer.get(), 4);
    const auto by_string = run(engine2, {stop_string}, {}, 0).begin()->second;
    EXPECT_EQ(by_string.finish, FinishReason::stop);
    EXPECT_LE(by_string.tokens.size(), 5u);
    // Logprobs: the chosen token's log-probability is among the reported top ones when it is greedy.
    GenerationRequest with_logprobs = greedy;
    with_logprobs.top_logprobs = 3;
    with_logprobs.max_tokens = 2;
    Engine engine3(model, tokenizer.get(), 1);
    engine3.submit(with_logprobs);
    const auto events = engine3.step();
    ASSERT_EQ(events.size(), 1u);
    ASSERT_TRUE(events[0].logprobs.has_value());
    ASSERT_EQ(events[0].logprobs->top.size(), 3u);
    EXPECT_EQ(events[0].logprobs->top[0].first, events[0].token);
    EXPECT_DOUBLE_EQ(events[0].logprobs->top[0].second, events[0].logprobs->logprob);
    EXPECT_LT(events[0].logprobs->logprob, 0.0);
    // Bad requests are refused, naming the field.
    GenerationRequest empty;
    EXPECT_THROW(engine3.submit(empty), Error);
    GenerationRequest outside = greedy;
    outside.prompt = {300};
    EXPECT_THROW(engine3.submit(outside), Error);
    Engine no_tokenizer(model, nullptr, 1);
    EXPECT_THROW(no_tokenizer.submit(stop_string), Error);
}

TEST(Engine, ForkedAndRolledBackStatesContinueExactly) {
    LanguageModel model(tiny_language_model({"model.hybrid_every=2"}), DType::f64);
    model.initialize(test_seed() + 2);
    const auto prompt = random_ids(9, 256, 11), tail = random_ids(5, 256, 12), other = random_ids(4, 256, 13);
    auto state = model.new_decode_state();
    Tensor logits = Tensor::empty({1, 259}, DType::f64);
    model.step(state, prompt, logits);
    const auto snapshot = state.clone();
    // Diverge, then roll back to the snapshot and continue: the same logits as never diverging.
    model.step(state, other, logits);
    auto rolled_back = snapshot.clone();
    Tensor a = Tensor::empty({1, 259}, DType::f64), b = Tensor::empty({1, 259}, DType::f64);
    model.step(rolled_back, tail, a);
    auto fresh = model.new_decode_state();
    model.step(fresh, prompt, logits);
    model.step(fresh, tail, b);
    EXPECT_EQ(relative_error(a, b), 0.0);
    EXPECT_EQ(rolled_back.position, int64_t(prompt.size() + tail.size()));
    // The snapshot itself was not touched by either continuation.
    auto again = snapshot.clone();
    model.step(again, tail, a);
    EXPECT_EQ(relative_error(a, b), 0.0);
}

