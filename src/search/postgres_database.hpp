// The PostgreSQL back end of the experiment database: one server that workers on many machines
// share. open_database picks it for postgresql:// and postgres:// URLs (libpq connection URIs).
#pragma once
#include <memory>
#include <string>

#include "search/database.hpp"

namespace linarch {

// `url` is a libpq connection URI, passed to libpq as is: postgresql://user:password@host:port/dbname.
std::unique_ptr<ExperimentDatabase> open_postgres_database(const std::string& url);

// The URL with its password (user:password@, or ?password=...) replaced by "***": what messages show.
std::string url_without_password(const std::string& url);

}  // namespace linarch
