// OpenAI's response objects for one request, built from its token events: the whole JSON body at
// the end (stream = false), or chunks for server-sent events as the events come (stream = true).
// The text goes through one TextStream either way, so the chunks' texts concatenate to the body's.
// Log-probabilities are reported per generated token in OpenAI's shapes (completions: tokens,
// token_logprobs, top_logprobs, text_offset; chat: content[{token, logprob, bytes, top_logprobs}]);
// a token whose text is not valid UTF-8 on its own is named "bytes:\xNN..." as OpenAI does, and
// text_offset counts bytes of the generated text.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "infer/engine.hpp"
#include "infer/generate.hpp"
#include "serve/api_request.hpp"

namespace linarch {

// Keys stay in the order they are written, as in OpenAI's responses (id, object, created, ...).
using ResponseJson = nlohmann::ordered_json;

class ResponseBuilder {
public:
    ResponseBuilder(const ApiRequest& request, const Tokenizer& tokenizer, std::string model, std::string id,
                    int64_t created);
    std::vector<ResponseJson> start() const;                 // chunks before the first token (chat: the role)
    std::vector<ResponseJson> add(const TokenEvent& event);  // records the event; the chunks it yields
    std::vector<ResponseJson> end() const;                   // chunks after the last one (usage, if asked)
    ResponseJson body() const;
    bool finished() const { return finish_ != FinishReason::none; }

private:
    ResponseJson chunk(ResponseJson choices) const;
    ResponseJson empty_logprobs() const;
    void append_logprobs(ResponseJson& logprobs, const TokenEvent& event) const;
    ResponseJson usage() const;

    const Tokenizer& tokenizer_;
    bool chat_, want_logprobs_, include_usage_;
    int64_t prompt_tokens_;
    std::string model_, id_;
    int64_t created_;
    TextStream text_stream_;
    std::string text_;       // visible text so far
    ResponseJson logprobs_;  // every token's, for the body
    int64_t completion_tokens_ = 0, raw_bytes_ = 0;
    FinishReason finish_ = FinishReason::none;
};

// {"error": {"message", "type", "param", "code"}} with type "invalid_request_error" for 4xx statuses
// and "server_error" otherwise.
ResponseJson error_object(const ApiError& error);
// Compact JSON text; invalid UTF-8 (which the builder never produces) is replaced, never thrown on.
std::string json_text(const ResponseJson& value);
// One server-sent event: "data: <json>\n\n".
std::string sse_event(const ResponseJson& chunk);

}  // namespace linarch
