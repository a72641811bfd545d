// `linarch serve` under load: N concurrent streaming clients over loopback, each asking for the same
// number of tokens. Prints time to first token and inter-token latency percentiles, and the
// aggregate generated tokens/s next to the peer measured in the same run: the same N requests run
// through the engine directly (no HTTP, no threads), i.e. what the server's batching can at best give.
//   build/bin/serve [--checkpoint runs/demo] [--clients 64] [--max-tokens 64] [--max-batch 64]
// Without --checkpoint a randomly initialised configs/demo.toml model is used. Byte tokenizer.
#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "core/spec.hpp"
#include "data/tokenizer.hpp"
#include "infer/generate.hpp"
#include "serve/server.hpp"
#include "train/checkpoint.hpp"

using namespace linarch;
using Clock = std::chrono::steady_clock;

namespace {
struct StreamTiming {
    double first_token_s = -1;
    std::vector<double> token_times_s;  // arrival of each event that carried text
    int64_t tokens = 0;                 // completion_tokens of the final usage chunk
    bool complete = false;
};

StreamTiming stream_one(int port, const std::string& body) {
    httplib::Client http("127.0.0.1", port);
    http.set_read_timeout(600);
    http.set_tcp_nodelay(true);  // a latency-sensitive client sends its request without waiting on Nagle
    StreamTiming timing;
    const auto sent = Clock::now();
    std::string pending;
    httplib::Request request;
    request.method = "POST";
    request.path = "/v1/completions";
    request.body = body;
    request.set_header("Content-Type", "application/json");
    request.content_receiver = [&](const char* data, size_t length, uint64_t, uint64_t) {
        const double now = std::chrono::duration<double>(Clock::now() - sent).count();
        pending.append(data, length);
        for (size_t end; (end = pending.find("\n\n")) != std::string::npos;) {
            const std::string event = pending.substr(6, end - 6);  // after "data: "
            pending.erase(0, end + 2);
            if (event == "[DONE]") {
                timing.complete = true;
                continue;
            }
            const auto chunk = nlohmann::json::parse(event, nullptr, false);
            if (chunk.is_object() && chunk.contains("usage") && chunk["usage"].is_object())
                timing.tokens = chunk["usage"].value("completion_tokens", int64_t(0));
            if (!chunk.is_object() || !chunk.contains("choices") || chunk["choices"].empty()) continue;
            if (chunk["choices"][0].value("text", std::string()).empty()) continue;
            if (timing.first_token_s < 0) timing.first_token_s = now;
            timing.token_times_s.push_back(now);
        }
        return true;
    };
    http.send(request);
    return timing;
}

double percentile(std::vector<double> values, double p) {
    if (values.empty()) return 0;
    std::sort(values.begin(), values.end());
    const auto at = static_cast<size_t>(p / 100.0 * double(values.size() - 1) + 0.5);
    return values[std::min(at, values.size() - 1)];
}
}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"linarch serve under concurrent streaming load, against the engine alone"};
    std::string checkpoint;
    int clients = 64;
    int64_t max_tokens = 64, max_batch = 64;
    app.add_option("--checkpoint", checkpoint, "Run or checkpoint directory (default: a random demo model)");
    app.add_option("--clients", clients, "Concurrent streaming requests")->capture_default_str();
    app.add_option("--max-tokens", max_tokens, "Tokens per request")->capture_default_str();
    app.add_option("--max-batch", max_batch, "Server's batch limit")->capture_default_str();
    CLI11_PARSE(app, argc, argv);

    std::unique_ptr<LanguageModel> model;
    if (checkpoint.empty()) {
        model = std::make_unique<LanguageModel>(load_spec("configs/demo.toml").model);
        model->initialize(1);
    } else {
        const auto dir = resolve_checkpoint(checkpoint);
        model = std::make_unique<LanguageModel>(read_checkpoint_spec(dir).model);
        load_checkpoint(dir, *model, nullptr, nullptr);
    }
    const auto tokenizer = load_tokenizer("byte");
    const auto prompt_of = [](int i) { return fmt::format("And it came to pass, in the {}th year, that", i + 1); };

    // The peer: the same requests through the engine alone, all submitted at once.
    double engine_seconds = 0;
    int64_t engine_tokens = 0;
    {
        Engine engine(*model, nullptr, max_batch);
        for (int i = 0; i < clients; ++i) {
            GenerateOptions options;
            options.max_tokens = max_tokens;
            options.sampling.temperature = 0.8;
            options.seed = uint64_t(i + 1);
            engine.submit(make_request(*tokenizer, encode_prompt(*tokenizer, prompt_of(i)), options));
        }
        const auto start = Clock::now();
        while (!engine.idle()) engine_tokens += static_cast<int64_t>(engine.step().size());
        engine_seconds = std::chrono::duration<double>(Clock::now() - start).count();
    }

    ServeOptions serve;
    serve.port = 0;
    serve.max_batch = max_batch;
    Server server(*model, *tokenizer, ChatTemplate(), serve);
    const int port = server.start();
    // One request first, untimed: the server's first connection pays for starting its threads.
    stream_one(port, nlohmann::json{{"model", "linarch"}, {"prompt", prompt_of(0)}, {"max_tokens", 1}, {"stream", true}}
                         .dump());
    std::vector<StreamTiming> timings(static_cast<size_t>(clients));
    std::vector<std::thread> threads;
    const auto start = Clock::now();
    for (int i = 0; i < clients; ++i)
        threads.emplace_back([&, i] {
            const nlohmann::json body = {{"model", "linarch"},     {"prompt", prompt_of(i)},
                                         {"max_tokens", max_tokens}, {"temperature", 0.8},
                                         {"seed", i + 1},           {"stream", true},
                                         {"stream_options", {{"include_usage", true}}}};
            timings[static_cast<size_t>(i)] = stream_one(port, body.dump());
        });
    for (auto& t : threads) t.join();
    const double wall = std::chrono::duration<double>(Clock::now() - start).count();
    server.stop();

    std::vector<double> first_token, inter_token;
    int64_t tokens = 0, complete = 0;
    for (const StreamTiming& t : timings) {
        complete += t.complete;
        tokens += t.tokens;
        if (t.first_token_s >= 0) first_token.push_back(t.first_token_s * 1e3);
        for (size_t j = 1; j < t.token_times_s.size(); ++j)
            inter_token.push_back((t.token_times_s[j] - t.token_times_s[j - 1]) * 1e3);
    }
    fmt::print("{} concurrent streams × {} tokens, max batch {}; model d_model={} layers={}\n", clients, max_tokens,
               max_batch, model->spec().d_model, model->spec().n_layers);
    fmt::print("  completed streams {}/{}; tokens generated {}\n", complete, clients, tokens);
    fmt::print("  time to first token  p50 {:8.1f} ms  p90 {:8.1f} ms  p99 {:8.1f} ms\n", percentile(first_token, 50),
               percentile(first_token, 90), percentile(first_token, 99));
    fmt::print("  inter-token latency  p50 {:8.1f} ms  p90 {:8.1f} ms  p99 {:8.1f} ms\n", percentile(inter_token, 50),
               percentile(inter_token, 90), percentile(inter_token, 99));
    fmt::print("  server: {:8.0f} tokens/s over HTTP ({:.2f} s wall)\n", double(tokens) / wall, wall);
    fmt::print("  engine alone, same requests: {:8.0f} tokens/s ({} tokens in {:.2f} s): server at {:.0f}% of it\n",
               double(engine_tokens) / engine_seconds, engine_tokens, engine_seconds,
               100.0 * (double(tokens) / wall) / (double(engine_tokens) / engine_seconds));
    const nlohmann::json record = {{"bench", "serve"},
                                   {"clients", clients},
                                   {"max_tokens", max_tokens},
                                   {"complete", complete},
                                   {"ttft_ms_p50", percentile(first_token, 50)},
                                   {"ttft_ms_p99", percentile(first_token, 99)},
                                   {"itl_ms_p50", percentile(inter_token, 50)},
                                   {"itl_ms_p99", percentile(inter_token, 99)},
                                   {"server_tokens_per_s", double(tokens) / wall},
                                   {"engine_tokens_per_s", double(engine_tokens) / engine_seconds}};
    fmt::print("{}\n", record.dump());
    return complete == clients ? 0 : 1;
}
