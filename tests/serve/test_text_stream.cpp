// The pieces the server and `linarch generate` share: incremental UTF-8 decoding, the stop-string
// text stream (the same text however it is split into pieces), prompt encoding and chat templates.
#include <gtest/gtest.h>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "infer/generate.hpp"
#include "serve/chat_template.hpp"
#include "support/process.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using namespace linarch::testkit;

namespace {
const std::string kReplacement = "\xEF\xBF\xBD";

std::string decode_whole(const std::string& bytes) {
    Utf8Decoder decoder;
    std::string text = decoder.feed(bytes);
    return text + decoder.finish();
}

// Random splits of `text` into pieces of 0..4 bytes.
std::vector<std::string> random_pieces(const std::string& text, RngStream& rng) {
    std::vector<std::string> pieces;
    for (size_t at = 0; at < text.size();) {
        const size_t length = std::min<size_t>(text.size() - at, rng.below(5));
        pieces.push_back(text.substr(at, length));
        at += length;
    }
    return pieces;
}

// The definition TextStream implements: cut before the stop match that ends first (the longest of
// those ending there), then decode the rest at once.
std::string reference_text(const std::string& raw, const std::vector<std::string>& stops) {
    for (size_t end = 1; end <= raw.size(); ++end) {
        size_t start = end;
        for (const std::string& stop : stops)
            if (stop.size() <= end && raw.compare(end - stop.size(), stop.size(), stop) == 0)
                start = std::min(start, end - stop.size());
        if (start < end) return decode_whole(raw.substr(0, start));
    }
    return decode_whole(raw);
}
}  // namespace

TEST(Utf8Decoder, ReplacesEachMaximalInvalidSubpart) {
    EXPECT_EQ(decode_whole("naïve café — 東京 🙂"), "naïve café — 東京 🙂");
    EXPECT_EQ(decode_whole("a\xC3("), "a" + kReplacement + "(");          // cut short, next byte kept
    EXPECT_EQ(decode_whole("\xE0\x80"), kReplacement + kReplacement);      // overlong lead, stray byte
    EXPECT_EQ(decode_whole("\xED\xA0\x80"), kReplacement + kReplacement + kReplacement);  // a surrogate
    EXPECT_EQ(decode_whole("x\xF0\x9F\x99"), "x" + kReplacement);          // unfinished at the end
    EXPECT_EQ(decode_whole("\xFF\xC0\xF5"), kReplacement + kReplacement + kReplacement);
    Utf8Decoder decoder;
    EXPECT_EQ(decoder.feed("\xE6\x9D"), "");  // held until the character is complete
    EXPECT_EQ(decoder.feed("\xB1x"), "\xE6\x9D\xB1x");
    EXPECT_EQ(decoder.replaced(), 0);
    // Decoding in pieces equals decoding at once.
    RngStream rng(test_seed(), 1);
    const char alphabet[] = {'a', '\xC3', '\xA9', '\xE6', '\x9D', '\xB1', '\xF0', '\x9F', '\x99', '\x82', '\xFF', '\x80'};
    for (int trial = 0; trial < 500; ++trial) {
        std::string raw;
        for (uint64_t i = 0, n = rng.below(20); i < n; ++i) raw += alphabet[rng.below(sizeof alphabet)];
        Utf8Decoder pieces;
        std::string text;
        for (const std::string& piece : random_pieces(raw, rng)) text += pieces.feed(piece);
        text += pieces.finish();
        EXPECT_EQ(text, decode_whole(raw));
    }
}

TEST(TextStream, CutsBeforeTheFirstStopAndHoldsBackWhatMightBecomeOne) {
    TextStream held({"abc"});
    EXPECT_EQ(held.push("xab"), "x");  // "ab" may begin "abc"
    EXPECT_EQ(held.push("d"), "abd");  // it did not
    EXPECT_EQ(held.push("ab"), "");
    EXPECT_EQ(held.push("c tail"), "");
    EXPECT_TRUE(held.stopped());
    EXPECT_EQ(held.push("more"), "");
    EXPECT_EQ(held.finish(), "");

    TextStream flushed({"abc"});
    EXPECT_EQ(flushed.push("ab"), "");
    EXPECT_EQ(flushed.finish(), "ab");  // the end releases what was held back
    EXPECT_FALSE(flushed.stopped());

    TextStream overlapping({"abcd", "bc"});  // "bc" ends first
    EXPECT_EQ(overlapping.push("abcd"), "a");
    EXPECT_TRUE(overlapping.stopped());
    TextStream multibyte({"\xE2\x80\x94"});  // an em dash, split over tokens
    EXPECT_EQ(multibyte.push("a\xE2"), "a");
    EXPECT_EQ(multibyte.push("\x80"), "");
    EXPECT_EQ(multibyte.push("\x94z"), "");
    EXPECT_TRUE(multibyte.stopped());
    TextStream invalid({});
    EXPECT_EQ(invalid.push("\xE6\x9D"), "");
    EXPECT_EQ(invalid.push("!"), kReplacement + "!");

    // However the text is split, the pieces concatenate to the reference text.
    RngStream rng(test_seed(), 2);
    const char alphabet[] = {'a', 'b', 'c', '\xC3', '\xA9', '\xFF'};
    const auto random_text = [&](uint64_t max_length) {
        std::string text;
        for (uint64_t i = 0, n = rng.below(max_length + 1); i < n; ++i) text += alphabet[rng.below(sizeof alphabet)];
        return text;
    };
    for (int trial = 0; trial < 1000; ++trial) {
        std::vector<std::string> stops;
        for (uint64_t i = 0, n = rng.below(3); i < n; ++i) {
            std::string stop = random_text(3);
            if (!stop.empty()) stops.push_back(stop);
        }
        const std::string raw = random_text(24);
        TextStream stream(stops);
        std::string text;
        for (const std::string& piece : random_pieces(raw, rng)) text += stream.push(piece);
        text += stream.finish();
        EXPECT_EQ(text, reference_text(raw, stops)) << "trial " << trial;
    }
}

TEST(TextStream, PromptsAndRequests) {
    const auto bytes = load_tokenizer("byte");
    EXPECT_EQ(encode_prompt(*bytes, ""), std::vector<int32_t>{bytes->eos()});  // a new document
    EXPECT_EQ(encode_prompt(*bytes, "hi"), (std::vector<int32_t>{'h', 'i'}));
    GenerateOptions options;
    options.stop = {"x"};
    const GenerationRequest request = make_request(*bytes, {1, 2}, options);
    EXPECT_EQ(request.stop_tokens, std::vector<int32_t>{bytes->eos()});
    EXPECT_EQ(request.stop_strings, options.stop);
    options.stop = {""};
    EXPECT_THROW(make_request(*bytes, {1}, options), Error);
}

TEST(ChatTemplate, RendersMessagesThenTheAssistantPrompt) {
    const std::vector<ChatMessage> messages = {{"system", "Be brief."}, {"user", "Hi {role}"}};
    EXPECT_EQ(ChatTemplate().render(messages), "<|system|>\nBe brief.\n<|user|>\nHi {role}\n<|assistant|>\n");
    EXPECT_EQ(ChatTemplate("### {role}: {content}\n").render(messages),
              "### system: Be brief.\n### user: Hi {role}\n### assistant: ");
    EXPECT_THROW(ChatTemplate("{role} only"), Error);
    EXPECT_THROW(ChatTemplate("{content}{content}"), Error);
    TempDir dir;
    write_text(dir / "chat.txt", "[{role}] {content}\n");
    EXPECT_EQ(ChatTemplate::from_file(dir / "chat.txt").render({{"user", "x"}}), "[user] x\n[assistant] ");
    try {
        ChatTemplate::from_file(dir / "missing.txt");
        ADD_FAILURE() << "expected an Error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("missing.txt"), std::string::npos) << e.what();
    }
}
