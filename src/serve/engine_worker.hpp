// The engine thread of the server. The Engine is not thread-safe, so only this thread touches it:
// HTTP handler threads put requests and cancellations into an inbox (under one mutex) and read each
// request's token events from the request's own channel (under the channel's mutex). The thread
// sleeps while the engine is idle and the inbox empty; otherwise it drains the inbox, runs one
// engine step (all running requests decode together) and hands the events to their channels.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "infer/engine.hpp"
#include "serve/metrics.hpp"

namespace linarch {

// One request's events, from the engine thread to the handler thread that waits for them.
class RequestChannel {
public:
    // Blocks until the engine has taken the request or refused it: the refusal's message, or "".
    std::string wait_accepted();
    // Blocks for the next token event; nullopt once the request has ended (error() says why when it
    // ended without a finish reason: refused, engine failure, shutdown; "" after a cancellation).
    std::optional<TokenEvent> next();
    // The same, waiting at most `wait`: an event, or nullopt with ended() telling an ended request from a
    // quiet one (for a handler that reads several channels in turn).
    std::optional<TokenEvent> next_within(std::chrono::milliseconds wait);
    bool ended() const;
    std::string error() const;

private:
    friend class EngineWorker;
    void accept();
    void push(TokenEvent event);
    void close(std::string error);

    mutable std::mutex mutex_;  // guards everything below except engine_id_
    std::condition_variable changed_;
    std::deque<TokenEvent> events_;
    bool accepted_ = false, closed_ = false;
    std::string error_;
    int64_t engine_id_ = -1;  // the engine's request id; read and written by the engine thread only
};

class EngineWorker {
public:
    // Starts the thread. The model and tokenizer must outlive the worker.
    EngineWorker(const LanguageModel& model, const Tokenizer& tokenizer, int64_t max_batch, ServerMetrics& metrics);
    ~EngineWorker();
    EngineWorker(const EngineWorker&) = delete;
    EngineWorker& operator=(const EngineWorker&) = delete;

    std::shared_ptr<RequestChannel> submit(GenerationRequest request);
    // Drops the request (its client went away); harmless when it has already ended.
    void cancel(const std::shared_ptr<RequestChannel>& channel);
    // Ends every request (their channels report the shutdown) and joins the thread.
    void stop();

private:
    struct Running {
        std::shared_ptr<RequestChannel> channel;
        int64_t prompt_tokens = 0, generated = 0;
    };
    void run();
    void end_all(const std::string& error);  // engine thread

    Engine engine_;
    ServerMetrics& metrics_;
    std::mutex mutex_;  // guards inbox_, cancels_ and stopping_
    std::condition_variable wake_;
    std::vector<std::pair<GenerationRequest, std::shared_ptr<RequestChannel>>> inbox_;
    std::vector<std::shared_ptr<RequestChannel>> cancels_;
    bool stopping_ = false;
    std::unordered_map<int64_t, Running> running_;  // engine thread only
    std::thread thread_;
};

}  // namespace linarch
