#include "serve/engine_worker.hpp"

#include "core/error.hpp"

namespace linarch {

namespace {
const std::string kShutdown = "the server is shutting down";
}  // namespace

// ---------------------------------------------------------------------------------------------
// RequestChannel

std::string RequestChannel::wait_accepted() {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return accepted_ || closed_; });
    return accepted_ ? std::string() : error_;
}

std::optional<TokenEvent> RequestChannel::next() {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return !events_.empty() || closed_; });
    if (events_.empty()) return std::nullopt;
    TokenEvent event = std::move(events_.front());
    events_.pop_front();
    return event;
}

std::optional<TokenEvent> RequestChannel::next_within(std::chrono::milliseconds wait) {
    std::unique_lock lock(mutex_);
    changed_.wait_for(lock, wait, [&] { return !events_.empty() || closed_; });
    if (events_.empty()) return std::nullopt;
    TokenEvent event = std::move(events_.front());
    events_.pop_front();
    return event;
}

bool RequestChannel::ended() const {
    std::lock_guard lock(mutex_);
    return closed_ && events_.empty();
}

std::string RequestChannel::error() const {
    std::lock_guard lock(mutex_);
    return error_;
}

void RequestChannel::accept() {
    std::lock_guard lock(mutex_);
    accepted_ = true;
    changed_.notify_all();
}

void RequestChannel::push(TokenEvent event) {
    std::lock_guard lock(mutex_);
    events_.push_back(std::move(event));
    changed_.notify_all();
}

void RequestChannel::close(std::string error) {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    closed_ = true;
    error_ = std::move(error);
    changed_.notify_all();
}

// ---------------------------------------------------------------------------------------------
// EngineWorker

EngineWorker::EngineWorker(const LanguageModel& model, const Tokenizer& tokenizer, int64_t max_batch,
                           ServerMetrics& metrics)
    : engine_(model, &tokenizer, max_batch), metrics_(metrics), thread_([this] { run(); }) {}

EngineWorker::~EngineWorker() { stop(); }

std::shared_ptr<RequestChannel> EngineWorker::submit(GenerationRequest request) {
    auto channel = std::make_shared<RequestChannel>();
    std::lock_guard lock(mutex_);
    if (stopping_) {
        channel->close(kShutdown);
        return channel;
    }
    inbox_.emplace_back(std::move(request), channel);
    wake_.notify_one();
    return channel;
}

void EngineWorker::cancel(const std::shared_ptr<RequestChannel>& channel) {
    std::lock_guard lock(mutex_);
    cancels_.push_back(channel);
    wake_.notify_one();
}

void EngineWorker::stop() {
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
        wake_.notify_one();
    }
    if (thread_.joinable()) thread_.join();
}

void EngineWorker::end_all(const std::string& error) {
    for (auto& [id, running] : running_) {
        engine_.cancel(id);
        running.channel->close(error);
    }
    running_.clear();
}

void EngineWorker::run() {
    bool busy = false;  // the engine has requests queued or running
    for (;;) {
        std::vector<std::pair<GenerationRequest, std::shared_ptr<RequestChannel>>> arrived;
        std::vector<std::shared_ptr<RequestChannel>> cancelled;
        {
            std::unique_lock lock(mutex_);
            wake_.wait(lock, [&] { return busy || stopping_ || !inbox_.empty() || !cancels_.empty(); });
            if (stopping_) {
                for (auto& [request, channel] : inbox_) channel->close(kShutdown);
                inbox_.clear();
                break;
            }
            arrived.swap(inbox_);
            cancelled.swap(cancels_);
        }
        // New requests first, so that a request cancelled right after it was sent is found.
        for (auto& [request, channel] : arrived) {
            try {
                const auto prompt_tokens = int64_t(request.prompt.size());
                channel->engine_id_ = engine_.submit(std::move(request));
                running_[channel->engine_id_] = Running{channel, prompt_tokens, 0};
                channel->accept();
            } catch (const std::exception& e) {
                channel->close(e.what());
            }
        }
        for (const auto& channel : cancelled) {
            const auto found = running_.find(channel->engine_id_);
            if (channel->engine_id_ < 0 || found == running_.end()) continue;  // refused or already ended
            engine_.cancel(channel->engine_id_);
            running_.erase(found);
            channel->close("");
            metrics_.request_cancelled();
        }
        if (engine_.idle()) {
            metrics_.queue_changed(0, 0);
            busy = false;
            continue;
        }
        std::vector<TokenEvent> events;
        try {
            events = engine_.step();
        } catch (const std::exception& e) {
            // The engine's state can no longer be trusted for these requests; later ones start afresh.
            end_all(std::string("generation failed: ") + e.what());
            busy = !engine_.idle();
            continue;
        }
        const auto tokens = int64_t(events.size());
        for (TokenEvent& event : events) {
            const auto found = running_.find(event.request);
            if (found == running_.end()) continue;
            Running& running = found->second;
            ++running.generated;
            const bool last = event.finish != FinishReason::none;
            running.channel->push(std::move(event));
            if (last) {
                metrics_.request_finished(running.prompt_tokens, running.generated);
                running.channel->close("");
                running_.erase(found);
            }
        }
        metrics_.engine_step(tokens, engine_.active(), engine_.waiting());
        busy = !engine_.idle();
    }
    end_all(kShutdown);
}

}  // namespace linarch
