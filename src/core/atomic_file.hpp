// Whole-file I/O. Writes are atomic: readers (and a crash) see either the old file or the new one,
// never a half-written one, which is what checkpoints and saved specs rely on.
#pragma once
#include <filesystem>
#include <string>
#include <string_view>

namespace linarch {

// Writes `bytes` to a temporary file next to `path` (name + ".tmp-<pid>-<random>"), fsyncs it,
// renames it over `path` and fsyncs the directory. On failure the temporary file is removed, the
// target is left as it was, and an Error names the path and the system's reason.
void write_file_atomic(const std::filesystem::path& path, std::string_view bytes);

// The whole content of a file. `what` names the kind of file in the message when it is missing or
// unreadable: `cannot open spec file "x.toml": No such file or directory`.
std::string read_file(const std::filesystem::path& path, std::string_view what = "file");

}  // namespace linarch
