#include "search/database.hpp"

#include "core/error.hpp"
#include "search/postgres_database.hpp"
#include "search/sqlite_database.hpp"

namespace linarch {

const char* status_name(TrialStatus status) {
    switch (status) {
        case TrialStatus::queued: return "queued";
        case TrialStatus::running: return "running";
        case TrialStatus::done: return "done";
        case TrialStatus::failed: return "failed";
    }
    return "unknown";
}

std::unique_ptr<ExperimentDatabase> open_database(const std::string& url) {
    constexpr std::string_view kSqlite = "sqlite:///";
    if (url.starts_with(kSqlite)) {
        const std::string path = url.substr(kSqlite.size());
        LINARCH_CHECK(!path.empty(), "database URL {}: missing the file: expected sqlite:///relative/file.db or "
                      "sqlite:////absolute/file.db", url);
        return open_sqlite_database(url, path);
    }
    if (url.starts_with("postgresql://") || url.starts_with("postgres://")) return open_postgres_database(url);
    fail("database URL {}: expected sqlite:///relative/file.db, sqlite:////absolute/file.db or "
         "postgresql://user@host:port/dbname", url_without_password(url));
}

}  // namespace linarch
