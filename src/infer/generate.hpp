// Text generation through the engine, shared by `linarch generate` and the HTTP server: the same
// prompt encoding, stop conditions and text assembly, so both give the same text for the same seed
// and options (the engine gives a request the same tokens alone or in any batch).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "data/tokenizer.hpp"
#include "infer/engine.hpp"
#include "infer/sampling.hpp"
#include "model/language_model.hpp"

namespace linarch {

struct GenerateOptions {
    int64_t max_tokens = 200;
    SamplingOptions sampling;
    uint64_t seed = 1;
    std::vector<std::string> stop;  // stop strings; the text ends before the first one (as OpenAI's API)
};

// Refuses a tokenizer whose ids the model cannot embed.
void check_tokenizer_fits(const LanguageModel& model, const Tokenizer& tokenizer);

// The prompt's token ids. An empty prompt becomes the EOS token that ends every training document,
// so generation starts a new document (BOS where a foreign tokenizer has no EOS).
std::vector<int32_t> encode_prompt(const Tokenizer& tokenizer, std::string_view prompt);

// The engine request: generation also stops at the tokenizer's EOS. Empty stop strings are refused.
GenerationRequest make_request(const Tokenizer& tokenizer, std::vector<int32_t> prompt, const GenerateOptions& options);

// Incremental UTF-8 decoding that replaces each invalid sequence by U+FFFD (one per maximal
// subpart, the Unicode recommendation) and holds back a character until all its bytes are in, so
// text decoded in pieces equals text decoded at once.
class Utf8Decoder {
public:
    std::string feed(std::string_view bytes);  // the complete characters now available
    std::string finish();                      // an unfinished character at the end becomes U+FFFD
    int64_t replaced() const { return replaced_; }  // invalid sequences seen so far

private:
    std::string partial_;  // the bytes of a started multi-byte character
    size_t expected_ = 0;  // its length
    int64_t replaced_ = 0;
};

// The text a reader sees from a request's token texts: valid UTF-8, cut before the first stop
// string (the one that ends earliest; the longest of those ending together), and streamed without
// ever taking text back — bytes that might still become a stop string or a multi-byte character
// are held until they cannot. The pieces returned concatenate to the same text however the token
// texts are split.
class TextStream {
public:
    explicit TextStream(std::vector<std::string> stop_strings);
    std::string push(std::string_view token_text);  // the text that became visible (may be empty)
    std::string finish();                           // the end of generation: the text held back
    bool stopped() const { return stopped_; }        // a stop string was found

private:
    std::vector<std::string> stops_;
    std::string pending_;  // raw bytes that might still begin a stop string
    Utf8Decoder utf8_;
    bool stopped_ = false, finished_ = false;
};

// Generates a continuation of `prompt` (returned without the prompt) as the server would for a
// single request. on_text, if set, receives each new piece of text as it becomes visible.
std::string generate_text(const LanguageModel& model, const Tokenizer& tokenizer, const std::string& prompt,
                          const GenerateOptions& options, const std::function<void(const std::string&)>& on_text = {});

}  // namespace linarch
