#include "search/sqlite_database.hpp"

#include <sqlite3.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>

#include "core/error.hpp"

namespace linarch {

namespace {

// Bumped when the tables change; a database of another version is refused, not misread.
constexpr int kSchemaVersion = 1;

// Lineage (trial_parents) and metrics are tables of their own so a report can query them;
// UNIQUE (study_id, functional_hash) is what makes enqueue's dedup atomic.
constexpr const char* kSchema = R"sql(
CREATE TABLE studies (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE trials (
    id INTEGER PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    number INTEGER NOT NULL,
    spec_toml TEXT NOT NULL,
    functional_hash TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    worker TEXT,
    host TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    lease_expires_at REAL,
    error TEXT,
    UNIQUE (study_id, number),
    UNIQUE (study_id, functional_hash)
);
CREATE INDEX trials_by_status ON trials (study_id, status, id);
CREATE TABLE trial_parents (
    trial_id INTEGER NOT NULL REFERENCES trials(id),
    position INTEGER NOT NULL,
    parent_id INTEGER NOT NULL REFERENCES trials(id),
    PRIMARY KEY (trial_id, position)
);
CREATE TABLE intermediate_values (
    trial_id INTEGER NOT NULL REFERENCES trials(id),
    step INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (trial_id, step)
);
CREATE TABLE proxies (
    trial_id INTEGER NOT NULL REFERENCES trials(id),
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (trial_id, name)
);
CREATE TABLE final_metrics (
    trial_id INTEGER NOT NULL REFERENCES trials(id),
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (trial_id, name)
);
)sql";

constexpr const char* kTrialColumns =
    "id, study_id, number, spec_toml, functional_hash, status, worker, host, attempts, created_at, started_at, "
    "finished_at, lease_expires_at, error";

double now_seconds() {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string host_name() {
    char name[256] = {};
    if (::gethostname(name, sizeof(name) - 1) != 0) return "unknown";
    return name;
}

TrialStatus parse_status(const std::string& text) {
    for (TrialStatus status : {TrialStatus::queued, TrialStatus::running, TrialStatus::done, TrialStatus::failed})
        if (text == status_name(status)) return status;
    fail("trial status \"{}\": expected queued, running, done or failed", text);
}

class Statement {
public:
    Statement(sqlite3* db, const std::string& url, const char* sql) : db_(db), url_(url) {
        if (sqlite3_prepare_v2(db, sql, -1, &statement_, nullptr) != SQLITE_OK)
            fail("{}: {} (in: {})", url_, sqlite3_errmsg(db_), sql);
    }
    ~Statement() { sqlite3_finalize(statement_); }
    Statement(const Statement&) = delete;
    Statement& operator=(const Statement&) = delete;

    // Parameters are 1-based, as SQLite numbers them.
    Statement& bind(int index, int64_t value) { return check_bind(sqlite3_bind_int64(statement_, index, value)); }
    Statement& bind(int index, double value) { return check_bind(sqlite3_bind_double(statement_, index, value)); }
    Statement& bind(int index, const std::string& value) {
        return check_bind(sqlite3_bind_text(statement_, index, value.data(), int(value.size()), SQLITE_TRANSIENT));
    }
    // True while a row is ready; false once the statement has run to completion.
    bool step() {
        const int rc = sqlite3_step(statement_);
        if (rc == SQLITE_ROW) return true;
        if (rc == SQLITE_DONE) return false;
        fail("{}: {}", url_, sqlite3_errmsg(db_));
    }
    void run() { while (step()) {} }

    // Columns are 0-based.
    bool is_null(int column) const { return sqlite3_column_type(statement_, column) == SQLITE_NULL; }
    int64_t integer(int column) const { return sqlite3_column_int64(statement_, column); }
    // SQLite stores NaN as NULL; it reads back as NaN.
    double real(int column) const {
        return is_null(column) ? std::numeric_limits<double>::quiet_NaN() : sqlite3_column_double(statement_, column);
    }
    std::optional<double> optional_real(int column) const {
        return is_null(column) ? std::nullopt : std::optional(sqlite3_column_double(statement_, column));
    }
    std::string text(int column) const {
        const auto* bytes = sqlite3_column_text(statement_, column);
        return bytes == nullptr ? std::string() : std::string(reinterpret_cast<const char*>(bytes));
    }

private:
    Statement& check_bind(int rc) {
        if (rc != SQLITE_OK) fail("{}: {}", url_, sqlite3_errmsg(db_));
        return *this;
    }
    sqlite3* db_;
    const std::string& url_;
    sqlite3_stmt* statement_ = nullptr;
};

class SqliteDatabase final : public ExperimentDatabase {
public:
    SqliteDatabase(const std::string& url, const std::string& path) : url_(url), host_(host_name()) {
        const std::filesystem::path file(path);
        const std::filesystem::path directory = file.parent_path();
        LINARCH_CHECK(directory.empty() || std::filesystem::is_directory(directory),
                      "{}: cannot open the database: directory {} does not exist", url_, directory.string());
        if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) != SQLITE_OK) {
            const std::string reason = db_ != nullptr ? sqlite3_errmsg(db_) : "out of memory";
            sqlite3_close(db_);
            fail("{}: cannot open the database: {}", url_, reason);
        }
        try {
            // SQLite falls back to read-only when the file is not writable; a search must write.
            LINARCH_CHECK(sqlite3_db_readonly(db_, "main") != 1,
                          "{}: the database file {} is read-only: a search records its trials there (check the file's "
                          "permissions)", url_, path);
            // Workers wait for one another's short write transactions instead of failing.
            sqlite3_busy_timeout(db_, 60'000);
            {
                Statement journal(db_, url_, "PRAGMA journal_mode = WAL");
                LINARCH_CHECK(journal.step() && journal.text(0) == "wal",
                              "{}: cannot switch the database to WAL mode (got \"{}\"): is {} on a network file "
                              "system?", url_, journal.text(0), path);
            }
            // FULL: a committed trial survives a power loss, not only a killed process.
            exec("PRAGMA synchronous = FULL");
            exec("PRAGMA foreign_keys = ON");
            create_schema();
        } catch (const Error&) {
            sqlite3_close(db_);
            throw;
        }
    }
    ~SqliteDatabase() override { sqlite3_close(db_); }

    const std::string& url() const override { return url_; }

    int64_t open_study(const std::string& name, const std::string& config) override {
        Transaction transaction(*this);
        if (auto id = first_integer("SELECT id FROM studies WHERE name = ?", name)) return *id;
        Statement insert(db_, url_, "INSERT INTO studies (name, config, created_at) VALUES (?, ?, ?)");
        insert.bind(1, name).bind(2, config).bind(3, now_seconds()).run();
        const int64_t id = sqlite3_last_insert_rowid(db_);
        transaction.commit();
        return id;
    }

    std::vector<StudyInfo> studies() override {
        Statement all(db_, url_, "SELECT id, name, created_at FROM studies ORDER BY id");
        std::vector<StudyInfo> found;
        while (all.step()) found.push_back({all.integer(0), all.text(1), all.real(2)});
        return found;
    }

    std::string study_config(int64_t study) override {
        Statement find(db_, url_, "SELECT config FROM studies WHERE id = ?");
        find.bind(1, study);
        LINARCH_CHECK(find.step(), "{}: no study with id {}", url_, study);
        return find.text(0);
    }

    EnqueueResult enqueue(int64_t study, const NewTrial& trial) override {
        LINARCH_CHECK(!trial.functional_hash.empty(), "{}: enqueue: the trial has no functional hash", url_);
        Transaction transaction(*this);
        if (auto id = first_integer("SELECT id FROM trials WHERE study_id = ? AND functional_hash = ?", study,
                                    trial.functional_hash))
            return {*id, false};
        for (int64_t parent : trial.parent_ids)
            LINARCH_CHECK(first_integer("SELECT 1 FROM trials WHERE id = ? AND study_id = ?", parent, study),
                          "{}: enqueue: parent trial {} is not a trial of study {}", url_, parent, study);
        Statement insert(db_, url_,
                         "INSERT INTO trials (study_id, number, spec_toml, functional_hash, status, created_at) "
                         "VALUES (?1, (SELECT COALESCE(MAX(number) + 1, 0) FROM trials WHERE study_id = ?1), ?2, ?3, "
                         "'queued', ?4)");
        insert.bind(1, study).bind(2, trial.spec_toml).bind(3, trial.functional_hash).bind(4, now_seconds()).run();
        const int64_t id = sqlite3_last_insert_rowid(db_);
        for (size_t i = 0; i < trial.parent_ids.size(); ++i) {
            Statement parent(db_, url_, "INSERT INTO trial_parents (trial_id, position, parent_id) VALUES (?, ?, ?)");
            parent.bind(1, id).bind(2, int64_t(i)).bind(3, trial.parent_ids[i]).run();
        }
        transaction.commit();
        return {id, true};
    }

    std::optional<Claim> claim_next(int64_t study, const std::string& worker, double lease_seconds,
                                    int64_t max_attempts) override {
        LINARCH_CHECK(lease_seconds > 0 && max_attempts >= 1,
                      "{}: claim: lease_seconds = {} and max_attempts = {}: expected both > 0", url_, lease_seconds,
                      max_attempts);
        // BEGIN IMMEDIATE takes the write lock first, so two workers never pick the same row.
        Transaction transaction(*this);
        const double now = now_seconds();
        Statement give_up(db_, url_,
                          "UPDATE trials SET status = 'failed', finished_at = ?1, lease_expires_at = NULL, "
                          "error = 'its lease expired ' || attempts || ' times (the last holder, ' || worker || "
                          "' on ' || host || ', was killed or hung); not retried' "
                          "WHERE study_id = ?2 AND status = 'running' AND lease_expires_at < ?1 AND attempts >= ?3");
        give_up.bind(1, now).bind(2, study).bind(3, max_attempts).run();
        Statement requeue(db_, url_,
                          "UPDATE trials SET status = 'queued', lease_expires_at = NULL "
                          "WHERE study_id = ?2 AND status = 'running' AND lease_expires_at < ?1");
        requeue.bind(1, now).bind(2, study).run();
        const std::optional<int64_t> next =
            first_integer("SELECT id FROM trials WHERE study_id = ? AND status = 'queued' ORDER BY id LIMIT 1", study);
        if (!next) {
            transaction.commit();  // the re-queueing above
            return std::nullopt;
        }
        const int64_t id = *next;
        Statement take(db_, url_,
                       "UPDATE trials SET status = 'running', worker = ?, host = ?, attempts = attempts + 1, "
                       "started_at = ?, finished_at = NULL, lease_expires_at = ?, error = NULL WHERE id = ?");
        take.bind(1, worker).bind(2, host_).bind(3, now).bind(4, now + lease_seconds).bind(5, id).run();
        Claim claim;
        claim.trial = read_trial(id);
        claim.lease = {id, worker, claim.trial.attempts, now + lease_seconds};
        transaction.commit();
        return claim;
    }

    void renew_lease(Lease& lease, double lease_seconds) override {
        Transaction transaction(*this);
        check_lease(lease, "renew the lease of");
        const double expires_at = now_seconds() + lease_seconds;
        Statement update(db_, url_, "UPDATE trials SET lease_expires_at = ? WHERE id = ?");
        update.bind(1, expires_at).bind(2, lease.trial_id).run();
        transaction.commit();
        lease.expires_at = expires_at;
    }

    void report_intermediate(const Lease& lease, int64_t step, const nlohmann::json& metrics) override {
        Transaction transaction(*this);
        check_lease(lease, "report an intermediate value of");
        Statement insert(db_, url_, "INSERT OR REPLACE INTO intermediate_values (trial_id, step, metrics) VALUES (?, ?, ?)");
        insert.bind(1, lease.trial_id).bind(2, step).bind(3, metrics.dump()).run();
        transaction.commit();
    }

    void record_proxies(int64_t trial_id, const std::map<std::string, double>& proxies) override {
        Transaction transaction(*this);
        LINARCH_CHECK(first_integer("SELECT 1 FROM trials WHERE id = ?", trial_id),
                      "{}: record proxies: no trial with id {}", url_, trial_id);
        write_values("proxies", trial_id, proxies);
        transaction.commit();
    }

    void record_final_metrics(int64_t trial_id, const std::map<std::string, double>& metrics) override {
        Transaction transaction(*this);
        LINARCH_CHECK(first_integer("SELECT 1 FROM trials WHERE id = ? AND status = 'done'", trial_id),
                      "{}: record final metrics: no done trial with id {}", url_, trial_id);
        write_values("final_metrics", trial_id, metrics);
        transaction.commit();
    }

    void complete(const Lease& lease, const std::map<std::string, double>& final_metrics) override {
        Transaction transaction(*this);
        check_lease(lease, "complete");
        write_values("final_metrics", lease.trial_id, final_metrics);
        finish(lease.trial_id, "done", std::nullopt);
        transaction.commit();
    }

    void fail_trial(const Lease& lease, const std::string& error) override {
        Transaction transaction(*this);
        check_lease(lease, "fail");
        finish(lease.trial_id, "failed", error);
        transaction.commit();
    }

    void release(const Lease& lease) override {
        Transaction transaction(*this);
        check_lease(lease, "release");
        Statement update(db_, url_,
                         "UPDATE trials SET status = 'queued', lease_expires_at = NULL, attempts = attempts - 1 "
                         "WHERE id = ?");
        update.bind(1, lease.trial_id).run();
        transaction.commit();
    }

    Trial trial(int64_t trial_id) override {
        Transaction snapshot(*this, "BEGIN");
        return read_trial(trial_id);
    }

    std::vector<Trial> trials(int64_t study) override {
        Transaction snapshot(*this, "BEGIN");
        Statement ids(db_, url_, "SELECT id FROM trials WHERE study_id = ? ORDER BY number");
        ids.bind(1, study);
        std::vector<Trial> out;
        while (ids.step()) out.push_back(read_trial(ids.integer(0)));
        return out;
    }

    std::vector<IntermediateValue> intermediate_values(int64_t trial_id) override {
        Statement rows(db_, url_, "SELECT step, metrics FROM intermediate_values WHERE trial_id = ? ORDER BY step");
        rows.bind(1, trial_id);
        std::vector<IntermediateValue> out;
        while (rows.step()) out.push_back({rows.integer(0), nlohmann::json::parse(rows.text(1))});
        return out;
    }

    StudyCounts counts(int64_t study) override {
        Statement rows(db_, url_, "SELECT status, COUNT(*) FROM trials WHERE study_id = ? GROUP BY status");
        rows.bind(1, study);
        StudyCounts out;
        while (rows.step()) {
            const int64_t count = rows.integer(1);
            switch (parse_status(rows.text(0))) {
                case TrialStatus::queued: out.queued = count; break;
                case TrialStatus::running: out.running = count; break;
                case TrialStatus::done: out.done = count; break;
                case TrialStatus::failed: out.failed = count; break;
            }
        }
        return out;
    }

private:
    // Rolls back unless committed, so an Error thrown midway leaves the database as it was.
    class Transaction {
    public:
        explicit Transaction(SqliteDatabase& owner, const char* begin = "BEGIN IMMEDIATE") : owner_(owner) {
            owner_.exec(begin);
        }
        ~Transaction() {
            if (!committed_) sqlite3_exec(owner_.db_, "ROLLBACK", nullptr, nullptr, nullptr);
        }
        Transaction(const Transaction&) = delete;
        Transaction& operator=(const Transaction&) = delete;
        void commit() {
            owner_.exec("COMMIT");
            committed_ = true;
        }

    private:
        SqliteDatabase& owner_;
        bool committed_ = false;
    };

    // The first column of the query's first row, if any. The statement is finalised before this
    // returns: a transaction cannot commit while a statement is still stepping.
    template <typename... Args> std::optional<int64_t> first_integer(const char* sql, const Args&... args) {
        Statement query(db_, url_, sql);
        int index = 0;
        (query.bind(++index, args), ...);
        if (!query.step()) return std::nullopt;
        return query.integer(0);
    }

    void exec(const char* sql) {
        char* message = nullptr;
        if (sqlite3_exec(db_, sql, nullptr, nullptr, &message) != SQLITE_OK) {
            const std::string reason = message != nullptr ? message : sqlite3_errmsg(db_);
            sqlite3_free(message);
            fail("{}: {} ({})", url_, reason, sql);
        }
    }

    void create_schema() {
        Transaction transaction(*this);
        const int64_t found = first_integer("PRAGMA user_version").value_or(0);
        if (found == 0) {
            exec(kSchema);
            exec(fmt::format("PRAGMA user_version = {}", kSchemaVersion).c_str());
        } else {
            LINARCH_CHECK(found == kSchemaVersion,
                          "{}: the database has schema version {}; this linarch reads version {}", url_, found,
                          kSchemaVersion);
        }
        transaction.commit();
    }

    void check_lease(const Lease& lease, const char* action) {
        Statement find(db_, url_, "SELECT status, worker, attempts FROM trials WHERE id = ?");
        find.bind(1, lease.trial_id);
        LINARCH_CHECK(find.step(), "{}: cannot {} trial {}: no such trial", url_, action, lease.trial_id);
        const std::string status = find.text(0), worker = find.text(1);
        const int64_t attempts = find.integer(2);
        LINARCH_CHECK(status == "running" && worker == lease.worker && attempts == lease.attempt,
                      "{}: cannot {} trial {}: worker {} no longer holds it (its claim was attempt {}; the trial is "
                      "now {}, attempt {} by {}): the lease expired and the trial was re-queued", url_, action,
                      lease.trial_id, lease.worker, lease.attempt, status, attempts, worker);
    }

    void write_values(const char* table, int64_t trial_id, const std::map<std::string, double>& values) {
        const std::string sql = fmt::format("INSERT OR REPLACE INTO {} (trial_id, name, value) VALUES (?, ?, ?)", table);
        for (const auto& [name, value] : values) {
            Statement insert(db_, url_, sql.c_str());
            insert.bind(1, trial_id).bind(2, name).bind(3, value).run();
        }
    }

    void finish(int64_t trial_id, const char* status, const std::optional<std::string>& error) {
        Statement update(db_, url_,
                         "UPDATE trials SET status = ?, finished_at = ?, lease_expires_at = NULL, error = ? WHERE id = ?");
        update.bind(1, std::string(status)).bind(2, now_seconds());
        if (error) update.bind(3, *error);
        update.bind(4, trial_id).run();
    }

    std::map<std::string, double> read_values(const char* table, int64_t trial_id) {
        const std::string sql = fmt::format("SELECT name, value FROM {} WHERE trial_id = ?", table);
        Statement rows(db_, url_, sql.c_str());
        rows.bind(1, trial_id);
        std::map<std::string, double> out;
        while (rows.step()) out[rows.text(0)] = rows.real(1);
        return out;
    }

    Trial read_trial(int64_t trial_id) {
        const std::string sql = fmt::format("SELECT {} FROM trials WHERE id = ?", kTrialColumns);
        Statement row(db_, url_, sql.c_str());
        row.bind(1, trial_id);
        LINARCH_CHECK(row.step(), "{}: no trial with id {}", url_, trial_id);
        Trial trial;
        trial.id = row.integer(0);
        trial.study_id = row.integer(1);
        trial.number = row.integer(2);
        trial.spec_toml = row.text(3);
        trial.functional_hash = row.text(4);
        trial.status = parse_status(row.text(5));
        trial.worker = row.text(6);
        trial.host = row.text(7);
        trial.attempts = row.integer(8);
        trial.created_at = row.real(9);
        trial.started_at = row.optional_real(10);
        trial.finished_at = row.optional_real(11);
        trial.lease_expires_at = row.optional_real(12);
        trial.error = row.text(13);
        Statement parents(db_, url_, "SELECT parent_id FROM trial_parents WHERE trial_id = ? ORDER BY position");
        parents.bind(1, trial_id);
        while (parents.step()) trial.parent_ids.push_back(parents.integer(0));
        trial.proxies = read_values("proxies", trial_id);
        trial.final_metrics = read_values("final_metrics", trial_id);
        return trial;
    }

    std::string url_, host_;
    sqlite3* db_ = nullptr;
};

}  // namespace

std::unique_ptr<ExperimentDatabase> open_sqlite_database(const std::string& url, const std::string& path) {
    return std::make_unique<SqliteDatabase>(url, path);
}

}  // namespace linarch
