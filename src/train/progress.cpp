#include "train/progress.hpp"

#include <unistd.h>

#include <fmt/format.h>

namespace linarch {

std::string format_duration(double seconds) {
    const int64_t s = int64_t(seconds + 0.5);
    if (s >= 3600) return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
    if (s >= 60) return fmt::format("{}m{:02}s", s / 60, s % 60);
    return fmt::format("{}s", s);
}

ProgressBar::ProgressBar(int64_t first_step, int64_t total_steps, int64_t log_every, std::FILE* stream)
    : stream_(stream),
      interactive_(isatty(fileno(stream)) != 0),
      first_step_(first_step),
      total_steps_(total_steps),
      log_every_(log_every),
      start_(std::chrono::steady_clock::now()) {}

void ProgressBar::update(int64_t step, double loss, double tokens_per_second) {
    const int64_t done = step + 1;
    if (!interactive_ && done % log_every_ != 0 && done != total_steps_) return;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double per_step = elapsed / double(std::max<int64_t>(1, done - first_step_));
    const std::string eta = format_duration(per_step * double(total_steps_ - done));
    const int width = 24;
    const int filled = int(double(width) * double(done) / double(total_steps_));
    const std::string bar = std::string(size_t(filled), '#') + std::string(size_t(width - filled), '.');
    const std::string line = fmt::format("[{}] step {}/{} | loss {:.4f} | {:.0f} tok/s | ETA {}", bar, done,
                                         total_steps_, loss, tokens_per_second, eta);
    if (interactive_) {
        fmt::print(stream_, "\r{}\x1b[K", line);
        drawn_ = true;
    } else {
        fmt::print(stream_, "{}\n", line);
    }
    std::fflush(stream_);
}

void ProgressBar::message(const std::string& text) {
    if (drawn_) fmt::print(stream_, "\r\x1b[K");
    fmt::print(stream_, "{}\n", text);
    drawn_ = false;
    std::fflush(stream_);
}

void ProgressBar::finish() {
    if (drawn_) fmt::print(stream_, "\n");
    drawn_ = false;
    std::fflush(stream_);
}

}  // namespace linarch
