// OpenAI-compatible request bodies (/v1/completions, /v1/chat/completions) → what the engine runs.
// Every field is checked for type and range; a bad one becomes an ApiError naming it, which the
// server sends back as OpenAI's error object. Supported fields:
//   both:        model, max_tokens, temperature, top_p, n (1..20 choices; choice i samples with seed + i),
//                stream, stream_options.include_usage, stop (string or array of up to 4), seed,
//                presence_penalty, frequency_penalty, logit_bias ({"token id": bias in [−100, 100]}), user,
//                and the extensions top_k, min_p, repetition_penalty
//   completions: prompt (string, array of token ids, or a one-element array of either),
//                logprobs (integer 0..5: the sampled token's and this many top log-probabilities),
//                best_of (n..20 candidates, seeds seed + i, of which the n with the highest mean
//                log-probability per token are returned, best first; not streamed when above n),
//                echo (the prompt's text before each choice's; not with logprobs, which would need the
//                prompt tokens' log-probabilities)
//   chat:        messages [{role, content (string or [{type: "text", text}])}], max_completion_tokens,
//                logprobs (bool) with top_logprobs (0..20)
// Fields of OpenAI's API that would change the output but are not implemented (suffix, tools, response_format
// other than text; echo and best_of on chat, which OpenAI's chat API does not have) are refused rather
// than ignored.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.hpp"
#include "data/tokenizer.hpp"
#include "infer/generate.hpp"
#include "serve/chat_template.hpp"

namespace linarch {

// A request the server refuses: the HTTP status and the fields of OpenAI's error object ("" is
// sent as null).
class ApiError : public Error {
public:
    ApiError(int status, const std::string& message, std::string param = "", std::string code = "")
        : Error(message), status(status), param(std::move(param)), code(std::move(code)) {}
    int status;
    std::string param, code;
};

enum class Endpoint { completions, chat_completions };

struct ApiRequest {
    Endpoint endpoint = Endpoint::completions;
    std::vector<int32_t> prompt;  // token ids (chat: the rendered messages)
    GenerateOptions options;
    int64_t logprobs = -1;        // report each token's log-probability and this many top ones; -1: none
    int64_t n = 1;                // choices returned
    int64_t best_of = 1;          // candidates generated (≥ n); choice or candidate i samples with seed + i
    bool echo = false;            // completions: each choice's text starts with echo_text
    std::string echo_text;        // the prompt as given (token-id prompts: decoded)
    bool stream = false;
    bool include_usage = false;   // streaming: a final chunk with the usage
};

// What the checks need to know about the server.
struct RequestLimits {
    const Tokenizer& tokenizer;
    const ChatTemplate& chat_template;
    std::string model_name;      // requests naming another model are refused (404, as OpenAI)
    int64_t vocab_size = 0;      // the model's: token-id prompts must lie in [0, vocab_size)
    int64_t max_prompt_tokens = 0;
    int64_t max_tokens = 0;      // the most a request may ask for; chat's default
};

// Parses and checks a request body. default_seed is used when the request has no seed.
ApiRequest parse_request(Endpoint endpoint, std::string_view body, const RequestLimits& limits,
                         uint64_t default_seed);

}  // namespace linarch
