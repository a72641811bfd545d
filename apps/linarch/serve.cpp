#include <pthread.h>

#include <csignal>
#include <cstdio>
#include <filesystem>

#include <fmt/core.h>

#include "commands.hpp"
#include "serve/server.hpp"
#include "train/checkpoint.hpp"

namespace linarch::cli {

namespace {
// The name clients use for the model: the run directory's (a checkpoint inside a run's
// checkpoints/ folder counts as that run), else the given directory's.
std::string model_name(const std::string& checkpoint) {
    std::filesystem::path path = std::filesystem::path(checkpoint).lexically_normal();
    if (path.filename().empty()) path = path.parent_path();
    if (path.parent_path().filename() == "checkpoints") path = path.parent_path().parent_path();
    return path.filename().empty() ? std::string("linarch") : path.filename().string();
}
}  // namespace

void add_serve_command(CLI::App& app) {
    struct Options {
        std::string checkpoint, tokenizer = "byte", chat_template, device = "cpu";
        ServeOptions serve;
    };
    auto options = std::make_shared<Options>();
    CLI::App* cmd = app.add_subcommand("serve", "Serve a checkpoint over an OpenAI-compatible HTTP API");
    cmd->add_option("--checkpoint", options->checkpoint, "Run directory or checkpoint directory")->required();
    cmd->add_option("--host", options->serve.host, "Address to listen on")->capture_default_str();
    cmd->add_option("--port", options->serve.port, "Port (0 = any free port)")->capture_default_str();
    cmd->add_option("--max-batch", options->serve.max_batch, "Sequences decoded together")->capture_default_str();
    cmd->add_option("--max-prompt-tokens", options->serve.max_prompt_tokens, "Longest prompt accepted")
        ->capture_default_str();
    cmd->add_option("--max-tokens", options->serve.max_tokens, "Most tokens a request may generate")
        ->capture_default_str();
    cmd->add_option("--tokenizer", options->tokenizer, "\"byte\" or a SentencePiece .model file")
        ->capture_default_str();
    cmd->add_option("--device", options->device, "Where the model runs: cpu, or cuda (fp32 on the first GPU)")
        ->check(CLI::IsMember({"cpu", "cuda"}))
        ->capture_default_str();
    cmd->add_option("--chat-template", options->chat_template,
                    "File holding a chat template with {role} and {content} (default \"<|{role}|>\\n{content}\\n\")");
    cmd->callback([options] {
        // SIGINT and SIGTERM are taken by sigwait below; blocked before any thread starts, so that
        // every thread inherits the mask and none is interrupted by them.
        sigset_t stop_signals;
        sigemptyset(&stop_signals);
        sigaddset(&stop_signals, SIGINT);
        sigaddset(&stop_signals, SIGTERM);
        pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

        const auto dir = resolve_checkpoint(options->checkpoint);
        const auto model = load_model(dir, options->device, "linarch serve");
        const auto tokenizer = load_tokenizer(options->tokenizer);
        const ChatTemplate chat_template =
            options->chat_template.empty() ? ChatTemplate() : ChatTemplate::from_file(options->chat_template);
        options->serve.model_name = model_name(options->checkpoint);
        Server server(*model, *tokenizer, chat_template, options->serve);
        const int port = server.start();
        fmt::print("serving \"{}\" ({}) on http://{}:{} (max batch {})\n", options->serve.model_name, dir.string(),
                   options->serve.host, port, options->serve.max_batch);
        std::fflush(stdout);
        int received = 0;
        sigwait(&stop_signals, &received);
        fmt::print("{}: stopping\n", received == SIGINT ? "interrupted" : "terminated");
        server.stop();
    });
}

}  // namespace linarch::cli
