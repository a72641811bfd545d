// One error type for the whole library: what failed, where, and what was expected.
// Library code throws linarch::Error; the CLI prints it and exits non-zero (never aborts).
#pragma once
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace linarch {

class Error : public std::runtime_error {
public:
    explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Throws Error with a formatted message: LINARCH_FAIL("{}: expected {}", where, what).
template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
    throw Error(fmt::format(format, std::forward<Args>(args)...));
}

// Precondition checks stay on in Release: a wrong shape must be a message, not memory corruption.
#define LINARCH_CHECK(cond, ...)                                    \
    do {                                                            \
        if (!(cond)) ::linarch::fail(__VA_ARGS__);                  \
    } while (0)

}  // namespace linarch
