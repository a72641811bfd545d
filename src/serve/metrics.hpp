// The server's counters and gauges, rendered as Prometheus text for GET /metrics. Updated from the
// HTTP handler threads and the engine thread; one mutex guards them all (updates are rare next to
// a model step).
#pragma once
#include <chrono>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <utility>

namespace linarch {

class ServerMetrics {
public:
    using Clock = std::chrono::steady_clock;

    void request_received();
    void request_rejected();   // answered with an error status
    void request_cancelled();  // its client went away before it finished
    void request_finished(int64_t prompt_tokens, int64_t completion_tokens);
    // After each engine step: tokens it generated, sequences running, requests waiting for a slot.
    void engine_step(int64_t tokens, int64_t batch_size, int64_t queue_depth);
    void queue_changed(int64_t batch_size, int64_t queue_depth);

    std::string prometheus() const;

    // Window of the tokens-per-second gauge.
    static constexpr std::chrono::seconds kRateWindow{10};

private:
    double tokens_per_second(Clock::time_point now) const;

    mutable std::mutex mutex_;
    int64_t received_ = 0, rejected_ = 0, cancelled_ = 0, finished_ = 0;
    int64_t prompt_tokens_ = 0, completion_tokens_ = 0, generated_tokens_ = 0, steps_ = 0;
    int64_t batch_size_ = 0, queue_depth_ = 0;
    std::deque<std::pair<Clock::time_point, int64_t>> recent_steps_;  // (time, tokens) within the window
    Clock::time_point started_ = Clock::now();
};

}  // namespace linarch
