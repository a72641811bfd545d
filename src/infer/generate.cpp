#include "infer/generate.hpp"

#include <algorithm>

#include "core/error.hpp"

namespace linarch {

namespace {
constexpr std::string_view kReplacementCharacter = "\xEF\xBF\xBD";  // U+FFFD
}  // namespace

void check_tokenizer_fits(const LanguageModel& model, const Tokenizer& tokenizer) {
    LINARCH_CHECK(tokenizer.vocab_size() <= model.spec().vocab_size,
                  "tokenizer \"{}\" has {} ids but the model's vocab_size is {}: it was trained with another tokenizer "
                  "(pass --tokenizer)",
                  tokenizer.name(), tokenizer.vocab_size(), model.spec().vocab_size);
}

std::vector<int32_t> encode_prompt(const Tokenizer& tokenizer, std::string_view prompt) {
    if (!prompt.empty()) return tokenizer.encode(prompt);
    const int32_t start = tokenizer.eos() >= 0 ? tokenizer.eos() : tokenizer.bos();
    LINARCH_CHECK(start >= 0, "prompt: empty, and tokenizer \"{}\" has no EOS or BOS token to start from",
                  tokenizer.name());
    return {start};
}

GenerationRequest make_request(const Tokenizer& tokenizer, std::vector<int32_t> prompt, const GenerateOptions& options) {
    for (const std::string& stop : options.stop) LINARCH_CHECK(!stop.empty(), "stop: stop strings must not be empty");
    GenerationRequest request;
    request.prompt = std::move(prompt);
    request.max_tokens = options.max_tokens;
    request.sampling = options.sampling;
    request.seed = options.seed;
    if (tokenizer.eos() >= 0) request.stop_tokens = {tokenizer.eos()};
    request.stop_strings = options.stop;
    return request;
}

// ---------------------------------------------------------------------------------------------
// UTF-8 (Unicode 15, table 3-7: no overlong forms, no surrogates, nothing above U+10FFFF)

std::string Utf8Decoder::feed(std::string_view bytes) {
    std::string out;
    for (const char c : bytes) {
        const auto byte = static_cast<unsigned char>(c);
        if (!partial_.empty()) {
            // The second byte's range depends on the lead byte; later ones are any continuation byte.
            unsigned low = 0x80, high = 0xBF;
            if (partial_.size() == 1) {
                const auto lead = static_cast<unsigned char>(partial_[0]);
                if (lead == 0xE0) low = 0xA0;
                if (lead == 0xED) high = 0x9F;
                if (lead == 0xF0) low = 0x90;
                if (lead == 0xF4) high = 0x8F;
            }
            if (byte >= low && byte <= high) {
                partial_ += c;
                if (partial_.size() == expected_) {
                    out += partial_;
                    partial_.clear();
                }
                continue;
            }
            // The started character is cut short: it is replaced, and this byte starts afresh.
            out += kReplacementCharacter;
            ++replaced_;
            partial_.clear();
        }
        if (byte < 0x80) {
            out += c;
        } else if (byte >= 0xC2 && byte <= 0xF4) {
            partial_ = c;
            expected_ = byte <= 0xDF ? 2 : byte <= 0xEF ? 3 : 4;
        } else {
            out += kReplacementCharacter;
            ++replaced_;
        }
    }
    return out;
}

std::string Utf8Decoder::finish() {
    if (partial_.empty()) return {};
    partial_.clear();
    ++replaced_;
    return std::string(kReplacementCharacter);
}

// ---------------------------------------------------------------------------------------------
// TextStream

TextStream::TextStream(std::vector<std::string> stop_strings) : stops_(std::move(stop_strings)) {}

std::string TextStream::push(std::string_view token_text) {
    if (stopped_ || finished_) return {};
    pending_ += token_text;
    // Every stop string that can still complete starts inside pending_ (see below), so the match
    // that ends earliest in the whole text is the one that ends earliest here.
    for (size_t end = 1; end <= pending_.size(); ++end) {
        size_t start = end;
        for (const std::string& stop : stops_)
            if (stop.size() <= end && pending_.compare(end - stop.size(), stop.size(), stop) == 0)
                start = std::min(start, end - stop.size());
        if (start < end) {
            std::string visible = utf8_.feed(std::string_view(pending_).substr(0, start));
            visible += utf8_.finish();
            pending_.clear();
            stopped_ = true;
            return visible;
        }
    }
    // Hold back the longest tail that is the beginning of some stop string.
    size_t hold = pending_.size();
    for (size_t start = 0; start < pending_.size() && hold == pending_.size(); ++start) {
        const std::string_view tail = std::string_view(pending_).substr(start);
        for (const std::string& stop : stops_)
            if (stop.size() > tail.size() && std::string_view(stop).substr(0, tail.size()) == tail) hold = start;
    }
    std::string visible = utf8_.feed(std::string_view(pending_).substr(0, hold));
    pending_.erase(0, hold);
    return visible;
}

std::string TextStream::finish() {
    if (stopped_ || finished_) return {};
    finished_ = true;
    std::string visible = utf8_.feed(pending_);
    visible += utf8_.finish();
    pending_.clear();
    return visible;
}

// ---------------------------------------------------------------------------------------------

std::string generate_text(const LanguageModel& model, const Tokenizer& tokenizer, const std::string& prompt,
                          const GenerateOptions& options, const std::function<void(const std::string&)>& on_text) {
    check_tokenizer_fits(model, tokenizer);
    Engine engine(model, &tokenizer, 1);
    engine.submit(make_request(tokenizer, encode_prompt(tokenizer, prompt), options));
    TextStream text(options.stop);
    std::string out;
    const auto show = [&](const std::string& piece) {
        if (piece.empty()) return;
        out += piece;
        if (on_text) on_text(piece);
    };
    while (!engine.idle())
        for (const TokenEvent& event : engine.step()) {
            show(text.push(event.text));
            if (event.finish != FinishReason::none) show(text.finish());
        }
    return out;
}

}  // namespace linarch
