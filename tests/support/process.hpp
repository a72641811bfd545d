// Running the linarch CLI from tests: capture output and exit status, or start it in the
// background to signal it (kill-and-resume, Ctrl-C).
#pragma once
#include <sys/types.h>

#include <filesystem>
#include <string>
#include <vector>

namespace linarch::testkit {

struct CommandResult {
    int exit_code = -1;  // -signal when killed by a signal
    std::string output;  // stdout and stderr together
};

// Runs argv[0] with arguments, waits, and returns its output and exit code.
CommandResult run_command(const std::vector<std::string>& argv);

// Starts argv in the background with output going to `log`; returns its pid.
pid_t start_command(const std::vector<std::string>& argv, const std::filesystem::path& log);
// Waits for pid and returns its exit code (-signal when killed).
int wait_command(pid_t pid);

// A fresh empty directory under the system temp dir, removed when the object goes away.
class TempDir {
public:
    TempDir();
    ~TempDir();
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::filesystem::path& path() const { return path_; }
    std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

private:
    std::filesystem::path path_;
};

void write_text(const std::filesystem::path& path, const std::string& text);
std::string read_text(const std::filesystem::path& path);

}  // namespace linarch::testkit
