// The chat template: how /v1/chat/completions turns a list of messages into one prompt. A template
// is one line pattern with {role} and {content} placeholders, applied to each message in turn; the
// prompt then ends with the pattern for the assistant cut at its {content} (the generation prompt).
// The built-in pattern "<|{role}|>\n{content}\n" gives
//     <|system|>\nBe brief.\n<|user|>\nHello\n<|assistant|>\n
#pragma once
#include <filesystem>
#include <string>
#include <vector>

namespace linarch {

struct ChatMessage {
    std::string role;     // system, developer, user, assistant or tool
    std::string content;
};

class ChatTemplate {
public:
    ChatTemplate();  // the built-in pattern
    // A pattern must hold {content} once; {role} may appear anywhere, any number of times.
    explicit ChatTemplate(std::string pattern);
    // Reads a pattern from a file (its whole text, final line break included).
    static ChatTemplate from_file(const std::filesystem::path& path);

    std::string render(const std::vector<ChatMessage>& messages) const;
    const std::string& pattern() const { return pattern_; }

private:
    std::string pattern_;
};

}  // namespace linarch
