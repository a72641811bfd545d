// The real `linarch serve` binary on a checkpoint written by the test (a randomly initialised tiny
// model): it answers over loopback with the same text as `linarch generate` for the same seed and
// options, refuses bad input and keeps serving, and stops cleanly on SIGTERM.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <thread>

#include "core/spec.hpp"
#include "serve/chat_template.hpp"
#include "serve/http_testkit.hpp"
#include "support/process.hpp"
#include "support/testkit.hpp"
#include "train/checkpoint.hpp"

using namespace linarch;
using namespace linarch::testkit;
namespace fs = std::filesystem;

namespace {
const std::string kCli = LINARCH_CLI;

// Waits for the "serving ... on http://host:PORT" line of the server's log; -1 if it never comes.
int wait_for_port(const fs::path& log) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
        const std::string text = fs::exists(log) ? read_text(log) : std::string();
        const size_t url = text.find(" on http://");
        const size_t colon = url == std::string::npos ? url : text.find(':', url + 11);
        const size_t end = colon == std::string::npos ? colon : text.find(' ', colon);
        if (end != std::string::npos) return std::stoi(text.substr(colon + 1, end - colon - 1));
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
}
}  // namespace

TEST(ServeCli, ServesACheckpointLikeGenerate) {
    TempDir dir;
    const Spec spec = parse_spec(R"(
[model]
vocab_size = 259
d_model = 32
n_layers = 2
n_heads = 2
head_dim = 16
mlp_hidden = 64
init_std = 0.3
)",
                                 "tiny.toml");
    LanguageModel model(spec.model);
    model.initialize(test_seed());
    AdamW optimizer(spec.optim, model.parameters());
    const fs::path run = dir / "tiny-run";
    save_checkpoint(run, spec, model, optimizer, TrainerState{});
    write_text(dir / "chat.txt", "### {role}: {content}\n");

    const pid_t server = start_command({kCli, "serve", "--checkpoint", run.string(), "--port", "0", "--max-batch", "4",
                                        "--max-prompt-tokens", "100", "--chat-template", (dir / "chat.txt").string()},
                                       dir / "serve.log");
    const int port = wait_for_port(dir / "serve.log");
    ASSERT_GT(port, 0) << read_text(dir / "serve.log");
    EXPECT_EQ(http_get(port, "/health").status, 200);
    EXPECT_EQ(http_get(port, "/v1/models").parsed()["data"][0]["id"], "tiny-run");

    // A completion, streamed and not, against `linarch generate` with the same options.
    const json body = {{"model", "tiny-run"}, {"prompt", "In the beginning"}, {"max_tokens", 30}, {"seed", 7},
                       {"temperature", 0.8},  {"top_k", 30},                  {"top_p", 0.9},     {"min_p", 0.02},
                       {"repetition_penalty", 1.1}, {"presence_penalty", 0.2}, {"frequency_penalty", 0.1},
                       {"stop", {"\n\n"}}};
    const std::vector<std::string> generate_options = {
        "--max-tokens", "30", "--seed", "7", "--temperature", "0.8", "--top-k", "30", "--top-p", "0.9", "--min-p", "0.02",
        "--repetition-penalty", "1.1", "--presence-penalty", "0.2", "--frequency-penalty", "0.1", "--stop", "\n\n"};
    const auto generate = [&](const std::string& prompt) {
        std::vector<std::string> args = {kCli, "generate", "--checkpoint", run.string(), "--prompt", prompt};
        args.insert(args.end(), generate_options.begin(), generate_options.end());
        const CommandResult result = run_command(args);
        EXPECT_EQ(result.exit_code, 0) << result.output;
        return result.output;
    };
    const HttpReply completion = http_post(port, "/v1/completions", body.dump());
    ASSERT_EQ(completion.status, 200) << completion.body;
    const std::string text = completion.parsed()["choices"][0]["text"];
    EXPECT_EQ(generate("In the beginning"), "In the beginning" + text + "\n");
    json streaming = body;
    streaming["stream"] = true;
    const StreamReply stream = http_stream(port, "/v1/completions", streaming.dump());
    EXPECT_TRUE(stream.done);
    EXPECT_EQ(streamed_text(stream.chunks), text);

    // Chat through the template file.
    json chat = body;
    chat.erase("prompt");
    chat["messages"] = {{{"role", "user"}, {"content", "Who made the light?"}}};
    const HttpReply answer = http_post(port, "/v1/chat/completions", chat.dump());
    ASSERT_EQ(answer.status, 200) << answer.body;
    const std::string rendered = ChatTemplate::from_file(dir / "chat.txt").render({{"user", "Who made the light?"}});
    EXPECT_EQ(generate(rendered), rendered + answer.parsed()["choices"][0]["message"]["content"].get<std::string>() + "\n");

    // Bad input is refused and the server goes on.
    const HttpReply malformed = http_post(port, "/v1/completions", R"({"prompt": )");
    EXPECT_EQ(malformed.status, 400);
    EXPECT_EQ(malformed.parsed()["error"]["type"], "invalid_request_error");
    const HttpReply too_long = http_post(port, "/v1/completions", json{{"prompt", std::string(101, 'a')}}.dump());
    EXPECT_EQ(too_long.status, 400);
    EXPECT_EQ(http_get(port, "/health").status, 200);

    ::kill(server, SIGTERM);
    EXPECT_EQ(wait_command(server), 0);
    EXPECT_NE(read_text(dir / "serve.log").find("terminated: stopping"), std::string::npos);
}

TEST(ServeCli, RefusesAMismatchedTokenizer) {
    TempDir dir;
    const Spec spec = parse_spec("[model]\nvocab_size = 200\nd_model = 8\nn_layers = 1\nn_heads = 1\nhead_dim = 8\n",
                                 "small.toml");
    LanguageModel model(spec.model);
    model.initialize(1);
    AdamW optimizer(spec.optim, model.parameters());
    save_checkpoint(dir / "run", spec, model, optimizer, TrainerState{});
    const CommandResult result = run_command({kCli, "serve", "--checkpoint", (dir / "run").string(), "--port", "0"});
    EXPECT_EQ(result.exit_code, 1);
    EXPECT_NE(result.output.find("vocab_size is 200"), std::string::npos) << result.output;
}
