#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <random>

#include "core/atomic_file.hpp"
#include "core/error.hpp"

using namespace linarch;
namespace fs = std::filesystem;

namespace {

// A fresh directory under the system temp dir, removed with everything in it.
struct TempDir {
    fs::path path;
    TempDir() {
        std::random_device device;
        do {
            path = fs::temp_directory_path() / fmt::format("linarch-test-atomic-{}-{:08x}", ::getpid(), device());
        } while (!fs::create_directory(path));
    }
    ~TempDir() {
        std::error_code ignored;
        fs::remove_all(path, ignored);
    }
};

std::vector<std::string> entries(const fs::path& directory) {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(directory)) names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
}

std::string message_of_write(const fs::path& path, std::string_view bytes) {
    try {
        write_file_atomic(path, bytes);
    } catch (const Error& e) {
        return e.what();
    }
    ADD_FAILURE() << "expected an Error writing " << path;
    return "";
}

}  // namespace

TEST(AtomicFile, WritesReadsBackAndOverwrites) {
    TempDir dir;
    const fs::path path = dir.path / "blob.bin";
    const std::string binary("a\0b\xff\n\r z", 8);
    write_file_atomic(path, binary);
    EXPECT_EQ(read_file(path), binary);
    write_file_atomic(path, "second, longer content");
    EXPECT_EQ(read_file(path), "second, longer content");
    write_file_atomic(path, "");
    EXPECT_EQ(read_file(path), "");
    EXPECT_EQ(entries(dir.path), std::vector<std::string>{"blob.bin"});  // no temporary files left
}

TEST(AtomicFile, FailedWriteLeavesTheTargetAndNoTemporaryFiles) {
    TempDir dir;
    // Renaming a file over a non-empty directory fails after the temporary file was written.
    const fs::path target = dir.path / "occupied";
    fs::create_directory(target);
    write_file_atomic(target / "inside.txt", "kept");
    const std::string message = message_of_write(target, "new content");
    EXPECT_NE(message.find(target.string()), std::string::npos) << message;
    EXPECT_TRUE(fs::is_directory(target));
    EXPECT_EQ(read_file(target / "inside.txt"), "kept");
    EXPECT_EQ(entries(dir.path), std::vector<std::string>{"occupied"});

    // A missing directory: nothing is created anywhere.
    const fs::path missing = dir.path / "no_such_dir" / "file.bin";
    const std::string missing_message = message_of_write(missing, "x");
    EXPECT_NE(missing_message.find(missing.string()), std::string::npos) << missing_message;
    EXPECT_NE(missing_message.find("No such file or directory"), std::string::npos) << missing_message;
    EXPECT_EQ(entries(dir.path), std::vector<std::string>{"occupied"});
}

TEST(AtomicFile, ReadErrorsNameTheFile) {
    TempDir dir;
    const fs::path missing = dir.path / "missing.txt";
    try {
        read_file(missing, "token shard");
        FAIL() << "expected an Error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("cannot open token shard \"" + missing.string() +
                                             "\": No such file or directory"),
                  std::string::npos)
            << e.what();
    }
    try {
        read_file(dir.path);
        FAIL() << "expected an Error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(dir.path.string()), std::string::npos) << e.what();
    }
}
