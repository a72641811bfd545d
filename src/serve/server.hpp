// `linarch serve`: an OpenAI-compatible HTTP server over the generation engine.
//   POST /v1/completions, POST /v1/chat/completions   (fields: serve/api_request.hpp; stream = true
//        answers with server-sent events, `data: {chunk}` lines ending with `data: [DONE]`)
//   GET  /v1/models, /health, /metrics (Prometheus text: serve/metrics.hpp)
// Threads: cpp-httplib's pool runs the handlers (one per open connection); they parse and check a
// request, hand it to the engine thread (serve/engine_worker.hpp), which batches all running
// requests into each step, and write the events of their own request as they arrive. A streaming
// client that goes away is noticed at the next write and its sequence is cancelled. Refused
// requests get OpenAI's error object with status 400 (404 for another model's name).
#pragma once
#include <cstdint>
#include <ctime>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "core/rng.hpp"
#include "serve/api_request.hpp"
#include "serve/chat_template.hpp"
#include "serve/engine_worker.hpp"
#include "serve/metrics.hpp"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace linarch {

struct ServeOptions {
    std::string host = "127.0.0.1";
    int port = 8080;                  // 0: any free port (start() returns it)
    int64_t max_batch = 32;           // sequences decoded together; more requests wait in a queue
    int64_t max_prompt_tokens = 4096;
    int64_t max_tokens = 4096;        // the most tokens a request may ask for (chat's default too)
    std::string model_name = "linarch";
};

class Server {
public:
    // The model and tokenizer must outlive the server.
    Server(const LanguageModel& model, const Tokenizer& tokenizer, ChatTemplate chat_template, ServeOptions options);
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    // Binds the address and serves in the background; returns the port.
    int start();
    // Stops taking connections, ends running requests and joins every thread.
    void stop();

private:
    void generate(Endpoint endpoint, const httplib::Request& http_request, httplib::Response& response);
    void refuse(httplib::Response& response, const ApiError& error);
    uint64_t next_random();

    const Tokenizer& tokenizer_;
    ChatTemplate chat_template_;
    ServeOptions options_;
    RequestLimits limits_;
    ServerMetrics metrics_;
    EngineWorker worker_;
    std::unique_ptr<httplib::Server> http_;
    std::thread listener_;
    int listen_socket_ = -1;
    std::time_t started_ = std::time(nullptr);
    std::mutex random_mutex_;  // guards random_
    RngStream random_;         // seeds of requests without one, and response ids
};

}  // namespace linarch
