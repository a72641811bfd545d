// OpenAI's response objects for one request, built from its token events: the whole JSON body at
// the end (stream = false), or chunks for server-sent events as the events come (stream = true).
// A request has best_of candidates (n without best_of), each its own engine request; events are added
// per candidate, and each candidate's text goes through its own TextStream, so the chunks' texts
// concatenate to the body's. The body returns the n candidates with the highest mean log-probability per
// token, best first (all of them, in order, when best_of = n). Log-probabilities are reported per
// generated token in OpenAI's shapes (completions: tokens, token_logprobs, top_logprobs, text_offset; chat:
// content[{token, logprob, bytes, top_logprobs}]); a token whose text is not valid UTF-8 on its own is
// named "bytes:\xNN..." as OpenAI does, and text_offset counts bytes of the generated text.
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
    int64_t candidates() const { return int64_t(candidates_.size()); }
    std::vector<ResponseJson> start() const;  // chunks before the first token (chat: the role; echo: the prompt)
    // Records candidate c's event; the chunks it yields.
    std::vector<ResponseJson> add(int64_t c, const TokenEvent& event);
    std::vector<ResponseJson> end() const;    // chunks after the last one (usage, if asked)
    ResponseJson body() const;
    bool finished() const;                    // every candidate has its finish reason

private:
    struct Candidate {
        explicit Candidate(const std::vector<std::string>& stop) : text_stream(stop) {}
        TextStream text_stream;
        std::string text;        // visible text so far
        ResponseJson logprobs;   // every token's, for the body
        int64_t tokens = 0, raw_bytes = 0;
        double logprob_sum = 0;  // of the sampled tokens (ranks best_of's candidates)
        FinishReason finish = FinishReason::none;
    };
    ResponseJson chunk(ResponseJson choices) const;
    ResponseJson empty_logprobs() const;
    void append_logprobs(ResponseJson& logprobs, const Candidate& candidate, const TokenEvent& event) const;
    ResponseJson usage() const;
    std::vector<int64_t> ranked() const;  // the candidates the body returns, in order

    const Tokenizer& tokenizer_;
    bool chat_, want_logprobs_, include_usage_;
    int64_t prompt_tokens_, choices_;
    std::string echo_text_;  // before each choice's text ("" without echo)
    std::string model_, id_;
    int64_t created_;
    std::vector<Candidate> candidates_;
};

// What the engine runs for candidate c of a request: its prompt and options with seed + c; log-probabilities
// of the sampled tokens are asked for when best_of must rank the candidates.
GenerationRequest candidate_request(const ApiRequest& request, const Tokenizer& tokenizer, int64_t c);

// {"error": {"message", "type", "param", "code"}} with type "invalid_request_error" for 4xx statuses
// and "server_error" otherwise.
ResponseJson error_object(const ApiError& error);
// Compact JSON text; invalid UTF-8 (which the builder never produces) is replaced, never thrown on.
std::string json_text(const ResponseJson& value);
// One server-sent event: "data: <json>\n\n".
std::string sse_event(const ResponseJson& chunk);

}  // namespace linarch
