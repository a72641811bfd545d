#include "core/atomic_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "core/error.hpp"

namespace linarch {

namespace {

std::string errno_text(int error) { return std::strerror(error); }

// Writes all of `bytes`, retrying short writes and EINTR. Returns 0 or the errno of the failure.
int write_all(int fd, std::string_view bytes) {
    const char* data = bytes.data();
    size_t left = bytes.size();
    while (left > 0) {
        const ssize_t written = ::write(fd, data, left);
        if (written < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        data += written;
        left -= static_cast<size_t>(written);
    }
    return 0;
}

}  // namespace

void write_file_atomic(const std::filesystem::path& path, std::string_view bytes) {
    const std::filesystem::path directory = path.has_parent_path() ? path.parent_path() : ".";
    const std::string temp = fmt::format("{}.tmp-{}-{:08x}", path.string(), ::getpid(),
                                         std::random_device{}());
    const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0) fail("cannot write \"{}\": creating \"{}\": {}", path.string(), temp, errno_text(errno));

    // Every failure from here on removes the temporary file, so the target is never touched.
    auto give_up = [&](const char* step, int error, bool close_fd) {
        if (close_fd) ::close(fd);
        ::unlink(temp.c_str());
        fail("cannot write \"{}\": {} \"{}\": {}", path.string(), step, temp, errno_text(error));
    };
    if (int error = write_all(fd, bytes)) give_up("writing", error, true);
    if (::fsync(fd) != 0) give_up("syncing", errno, true);
    if (::close(fd) != 0) give_up("closing", errno, false);
    if (::rename(temp.c_str(), path.c_str()) != 0) give_up("renaming", errno, false);

    // The rename is durable only once the directory entry is on disk. Some file systems cannot
    // sync a directory (EINVAL); the data itself is already synced there.
    const int dir_fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd < 0) fail("cannot sync directory \"{}\" after writing \"{}\": {}", directory.string(),
                         path.string(), errno_text(errno));
    const int sync_result = ::fsync(dir_fd);
    const int sync_error = errno;
    ::close(dir_fd);
    if (sync_result != 0 && sync_error != EINVAL)
        fail("cannot sync directory \"{}\" after writing \"{}\": {}", directory.string(), path.string(),
             errno_text(sync_error));
}

std::string read_file(const std::filesystem::path& path, std::string_view what) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("cannot open {} \"{}\": {}", what, path.string(), errno_text(errno));
    struct stat info {};
    if (::fstat(fd, &info) == 0 && S_ISDIR(info.st_mode)) {
        ::close(fd);
        fail("cannot open {} \"{}\": {}", what, path.string(), errno_text(EISDIR));
    }
    std::string content;
    if (info.st_size > 0) content.reserve(static_cast<size_t>(info.st_size));
    char buffer[1 << 16];
    while (true) {
        const ssize_t got = ::read(fd, buffer, sizeof buffer);
        if (got == 0) break;
        if (got < 0) {
            if (errno == EINTR) continue;
            const int error = errno;
            ::close(fd);
            fail("cannot read {} \"{}\": {}", what, path.string(), errno_text(error));
        }
        content.append(buffer, static_cast<size_t>(got));
    }
    ::close(fd);
    return content;
}

}  // namespace linarch
