// linarch serve in process: a real server on an ephemeral loopback port and real HTTP clients.
// Every generated text is compared with the offline path (generate_text) for the same seed and
// options; streams are checked event by event; bad requests get OpenAI's error object with 400 and
// the server keeps serving; a client that hangs up, mid-stream or before a non-streamed reply, has its
// sequences cancelled. The 64-request load test prints time-to-first-token, total latency and tokens/s.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <thread>

#include <fmt/core.h>

#include "core/error.hpp"
#include "core/spec.hpp"
#include "infer/generate.hpp"
#include "serve/http_testkit.hpp"
#include "serve/server.hpp"
#include "support/models.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using namespace linarch::testkit;

namespace {

// The byte tokenizer without an EOS token: generation runs to max_tokens (for the hang-up test).
class NoEosTokenizer final : public Tokenizer {
public:
    int64_t vocab_size() const override { return bytes_->vocab_size(); }
    int32_t bos() const override { return bytes_->bos(); }
    int32_t eos() const override { return -1; }
    int32_t pad() const override { return bytes_->pad(); }
    std::vector<int32_t> encode(std::string_view text) const override { return bytes_->encode(text); }
    std::string decode(std::span<const int32_t> tokens) const override { return bytes_->decode(tokens); }
    std::string name() const override { return "byte-without-eos"; }

private:
    std::unique_ptr<Tokenizer> bytes_ = load_tokenizer("byte");
};

// A request as the offline path sees it and as an OpenAI body.
struct Case {
    std::string prompt;
    GenerateOptions options;
};

json completion_body(const Case& c, bool stream) {
    const SamplingOptions& s = c.options.sampling;
    json body = {{"model", "tiny"},
                 {"prompt", c.prompt},
                 {"max_tokens", c.options.max_tokens},
                 {"seed", c.options.seed},
                 {"temperature", s.temperature},
                 {"top_p", s.top_p},
                 {"top_k", s.top_k},
                 {"min_p", s.min_p},
                 {"repetition_penalty", s.repetition_penalty},
                 {"presence_penalty", s.presence_penalty},
                 {"frequency_penalty", s.frequency_penalty},
                 {"stream", stream}};
    if (!c.options.stop.empty()) body["stop"] = c.options.stop;
    for (const auto& [token, bias] : s.logit_bias) body["logit_bias"][std::to_string(token)] = bias;
    return body;
}

Case sample_case(int i) {
    const char* prompts[] = {"the lord", "In the beginning", "And God said, Let there be light", "x", "",
                             "naïve café — 東京"};
    Case c;
    c.prompt = prompts[i % 6];
    c.options.max_tokens = 16;
    c.options.seed = 1000 + uint64_t(i);
    SamplingOptions& s = c.options.sampling;
    s.temperature = std::vector<double>{0.0, 0.7, 1.0, 1.3}[size_t(i % 4)];
    if (i % 3 == 1) s.top_k = 20;
    if (i % 5 == 2) s.top_p = 0.9;
    if (i % 7 == 3) s.min_p = 0.05;
    if (i % 4 == 1) s.repetition_penalty = 1.2;
    if (i % 6 == 5) s.presence_penalty = 0.5, s.frequency_penalty = -0.3;
    if (i % 8 == 7) c.options.stop = {"e", "th"};
    return c;
}

double percentile(std::vector<double> values, double q) {
    std::sort(values.begin(), values.end());
    const auto rank = size_t(std::ceil(q * double(values.size())));
    return values[std::min(values.size() - 1, rank == 0 ? 0 : rank - 1)];
}

class ServerTest : public ::testing::Test {
protected:
    void SetUp() override {
        model.initialize(test_seed());
        options.port = 0;
        options.max_batch = 32;
        options.max_prompt_tokens = 64;
        options.max_tokens = 256;
        options.model_name = "tiny";
        server = std::make_unique<Server>(model, *tokenizer, ChatTemplate(), options);
        port = server->start();
    }
    void TearDown() override { server->stop(); }

    // Only while no request is in flight: the test thread and the engine thread share the model.
    std::string offline(const Case& c) { return generate_text(model, *tokenizer, c.prompt, c.options); }

    json complete(const json& body, const std::string& path = "/v1/completions") {
        const HttpReply reply = http_post(port, path, body.dump());
        EXPECT_EQ(reply.status, 200) << reply.body;
        return reply.parsed();
    }

    LanguageModel model{tiny_language_model()};
    std::unique_ptr<Tokenizer> tokenizer = load_tokenizer("byte");
    ServeOptions options;
    std::unique_ptr<Server> server;
    int port = 0;
};

}  // namespace

TEST_F(ServerTest, HealthModelsAndMetrics) {
    const HttpReply health = http_get(port, "/health");
    EXPECT_EQ(health.status, 200);
    EXPECT_EQ(health.parsed()["status"], "ok");
    const json models = http_get(port, "/v1/models").parsed();
    EXPECT_EQ(models["object"], "list");
    ASSERT_EQ(models["data"].size(), 1u);
    EXPECT_EQ(models["data"][0]["id"], "tiny");
    EXPECT_EQ(models["data"][0]["object"], "model");
    const HttpReply metrics = http_get(port, "/metrics");
    EXPECT_EQ(metrics.status, 200);
    for (const char* name : {"linarch_requests_total", "linarch_tokens_per_second", "linarch_queue_depth",
                             "linarch_batch_size", "linarch_requests_cancelled_total"}) {
        EXPECT_EQ(metric_value(metrics.body, name), 0) << name << "\n" << metrics.body;
        EXPECT_NE(metrics.body.find(fmt::format("# TYPE {} ", name)), std::string::npos) << name;
    }
    for (const HttpReply& missing : {http_get(port, "/v1/engines"), http_post(port, "/v1/embeddings", "{}")}) {
        EXPECT_EQ(missing.status, 404);
        EXPECT_EQ(missing.parsed()["error"]["type"], "invalid_request_error") << missing.body;
    }
}

TEST_F(ServerTest, ASecondServerCannotTakeTheSamePort) {
    ServeOptions same = options;
    same.port = port;
    Server second(model, *tokenizer, ChatTemplate(), same);
    EXPECT_THROW(second.start(), Error);
    EXPECT_EQ(http_get(port, "/health").status, 200);
}

TEST_F(ServerTest, CompletionEqualsOfflineGeneration) {
    Case c{"the lord", {}};
    c.options.max_tokens = 24;
    c.options.seed = 5;
    c.options.sampling.temperature = 0.9;
    c.options.sampling.top_k = 40;
    const json response = complete(completion_body(c, false));
    EXPECT_EQ(response["object"], "text_completion");
    EXPECT_EQ(response["model"], "tiny");
    EXPECT_EQ(response["id"].get<std::string>().rfind("cmpl-", 0), 0u) << response;
    EXPECT_TRUE(response["created"].is_number_integer());
    ASSERT_EQ(response["choices"].size(), 1u);
    const json& choice = response["choices"][0];
    EXPECT_EQ(choice["index"], 0);
    EXPECT_TRUE(choice["logprobs"].is_null());
    const std::string text = choice["text"].get<std::string>();
    const json& usage = response["usage"];
    EXPECT_EQ(usage["prompt_tokens"], 8);
    const int64_t generated = usage["completion_tokens"].get<int64_t>();
    EXPECT_EQ(usage["total_tokens"], 8 + generated);
    EXPECT_EQ(choice["finish_reason"], generated < 24 ? "stop" : "length");
    EXPECT_EQ(text, offline(c));
    // The same prompt given as token ids.
    json by_ids = completion_body(c, false);
    by_ids["prompt"] = tokenizer->encode(c.prompt);
    EXPECT_EQ(complete(by_ids)["choices"][0]["text"], text);
    // Same seed, same text; another seed, another text.
    EXPECT_EQ(complete(completion_body(c, false))["choices"][0]["text"], text);
    c.options.seed = 6;
    EXPECT_NE(complete(completion_body(c, false))["choices"][0]["text"], text);
}

TEST_F(ServerTest, LogitBiasFollowsOpenAI) {
    Case c{"the lord", {}};
    c.options.max_tokens = 12;
    c.options.seed = 11;
    // −100 on every token but the allowed ones (EOS included): sampled text of those letters only, the same
    // as offline generation's. (Which of 'a' and 'b' comes is the random model's: it may favour one
    // letter strongly, so each letter alone is checked too.)
    const auto allow_only = [&](const std::string& letters) {
        c.options.sampling.logit_bias.clear();
        for (int32_t token = 0; token < int32_t(tokenizer->vocab_size()); ++token)
            if (letters.find(tokenizer->decode(std::vector<int32_t>{token})) == std::string::npos ||
                tokenizer->decode(std::vector<int32_t>{token}).size() != 1)
                c.options.sampling.logit_bias.emplace_back(token, -100.0);
        return std::string(complete(completion_body(c, false))["choices"][0]["text"]);
    };
    const std::string two_letters = allow_only("ab");
    EXPECT_EQ(two_letters.size(), 12u);
    EXPECT_EQ(two_letters.find_first_not_of("ab"), std::string::npos) << two_letters;
    EXPECT_EQ(two_letters, offline(c));
    EXPECT_EQ(allow_only("a"), std::string(12, 'a'));
    EXPECT_EQ(allow_only("b"), std::string(12, 'b'));
    // +100 on 'z': nothing but z.
    c.options.sampling.logit_bias = {{tokenizer->encode("z")[0], 100.0}};
    EXPECT_EQ(complete(completion_body(c, false))["choices"][0]["text"], std::string(12, 'z'));
}

TEST_F(ServerTest, SeveralChoicesBestOfAndEchoFollowOpenAI) {
    Case c{"the lord", {}};
    c.options.max_tokens = 10;
    c.options.seed = 21;
    // n = 3: choice i is what a one-choice request with seed + i returns; the usage counts every choice's
    // tokens and the prompt once.
    json body = completion_body(c, false);
    body["n"] = 3;
    const json three = complete(body);
    ASSERT_EQ(three["choices"].size(), 3u);
    int64_t tokens = 0;
    std::vector<std::string> singles;
    double best_mean = -std::numeric_limits<double>::infinity();
    std::string best_text;
    for (int i = 0; i < 3; ++i) {
        Case single = c;
        single.options.seed = c.options.seed + uint64_t(i);
        json single_body = completion_body(single, false);
        single_body["logprobs"] = 0;
        const json one = complete(single_body);
        const json& choice = one["choices"][0];
        singles.push_back(choice["text"]);
        EXPECT_EQ(three["choices"][i]["index"], i);
        EXPECT_EQ(three["choices"][i]["text"], singles.back());
        EXPECT_EQ(three["choices"][i]["finish_reason"], choice["finish_reason"]);
        tokens += one["usage"]["completion_tokens"].get<int64_t>();
        double sum = 0;
        for (const json& logprob : choice["logprobs"]["token_logprobs"]) sum += logprob.get<double>();
        const double mean = sum / double(choice["logprobs"]["token_logprobs"].size());
        if (mean > best_mean) best_mean = mean, best_text = singles.back();
    }
    EXPECT_EQ(three["usage"]["prompt_tokens"], 8);
    EXPECT_EQ(three["usage"]["completion_tokens"], tokens);
    EXPECT_NE(singles[0], singles[1]);
    // Streamed, the chunks of each index concatenate to that choice's text.
    body["stream"] = true;
    const StreamReply stream = http_stream(port, "/v1/completions", body.dump());
    ASSERT_TRUE(stream.done);
    std::vector<std::string> texts(3);
    std::vector<int> finishes(3);
    for (const json& chunk : stream.chunks)
        for (const json& choice : chunk["choices"]) {
            texts.at(choice["index"].get<size_t>()) += choice["text"];
            finishes.at(choice["index"].get<size_t>()) += choice["finish_reason"].is_null() ? 0 : 1;
        }
    for (int i = 0; i < 3; ++i) {
        EXPECT_EQ(texts[size_t(i)], singles[size_t(i)]) << i;
        EXPECT_EQ(finishes[size_t(i)], 1) << i;
    }
    // Side by side, not one choice after another: some chunk comes after a chunk of a later choice.
    bool interleaved = false;
    int64_t latest = -1;
    for (const json& chunk : stream.chunks)
        for (const json& choice : chunk["choices"]) {
            const auto index = choice["index"].get<int64_t>();
            interleaved = interleaved || index < latest;
            latest = std::max(latest, index);
        }
    EXPECT_TRUE(interleaved);
    // best_of = 3: the candidate with the highest mean log-probability per token, every candidate's tokens
    // in the usage, and no logprobs unless asked.
    body = completion_body(c, false);
    body["best_of"] = 3;
    const json best = complete(body);
    ASSERT_EQ(best["choices"].size(), 1u);
    EXPECT_EQ(best["choices"][0]["text"], best_text);
    EXPECT_TRUE(best["choices"][0]["logprobs"].is_null());
    EXPECT_EQ(best["usage"]["completion_tokens"], tokens);
    body["n"] = 2;
    const json best_two = complete(body);
    ASSERT_EQ(best_two["choices"].size(), 2u);
    EXPECT_EQ(best_two["choices"][0]["text"], best_text);
    EXPECT_EQ(best_two["choices"][1]["index"], 1);
    // echo: the prompt, then the generated text; streamed, the prompt comes first.
    body = completion_body(c, false);
    body["echo"] = true;
    EXPECT_EQ(complete(body)["choices"][0]["text"], c.prompt + singles[0]);
    body["prompt"] = tokenizer->encode(c.prompt);
    EXPECT_EQ(complete(body)["choices"][0]["text"], c.prompt + singles[0]);
    body["stream"] = true;
    const StreamReply echoed = http_stream(port, "/v1/completions", body.dump());
    ASSERT_TRUE(echoed.done);
    EXPECT_EQ(echoed.chunks.at(0)["choices"][0]["text"], c.prompt);
    EXPECT_EQ(streamed_text(echoed.chunks), c.prompt + singles[0]);
    // Chat: two choices, each an assistant message.
    // (echo and best_of are not chat fields; their default values are accepted.)
    const json chat = complete({{"messages", {{{"role", "user"}, {"content", "hi"}}}},
                                {"max_tokens", 6},
                                {"n", 2},
                                {"echo", false},
                                {"best_of", 1}},
                               "/v1/chat/completions");
    ASSERT_EQ(chat["choices"].size(), 2u);
    for (int i = 0; i < 2; ++i) {
        EXPECT_EQ(chat["choices"][i]["index"], i);
        EXPECT_EQ(chat["choices"][i]["message"]["role"], "assistant");
    }
}

TEST_F(ServerTest, StreamedChunksConcatenateToTheFullText) {
    for (const bool with_stop : {false, true}) {
        SCOPED_TRACE(with_stop ? "with stop strings" : "without");
        Case c{"And God said", {}};
        c.options.max_tokens = 40;
        c.options.seed = 11;
        if (with_stop) c.options.stop = {"e", "\xE2\x80\x94"};  // a letter and a multi-byte dash
        json body = completion_body(c, false);
        body["logprobs"] = 2;
        const json full = complete(body);
        body["stream"] = true;
        body["stream_options"] = {{"include_usage", true}};
        const StreamReply stream = http_stream(port, "/v1/completions", body.dump());
        ASSERT_EQ(stream.status, 200);
        ASSERT_TRUE(stream.done);
        ASSERT_GE(stream.chunks.size(), 2u);
        // Content chunks, the last with the finish reason, then the usage chunk.
        json tokens = json::array(), token_logprobs = json::array();
        for (size_t i = 0; i + 1 < stream.chunks.size(); ++i) {
            const json& chunk = stream.chunks[i];
            EXPECT_EQ(chunk["id"], stream.chunks[0]["id"]);
            EXPECT_EQ(chunk["object"], "text_completion");
            ASSERT_EQ(chunk["choices"].size(), 1u);
            const json& choice = chunk["choices"][0];
            EXPECT_EQ(choice["finish_reason"].is_null(), i + 2 < stream.chunks.size()) << chunk;
            for (const json& t : choice["logprobs"]["tokens"]) tokens.push_back(t);
            for (const json& l : choice["logprobs"]["token_logprobs"]) token_logprobs.push_back(l);
        }
        const json& usage_chunk = stream.chunks.back();
        EXPECT_TRUE(usage_chunk["choices"].empty());
        EXPECT_EQ(usage_chunk["usage"], full["usage"]);
        const json& choice = full["choices"][0];
        EXPECT_EQ(streamed_text(stream.chunks), choice["text"].get<std::string>());
        EXPECT_EQ(stream.chunks[stream.chunks.size() - 2]["choices"][0]["finish_reason"], choice["finish_reason"]);
        EXPECT_EQ(tokens, choice["logprobs"]["tokens"]);
        EXPECT_EQ(token_logprobs, choice["logprobs"]["token_logprobs"]);
        // Logprobs: one entry per generated token, the top two plus the sampled one.
        const int64_t generated = full["usage"]["completion_tokens"].get<int64_t>();
        ASSERT_EQ(int64_t(choice["logprobs"]["tokens"].size()), generated);
        for (int64_t t = 0; t < generated; ++t) {
            EXPECT_LE(choice["logprobs"]["token_logprobs"][t].get<double>(), 0.0);
            const size_t top = choice["logprobs"]["top_logprobs"][t].size();
            EXPECT_TRUE(top == 2 || top == 3) << top;
        }
        EXPECT_EQ(choice["text"], offline(c));
    }
}

TEST_F(ServerTest, StopStringsAreLeftOut) {
    // Two printable ASCII characters from the middle of a generated text become the stop string
    // (a random model's text is mostly other bytes: a few seeds are tried to find such a pair).
    Case c{"In the beginning", {}};
    c.options.max_tokens = 200;
    const auto printable = [](char ch) { return std::isprint(static_cast<unsigned char>(ch)) != 0; };
    std::string text;
    size_t at = 0;
    for (c.options.seed = 1; c.options.seed <= 20; ++c.options.seed) {
        text = complete(completion_body(c, false))["choices"][0]["text"];
        for (at = 3; at + 1 < text.size() && !(printable(text[at]) && printable(text[at + 1]));) ++at;
        if (at + 1 < text.size()) break;
    }
    ASSERT_LT(at + 1, text.size()) << "no two ASCII characters in a row in 20 generations";
    c.options.stop = {text.substr(at, 2)};
    const json stopped = complete(completion_body(c, false));
    EXPECT_EQ(stopped["choices"][0]["text"], text.substr(0, text.find(c.options.stop[0])));
    EXPECT_EQ(stopped["choices"][0]["finish_reason"], "stop");
    EXPECT_EQ(stopped["choices"][0]["text"], offline(c));
}

TEST_F(ServerTest, ChatCompletion) {
    const std::vector<ChatMessage> messages = {{"system", "Be brief."}, {"user", "Hello"}};
    Case c{ChatTemplate().render(messages), {}};
    EXPECT_EQ(c.prompt, "<|system|>\nBe brief.\n<|user|>\nHello\n<|assistant|>\n");
    c.options.max_tokens = 20;
    c.options.seed = 8;
    c.options.sampling.temperature = 0.8;
    json body = {{"model", "tiny"},
                 {"messages", {{{"role", "system"}, {"content", "Be brief."}},
                               {{"role", "user"}, {"content", {{{"type", "text"}, {"text", "Hel"}},
                                                               {{"type", "text"}, {"text", "lo"}}}}}}},
                 {"max_tokens", 20},
                 {"seed", 8},
                 {"temperature", 0.8},
                 {"logprobs", true},
                 {"top_logprobs", 3}};
    const json response = complete(body, "/v1/chat/completions");
    EXPECT_EQ(response["object"], "chat.completion");
    EXPECT_EQ(response["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
    const json& choice = response["choices"][0];
    EXPECT_EQ(choice["message"]["role"], "assistant");
    const std::string text = choice["message"]["content"];
    EXPECT_EQ(text, offline(c));
    EXPECT_EQ(response["usage"]["prompt_tokens"], int64_t(c.prompt.size()));
    const json& content = choice["logprobs"]["content"];
    ASSERT_EQ(content.size(), response["usage"]["completion_tokens"].get<size_t>());
    for (const json& entry : content) {
        EXPECT_TRUE(entry["token"].is_string());
        EXPECT_LE(entry["logprob"].get<double>(), 0.0);
        EXPECT_TRUE(entry["bytes"].is_array());
        ASSERT_EQ(entry["top_logprobs"].size(), 3u);
        EXPECT_GE(entry["top_logprobs"][0]["logprob"].get<double>(), entry["top_logprobs"][1]["logprob"].get<double>());
        EXPECT_GE(entry["top_logprobs"][0]["logprob"].get<double>(), entry["logprob"].get<double>());
    }
    // Streaming: the role first, then content deltas, then an empty delta with the finish reason.
    body["stream"] = true;
    body.erase("logprobs");
    body.erase("top_logprobs");
    const StreamReply stream = http_stream(port, "/v1/chat/completions", body.dump());
    ASSERT_EQ(stream.status, 200);
    ASSERT_TRUE(stream.done);
    ASSERT_GE(stream.chunks.size(), 2u);
    EXPECT_EQ(stream.chunks.front()["choices"][0]["delta"]["role"], "assistant");
    for (const json& chunk : stream.chunks) EXPECT_EQ(chunk["object"], "chat.completion.chunk");
    const json& last = stream.chunks.back()["choices"][0];
    EXPECT_TRUE(last["delta"].empty());
    EXPECT_EQ(last["finish_reason"], choice["finish_reason"]);
    EXPECT_EQ(streamed_text(stream.chunks), text);
}

TEST_F(ServerTest, SixtyFourConcurrentStreamsMatchOfflineGeneration) {
    constexpr int kRequests = 64;
    std::vector<Case> cases;
    std::vector<bool> chat;
    std::vector<std::string> bodies;
    for (int i = 0; i < kRequests; ++i) {
        cases.push_back(sample_case(i));
        chat.push_back(i % 4 == 3);
        json body = completion_body(cases.back(), true);
        body["stream_options"] = {{"include_usage", true}};
        if (chat.back()) {
            body.erase("prompt");
            const std::string user = cases.back().prompt.empty() ? "hi" : cases.back().prompt;
            body["messages"] = {{{"role", "user"}, {"content", user}}};
            cases.back().prompt = ChatTemplate().render({{"user", user}});
        }
        bodies.push_back(body.dump());
    }
    std::vector<StreamReply> replies(kRequests);
    const auto started = std::chrono::steady_clock::now();
    {
        std::vector<std::thread> clients;
        for (int i = 0; i < kRequests; ++i)
            clients.emplace_back([&, i] {
                replies[size_t(i)] = http_stream(port, chat[size_t(i)] ? "/v1/chat/completions" : "/v1/completions",
                                                 bodies[size_t(i)]);
            });
        for (auto& client : clients) client.join();
    }
    const double wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    EXPECT_LT(wall_s, 60.0);

    std::vector<double> first_token, total;
    int64_t tokens = 0;
    for (int i = 0; i < kRequests; ++i) {
        SCOPED_TRACE(fmt::format("request {}", i));
        const StreamReply& reply = replies[size_t(i)];
        ASSERT_EQ(reply.status, 200);
        ASSERT_TRUE(reply.done);
        ASSERT_GE(reply.chunks.size(), 2u);
        const json& usage = reply.chunks.back()["usage"];
        tokens += usage["completion_tokens"].get<int64_t>();
        EXPECT_LE(usage["completion_tokens"].get<int64_t>(), 16);
        EXPECT_EQ(streamed_text(reply.chunks), offline(cases[size_t(i)]));
        first_token.push_back(reply.first_token_s);
        total.push_back(reply.total_s);
    }
    // Batching happened: far fewer engine steps than tokens.
    const std::string metrics = http_get(port, "/metrics").body;
    EXPECT_EQ(metric_value(metrics, "linarch_requests_finished_total"), kRequests);
    EXPECT_EQ(metric_value(metrics, "linarch_completion_tokens_total"), double(tokens));
    EXPECT_LT(metric_value(metrics, "linarch_engine_steps_total"), double(tokens) / 4) << metrics;
    EXPECT_EQ(metric_value(metrics, "linarch_batch_size"), 0);
    EXPECT_EQ(metric_value(metrics, "linarch_queue_depth"), 0);
    fmt::print("serve load: {} concurrent streaming requests (max_tokens 16, max batch {}), {} tokens in {:.3f} s = "
               "{:.0f} tokens/s\n  time to first token p50/p90/p99: {:.1f} / {:.1f} / {:.1f} ms\n"
               "  total latency        p50/p90/p99: {:.1f} / {:.1f} / {:.1f} ms\n",
               kRequests, options.max_batch, tokens, wall_s, double(tokens) / wall_s,
               1e3 * percentile(first_token, 0.5), 1e3 * percentile(first_token, 0.9),
               1e3 * percentile(first_token, 0.99), 1e3 * percentile(total, 0.5), 1e3 * percentile(total, 0.9),
               1e3 * percentile(total, 0.99));
}

TEST_F(ServerTest, BadInputsAreRefusedAndTheServerKeepsServing) {
    struct Bad {
        const char* path;
        std::string body;
        std::string param;  // "" = null
    };
    const std::string chat = "/v1/chat/completions", completions = "/v1/completions";
    const std::string user = R"("messages": [{"role": "user", "content": "hi"}])";
    const std::vector<Bad> cases = {
        {"/v1/completions", R"({"prompt": "hi")", ""},  // malformed JSON
        {"/v1/completions", R"([1, 2])", ""},
        {"/v1/completions", "{\"prompt\": \"\xff\xfe\"}", ""},  // invalid UTF-8
        {"/v1/completions", R"({})", "prompt"},
        {"/v1/completions", R"({"prompt": 5})", "prompt"},
        {"/v1/completions", R"({"prompt": []})", "prompt"},
        {"/v1/completions", R"({"prompt": ["a", "b"]})", "prompt"},
        {"/v1/completions", R"({"prompt": [1, 2, 999]})", "prompt"},
        {"/v1/completions", R"({"prompt": [1, -2]})", "prompt"},
        {"/v1/completions", R"({"prompt": [1, "x"]})", "prompt"},
        {"/v1/completions", R"({"prompt": ")" + std::string(65, 'a') + "\"}", "prompt"},  // longer than allowed
        {"/v1/completions", R"({"prompt": "hi", "max_tokens": "16"})", "max_tokens"},
        {"/v1/completions", R"({"prompt": "hi", "max_tokens": -1})", "max_tokens"},
        {"/v1/completions", R"({"prompt": "hi", "max_tokens": 0})", "max_tokens"},
        {"/v1/completions", R"({"prompt": "hi", "max_tokens": 1000000000})", "max_tokens"},
        {"/v1/completions", R"({"prompt": "hi", "max_tokens": 99999999999999999999999})", "max_tokens"},
        {"/v1/completions", R"({"prompt": "hi", "max_tokens": 2.5})", "max_tokens"},
        {"/v1/completions", R"({"prompt": "hi", "temperature": "hot"})", "temperature"},
        {"/v1/completions", R"({"prompt": "hi", "temperature": 5})", "temperature"},
        {"/v1/completions", R"({"prompt": "hi", "top_p": 0})", "top_p"},
        {"/v1/completions", R"({"prompt": "hi", "top_k": "5"})", "top_k"},
        {"/v1/completions", R"({"prompt": "hi", "min_p": 1.5})", "min_p"},
        {"/v1/completions", R"({"prompt": "hi", "repetition_penalty": 0})", "repetition_penalty"},
        {"/v1/completions", R"({"prompt": "hi", "presence_penalty": 3})", "presence_penalty"},
        {"/v1/completions", R"({"prompt": "hi", "frequency_penalty": null, "n": 21})", "n"},
        {"/v1/completions", R"({"prompt": "hi", "n": 0})", "n"},
        {"/v1/completions", R"({"prompt": "hi", "n": 3, "best_of": 2})", "best_of"},
        {"/v1/completions", R"({"prompt": "hi", "best_of": 3, "stream": true})", "best_of"},
        {"/v1/completions", R"({"prompt": "hi", "best_of": "3"})", "best_of"},
        {"/v1/completions", R"({"prompt": "hi", "stream": "yes"})", "stream"},
        {"/v1/completions", R"({"prompt": "hi", "stream_options": {"include_usage": true}})", "stream_options"},
        {"/v1/completions", R"({"prompt": "hi", "stop": 5})", "stop"},
        {"/v1/completions", R"({"prompt": "hi", "stop": ["a", ""]})", "stop"},
        {"/v1/completions", R"({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]})", "stop"},
        {"/v1/completions", R"({"prompt": "hi", "seed": 1.5})", "seed"},
        {"/v1/completions", R"({"prompt": "hi", "logprobs": true})", "logprobs"},
        {"/v1/completions", R"({"prompt": "hi", "logprobs": 6})", "logprobs"},
        {"/v1/completions", R"({"prompt": "hi", "echo": true, "logprobs": 1})", "echo"},
        {"/v1/completions", R"({"prompt": "hi", "echo": 1})", "echo"},
        {"/v1/completions", R"({"prompt": "hi", "logit_bias": [5]})", "logit_bias"},
        {"/v1/completions", R"({"prompt": "hi", "logit_bias": {"five": 10}})", "logit_bias"},
        {"/v1/completions", R"({"prompt": "hi", "logit_bias": {"5": 101}})", "logit_bias"},
        {"/v1/completions", R"({"prompt": "hi", "logit_bias": {"5": "up"}})", "logit_bias"},
        {"/v1/completions", R"({"prompt": "hi", "logit_bias": {"100000000": 1}})", "logit_bias"},
        {"/v1/completions", R"({"prompt": "hi", "model": 7})", "model"},
        {"/v1/chat/completions", R"({"messages": "hi"})", "messages"},
        {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "hi"}], "echo": true})", "echo"},
        {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "hi"}], "best_of": 2})", "best_of"},
        {"/v1/chat/completions", R"({"messages": []})", "messages"},
        {"/v1/chat/completions", R"({"messages": [{"role": "wizard", "content": "hi"}]})", "messages[0].role"},
        {"/v1/chat/completions", R"({"messages": [{"content": "hi"}]})", "messages[0].role"},
        {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": 5}]})", "messages[0].content"},
        {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
         "messages[0].content[0]"},
        {"/v1/chat/completions", "{" + user + R"(, "logprobs": 3})", "logprobs"},
        {"/v1/chat/completions", "{" + user + R"(, "top_logprobs": 2})", "top_logprobs"},
        {"/v1/chat/completions", "{" + user + R"(, "logprobs": true, "top_logprobs": 21})", "top_logprobs"},
        {"/v1/chat/completions", "{" + user + R"(, "max_completion_tokens": -5})", "max_completion_tokens"},
        {"/v1/chat/completions", "{" + user + R"(, "tools": [{"type": "function"}]})", "tools"},
        {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": ")" + std::string(60, 'a') + "\"}]}",
         "messages"},  // the rendered prompt is longer than allowed
    };
    for (const Bad& bad : cases) {
        SCOPED_TRACE(fmt::format("{} {}", bad.path, bad.body));
        const HttpReply reply = http_post(port, bad.path, bad.body);
        EXPECT_EQ(reply.status, 400) << reply.body;
        const json error = reply.parsed();
        ASSERT_TRUE(error.is_object()) << reply.body;
        ASSERT_TRUE(error.contains("error")) << reply.body;
        const json& e = error["error"];
        EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty()) << reply.body;
        EXPECT_EQ(e["type"], "invalid_request_error");
        EXPECT_EQ(e["param"], bad.param.empty() ? json(nullptr) : json(bad.param)) << reply.body;
        EXPECT_TRUE(e.contains("code"));
        EXPECT_EQ(http_get(port, "/health").status, 200);
    }
    // A prompt over the limit says so with OpenAI's code; another model's name is a 404.
    const HttpReply long_prompt = http_post(port, "/v1/completions", R"({"prompt": ")" + std::string(65, 'a') + "\"}");
    EXPECT_EQ(long_prompt.parsed()["error"]["code"], "context_length_exceeded");
    const HttpReply other_model = http_post(port, "/v1/completions", R"({"model": "gpt-4", "prompt": "hi"})");
    EXPECT_EQ(other_model.status, 404);
    EXPECT_EQ(other_model.parsed()["error"]["code"], "model_not_found");
    // Still serving.
    EXPECT_EQ(http_get(port, "/health").status, 200);
    const json ok = complete({{"prompt", "hi"}, {"max_tokens", 4}});
    EXPECT_EQ(ok["choices"].size(), 1u);
    const std::string metrics = http_get(port, "/metrics").body;
    EXPECT_EQ(metric_value(metrics, "linarch_requests_rejected_total"), double(cases.size() + 2));
    EXPECT_EQ(metric_value(metrics, "linarch_requests_total"), 1);
}

// A server whose requests run for a million tokens unless their client goes away.
class ServerHangUp : public ::testing::Test {
protected:
    void SetUp() override {
        model.initialize(test_seed());
        options.port = 0;
        options.max_tokens = 1'000'000;
        options.model_name = "tiny";
        server = std::make_unique<Server>(model, tokenizer, ChatTemplate(), options);
        port = server->start();
    }
    void TearDown() override { server->stop(); }

    // Waits until `count` requests are cancelled; then nothing runs or waits, nothing finished, no token
    // is generated any more, and the server goes on serving.
    void expect_cancelled(double count) {
        std::string metrics;
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
        do {
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
            metrics = http_get(port, "/metrics").body;
        } while (metric_value(metrics, "linarch_requests_cancelled_total") < count &&
                 std::chrono::steady_clock::now() < deadline);
        EXPECT_EQ(metric_value(metrics, "linarch_requests_cancelled_total"), count) << metrics;
        EXPECT_EQ(metric_value(metrics, "linarch_batch_size"), 0) << metrics;
        EXPECT_EQ(metric_value(metrics, "linarch_queue_depth"), 0) << metrics;
        EXPECT_EQ(metric_value(metrics, "linarch_requests_finished_total"), 0) << metrics;
        const double generated = metric_value(metrics, "linarch_generated_tokens_total");
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        EXPECT_EQ(metric_value(http_get(port, "/metrics").body, "linarch_generated_tokens_total"), generated);
        const HttpReply ok = http_post(port, "/v1/completions", R"({"prompt": "hi", "max_tokens": 3})");
        EXPECT_EQ(ok.status, 200) << ok.body;
        EXPECT_EQ(ok.parsed()["usage"]["completion_tokens"], 3);
    }

    LanguageModel model{tiny_language_model()};
    NoEosTokenizer tokenizer;
    ServeOptions options;
    std::unique_ptr<Server> server;
    int port = 0;
};

TEST_F(ServerHangUp, AStreamingClientThatGoesAwayHasItsSequenceCancelled) {
    // Hang up after three events.
    const StreamReply reply = http_stream(port, "/v1/completions",
                                          R"({"prompt": "the lord", "max_tokens": 1000000, "stream": true})", 3);
    EXPECT_EQ(reply.status, 200);
    EXPECT_FALSE(reply.done);
    expect_cancelled(1);
}

// A non-streamed reply learns of the hang-up through the spaces it sends while its candidates run: both
// of its choices are cancelled.
TEST_F(ServerHangUp, AClientThatGoesAwayBeforeItsReplyHasItsSequencesCancelled) {
    EXPECT_EQ(http_post_and_hang_up(port, "/v1/completions", R"({"prompt": "the lord", "max_tokens": 1000000, "n": 2})"),
              200);
    expect_cancelled(2);
}
