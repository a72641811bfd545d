#include "serve/api_request.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <limits>
#include <optional>

#include <nlohmann/json.hpp>

namespace linarch {

namespace {

using json = nlohmann::json;

// OpenAI's bound on n and best_of.
constexpr int64_t kMaxChoices = 20;

[[noreturn]] void refuse(const std::string& param, const std::string& message, std::string code = "") {
    throw ApiError(400, message, param, std::move(code));
}

[[noreturn]] void wrong_type(const std::string& param, const char* expected, const json& value) {
    refuse(param, fmt::format("'{}' must be {}, got {}", param, expected, value.type_name()));
}

// The field's value, or null when it is absent or null (both mean "the default").
const json* field(const json& body, const char* key) {
    const auto it = body.find(key);
    return it == body.end() || it->is_null() ? nullptr : &*it;
}

std::optional<bool> boolean(const json& body, const char* key) {
    const json* value = field(body, key);
    if (!value) return std::nullopt;
    if (!value->is_boolean()) wrong_type(key, "a boolean", *value);
    return value->get<bool>();
}

std::optional<int64_t> integer(const json& body, const char* key) {
    const json* value = field(body, key);
    if (!value) return std::nullopt;
    if (!value->is_number_integer()) wrong_type(key, "an integer", *value);
    if (value->is_number_unsigned() && value->get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
        refuse(key, fmt::format("'{}' is too large: {}", key, value->get<uint64_t>()));
    return value->get<int64_t>();
}

int64_t integer_in(const json& body, const char* key, int64_t fallback, int64_t low, int64_t high) {
    const int64_t value = integer(body, key).value_or(fallback);
    if (value < low || value > high)
        refuse(key, fmt::format("'{}' must be in [{}, {}], got {}", key, low, high, value));
    return value;
}

// A number in [low, high] (open at low when low_open).
double number_in(const json& body, const char* key, double fallback, double low, double high, bool low_open = false) {
    const json* value = field(body, key);
    if (!value) return fallback;
    if (!value->is_number()) wrong_type(key, "a number", *value);
    const double x = value->get<double>();
    if (!(low_open ? x > low : x >= low) || !(x <= high))
        refuse(key, fmt::format("'{}' must be in {}{}, {}], got {}", key, low_open ? "(" : "[", low, high, x));
    return x;
}

// OpenAI's logit_bias: {"token id": bias in [−100, 100], ...}, each id inside the model's vocabulary.
std::vector<std::pair<int32_t, double>> logit_bias(const json& body, int64_t vocab_size) {
    std::vector<std::pair<int32_t, double>> biases;
    const json* value = field(body, "logit_bias");
    if (!value) return biases;
    if (!value->is_object()) wrong_type("logit_bias", "an object mapping token ids to biases", *value);
    for (const auto& [key, bias] : value->items()) {
        int64_t id = -1;
        const auto [end, error] = std::from_chars(key.data(), key.data() + key.size(), id);
        if (error != std::errc() || end != key.data() + key.size() || id < 0 || id >= vocab_size)
            refuse("logit_bias", fmt::format("'logit_bias' keys must be token ids in [0, {}), got \"{}\"", vocab_size,
                                             key));
        if (!bias.is_number()) wrong_type("logit_bias", "an object mapping token ids to numbers", bias);
        const double x = bias.get<double>();
        if (!(x >= -100 && x <= 100))
            refuse("logit_bias", fmt::format("'logit_bias' values must be in [-100, 100], got {} for token {}", x, id));
        biases.emplace_back(int32_t(id), x);
    }
    return biases;
}

void check_utf8(std::string_view body) {
    Utf8Decoder decoder;
    decoder.feed(body);
    decoder.finish();
    if (decoder.replaced() > 0) refuse("", "the request body is not valid UTF-8");
}

// Token ids given directly, each inside the model's vocabulary.
std::vector<int32_t> token_ids(const json& array, int64_t vocab_size) {
    std::vector<int32_t> ids;
    for (size_t i = 0; i < array.size(); ++i) {
        const json& id = array[i];
        if (!id.is_number_integer()) wrong_type(fmt::format("prompt[{}]", i), "an integer token id", id);
        const bool inside = id.is_number_unsigned() ? id.get<uint64_t>() < uint64_t(vocab_size)
                                                    : id.get<int64_t>() >= 0 && id.get<int64_t>() < vocab_size;
        if (!inside)
            refuse("prompt", fmt::format("prompt[{}]: token id {} is outside the model's vocabulary [0, {})", i,
                                         id.dump(), vocab_size));
        ids.push_back(int32_t(id.get<int64_t>()));
    }
    return ids;
}

std::vector<int32_t> completion_prompt(const json& body, const RequestLimits& limits) {
    const json* prompt = field(body, "prompt");
    if (!prompt) refuse("prompt", "'prompt' is required");
    if (prompt->is_string()) return encode_prompt(limits.tokenizer, prompt->get<std::string>());
    if (!prompt->is_array()) wrong_type("prompt", "a string or an array of token ids", *prompt);
    if (prompt->empty()) refuse("prompt", "'prompt' must not be an empty array");
    if (std::all_of(prompt->begin(), prompt->end(), [](const json& v) { return v.is_number_integer(); }))
        return token_ids(*prompt, limits.vocab_size);
    const json& first = (*prompt)[0];
    if (prompt->size() > 1 && (first.is_string() || first.is_array()))
        refuse("prompt", "only one prompt per request is supported (send one request per prompt)");
    if (first.is_string()) return encode_prompt(limits.tokenizer, first.get<std::string>());
    if (first.is_array() && !first.empty()) return token_ids(first, limits.vocab_size);
    refuse("prompt", "'prompt' must be a string, an array of token ids, or a one-element array of either");
}

// The prompt as echo shows it: the text given, or the token ids decoded.
std::string completion_prompt_text(const json& body, const std::vector<int32_t>& ids, const Tokenizer& tokenizer) {
    const json& prompt = body["prompt"];
    if (prompt.is_string()) return prompt.get<std::string>();
    if (prompt.is_array() && prompt.size() == 1 && prompt[0].is_string()) return prompt[0].get<std::string>();
    return tokenizer.decode(ids);
}

std::vector<int32_t> chat_prompt(const json& body, const RequestLimits& limits) {
    static constexpr std::array<std::string_view, 5> kRoles = {"system", "developer", "user", "assistant", "tool"};
    const json* messages = field(body, "messages");
    if (!messages) refuse("messages", "'messages' is required");
    if (!messages->is_array()) wrong_type("messages", "an array of messages", *messages);
    if (messages->empty()) refuse("messages", "'messages' must hold at least one message");
    std::vector<ChatMessage> chat;
    for (size_t i = 0; i < messages->size(); ++i) {
        const json& message = (*messages)[i];
        const std::string where = fmt::format("messages[{}]", i);
        if (!message.is_object()) wrong_type(where, "an object", message);
        const json* role = field(message, "role");
        if (!role || !role->is_string())
            refuse(where + ".role", fmt::format("{}.role must be a string (one of system, developer, user, "
                                                "assistant, tool)", where));
        if (std::find(kRoles.begin(), kRoles.end(), role->get<std::string>()) == kRoles.end())
            refuse(where + ".role", fmt::format("{}.role must be one of system, developer, user, assistant, tool; got "
                                                "\"{}\"", where, role->get<std::string>()));
        std::string content;
        if (const json* value = field(message, "content")) {
            if (value->is_string()) {
                content = value->get<std::string>();
            } else if (value->is_array()) {
                for (size_t p = 0; p < value->size(); ++p) {
                    const json& part = (*value)[p];
                    const std::string part_where = fmt::format("{}.content[{}]", where, p);
                    if (!part.is_object() || part.value("type", json()) != "text" || !part.contains("text") ||
                        !part["text"].is_string())
                        refuse(part_where, fmt::format("{}: only text parts ({{\"type\": \"text\", \"text\": ...}}) "
                                                       "are supported", part_where));
                    content += part["text"].get<std::string>();
                }
            } else {
                wrong_type(where + ".content", "a string or an array of text parts", *value);
            }
        }
        chat.push_back({role->get<std::string>(), std::move(content)});
    }
    return limits.tokenizer.encode(limits.chat_template.render(chat));
}

// Fields of OpenAI's API that change the output and are not implemented: refused unless given
// their default value.
void refuse_unsupported(const json& body) {
    struct Unsupported {
        const char* key;
        bool (*is_default)(const json& value);
    };
    static const Unsupported kUnsupported[] = {
        {"suffix", [](const json& v) { return v == ""; }},
        {"tools", [](const json& v) { return v.is_array() && v.empty(); }},
        {"functions", [](const json& v) { return v.is_array() && v.empty(); }},
        {"response_format", [](const json& v) { return v.is_object() && v.value("type", json()) == "text"; }},
    };
    for (const auto& [key, is_default] : kUnsupported)
        if (const json* value = field(body, key); value && !is_default(*value))
            refuse(key, fmt::format("'{}' is not supported by this server", key));
}

}  // namespace

ApiRequest parse_request(Endpoint endpoint, std::string_view body_text, const RequestLimits& limits,
                         uint64_t default_seed) {
    check_utf8(body_text);
    json body;
    try {
        body = json::parse(body_text);
    } catch (const json::parse_error& e) {
        refuse("", fmt::format("the request body is not valid JSON: {}", e.what()));
    }
    if (!body.is_object()) refuse("", fmt::format("the request body must be a JSON object, got {}", body.type_name()));
    const bool chat = endpoint == Endpoint::chat_completions;

    if (const json* model = field(body, "model")) {
        if (!model->is_string()) wrong_type("model", "a string", *model);
        if (model->get<std::string>() != limits.model_name)
            throw ApiError(404, fmt::format("the model \"{}\" does not exist; this server serves \"{}\"",
                                            model->get<std::string>(), limits.model_name),
                           "model", "model_not_found");
    }
    if (const json* user = field(body, "user"); user && !user->is_string()) wrong_type("user", "a string", *user);
    refuse_unsupported(body);

    ApiRequest request;
    request.endpoint = endpoint;
    // OpenAI's defaults: 16 tokens for completions; chat runs until a stop (here: the server's limit).
    const char* max_tokens_key = chat && field(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    const std::optional<int64_t> max_tokens = integer(body, max_tokens_key);
    request.options.max_tokens = max_tokens.value_or(chat ? limits.max_tokens : std::min<int64_t>(16, limits.max_tokens));
    if (request.options.max_tokens < 1)
        refuse(max_tokens_key, fmt::format("'{}' must be at least 1, got {}", max_tokens_key, request.options.max_tokens));
    if (request.options.max_tokens > limits.max_tokens)
        refuse(max_tokens_key, fmt::format("'{}' is {}, more than this server allows ({}, --max-tokens)",
                                           max_tokens_key, request.options.max_tokens, limits.max_tokens));

    SamplingOptions& sampling = request.options.sampling;
    sampling.temperature = number_in(body, "temperature", 1.0, 0.0, 2.0);
    sampling.top_p = number_in(body, "top_p", 1.0, 0.0, 1.0, true);
    sampling.presence_penalty = number_in(body, "presence_penalty", 0.0, -2.0, 2.0);
    sampling.frequency_penalty = number_in(body, "frequency_penalty", 0.0, -2.0, 2.0);
    // vLLM's extensions; top_k = -1 means off, as there.
    sampling.top_k = std::max<int64_t>(0, integer_in(body, "top_k", 0, -1, std::numeric_limits<int32_t>::max()));
    sampling.min_p = number_in(body, "min_p", 0.0, 0.0, 1.0);
    sampling.repetition_penalty =
        number_in(body, "repetition_penalty", 1.0, 0.0, std::numeric_limits<double>::infinity(), true);
    sampling.logit_bias = logit_bias(body, limits.vocab_size);

    if (const json* seed = field(body, "seed")) {
        if (!seed->is_number_integer()) wrong_type("seed", "an integer", *seed);
        request.options.seed = seed->is_number_unsigned() ? seed->get<uint64_t>() : uint64_t(seed->get<int64_t>());
    } else {
        request.options.seed = default_seed;
    }

    if (const json* stop = field(body, "stop")) {
        if (stop->is_string()) {
            request.options.stop.push_back(stop->get<std::string>());
        } else if (stop->is_array()) {
            for (const json& s : *stop) {
                if (!s.is_string()) wrong_type("stop", "a string or an array of strings", *stop);
                request.options.stop.push_back(s.get<std::string>());
            }
        } else {
            wrong_type("stop", "a string or an array of strings", *stop);
        }
        if (request.options.stop.size() > 4) refuse("stop", "'stop' may hold at most 4 strings");
        for (const std::string& s : request.options.stop)
            if (s.empty()) refuse("stop", "stop strings must not be empty");
    }

    request.stream = boolean(body, "stream").value_or(false);
    request.n = integer_in(body, "n", 1, 1, kMaxChoices);
    if (chat) {
        // Not fields of OpenAI's chat API: their default values are accepted, anything else refused.
        if (boolean(body, "echo").value_or(false))
            refuse("echo", "'echo' is a field of /v1/completions, not of chat completions");
        if (integer(body, "best_of").value_or(1) != 1)
            refuse("best_of", "'best_of' is a field of /v1/completions, not of chat completions");
    } else {
        request.best_of = integer_in(body, "best_of", request.n, request.n, kMaxChoices);
        if (request.best_of > request.n && request.stream)
            refuse("best_of", "'best_of' above 'n' cannot be streamed: the choices are known only at the end");
        request.echo = boolean(body, "echo").value_or(false);
    }
    if (const json* options = field(body, "stream_options")) {
        if (!request.stream) refuse("stream_options", "'stream_options' is only allowed when 'stream' is true");
        if (!options->is_object()) wrong_type("stream_options", "an object", *options);
        request.include_usage = boolean(*options, "include_usage").value_or(false);
    }

    if (chat) {
        const bool logprobs = boolean(body, "logprobs").value_or(false);
        const std::optional<int64_t> top = integer(body, "top_logprobs");
        if (top && !logprobs) refuse("top_logprobs", "'top_logprobs' needs 'logprobs' to be true");
        if (logprobs) request.logprobs = integer_in(body, "top_logprobs", 0, 0, 20);
    } else if (field(body, "logprobs")) {
        request.logprobs = integer_in(body, "logprobs", 0, 0, 5);
        if (request.echo)
            refuse("echo", "'echo' with 'logprobs' is not supported: it needs the prompt tokens' log-probabilities");
    }

    try {
        request.prompt = chat ? chat_prompt(body, limits) : completion_prompt(body, limits);
    } catch (const ApiError&) {
        throw;
    } catch (const Error& e) {
        refuse(chat ? "messages" : "prompt", e.what());
    }
    if (request.echo) request.echo_text = completion_prompt_text(body, request.prompt, limits.tokenizer);
    if (int64_t(request.prompt.size()) > limits.max_prompt_tokens)
        refuse(chat ? "messages" : "prompt",
               fmt::format("the prompt has {} tokens, more than this server allows ({}, --max-prompt-tokens)",
                           request.prompt.size(), limits.max_prompt_tokens),
               "context_length_exceeded");
    return request;
}

}  // namespace linarch
