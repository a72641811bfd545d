#include "serve/server.hpp"

#include <httplib.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <random>

#include "serve/api_response.hpp"

namespace linarch {

namespace {
// How long a stream of several choices waits on one before looking at the others again.
constexpr std::chrono::milliseconds kStreamPoll{2};
// How often a non-streamed reply sends a space while its candidates run. This HTTP library (0.11) notices a
// client that went away only when a write fails, and JSON allows whitespace before the object: the spaces
// are what lets a hang-up cancel the request: a connection the peer closed or reset fails a later write (one
// that vanished silently only once TCP gives up).
constexpr std::chrono::milliseconds kKeepAlive{100};
}  // namespace

namespace {
using json = ResponseJson;
}  // namespace

Server::Server(const LanguageModel& model, const Tokenizer& tokenizer, ChatTemplate chat_template, ServeOptions options)
    : tokenizer_(tokenizer),
      chat_template_(std::move(chat_template)),
      options_(std::move(options)),
      limits_{tokenizer_, chat_template_, options_.model_name, model.spec().vocab_size, options_.max_prompt_tokens,
              options_.max_tokens},
      worker_(model, tokenizer, options_.max_batch, metrics_),
      http_(std::make_unique<httplib::Server>()),
      random_((uint64_t(std::random_device{}()) << 32) ^ std::random_device{}(), stream_id("serve")) {
    check_tokenizer_fits(model, tokenizer);
    LINARCH_CHECK(options_.max_prompt_tokens >= 1, "serve: --max-prompt-tokens must be ≥ 1, got {}",
                  options_.max_prompt_tokens);
    LINARCH_CHECK(options_.max_tokens >= 1, "serve: --max-tokens must be ≥ 1, got {}", options_.max_tokens);
    // A write to a client that went away must fail (and cancel its request), not end the process:
    // Debian's cpp-httplib sends without MSG_NOSIGNAL.
    std::signal(SIGPIPE, SIG_IGN);
    // Each open connection holds a handler thread: room for a full batch of streaming requests, as
    // many waiting for a place, and health checks beside them.
    const auto threads = size_t(2 * options_.max_batch + 16);
    http_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    http_->set_payload_max_length(size_t(16) << 20);
    // Streamed events are small writes: without TCP_NODELAY, Nagle's algorithm holds each one back until
    // the client's delayed ACK (~40 ms on Linux), which shows as time to first token and inter-token lag.
    http_->set_tcp_nodelay(true);
    // cpp-httplib's default socket options set SO_REUSEPORT, which lets a second server bind the
    // same port and silently take half of its connections; SO_REUSEADDR alone still allows a
    // restart while old connections linger. The socket is kept to widen its accept queue (start()).
    http_->set_socket_options([this](int socket) {
        const int yes = 1;
        ::setsockopt(socket, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
        listen_socket_ = socket;
    });

    http_->Get("/health", [](const httplib::Request&, httplib::Response& response) {
        response.set_content(R"({"status":"ok"})", "application/json");
    });
    http_->Get("/v1/models", [this](const httplib::Request&, httplib::Response& response) {
        const json models = {{"object", "list"},
                             {"data", json::array({{{"id", options_.model_name},
                                                    {"object", "model"},
                                                    {"created", int64_t(started_)},
                                                    {"owned_by", "linarch"}}})}};
        response.set_content(json_text(models), "application/json");
    });
    http_->Get("/metrics", [this](const httplib::Request&, httplib::Response& response) {
        response.set_content(metrics_.prometheus(), "text/plain; version=0.0.4; charset=utf-8");
    });
    http_->Post("/v1/completions", [this](const httplib::Request& request, httplib::Response& response) {
        generate(Endpoint::completions, request, response);
    });
    http_->Post("/v1/chat/completions", [this](const httplib::Request& request, httplib::Response& response) {
        generate(Endpoint::chat_completions, request, response);
    });
    // Any other path: 404 with an error object (cpp-httplib would answer an unknown POST with 400).
    const auto no_such_endpoint = [](const httplib::Request& request, httplib::Response& response) {
        response.status = 404;
        const ApiError error(404, fmt::format("no such endpoint: {} {}", request.method, request.path));
        response.set_content(json_text(error_object(error)), "application/json");
    };
    http_->Get(".*", no_such_endpoint);
    http_->Post(".*", no_such_endpoint);
    // Statuses set by cpp-httplib itself (a malformed request, a body too large) get one too.
    http_->set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& request,
                                                                     httplib::Response& response) {
        if (!response.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        const ApiError error(response.status, fmt::format("{} {}: HTTP status {}", request.method, request.path,
                                                          response.status));
        response.set_content(json_text(error_object(error)), "application/json");
        return httplib::Server::HandlerResponse::Handled;
    }));
    http_->set_exception_handler([](const httplib::Request&, httplib::Response& response, std::exception_ptr thrown) {
        std::string message = "internal error";
        try {
            std::rethrow_exception(thrown);
        } catch (const std::exception& e) {
            message = e.what();
        } catch (...) {
        }
        response.status = 500;
        response.set_content(json_text(error_object(ApiError(500, message))), "application/json");
    });
}

Server::~Server() { stop(); }

int Server::start() {
    const int port = options_.port == 0 ? http_->bind_to_any_port(options_.host)
                                        : (http_->bind_to_port(options_.host, options_.port) ? options_.port : -1);
    LINARCH_CHECK(port > 0, "serve: cannot listen on {}:{} (address in use, or not an address of this machine?)",
                  options_.host, options_.port);
    // cpp-httplib listens with a backlog of 5: a burst of clients (64 streams opening at once)
    // would overflow it and see connections dropped. Listening again only resizes the queue.
    ::listen(listen_socket_, SOMAXCONN);
    listener_ = std::thread([this] { http_->listen_after_bind(); });
    return port;
}

void Server::stop() {
    http_->stop();
    // Ends the requests that handlers still wait on, so that the handler threads can finish.
    worker_.stop();
    if (listener_.joinable()) listener_.join();
}

uint64_t Server::next_random() {
    std::lock_guard lock(random_mutex_);
    return random_.next_u64();
}

void Server::refuse(httplib::Response& response, const ApiError& error) {
    metrics_.request_rejected();
    response.status = error.status;
    response.set_content(json_text(error_object(error)), "application/json");
}

void Server::generate(Endpoint endpoint, const httplib::Request& http_request, httplib::Response& response) {
    ApiRequest request;
    try {
        request = parse_request(endpoint, http_request.body, limits_, next_random());
    } catch (const ApiError& e) {
        refuse(response, e);
        return;
    }
    const std::string id = fmt::format("{}-{:016x}", endpoint == Endpoint::chat_completions ? "chatcmpl" : "cmpl",
                                       next_random());
    auto builder = std::make_shared<ResponseBuilder>(request, tokenizer_, options_.model_name, id,
                                                     int64_t(std::time(nullptr)));
    // Every candidate is its own engine request; the engine decodes them in one batch.
    auto channels = std::make_shared<std::vector<std::shared_ptr<RequestChannel>>>();
    const auto cancel_all = [this, channels] {
        for (const auto& channel : *channels) worker_.cancel(channel);
    };
    for (int64_t c = 0; c < builder->candidates(); ++c) {
        channels->push_back(worker_.submit(candidate_request(request, tokenizer_, c)));
        // The engine's own checks agree with parse_request's; a refusal here is a shutdown or a bug.
        if (const std::string refused = channels->back()->wait_accepted(); !refused.empty()) {
            cancel_all();
            refuse(response, ApiError(503, refused));
            return;
        }
        metrics_.request_received();  // per engine request, as the finished and cancelled counts
    }
    if (!request.stream) {
        // One JSON object, sent chunked after a space every kKeepAlive while the candidates run. Once the
        // reply has begun its status is 200: an engine failure after that (a shutdown) is told by an error
        // object in the body, as a stream tells it in an event (not counted as a rejected request).
        response.set_chunked_content_provider(
            "application/json",
            [builder, channels, cancel_all](size_t, httplib::DataSink& sink) {
                auto last_write = std::chrono::steady_clock::now();
                std::string failure;
                for (size_t c = 0; c < channels->size() && failure.empty(); ++c) {
                    RequestChannel& channel = *(*channels)[c];
                    for (;;) {
                        if (const auto event = channel.next_within(kKeepAlive)) builder->add(int64_t(c), *event);
                        else if (channel.ended()) break;
                        if (std::chrono::steady_clock::now() - last_write < kKeepAlive) continue;
                        if (!sink.write(" ", 1)) {  // the client went away
                            cancel_all();
                            return false;
                        }
                        last_write = std::chrono::steady_clock::now();
                    }
                    failure = channel.error();
                }
                if (failure.empty() && !builder->finished()) failure = "the request ended without a finish reason";
                if (!failure.empty()) cancel_all();
                const std::string body =
                    json_text(failure.empty() ? builder->body() : error_object(ApiError(503, failure)));
                if (!sink.write(body.data(), body.size())) return false;
                sink.done();
                return true;
            },
            [cancel_all](bool success) {
                if (!success) cancel_all();
            });
        return;
    }
    response.set_header("Cache-Control", "no-cache");
    response.set_chunked_content_provider(
        "text/event-stream",
        [this, channels, builder, cancel_all](size_t, httplib::DataSink& sink) {
            const auto send = [&](const std::string& text) { return sink.write(text.data(), text.size()); };
            const auto send_all = [&](const std::vector<json>& chunks) {
                for (const json& chunk : chunks)
                    if (!send(sse_event(chunk))) return false;
                return true;
            };
            // A failed write means the client went away: its sequences are dropped from the batch.
            if (!send_all(builder->start())) {
                cancel_all();
                return false;
            }
            // The choices' events as they come: a round takes one ready event of each running choice;
            // a round that found none waits briefly on the first running one (each choice is its own engine
            // request, decoded in the same batch: they stream side by side).
            std::string failure;
            std::vector<bool> running(channels->size(), true);
            size_t left = channels->size();
            // Choice c's next event within `wait`: sent (true), or none; false when the client is gone.
            const auto take = [&](size_t c, std::chrono::milliseconds wait, bool& took) {
                RequestChannel& channel = *(*channels)[c];
                if (const auto event = channel.next_within(wait)) {
                    took = true;
                    return send_all(builder->add(int64_t(c), *event));
                }
                if (channel.ended()) {
                    running[c] = false;
                    --left;
                    failure = channel.error();
                }
                return true;
            };
            while (left > 0 && failure.empty()) {
                bool took = false;
                for (size_t c = 0; c < channels->size() && failure.empty(); ++c)
                    if (running[c] && !take(c, std::chrono::milliseconds(0), took)) {
                        cancel_all();
                        return false;
                    }
                if (took || left == 0 || !failure.empty()) continue;
                // With one choice left there is nothing else to look at: wait for it (a day stands for ever).
                const auto first = size_t(std::find(running.begin(), running.end(), true) - running.begin());
                if (!take(first, left == 1 ? std::chrono::hours(24) : kStreamPoll, took)) {
                    cancel_all();
                    return false;
                }
            }
            if (failure.empty()) failure = "the request ended without a finish reason";
            const bool sent = builder->finished() ? send_all(builder->end())
                                                  : send(sse_event(error_object(ApiError(503, failure))));
            if (!builder->finished()) cancel_all();
            if (!sent || !send("data: [DONE]\n\n")) return false;
            sink.done();
            return true;
        },
        [cancel_all](bool success) {
            if (!success) cancel_all();
        });
}

}  // namespace linarch
