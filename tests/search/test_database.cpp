#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <thread>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "search/database.hpp"
#include "search/postgres_database.hpp"
#include "search/study.hpp"
#include "support/postgres_server.hpp"
#include "support/process.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using testkit::error_of;

namespace {

std::string url_of(const std::filesystem::path& file) { return "sqlite:///" + file.string(); }

// Runs `body` in a child process (which opens its own connection) and returns its pid. The child
// exits 0 when body returns, 1 when it throws, without running the parent's destructors.
pid_t fork_child(const std::function<void()>& body) {
    const pid_t pid = ::fork();
    if (pid != 0) return pid;
    int code = 0;
    try {
        body();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "child %d: %s\n", ::getpid(), e.what());
        code = 1;
    }
    ::_exit(code);
}

int wait_exit(pid_t pid) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

void sleep_seconds(double seconds) { std::this_thread::sleep_for(std::chrono::duration<double>(seconds)); }

NewTrial trial_with_hash(const std::string& hash, std::vector<int64_t> parents = {}) {
    return {fmt::format("# spec of {}\n[model]\nd_model = 32\n", hash), hash, std::move(parents)};
}

}  // namespace

// Every behaviour of the interface, on each back end: "sqlite" (a file in a temp directory) and
// "postgresql" (a database of its own on the test process's throwaway server).
class Database : public testing::TestWithParam<std::string> {
protected:
    void SetUp() override {
        if (GetParam() != "postgresql") return;
        std::string why_not;
        server = testkit::PostgresServer::shared(why_not);
        if (server == nullptr) GTEST_SKIP() << why_not;
    }
    // A new, empty database.
    std::string new_url() {
        if (server != nullptr) return server->url(server->create_database());
        return url_of(dir / fmt::format("search-{}.db", sqlite_files++));
    }

    testkit::TempDir dir;
    testkit::PostgresServer* server = nullptr;
    int sqlite_files = 0;
};

INSTANTIATE_TEST_SUITE_P(Backends, Database, testing::Values("sqlite", "postgresql"),
                         [](const testing::TestParamInfo<std::string>& info) { return info.param; });

TEST_P(Database, RecordsATrialsWholeLife) {
    const std::string url = new_url();
    RngStream rng(testkit::test_seed(), 1);
    const double loss = 1 + rng.uniform(), proxy = rng.normal(), bpb = 1 + rng.uniform();

    auto db = open_database(url);
    EXPECT_EQ(db->url(), url);
    const int64_t study = db->open_study("mixers", "base = \"x.toml\"");
    EXPECT_EQ(db->open_study("mixers", "ignored on resume"), study);
    EXPECT_EQ(db->study_config(study), "base = \"x.toml\"");

    const EnqueueResult first = db->enqueue(study, trial_with_hash("aaaa"));
    EXPECT_TRUE(first.inserted);
    const EnqueueResult duplicate = db->enqueue(study, trial_with_hash("aaaa"));
    EXPECT_FALSE(duplicate.inserted);
    EXPECT_EQ(duplicate.trial_id, first.trial_id);
    const EnqueueResult child = db->enqueue(study, trial_with_hash("bbbb", {first.trial_id}));
    EXPECT_TRUE(child.inserted);
    EXPECT_NE(error_of([&] { db->enqueue(study, trial_with_hash("cccc", {child.trial_id + 100})); })
                  .find("parent trial"),
              std::string::npos);

    std::optional<Claim> claim = db->claim_next(study, "worker-1", 60);
    ASSERT_TRUE(claim);
    EXPECT_EQ(claim->trial.id, first.trial_id);
    EXPECT_EQ(claim->trial.status, TrialStatus::running);
    EXPECT_EQ(claim->trial.attempts, 1);
    EXPECT_EQ(claim->trial.worker, "worker-1");
    EXPECT_FALSE(claim->trial.host.empty());
    EXPECT_EQ(claim->trial.spec_toml, trial_with_hash("aaaa").spec_toml);
    db->report_intermediate(claim->lease, 20, {{"train_loss", loss / 2}});
    db->report_intermediate(claim->lease, 10, {{"train_loss", loss}});
    db->record_proxies(first.trial_id, {{"synflow", proxy}});
    db->complete(claim->lease, {{"val_bpb", bpb}});
    // A completed trial cannot be completed (or failed) again.
    EXPECT_NE(error_of([&] { db->fail_trial(claim->lease, "late"); }).find("no longer holds"), std::string::npos);

    // Another connection sees all of it.
    auto reader = open_database(url);
    const Trial done = reader->trial(first.trial_id);
    EXPECT_EQ(done.status, TrialStatus::done);
    EXPECT_EQ(done.final_metrics.at("val_bpb"), bpb);
    EXPECT_EQ(done.proxies.at("synflow"), proxy);
    EXPECT_TRUE(done.finished_at && done.started_at && *done.finished_at >= *done.started_at);
    EXPECT_FALSE(done.lease_expires_at);
    const auto curve = reader->intermediate_values(first.trial_id);
    ASSERT_EQ(curve.size(), 2u);
    EXPECT_EQ(curve[0].step, 10);
    EXPECT_EQ(curve[0].metrics.at("train_loss").get<double>(), loss);
    EXPECT_EQ(reader->trial(child.trial_id).parent_ids, std::vector<int64_t>{first.trial_id});

    std::optional<Claim> second = reader->claim_next(study, "worker-2", 60);
    ASSERT_TRUE(second);
    EXPECT_EQ(second->trial.number, 1);
    reader->fail_trial(second->lease, "diverged: loss is NaN at step 12");
    EXPECT_FALSE(reader->claim_next(study, "worker-2", 60));
    const std::vector<Trial> all = db->trials(study);
    ASSERT_EQ(all.size(), 2u);
    EXPECT_EQ(all[1].status, TrialStatus::failed);
    EXPECT_EQ(all[1].error, "diverged: loss is NaN at step 12");
    const StudyCounts counts = db->counts(study);
    EXPECT_EQ(counts.done, 1);
    EXPECT_EQ(counts.failed, 1);
    EXPECT_EQ(counts.queued + counts.running, 0);
}

TEST_P(Database, ConcurrentWorkerProcessesNeverClaimATrialTwice) {
    const std::string url = new_url();
    const int trials = 48, workers = 4;
    int64_t study = 0;
    {
        auto db = open_database(url);
        study = db->open_study("race", "");
        RngStream rng(testkit::test_seed(), 2);
        for (int i = 0; i < trials; ++i) db->enqueue(study, trial_with_hash(fmt::format("{:016x}", rng.next_u64())));
    }
    std::vector<pid_t> children;
    for (int w = 0; w < workers; ++w) {
        children.push_back(fork_child([&, w] {
            auto db = open_database(url);
            std::ofstream claimed(dir / fmt::format("worker-{}.txt", w));
            while (std::optional<Claim> claim = db->claim_next(study, fmt::format("worker-{}", w), 60)) {
                claimed << claim->trial.id << "\n" << std::flush;
                db->complete(claim->lease, {{"worker", double(w)}});
            }
        }));
    }
    for (pid_t pid : children) EXPECT_EQ(wait_exit(pid), 0);

    auto db = open_database(url);
    std::set<int64_t> seen;
    for (int w = 0; w < workers; ++w) {
        std::ifstream claimed(dir / fmt::format("worker-{}.txt", w));
        for (int64_t id; claimed >> id;) {
            EXPECT_TRUE(seen.insert(id).second) << "trial " << id << " claimed twice";
            EXPECT_EQ(db->trial(id).final_metrics.at("worker"), double(w));
        }
    }
    EXPECT_EQ(seen.size(), size_t(trials));
    EXPECT_EQ(db->counts(study).done, trials);
}

TEST_P(Database, RacingProposersMakeOneTrialPerFunction) {
    const std::string url = new_url();
    const int64_t study = open_database(url)->open_study("dedup", "");
    const int functions = 24, proposers = 4;
    RngStream rng(testkit::test_seed(), 4);
    std::vector<std::string> hashes;
    for (int i = 0; i < functions; ++i) hashes.push_back(fmt::format("{:016x}", rng.next_u64()));
    // Each proposer thread (its own connection) enqueues every function, in its own random order.
    std::vector<std::map<std::string, EnqueueResult>> results(proposers);
    std::vector<std::thread> threads;
    for (int p = 0; p < proposers; ++p) {
        std::vector<std::string> order = hashes;
        for (size_t i = order.size() - 1; i > 0; --i) std::swap(order[i], order[rng.below(i + 1)]);
        threads.emplace_back([&, p, order] {
            auto db = open_database(url);
            for (const std::string& hash : order) results[size_t(p)][hash] = db->enqueue(study, trial_with_hash(hash));
        });
    }
    for (std::thread& thread : threads) thread.join();
    for (const std::string& hash : hashes) {
        int inserted = 0;
        for (int p = 0; p < proposers; ++p) {
            inserted += results[size_t(p)].at(hash).inserted;
            EXPECT_EQ(results[size_t(p)].at(hash).trial_id, results[0].at(hash).trial_id);
        }
        EXPECT_EQ(inserted, 1) << hash;
    }
    EXPECT_EQ(open_database(url)->counts(study).queued, functions);
}

TEST_P(Database, KilledWorkersTrialIsRequeuedAfterItsLease) {
    const std::string url = new_url();
    const double lease_seconds = 2;
    int64_t study = 0, trial_id = 0;
    {
        auto db = open_database(url);
        study = db->open_study("kill", "");
        trial_id = db->enqueue(study, trial_with_hash("dead")).trial_id;
    }
    const auto marker = dir / "claimed";
    const pid_t worker = fork_child([&] {
        auto db = open_database(url);
        if (!db->claim_next(study, "doomed", lease_seconds)) throw Error("nothing to claim");
        testkit::write_text(marker, "claimed");
        ::pause();  // "training" until SIGKILL
    });
    const auto started = std::chrono::steady_clock::now();
    while (!std::filesystem::exists(marker) && std::chrono::steady_clock::now() - started < std::chrono::seconds(30))
        sleep_seconds(0.01);
    ASSERT_TRUE(std::filesystem::exists(marker));
    ::kill(worker, SIGKILL);
    EXPECT_EQ(wait_exit(worker), -SIGKILL);

    auto db = open_database(url);
    // Still leased to the dead worker: nobody else may take it yet.
    EXPECT_FALSE(db->claim_next(study, "survivor", lease_seconds));
    EXPECT_EQ(db->trial(trial_id).status, TrialStatus::running);
    sleep_seconds(lease_seconds + 0.2);
    std::optional<Claim> retry = db->claim_next(study, "survivor", lease_seconds);
    ASSERT_TRUE(retry);
    EXPECT_EQ(retry->trial.id, trial_id);
    EXPECT_EQ(retry->trial.attempts, 2);
    EXPECT_EQ(retry->trial.worker, "survivor");
    // The dead worker's lease (were it only hung) no longer counts.
    const Lease stale{trial_id, "doomed", 1, 0};
    const std::string message = error_of([&] { db->complete(stale, {{"val_bpb", 1.0}}); });
    EXPECT_NE(message.find("worker doomed no longer holds it"), std::string::npos) << message;
    db->complete(retry->lease, {{"val_bpb", 1.5}});
    EXPECT_EQ(db->trial(trial_id).status, TrialStatus::done);
}

TEST_P(Database, RenewedLeasesHoldAndExhaustedOnesFail) {
    auto db = open_database(new_url());
    const int64_t study = db->open_study("leases", "");
    const int64_t held = db->enqueue(study, trial_with_hash("held")).trial_id;
    const int64_t hung = db->enqueue(study, trial_with_hash("hung")).trial_id;

    std::optional<Claim> holder = db->claim_next(study, "heartbeat", 0.2);
    ASSERT_TRUE(holder);
    EXPECT_EQ(holder->trial.id, held);
    db->renew_lease(holder->lease, 60);
    // The hung trial: claimed twice, each lease left to expire; with max_attempts = 2 the third
    // claim gives up on it instead of handing it out again.
    for (int attempt = 1; attempt <= 2; ++attempt) {
        sleep_seconds(0.25);
        std::optional<Claim> claim = db->claim_next(study, fmt::format("hangs-{}", attempt), 0.2, 2);
        ASSERT_TRUE(claim);
        EXPECT_EQ(claim->trial.id, hung);  // never the renewed one
        EXPECT_EQ(claim->trial.attempts, attempt);
    }
    sleep_seconds(0.25);
    EXPECT_FALSE(db->claim_next(study, "next", 0.2, 2));
    const Trial gave_up = db->trial(hung);
    EXPECT_EQ(gave_up.status, TrialStatus::failed);
    EXPECT_NE(gave_up.error.find("lease expired 2 times"), std::string::npos) << gave_up.error;
    EXPECT_NE(gave_up.error.find("hangs-2"), std::string::npos) << gave_up.error;
    db->complete(holder->lease, {});
    EXPECT_EQ(db->trial(held).status, TrialStatus::done);
}

TEST_P(Database, ReleasedTrialsAreClaimedAgainAtOnceAndStudiesAreListed) {
    auto db = open_database(new_url());
    const int64_t first = db->open_study("first", "a");
    const int64_t second = db->open_study("second", "b");
    const std::vector<StudyInfo> studies = db->studies();
    ASSERT_EQ(studies.size(), 2u);
    EXPECT_EQ(studies[0].id, first);
    EXPECT_EQ(studies[0].name, "first");
    EXPECT_EQ(studies[1].id, second);
    EXPECT_EQ(studies[1].name, "second");
    EXPECT_GE(studies[1].created_at, studies[0].created_at);

    const int64_t trial_id = db->enqueue(second, trial_with_hash("interrupted")).trial_id;
    std::optional<Claim> claim = db->claim_next(second, "stopped", 300);
    ASSERT_TRUE(claim);
    db->release(claim->lease);
    EXPECT_EQ(db->trial(trial_id).status, TrialStatus::queued);
    // The released lease is gone: its holder can neither complete nor release the trial again.
    EXPECT_NE(error_of([&] { db->complete(claim->lease, {}); }).find("no longer holds it"), std::string::npos);
    std::optional<Claim> again = db->claim_next(second, "resumer", 300);  // no waiting for the 300 s lease
    ASSERT_TRUE(again);
    EXPECT_EQ(again->trial.id, trial_id);
    EXPECT_EQ(again->trial.attempts, 1);  // the interrupted attempt does not count
    db->complete(again->lease, {{"val_bpb", 2.0}});
    EXPECT_EQ(db->trial(trial_id).status, TrialStatus::done);
}

// Two workers: trial 1 finishes before the baseline (trial 0), so it is scored when the baseline is done.
TEST_P(Database, FitnessIsScoredOnceTheBaselineIsDone) {
    auto db = open_database(new_url());
    const int64_t study = db->open_study("fitness", "c");
    const int64_t baseline = db->enqueue(study, trial_with_hash("baseline")).trial_id;
    const int64_t early = db->enqueue(study, trial_with_hash("early")).trial_id;
    const int64_t waiting = db->enqueue(study, trial_with_hash("waiting")).trial_id;
    EXPECT_NE(error_of([&] { db->record_final_metrics(waiting, {{"fitness", 1.0}}); }).find("no done trial"),
              std::string::npos);
    std::optional<Claim> first = db->claim_next(study, "a", 300), second = db->claim_next(study, "b", 300);
    ASSERT_TRUE(first && second);
    ASSERT_EQ(second->trial.id, early);
    RngStream rng(testkit::test_seed(), 77);
    const double base_bpb = 2 + rng.uniform(), base_mqar = 0.3 + 0.2 * rng.uniform();
    const double bpb = base_bpb * (0.9 + 0.2 * rng.uniform()), mqar = base_mqar * (0.8 + 0.4 * rng.uniform());
    db->complete(second->lease, {{"val_bpb", bpb}, {"mqar_accuracy", mqar}});
    score_fitness(*db, study);
    EXPECT_FALSE(db->trial(early).final_metrics.contains("fitness"));  // nothing to compare with yet
    db->complete(first->lease, {{"val_bpb", base_bpb}, {"mqar_accuracy", base_mqar}});
    score_fitness(*db, study);
    EXPECT_DOUBLE_EQ(db->trial(baseline).final_metrics.at("fitness"), 0.5);
    const double expected =
        (improvement_score(bpb, base_bpb, true) + improvement_score(mqar, base_mqar, false)) / 2;
    EXPECT_NEAR(db->trial(early).final_metrics.at("fitness"), expected, 1e-12);
    EXPECT_EQ(db->trial(early).final_metrics.at("val_bpb"), bpb);  // the other metrics stay
    EXPECT_FALSE(db->trial(waiting).final_metrics.contains("fitness"));
}

TEST_P(Database, NonFiniteValuesReadBackAsSqliteStoresThem) {
    auto db = open_database(new_url());
    const int64_t study = db->open_study("nan", "");
    const int64_t trial_id = db->enqueue(study, trial_with_hash("nan")).trial_id;
    std::optional<Claim> claim = db->claim_next(study, "w", 60);
    ASSERT_TRUE(claim);
    const double inf = std::numeric_limits<double>::infinity(), nan = std::numeric_limits<double>::quiet_NaN();
    db->record_proxies(trial_id, {{"grad_norm", inf}, {"snip", -inf}, {"synflow", nan}});
    db->complete(claim->lease, {{"val_bpb", nan}, {"tiny", 5e-324}, {"third", 1.0 / 3}});
    const Trial done = db->trial(trial_id);
    EXPECT_EQ(done.proxies.at("grad_norm"), inf);
    EXPECT_EQ(done.proxies.at("snip"), -inf);
    EXPECT_TRUE(std::isnan(done.proxies.at("synflow")));  // stored as NULL
    EXPECT_TRUE(std::isnan(done.final_metrics.at("val_bpb")));
    EXPECT_EQ(done.final_metrics.at("tiny"), 5e-324);
    EXPECT_EQ(done.final_metrics.at("third"), 1.0 / 3);
}

// Workers starting together on a fresh database: one creates the tables, the others wait and use them.
TEST_P(Database, WorkersOpeningAFreshDatabaseAtOnceAllSucceed) {
    const std::string url = new_url();
    const int workers = 4;
    std::vector<std::string> errors(workers);
    std::vector<std::thread> threads;
    for (int w = 0; w < workers; ++w)
        threads.emplace_back([&, w] {
            try {
                open_database(url)->open_study("fresh", "");
            } catch (const Error& e) {
                errors[size_t(w)] = e.what();
            }
        });
    for (std::thread& thread : threads) thread.join();
    for (const std::string& error : errors) EXPECT_EQ(error, "");
    EXPECT_EQ(open_database(url)->studies().size(), 1u);
}

TEST(SqliteDatabase, BadUrlsAndFilesAreClearErrors) {
    testkit::TempDir dir;
    const std::string missing = url_of(dir / "no-such-dir" / "search.db");
    std::string message = error_of([&] { open_database(missing); });
    EXPECT_NE(message.find(missing), std::string::npos) << message;
    EXPECT_NE(message.find("does not exist"), std::string::npos) << message;

    message = error_of([] { open_database("mysql://root:hunter2@localhost/search"); });
    EXPECT_NE(message.find("mysql://root:***@localhost/search: expected sqlite:///"), std::string::npos) << message;
    EXPECT_NE(message.find("postgresql://"), std::string::npos) << message;
    message = error_of([] { open_database("sqlite:///"); });
    EXPECT_NE(message.find("missing the file"), std::string::npos) << message;

    RngStream rng(testkit::test_seed(), 3);
    testkit::write_text(dir / "notes.db", fmt::format("not a database {}\n", rng.next_u64()));
    message = error_of([&] { open_database(url_of(dir / "notes.db")); });
    EXPECT_NE(message.find(url_of(dir / "notes.db")), std::string::npos) << message;
    EXPECT_NE(message.find("not a database"), std::string::npos) << message;
}

TEST(SqliteDatabase, ReadOnlyFileIsAClearError) {
    if (::geteuid() == 0) GTEST_SKIP() << "root writes to read-only files; run as a user to test this";
    testkit::TempDir dir;
    const std::string url = url_of(dir / "search.db");
    open_database(url)->open_study("s", "");
    std::filesystem::permissions(dir / "search.db", std::filesystem::perms::owner_read | std::filesystem::perms::group_read);
    const std::string message = error_of([&] { open_database(url); });
    EXPECT_NE(message.find(url + ": the database file"), std::string::npos) << message;
    EXPECT_NE(message.find("is read-only"), std::string::npos) << message;
}

TEST(PostgresDatabase, PasswordsAreMaskedInMessages) {
    EXPECT_EQ(url_without_password("postgresql://search:s3cret@db.lab:5432/runs"),
              "postgresql://search:***@db.lab:5432/runs");
    EXPECT_EQ(url_without_password("postgres://db.lab/runs?user=search&password=s3cret&sslmode=require"),
              "postgres://db.lab/runs?user=search&password=***&sslmode=require");
    EXPECT_EQ(url_without_password("postgresql://search@db.lab/runs"), "postgresql://search@db.lab/runs");
    // Nothing listens on the port: an error naming the URL (without its password) and what to check.
    const std::string url = fmt::format("postgresql://search:s3cret@127.0.0.1:{}/runs", testkit::free_local_port());
    const std::string message = error_of([&] { open_database(url); });
    EXPECT_NE(message.find(url_without_password(url) + ": cannot connect to the database"), std::string::npos)
        << message;
    EXPECT_NE(message.find("check that the server runs"), std::string::npos) << message;
    EXPECT_EQ(message.find("s3cret"), std::string::npos) << message;
}

// Failures only a server can have: unknown database or user, read-only database or user, a schema
// from another linarch.
class PostgresServerDatabase : public testing::Test {
protected:
    void SetUp() override {
        std::string why_not;
        server = testkit::PostgresServer::shared(why_not);
        if (server == nullptr) GTEST_SKIP() << why_not;
    }
    testkit::PostgresServer* server = nullptr;
};

TEST_F(PostgresServerDatabase, UnknownDatabaseOrUserIsAClearError) {
    const std::string no_database = server->url("no_such_database");
    std::string message = error_of([&] { open_database(no_database); });
    EXPECT_NE(message.find(no_database + ": cannot connect"), std::string::npos) << message;
    EXPECT_NE(message.find("\"no_such_database\" does not exist"), std::string::npos) << message;
    const std::string no_user = server->url(server->create_database(), "nobody");
    message = error_of([&] { open_database(no_user); });
    EXPECT_NE(message.find(no_user + ": cannot connect"), std::string::npos) << message;
    EXPECT_NE(message.find("\"nobody\" does not exist"), std::string::npos) << message;
}

TEST_F(PostgresServerDatabase, UrlShowsNoPassword) {
    const std::string url = server->url(server->create_database(), "postgres:s3cret");  // trust: accepted
    EXPECT_EQ(open_database(url)->url(), url_without_password(url));
}

TEST_F(PostgresServerDatabase, ReadOnlyDatabaseOrUserIsAClearError) {
    const std::string database = server->create_database();
    open_database(server->url(database))->open_study("s", "");

    server->run_sql(database, "CREATE ROLE reader LOGIN");
    server->run_sql(database, "GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader");
    std::string message = error_of([&] { open_database(server->url(database, "reader")); });
    EXPECT_NE(message.find(server->url(database, "reader") + ": user reader may not write table studies"),
              std::string::npos) << message;

    server->run_sql("postgres", fmt::format("ALTER DATABASE {} SET default_transaction_read_only = on", database));
    message = error_of([&] { open_database(server->url(database)); });
    EXPECT_NE(message.find(server->url(database) + ": the database is read-only"), std::string::npos) << message;
}

TEST_F(PostgresServerDatabase, OtherSchemaVersionIsRefused) {
    const std::string database = server->create_database();
    open_database(server->url(database));
    server->run_sql(database, "UPDATE schema_version SET version = 99");
    const std::string message = error_of([&] { open_database(server->url(database)); });
    EXPECT_NE(message.find("schema version 99; this linarch reads version 1"), std::string::npos) << message;
}
