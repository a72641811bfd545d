#include "support/process.hpp"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <sstream>

#include "core/error.hpp"
#include "support/testkit.hpp"

namespace linarch::testkit {

namespace {
std::vector<char*> c_args(const std::vector<std::string>& argv) {
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    return args;
}

int decode_status(int status) {
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return -WTERMSIG(status);
    return -1;
}
}  // namespace

pid_t start_command(const std::vector<std::string>& argv, const std::filesystem::path& log) {
    const pid_t pid = fork();
    LINARCH_CHECK(pid >= 0, "fork failed");
    if (pid == 0) {
        const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ::dup2(fd, 1);
        ::dup2(fd, 2);
        ::close(fd);
        auto args = c_args(argv);
        ::execv(args[0], args.data());
        _exit(127);
    }
    return pid;
}

int wait_command(pid_t pid) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    return decode_status(status);
}

CommandResult run_command(const std::vector<std::string>& argv) {
    TempDir dir;
    const auto log = dir / "output.log";
    CommandResult result;
    result.exit_code = wait_command(start_command(argv, log));
    result.output = read_text(log);
    return result;
}

TempDir::TempDir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("linarch-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" +
             std::to_string(test_seed() % 100000));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
}

TempDir::~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
}

void write_text(const std::filesystem::path& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary);
    out << text;
    LINARCH_CHECK(out.good(), "cannot write {}", path.string());
}

std::string read_text(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream buffer;
    buffer << in.rdbuf();
    return buffer.str();
}

}  // namespace linarch::testkit
