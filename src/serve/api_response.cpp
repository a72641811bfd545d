#include "serve/api_response.hpp"

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
      model_(std::move(model)),
      id_(std::move(id)),
      created_(created),
      text_stream_(request.options.stop) {
    logprobs_ = empty_logprobs();
}

json ResponseBuilder::empty_logprobs() const {
    if (chat_) return {{"content", json::array()}};
    return {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
            {"text_offset", json::array()}};
}

void ResponseBuilder::append_logprobs(json& logprobs, const TokenEvent& event) const {
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
    logprobs["text_offset"].push_back(raw_bytes_);
}

json ResponseBuilder::chunk(json choices) const {
    return {{"id", id_},
            {"object", chat_ ? "chat.completion.chunk" : "text_completion"},
            {"created", created_},
            {"model", model_},
            {"choices", std::move(choices)}};
}

json ResponseBuilder::usage() const {
    return {{"prompt_tokens", prompt_tokens_},
            {"completion_tokens", completion_tokens_},
            {"total_tokens", prompt_tokens_ + completion_tokens_}};
}

std::vector<json> ResponseBuilder::start() const {
    if (!chat_) return {};
    return {chunk(json::array({{{"index", 0},
                                {"delta", {{"role", "assistant"}, {"content", ""}}},
                                {"logprobs", nullptr},
                                {"finish_reason", nullptr}}}))};
}

std::vector<json> ResponseBuilder::add(const TokenEvent& event) {
    std::string delta = text_stream_.push(event.text);
    if (event.finish != FinishReason::none) delta += text_stream_.finish();
    text_ += delta;
    json token_logprobs = nullptr;
    if (want_logprobs_) {
        token_logprobs = empty_logprobs();
        append_logprobs(token_logprobs, event);
        append_logprobs(logprobs_, event);
    }
    ++completion_tokens_;
    raw_bytes_ += int64_t(event.text.size());
    finish_ = event.finish;
    const json finish = finished() ? json(finish_name(finish_)) : json(nullptr);

    std::vector<json> chunks;
    if (!chat_) {
        if (!delta.empty() || want_logprobs_ || finished())
            chunks.push_back(chunk(json::array({{{"index", 0},
                                                 {"text", delta},
                                                 {"logprobs", token_logprobs},
                                                 {"finish_reason", finish}}})));
        return chunks;
    }
    if (!delta.empty() || want_logprobs_)
        chunks.push_back(chunk(json::array({{{"index", 0},
                                             {"delta", {{"content", delta}}},
                                             {"logprobs", token_logprobs},
                                             {"finish_reason", nullptr}}})));
    if (finished())
        chunks.push_back(chunk(json::array(
            {{{"index", 0}, {"delta", json::object()}, {"logprobs", nullptr}, {"finish_reason", finish}}})));
    return chunks;
}

std::vector<json> ResponseBuilder::end() const {
    if (!include_usage_) return {};
    json last = chunk(json::array());
    last["usage"] = usage();
    return {last};
}

json ResponseBuilder::body() const {
    const json logprobs = want_logprobs_ ? logprobs_ : json(nullptr);
    json choice = {{"index", 0}, {"logprobs", logprobs}, {"finish_reason", finish_name(finish_)}};
    if (chat_)
        choice["message"] = {{"role", "assistant"}, {"content", text_}};
    else
        choice["text"] = text_;
    return {{"id", id_},
            {"object", chat_ ? "chat.completion" : "text_completion"},
            {"created", created_},
            {"model", model_},
            {"choices", json::array({choice})},
            {"usage", usage()}};
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
