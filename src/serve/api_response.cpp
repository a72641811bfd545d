#include "serve/api_response.hpp"

#include <algorithm>

namespace linarch {

namespace {

using json = ResponseJson;

const char* finish_name(FinishReason reason) { return reason == FinishReason::stop ? "stop" : "length"; }

// A token's text as a JSON string: itself when it is valid UTF-8, else its bytes spelled out.
std::string token_name(const std::string& bytes) {
    Utf8Decoder decoder;
    decoder.feed(bytes);
    decoder.finish();
    if (decoder.replaced() == 0) return bytes;
    std::string name = "bytes:";
    for (const char c : bytes) name += fmt::format("\\x{:02x}", static_cast<unsigned char>(c));
    return name;
}

json byte_values(const std::string& bytes) {
    json values = json::array();
    for (const char c : bytes) values.push_back(int(static_cast<unsigned char>(c)));
    return values;
}

}  // namespace

ResponseBuilder::ResponseBuilder(const ApiRequest& request, const Tokenizer& tokenizer, std::string model,
                                 std::string id, int64_t created)
    : tokenizer_(tokenizer),
      chat_(request.endpoint == Endpoint::chat_completions),
      want_logprobs_(request.logprobs >= 0),
      include_usage_(request.include_usage),
      prompt_tokens_(int64_t(request.prompt.size())),
      choices_(request.n),
      echo_text_(request.echo ? request.echo_text : ""),
      model_(std::move(model)),
      id_(std::move(id)),
      created_(created) {
    for (int64_t c = 0; c < std::max(request.n, request.best_of); ++c) {
        candidates_.emplace_back(request.options.stop);
        candidates_.back().logprobs = empty_logprobs();
    }
}

json ResponseBuilder::empty_logprobs() const {
    if (chat_) return {{"content", json::array()}};
    return {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
            {"text_offset", json::array()}};
}

void ResponseBuilder::append_logprobs(json& logprobs, const Candidate& candidate, const TokenEvent& event) const {
    if (!event.logprobs) return;
    const auto text_of = [&](int32_t token) { return tokenizer_.decode(std::span<const int32_t>(&token, 1)); };
    const std::string sampled = text_of(event.token);
    if (chat_) {
        json top = json::array();
        for (const auto& [token, logprob] : event.logprobs->top) {
            const std::string text = text_of(token);
            top.push_back({{"token", token_name(text)}, {"logprob", logprob}, {"bytes", byte_values(text)}});
        }
        logprobs["content"].push_back({{"token", token_name(sampled)},
                                       {"logprob", event.logprobs->logprob},
                                       {"bytes", byte_values(sampled)},
                                       {"top_logprobs", std::move(top)}});
        return;
    }
    // Completions: the top ones and the sampled token (OpenAI returns up to logprobs + 1 entries).
    json top = json::object();
    for (const auto& [token, logprob] : event.logprobs->top) top[token_name(text_of(token))] = logprob;
    top[token_name(sampled)] = event.logprobs->logprob;
    logprobs["tokens"].push_back(token_name(sampled));
    logprobs["token_logprobs"].push_back(event.logprobs->logprob);
    logprobs["top_logprobs"].push_back(std::move(top));
    logprobs["text_offset"].push_back(candidate.raw_bytes);
}

json ResponseBuilder::chunk(json choices) const {
    return {{"id", id_},
            {"object", chat_ ? "chat.completion.chunk" : "text_completion"},
            {"created", created_},
            {"model", model_},
            {"choices", std::move(choices)}};
}

json ResponseBuilder::usage() const {
    int64_t completion_tokens = 0;
    for (const Candidate& candidate : candidates_) completion_tokens += candidate.tokens;
    return {{"prompt_tokens", prompt_tokens_},
            {"completion_tokens", completion_tokens},
            {"total_tokens", prompt_tokens_ + completion_tokens}};
}

bool ResponseBuilder::finished() const {
    return std::all_of(candidates_.begin(), candidates_.end(),
                       [](const Candidate& candidate) { return candidate.finish != FinishReason::none; });
}

std::vector<json> ResponseBuilder::start() const {
    std::vector<json> chunks;
    for (int64_t c = 0; c < candidates(); ++c) {
        if (chat_)
            chunks.push_back(chunk(json::array({{{"index", c},
                                                 {"delta", {{"role", "assistant"}, {"content", ""}}},
                                                 {"logprobs", nullptr},
                                                 {"finish_reason", nullptr}}})));
        else if (!echo_text_.empty())
            chunks.push_back(chunk(json::array(
                {{{"index", c}, {"text", echo_text_}, {"logprobs", nullptr}, {"finish_reason", nullptr}}})));
    }
    return chunks;
}

std::vector<json> ResponseBuilder::add(int64_t c, const TokenEvent& event) {
    Candidate& candidate = candidates_.at(size_t(c));
    std::string delta = candidate.text_stream.push(event.text);
    if (event.finish != FinishReason::none) delta += candidate.text_stream.finish();
    candidate.text += delta;
    json token_logprobs = nullptr;
    if (want_logprobs_) {
        token_logprobs = empty_logprobs();
        append_logprobs(token_logprobs, candidate, event);
        append_logprobs(candidate.logprobs, candidate, event);
    }
    if (event.logprobs) candidate.logprob_sum += event.logprobs->logprob;
    ++candidate.tokens;
    candidate.raw_bytes += int64_t(event.text.size());
    candidate.finish = event.finish;
    const bool done = candidate.finish != FinishReason::none;
    const json finish = done ? json(finish_name(candidate.finish)) : json(nullptr);

    std::vector<json> chunks;
    if (!chat_) {
        if (!delta.empty() || want_logprobs_ || done)
            chunks.push_back(chunk(json::array({{{"index", c},
                                                 {"text", delta},
                                                 {"logprobs", token_logprobs},
                                                 {"finish_reason", finish}}})));
        return chunks;
    }
    if (!delta.empty() || want_logprobs_)
        chunks.push_back(chunk(json::array({{{"index", c},
                                             {"delta", {{"content", delta}}},
                                             {"logprobs", token_logprobs},
                                             {"finish_reason", nullptr}}})));
    if (done)
        chunks.push_back(chunk(json::array(
            {{{"index", c}, {"delta", json::object()}, {"logprobs", nullptr}, {"finish_reason", finish}}})));
    return chunks;
}

std::vector<json> ResponseBuilder::end() const {
    if (!include_usage_) return {};
    json last = chunk(json::array());
    last["usage"] = usage();
    return {last};
}

std::vector<int64_t> ResponseBuilder::ranked() const {
    std::vector<int64_t> order(candidates_.size());
    for (size_t c = 0; c < order.size(); ++c) order[c] = int64_t(c);
    if (int64_t(order.size()) > choices_) {
        const auto mean_logprob = [&](int64_t c) {
            const Candidate& candidate = candidates_[size_t(c)];
            return candidate.logprob_sum / double(std::max<int64_t>(candidate.tokens, 1));
        };
        std::stable_sort(order.begin(), order.end(),
                         [&](int64_t a, int64_t b) { return mean_logprob(a) > mean_logprob(b); });
        order.resize(size_t(choices_));
    }
    return order;
}

json ResponseBuilder::body() const {
    json choices = json::array();
    for (const int64_t c : ranked()) {
        const Candidate& candidate = candidates_[size_t(c)];
        json choice = {{"index", choices.size()},
                       {"logprobs", want_logprobs_ ? candidate.logprobs : json(nullptr)},
                       {"finish_reason", finish_name(candidate.finish)}};
        if (chat_)
            choice["message"] = {{"role", "assistant"}, {"content", candidate.text}};
        else
            choice["text"] = echo_text_ + candidate.text;
        choices.push_back(std::move(choice));
    }
    return {{"id", id_},
            {"object", chat_ ? "chat.completion" : "text_completion"},
            {"created", created_},
            {"model", model_},
            {"choices", std::move(choices)},
            {"usage", usage()}};
}

GenerationRequest candidate_request(const ApiRequest& request, const Tokenizer& tokenizer, int64_t c) {
    GenerateOptions options = request.options;
    options.seed += uint64_t(c);
    GenerationRequest generation = make_request(tokenizer, request.prompt, options);
    generation.top_logprobs = request.best_of > request.n ? std::max<int64_t>(request.logprobs, 0) : request.logprobs;
    return generation;
}

json error_object(const ApiError& error) {
    const auto or_null = [](const std::string& s) { return s.empty() ? json(nullptr) : json(s); };
    return {{"error",
             {{"message", error.what()},
              {"type", error.status >= 400 && error.status < 500 ? "invalid_request_error" : "server_error"},
              {"param", or_null(error.param)},
              {"code", or_null(error.code)}}}};
}

std::string json_text(const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string sse_event(const json& chunk) { return "data: " + json_text(chunk) + "\n\n"; }

}  // namespace linarch
