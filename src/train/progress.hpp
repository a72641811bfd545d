// A live progress line for long work: bar, step, loss, tokens/s and ETA. On a terminal it redraws
// one line in place; otherwise (logs, CI) it prints a plain line every `log_every` steps.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace linarch {

class ProgressBar {
public:
    ProgressBar(int64_t first_step, int64_t total_steps, int64_t log_every, std::FILE* stream = stderr);
    // Called after step `step` (0-based) finished.
    void update(int64_t step, double loss, double tokens_per_second);
    // Prints a message on its own line without breaking the bar.
    void message(const std::string& text);
    void finish();

private:
    std::FILE* stream_;
    bool interactive_;
    int64_t first_step_, total_steps_, log_every_;
    std::chrono::steady_clock::time_point start_;
    bool drawn_ = false;
};

// "1h02m", "3m05s", "42s"
std::string format_duration(double seconds);

}  // namespace linarch
