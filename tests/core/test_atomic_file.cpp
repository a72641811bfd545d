#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "support/process.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using testkit::TempDir;
using testkit::error_of;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> entries(const fs::path& directory) {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(directory)) names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
}

}  // namespace

TEST(AtomicFile, WritesReadsBackAndOverwrites) {
    TempDir dir;
    const fs::path path = dir.path() / "blob.bin";
    const std::string binary("a\0b\xff\n\r z", 8);
    write_file_atomic(path, binary);
    EXPECT_EQ(read_file(path), binary);
    write_file_atomic(path, "second, longer content");
    EXPECT_EQ(read_file(path), "second, longer content");
    write_file_atomic(path, "");
    EXPECT_EQ(read_file(path), "");
    EXPECT_EQ(entries(dir.path()), std::vector<std::string>{"blob.bin"});  // no temporary files left
}

TEST(AtomicFile, FailedWriteLeavesTheTargetAndNoTemporaryFiles) {
    TempDir dir;
    // Renaming a file over a non-empty directory fails after the temporary file was written.
    const fs::path target = dir.path() / "occupied";
    fs::create_directory(target);
    write_file_atomic(target / "inside.txt", "kept");
    const std::string message = error_of([&] { write_file_atomic(target, "new content"); });
    EXPECT_NE(message.find(target.string()), std::string::npos) << message;
    EXPECT_TRUE(fs::is_directory(target));
    EXPECT_EQ(read_file(target / "inside.txt"), "kept");
    EXPECT_EQ(entries(dir.path()), std::vector<std::string>{"occupied"});

    // A missing directory: nothing is created anywhere.
    const fs::path missing = dir.path() / "no_such_dir" / "file.bin";
    const std::string missing_message = error_of([&] { write_file_atomic(missing, "x"); });
    EXPECT_NE(missing_message.find(missing.string()), std::string::npos) << missing_message;
    EXPECT_NE(missing_message.find("No such file or directory"), std::string::npos) << missing_message;
    EXPECT_EQ(entries(dir.path()), std::vector<std::string>{"occupied"});
}

TEST(AtomicFile, ReadErrorsNameTheFile) {
    TempDir dir;
    const fs::path missing = dir.path() / "missing.txt";
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
        read_file(dir.path());
        FAIL() << "expected an Error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(dir.path().string()), std::string::npos) << e.what();
    }
}
