#include "search/postgres_database.hpp"

#include <unistd.h>

#include <charconv>
#include <chrono>
#include <cmath>
#include <limits>
#include <type_traits>
#include <unordered_map>

#include <pqxx/pqxx>

#include "core/error.hpp"

namespace linarch {

namespace {

// Bumped when the tables change; a database of another version is refused, not misread.
constexpr int kSchemaVersion = 1;

// The tables of sqlite_database.cpp, column for column; schema_version holds what SQLite keeps in
// PRAGMA user_version. UNIQUE (study_id, functional_hash) backs enqueue's dedup.
constexpr const char* kSchema = R"sql(
CREATE TABLE studies (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE trials (
    id BIGSERIAL PRIMARY KEY,
    study_id BIGINT NOT NULL REFERENCES studies(id),
    number BIGINT NOT NULL,
    spec_toml TEXT NOT NULL,
    functional_hash TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    worker TEXT,
    host TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    lease_expires_at DOUBLE PRECISION,
    error TEXT,
    UNIQUE (study_id, number),
    UNIQUE (study_id, functional_hash)
);
CREATE INDEX trials_by_status ON trials (study_id, status, id);
CREATE TABLE trial_parents (
    trial_id BIGINT NOT NULL REFERENCES trials(id),
    position BIGINT NOT NULL,
    parent_id BIGINT NOT NULL REFERENCES trials(id),
    PRIMARY KEY (trial_id, position)
);
CREATE TABLE intermediate_values (
    trial_id BIGINT NOT NULL REFERENCES trials(id),
    step BIGINT NOT NULL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (trial_id, step)
);
CREATE TABLE proxies (
    trial_id BIGINT NOT NULL REFERENCES trials(id),
    name TEXT NOT NULL,
    value DOUBLE PRECISION,
    PRIMARY KEY (trial_id, name)
);
CREATE TABLE final_metrics (
    trial_id BIGINT NOT NULL REFERENCES trials(id),
    name TEXT NOT NULL,
    value DOUBLE PRECISION,
    PRIMARY KEY (trial_id, name)
);
CREATE TABLE schema_version (
    version INTEGER NOT NULL
);
)sql";

// The tables a search writes.
constexpr const char* kTables[] = {"studies", "trials", "trial_parents", "intermediate_values", "proxies",
                                   "final_metrics"};

// Taken around create-if-missing, so workers opening a fresh database at once create it once.
constexpr int64_t kSchemaLockKey = 0x6c696e61726368;  // "linarch"

// A deadlock or serialization failure between workers rolls the whole transaction back, so it is
// run again; more than this many in a row is an error.
constexpr int kTransactionAttempts = 8;

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

// Reals travel as text: fmt's shortest form reads back to the same double ("inf", "nan" included).
std::string real_text(double value) { return fmt::format("{}", value); }

int64_t integer(const pqxx::field& field) { return field.as<int64_t>(); }
std::string text(const pqxx::field& field) {
    return field.is_null() ? std::string() : std::string(field.c_str(), field.size());
}
// SQLite stores NaN as NULL; so does this back end, and NULL reads back as NaN.
double real(const pqxx::field& field) {
    if (field.is_null()) return std::numeric_limits<double>::quiet_NaN();
    double value = 0;
    const char* begin = field.c_str();
    const auto [end, error] = std::from_chars(begin, begin + field.size(), value);
    LINARCH_CHECK(error == std::errc() && end == begin + field.size(), "cannot read \"{}\" as a number", begin);
    return value;
}
std::optional<double> optional_real(const pqxx::field& field) {
    return field.is_null() ? std::nullopt : std::optional(real(field));
}

// libpq's message on one line, without "ERROR:"/"FATAL:" and the caret under the statement's text.
std::string reason_of(const std::exception& e) {
    std::string reason;
    const std::string message = e.what();
    for (size_t start = 0; start < message.size();) {
        size_t end = message.find('\n', start);
        if (end == std::string::npos) end = message.size();
        std::string line = message.substr(start, end - start);
        start = end + 1;
        for (const std::string_view severity : {"ERROR:  ", "FATAL:  "})
            for (size_t at; (at = line.find(severity)) != std::string::npos;) line.erase(at, severity.size());
        const size_t first = line.find_first_not_of(" \t");
        if (first == std::string::npos || line.starts_with("LINE ") || line[first] == '^') continue;
        line = line.substr(first, line.find_last_not_of(" \t") - first + 1);
        reason += (reason.empty() ? "" : "; ") + line;
    }
    return reason;
}

class PostgresDatabase final : public ExperimentDatabase {
public:
    explicit PostgresDatabase(const std::string& url)
        : url_(url_without_password(url)), host_(host_name()) {
        try {
            connection_ = std::make_unique<pqxx::connection>(url);
        } catch (const pqxx::pqxx_exception& e) {
            fail("{}: cannot connect to the database: {} (check that the server runs and that the URL's host, port, "
                 "user, password and database name are right)", url_, reason_of(e.base()));
        }
        try {
            // Every float8 printed exactly (the default since PostgreSQL 12, unless a server lowers it);
            // set_variable also restores it when libpqxx reconnects after a broken connection.
            connection_->set_variable("extra_float_digits", "3");
            connection_->set_variable("client_min_messages", "warning");
            pqxx::nontransaction query(*connection_);
            LINARCH_CHECK(text(query.exec("SHOW transaction_read_only")[0][0]) == "off",
                          "{}: the database is read-only (a hot standby, or default_transaction_read_only set for "
                          "the database or user): a search records its trials there (connect to the primary, or "
                          "ALTER DATABASE/ROLE ... SET default_transaction_read_only = off)", url_);
        } catch (const pqxx::pqxx_exception& e) {
            fail("{}: cannot set up the connection: {}", url_, reason_of(e.base()));
        }
        create_schema();
        check_write_privileges();
    }

    // Without its password: what messages and reports show (the connection keeps the real one).
    const std::string& url() const override { return url_; }

    int64_t open_study(const std::string& name, const std::string& config) override {
        return transact("open study " + name, [&](pqxx::work& tx) {
            // ON CONFLICT: another worker may create the study between the two statements.
            tx.exec_params("INSERT INTO studies (name, config, created_at) VALUES ($1, $2, $3) "
                           "ON CONFLICT (name) DO NOTHING", name, config, real_text(now_seconds()));
            return integer(tx.exec_params1("SELECT id FROM studies WHERE name = $1", name)[0]);
        });
    }

    std::vector<StudyInfo> studies() override {
        return transact("list the studies", [&](pqxx::work& tx) {
            std::vector<StudyInfo> found;
            for (const pqxx::row& row : tx.exec("SELECT id, name, created_at FROM studies ORDER BY id"))
                found.push_back({integer(row[0]), text(row[1]), real(row[2])});
            return found;
        });
    }

    std::string study_config(int64_t study) override {
        return transact("read a study", [&](pqxx::work& tx) {
            const pqxx::result found = tx.exec_params("SELECT config FROM studies WHERE id = $1", study);
            LINARCH_CHECK(!found.empty(), "{}: no study with id {}", url_, study);
            return text(found[0][0]);
        });
    }

    EnqueueResult enqueue(int64_t study, const NewTrial& trial) override {
        LINARCH_CHECK(!trial.functional_hash.empty(), "{}: enqueue: the trial has no functional hash", url_);
        return transact("enqueue a trial", [&](pqxx::work& tx) -> EnqueueResult {
            // Enqueues into one study wait for one another on its row, so each sees the trials the
            // others added: the hash check and the next number (MAX + 1) cannot race.
            LINARCH_CHECK(!tx.exec_params("SELECT 1 FROM studies WHERE id = $1 FOR NO KEY UPDATE", study).empty(),
                          "{}: enqueue: no study with id {}", url_, study);
            const pqxx::result existing = tx.exec_params(
                "SELECT id FROM trials WHERE study_id = $1 AND functional_hash = $2", study, trial.functional_hash);
            if (!existing.empty()) return {integer(existing[0][0]), false};
            for (int64_t parent : trial.parent_ids)
                LINARCH_CHECK(!tx.exec_params("SELECT 1 FROM trials WHERE id = $1 AND study_id = $2", parent, study)
                                   .empty(),
                              "{}: enqueue: parent trial {} is not a trial of study {}", url_, parent, study);
            const int64_t id = integer(
                tx.exec_params1("INSERT INTO trials (study_id, number, spec_toml, functional_hash, status, created_at) "
                                "VALUES ($1, (SELECT COALESCE(MAX(number) + 1, 0) FROM trials WHERE study_id = $1), "
                                "$2, $3, 'queued', $4) RETURNING id",
                                study, trial.spec_toml, trial.functional_hash, real_text(now_seconds()))[0]);
            for (size_t i = 0; i < trial.parent_ids.size(); ++i)
                tx.exec_params("INSERT INTO trial_parents (trial_id, position, parent_id) VALUES ($1, $2, $3)", id,
                               int64_t(i), trial.parent_ids[i]);
            return {id, true};
        });
    }

    std::optional<Claim> claim_next(int64_t study, const std::string& worker, double lease_seconds,
                                    int64_t max_attempts) override {
        LINARCH_CHECK(lease_seconds > 0 && max_attempts >= 1,
                      "{}: claim: lease_seconds = {} and max_attempts = {}: expected both > 0", url_,
                      lease_seconds, max_attempts);
        return transact("claim a trial", [&](pqxx::work& tx) -> std::optional<Claim> {
            const double now = now_seconds();
            // Workers re-queueing the same expired trial at once: the second waits for the first's
            // row lock, then re-checks the row, finds it no longer expired and leaves it.
            tx.exec_params("UPDATE trials SET status = 'failed', finished_at = $1, lease_expires_at = NULL, "
                           "error = 'its lease expired ' || attempts || ' times (the last holder, ' || worker || "
                           "' on ' || host || ', was killed or hung); not retried' "
                           "WHERE study_id = $2 AND status = 'running' AND lease_expires_at < $1 AND attempts >= $3",
                           real_text(now), study, max_attempts);
            tx.exec_params("UPDATE trials SET status = 'queued', lease_expires_at = NULL "
                           "WHERE study_id = $2 AND status = 'running' AND lease_expires_at < $1",
                           real_text(now), study);
            // SKIP LOCKED: a queued row another claimer is taking is passed over, not waited for, and
            // never handed out twice. NO KEY UPDATE, as the UPDATE itself locks: an enqueue naming the
            // trial as a parent holds a KEY SHARE lock on it, which must not make claimers skip it.
            const pqxx::result taken = tx.exec_params(
                "UPDATE trials SET status = 'running', worker = $1, host = $2, attempts = attempts + 1, "
                "started_at = $3, finished_at = NULL, lease_expires_at = $4, error = NULL "
                "WHERE id = (SELECT id FROM trials WHERE study_id = $5 AND status = 'queued' ORDER BY id LIMIT 1 "
                "FOR NO KEY UPDATE SKIP LOCKED) RETURNING id",
                worker, host_, real_text(now), real_text(now + lease_seconds), study);
            if (taken.empty()) return std::nullopt;  // committing the re-queueing above
            const int64_t id = integer(taken[0][0]);
            Claim claim;
            claim.trial = read_trials(tx, "t.id = $1", id).at(0);
            claim.lease = {id, worker, claim.trial.attempts, now + lease_seconds};
            return claim;
        });
    }

    void renew_lease(Lease& lease, double lease_seconds) override {
        const double expires_at = transact("renew a lease", [&](pqxx::work& tx) {
            check_lease(tx, lease, "renew the lease of");
            const double expires_at = now_seconds() + lease_seconds;
            tx.exec_params("UPDATE trials SET lease_expires_at = $1 WHERE id = $2", real_text(expires_at),
                           lease.trial_id);
            return expires_at;
        });
        lease.expires_at = expires_at;
    }

    void report_intermediate(const Lease& lease, int64_t step, const nlohmann::json& metrics) override {
        transact("report an intermediate value", [&](pqxx::work& tx) {
            check_lease(tx, lease, "report an intermediate value of");
            tx.exec_params("INSERT INTO intermediate_values (trial_id, step, metrics) VALUES ($1, $2, $3) "
                           "ON CONFLICT (trial_id, step) DO UPDATE SET metrics = EXCLUDED.metrics",
                           lease.trial_id, step, metrics.dump());
        });
    }

    void record_proxies(int64_t trial_id, const std::map<std::string, double>& proxies) override {
        transact("record proxies", [&](pqxx::work& tx) {
            LINARCH_CHECK(!tx.exec_params("SELECT 1 FROM trials WHERE id = $1", trial_id).empty(),
                          "{}: record proxies: no trial with id {}", url_, trial_id);
            write_values(tx, "proxies", trial_id, proxies);
        });
    }

    void record_final_metrics(int64_t trial_id, const std::map<std::string, double>& metrics) override {
        transact("record final metrics", [&](pqxx::work& tx) {
            LINARCH_CHECK(!tx.exec_params("SELECT 1 FROM trials WHERE id = $1 AND status = 'done'", trial_id).empty(),
                          "{}: record final metrics: no done trial with id {}", url_, trial_id);
            write_values(tx, "final_metrics", trial_id, metrics);
        });
    }

    void complete(const Lease& lease, const std::map<std::string, double>& final_metrics) override {
        transact("complete a trial", [&](pqxx::work& tx) {
            check_lease(tx, lease, "complete");
            write_values(tx, "final_metrics", lease.trial_id, final_metrics);
            finish(tx, lease.trial_id, "done", nullptr);
        });
    }

    void fail_trial(const Lease& lease, const std::string& error) override {
        transact("fail a trial", [&](pqxx::work& tx) {
            check_lease(tx, lease, "fail");
            finish(tx, lease.trial_id, "failed", error.c_str());
        });
    }

    void release(const Lease& lease) override {
        transact("release a trial", [&](pqxx::work& tx) {
            check_lease(tx, lease, "release");
            tx.exec_params("UPDATE trials SET status = 'queued', lease_expires_at = NULL, attempts = attempts - 1 "
                           "WHERE id = $1", lease.trial_id);
        });
    }

    Trial trial(int64_t trial_id) override {
        return transact<Snapshot>("read a trial", [&](Snapshot& tx) {
            std::vector<Trial> found = read_trials(tx, "t.id = $1", trial_id);
            LINARCH_CHECK(!found.empty(), "{}: no trial with id {}", url_, trial_id);
            return std::move(found[0]);
        });
    }

    std::vector<Trial> trials(int64_t study) override {
        return transact<Snapshot>("read the trials",
                                  [&](Snapshot& tx) { return read_trials(tx, "t.study_id = $1", study); });
    }

    std::vector<IntermediateValue> intermediate_values(int64_t trial_id) override {
        return transact("read intermediate values", [&](pqxx::work& tx) {
            std::vector<IntermediateValue> out;
            for (const pqxx::row& row : tx.exec_params(
                     "SELECT step, metrics FROM intermediate_values WHERE trial_id = $1 ORDER BY step", trial_id))
                out.push_back({integer(row[0]), nlohmann::json::parse(text(row[1]))});
            return out;
        });
    }

    StudyCounts counts(int64_t study) override {
        return transact("count trials", [&](pqxx::work& tx) {
            StudyCounts out;
            for (const pqxx::row& row :
                 tx.exec_params("SELECT status, COUNT(*) FROM trials WHERE study_id = $1 GROUP BY status", study)) {
                const int64_t count = integer(row[1]);
                switch (parse_status(text(row[0]))) {
                    case TrialStatus::queued: out.queued = count; break;
                    case TrialStatus::running: out.running = count; break;
                    case TrialStatus::done: out.done = count; break;
                    case TrialStatus::failed: out.failed = count; break;
                }
            }
            return out;
        });
    }

private:
    // Reads that span several statements see one moment of the database, as SQLite's BEGIN gives.
    using Snapshot = pqxx::transaction<pqxx::repeatable_read, pqxx::read_only>;

    // Runs body(tx) in one transaction and commits it; an Error thrown midway rolls it back.
    // libpqxx's exceptions become Errors naming the URL and `action`.
    template <typename Transaction = pqxx::work, typename Body>
    std::invoke_result_t<Body&, Transaction&> transact(const std::string& action, Body&& body) {
        for (int attempt = 1;; ++attempt) {
            try {
                Transaction tx(*connection_);
                if constexpr (std::is_void_v<std::invoke_result_t<Body&, Transaction&>>) {
                    body(tx);
                    tx.commit();
                    return;
                } else {
                    auto result = body(tx);
                    tx.commit();
                    return result;
                }
            } catch (const pqxx::transaction_rollback& e) {
                if (attempt < kTransactionAttempts) continue;
                fail("{}: cannot {}: {} ({} times in a row)", url_, action, reason_of(e), attempt);
            } catch (const pqxx::in_doubt_error& e) {
                fail("{}: cannot {}: the connection broke while committing, so the change may or may not be "
                     "recorded: {}", url_, action, reason_of(e));
            } catch (const pqxx::broken_connection& e) {
                fail("{}: cannot {}: lost the connection to the server: {}", url_, action, reason_of(e));
            } catch (const pqxx::pqxx_exception& e) {
                fail("{}: cannot {}: {}", url_, action, reason_of(e.base()));
            }
        }
    }

    void create_schema() {
        transact("create the tables", [&](pqxx::work& tx) {
            tx.exec_params("SELECT pg_advisory_xact_lock($1)", kSchemaLockKey);
            if (tx.exec("SELECT to_regclass('schema_version')")[0][0].is_null()) {
                try {
                    tx.exec(kSchema);
                } catch (const pqxx::insufficient_privilege& e) {
                    fail("{}: cannot create the tables: {}: the first worker's user must be allowed to create "
                         "tables in the database (make it the owner: createdb -O user dbname)", url_,
                         reason_of(e));
                }
                tx.exec_params("INSERT INTO schema_version (version) VALUES ($1)", kSchemaVersion);
                return;
            }
            const pqxx::result found = tx.exec("SELECT MAX(version) FROM schema_version");
            const int64_t version = found[0][0].is_null() ? 0 : integer(found[0][0]);
            LINARCH_CHECK(version == kSchemaVersion,
                          "{}: the database has schema version {}; this linarch reads version {}", url_,
                          version, kSchemaVersion);
        });
    }

    // A user granted only SELECT would connect fine and fail at the first claim; say so at open.
    void check_write_privileges() {
        transact("check the user's privileges", [&](pqxx::work& tx) {
            const std::string user = text(tx.exec("SELECT current_user")[0][0]);
            const auto refuse = [&](const std::string& what) {
                fail("{}: user {} may not write {}: a search records its trials there (GRANT SELECT, INSERT, UPDATE "
                     "ON ALL TABLES IN SCHEMA public and USAGE ON ALL SEQUENCES IN SCHEMA public to it, or connect "
                     "as the user that created the tables)", url_, user, what);
            };
            for (const char* table : kTables)
                if (!tx.exec_params1("SELECT has_table_privilege($1::text, 'SELECT') AND "
                                     "has_table_privilege($1::text, 'INSERT') AND has_table_privilege($1::text, 'UPDATE')",
                                     std::string(table))[0].as<bool>())
                    refuse(fmt::format("table {}", table));
            for (const char* table : {"studies", "trials"})  // their BIGSERIAL ids
                if (!tx.exec_params1("SELECT has_sequence_privilege(pg_get_serial_sequence($1, 'id'), 'USAGE')",
                                     std::string(table))[0].as<bool>())
                    refuse(fmt::format("the id sequence of table {}", table));
        });
    }

    // The row lock keeps the trial as checked until the caller's transaction ends.
    void check_lease(pqxx::work& tx, const Lease& lease, const char* action) {
        const pqxx::result found = tx.exec_params(
            "SELECT status, worker, attempts FROM trials WHERE id = $1 FOR NO KEY UPDATE", lease.trial_id);
        LINARCH_CHECK(!found.empty(), "{}: cannot {} trial {}: no such trial", url_, action, lease.trial_id);
        const std::string status = text(found[0][0]), worker = text(found[0][1]);
        const int64_t attempts = integer(found[0][2]);
        LINARCH_CHECK(status == "running" && worker == lease.worker && attempts == lease.attempt,
                      "{}: cannot {} trial {}: worker {} no longer holds it (its claim was attempt {}; the trial is "
                      "now {}, attempt {} by {}): the lease expired and the trial was re-queued", url_, action,
                      lease.trial_id, lease.worker, lease.attempt, status, attempts, worker);
    }

    void write_values(pqxx::work& tx, const char* table, int64_t trial_id,
                      const std::map<std::string, double>& values) {
        const std::string sql = fmt::format("INSERT INTO {} (trial_id, name, value) VALUES ($1, $2, $3) "
                                            "ON CONFLICT (trial_id, name) DO UPDATE SET value = EXCLUDED.value", table);
        for (const auto& [name, value] : values) {
            const std::string value_text = real_text(value);
            tx.exec_params(sql, trial_id, name, std::isnan(value) ? nullptr : value_text.c_str());  // NaN: NULL
        }
    }

    // `error` null: the error column is cleared.
    void finish(pqxx::work& tx, int64_t trial_id, const char* status, const char* error) {
        tx.exec_params("UPDATE trials SET status = $1, finished_at = $2, lease_expires_at = NULL, error = $3 "
                       "WHERE id = $4", std::string(status), real_text(now_seconds()), error, trial_id);
    }

    // The trials matching `condition` on `key` (t.id = $1, t.study_id = $1) in enqueue order, in four
    // queries however many there are: one round trip each to a server that may be far away.
    template <typename Transaction>
    std::vector<Trial> read_trials(Transaction& tx, const char* condition, int64_t key) {
        std::vector<Trial> trials;
        std::unordered_map<int64_t, size_t> index;
        for (const pqxx::row& row : tx.exec_params(
                 fmt::format("SELECT id, study_id, number, spec_toml, functional_hash, status, worker, host, attempts, "
                             "created_at, started_at, finished_at, lease_expires_at, error FROM trials t WHERE {} "
                             "ORDER BY number", condition), key)) {
            Trial trial;
            trial.id = integer(row[0]);
            trial.study_id = integer(row[1]);
            trial.number = integer(row[2]);
            trial.spec_toml = text(row[3]);
            trial.functional_hash = text(row[4]);
            trial.status = parse_status(text(row[5]));
            trial.worker = text(row[6]);
            trial.host = text(row[7]);
            trial.attempts = integer(row[8]);
            trial.created_at = real(row[9]);
            trial.started_at = optional_real(row[10]);
            trial.finished_at = optional_real(row[11]);
            trial.lease_expires_at = optional_real(row[12]);
            trial.error = text(row[13]);
            index[trial.id] = trials.size();
            trials.push_back(std::move(trial));
        }
        if (trials.empty()) return trials;
        for (const pqxx::row& row : tx.exec_params(
                 fmt::format("SELECT p.trial_id, p.parent_id FROM trial_parents p JOIN trials t ON t.id = p.trial_id "
                             "WHERE {} ORDER BY p.trial_id, p.position", condition), key))
            trials[index.at(integer(row[0]))].parent_ids.push_back(integer(row[1]));
        for (const char* table : {"proxies", "final_metrics"}) {
            for (const pqxx::row& row : tx.exec_params(
                     fmt::format("SELECT v.trial_id, v.name, v.value FROM {} v JOIN trials t ON t.id = v.trial_id "
                                 "WHERE {}", table, condition), key)) {
                Trial& trial = trials[index.at(integer(row[0]))];
                (table == std::string_view("proxies") ? trial.proxies : trial.final_metrics)[text(row[1])] =
                    real(row[2]);
            }
        }
        return trials;
    }

    std::string url_, host_;
    std::unique_ptr<pqxx::connection> connection_;
};

}  // namespace

std::string url_without_password(const std::string& url) {
    std::string shown = url;
    const size_t scheme_end = shown.find("://");
    if (scheme_end == std::string::npos) return shown;
    const size_t authority = scheme_end + 3;
    const size_t authority_end = std::min(shown.find_first_of("/?", authority), shown.size());
    const size_t at = shown.rfind('@', authority_end);
    if (at != std::string::npos && at >= authority) {
        const size_t colon = shown.find(':', authority);
        if (colon < at) shown.replace(colon + 1, at - colon - 1, "***");
    }
    // ?password=...&...
    for (size_t key = shown.find('?'); key != std::string::npos; key = shown.find('&', key)) {
        ++key;
        if (shown.compare(key, 9, "password=") != 0) continue;
        const size_t value = key + 9;
        shown.replace(value, std::min(shown.find('&', value), shown.size()) - value, "***");
    }
    return shown;
}

std::unique_ptr<ExperimentDatabase> open_postgres_database(const std::string& url) {
    return std::make_unique<PostgresDatabase>(url);
}

}  // namespace linarch
