#include "serve/chat_template.hpp"

#include <fstream>
#include <sstream>

#include "core/error.hpp"

namespace linarch {

namespace {
constexpr std::string_view kRole = "{role}", kContent = "{content}";

std::string replace_all(std::string text, std::string_view from, std::string_view to) {
    for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
        text.replace(at, from.size(), to);
    return text;
}
}  // namespace

ChatTemplate::ChatTemplate() : pattern_("<|{role}|>\n{content}\n") {}

ChatTemplate::ChatTemplate(std::string pattern) : pattern_(std::move(pattern)) {
    const size_t first = pattern_.find(kContent);
    LINARCH_CHECK(first != std::string::npos && pattern_.find(kContent, first + 1) == std::string::npos,
                  "chat template: the pattern must contain {{content}} exactly once, got \"{}\"", pattern_);
}

ChatTemplate ChatTemplate::from_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    LINARCH_CHECK(in.good(), "chat template {}: cannot read the file", path.string());
    std::ostringstream text;
    text << in.rdbuf();
    try {
        return ChatTemplate(text.str());
    } catch (const Error& e) {
        fail("{}: {}", path.string(), e.what());
    }
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages) const {
    // {role} is filled first, so a message's text that happens to contain "{role}" stays as it is.
    const size_t content_at = pattern_.find(kContent);
    std::string prompt;
    for (const ChatMessage& message : messages) {
        prompt += replace_all(pattern_.substr(0, content_at), kRole, message.role);
        prompt += message.content;
        prompt += replace_all(pattern_.substr(content_at + kContent.size()), kRole, message.role);
    }
    prompt += replace_all(pattern_.substr(0, content_at), kRole, "assistant");
    return prompt;
}

}  // namespace linarch
