// The experiment database of a search: studies, their trials (spec, functional hash, status,
// lineage, worker, host, timings, error), intermediate values, proxies and final metrics.
//
// Workers coordinate only through it (no master process, as in Optuna's RDB storage): each claims
// the next queued trial atomically with a lease, renews the lease while it runs, and completes or
// fails the trial in one transaction. A worker that dies (SIGKILL, lost machine) stops renewing;
// once its lease expires the next claim re-queues the trial, and a trial that has exhausted
// `max_attempts` leases is marked failed instead (it likely kills its workers).
//
// The URL picks the back end: `sqlite:///relative/file.db` or `sqlite:////absolute/file.db`
// (SQLAlchemy's and Optuna's form: the path is everything after "sqlite:///"), or
// `postgresql://user:password@host:port/dbname` (any libpq URI) for workers on many machines. One object
// is one connection: give each thread its own.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace linarch {

enum class TrialStatus { queued, running, done, failed };
const char* status_name(TrialStatus status);  // "queued", "running", "done", "failed"

struct NewTrial {
    std::string spec_toml;             // spec_to_toml of the candidate: what `linarch train` runs
    std::string functional_hash;       // hash_hex(functional_hash(spec)): one trial per function
    std::vector<int64_t> parent_ids;   // lineage: the trials it was mutated or crossed from
};

struct Trial {
    int64_t id = 0, study_id = 0;
    int64_t number = 0;  // 0, 1, 2... within its study, in enqueue order
    std::string spec_toml, functional_hash;
    TrialStatus status = TrialStatus::queued;
    std::vector<int64_t> parent_ids;
    std::string worker, host;  // of the latest claim; empty until claimed
    int64_t attempts = 0;      // claims so far (a re-queued trial is claimed again)
    // Unix seconds; started_at is the latest claim's, finished_at set when done or failed.
    double created_at = 0;
    std::optional<double> started_at, finished_at, lease_expires_at;
    std::string error;  // why it failed
    std::map<std::string, double> proxies, final_metrics;
};

// Proof that a worker holds a running trial: completing, failing, reporting and renewing check it,
// so a worker whose trial was re-queued and claimed again cannot overwrite the new run's results.
struct Lease {
    int64_t trial_id = 0;
    std::string worker;
    int64_t attempt = 0;  // Trial::attempts at the claim
    double expires_at = 0;
};

struct Claim {
    Trial trial;
    Lease lease;
};

struct IntermediateValue {
    int64_t step = 0;
    nlohmann::json metrics;  // {"train_loss": ..., "val_bpb": ...}
};

struct StudyCounts {
    int64_t queued = 0, running = 0, done = 0, failed = 0;
};

struct StudyInfo {
    int64_t id = 0;
    std::string name;
    double created_at = 0;  // Unix seconds
};

struct EnqueueResult {
    int64_t trial_id = 0;
    bool inserted = false;  // false: a trial with the same functional hash existed; trial_id is that one
};

// The interface every back end implements (SQLite and PostgreSQL, with the same schema).
// Errors are linarch::Error naming the database URL and the operation.
class ExperimentDatabase {
public:
    virtual ~ExperimentDatabase() = default;
    virtual const std::string& url() const = 0;

    // The study named `name`; created with `config` (the search-space text) when new. Reopening an
    // existing study returns it unchanged, which is what resuming a search does.
    virtual int64_t open_study(const std::string& name, const std::string& config) = 0;
    virtual std::string study_config(int64_t study) = 0;
    virtual std::vector<StudyInfo> studies() = 0;  // oldest first

    // Adds a queued trial, unless the study already has one with the same functional hash (checked
    // atomically: two proposers racing on one function make one trial).
    virtual EnqueueResult enqueue(int64_t study, const NewTrial& trial) = 0;
    // Claims the oldest queued trial for `worker`, first re-queueing trials whose lease expired (or
    // failing those already claimed max_attempts times). Nothing when no trial is queued.
    virtual std::optional<Claim> claim_next(int64_t study, const std::string& worker, double lease_seconds,
                                            int64_t max_attempts = 3) = 0;
    // Extends a held lease to now + lease_seconds (a worker's heartbeat).
    virtual void renew_lease(Lease& lease, double lease_seconds) = 0;
    virtual void report_intermediate(const Lease& lease, int64_t step, const nlohmann::json& metrics) = 0;
    // Zero-cost proxies are measured before training, so they need no lease; re-recording replaces.
    virtual void record_proxies(int64_t trial_id, const std::map<std::string, double>& proxies) = 0;
    // done with its final metrics, or failed with its error: each one transaction.
    virtual void complete(const Lease& lease, const std::map<std::string, double>& final_metrics) = 0;
    virtual void fail_trial(const Lease& lease, const std::string& error) = 0;
    // Gives a held trial back to the queue at once (a worker stopped by Ctrl-C), so the next claim
    // resumes it without waiting for the lease to expire; the interrupted attempt does not count
    // towards max_attempts.
    virtual void release(const Lease& lease) = 0;
    // Metrics derived after a trial is done (its fitness, once the baseline it is scored against is in):
    // added to or replacing its final metrics; needs no lease. The trial must be done.
    virtual void record_final_metrics(int64_t trial_id, const std::map<std::string, double>& metrics) = 0;

    virtual Trial trial(int64_t trial_id) = 0;
    virtual std::vector<Trial> trials(int64_t study) = 0;  // in enqueue order
    virtual std::vector<IntermediateValue> intermediate_values(int64_t trial_id) = 0;  // by step
    virtual StudyCounts counts(int64_t study) = 0;
};

// Opens (creating if needed) the database a URL names. An unknown scheme, a missing directory, a
// read-only file or an unreadable database is an Error naming the URL and what to do.
std::unique_ptr<ExperimentDatabase> open_database(const std::string& url);

}  // namespace linarch
