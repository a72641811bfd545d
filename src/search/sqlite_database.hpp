// The SQLite back end of the experiment database (one file in WAL mode: many readers and one
// writer at a time, which suits the workers of one machine). open_database picks it for sqlite:// URLs.
#pragma once
#include <memory>
#include <string>

#include "search/database.hpp"

namespace linarch {

// `url` names the database in messages; `path` is the file it names.
std::unique_ptr<ExperimentDatabase> open_sqlite_database(const std::string& url, const std::string& path);

}  // namespace linarch
