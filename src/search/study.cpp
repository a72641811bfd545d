#include "search/study.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <limits>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "core/rng.hpp"
#include "core/spec.hpp"
#include "search/database.hpp"
#include "search/functional_hash.hpp"
#include "search/proposer.hpp"
#include "search/search_space.hpp"
#include "train/trainer.hpp"

namespace linarch {

namespace {
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr int kMaxDuplicates = 100;

std::string default_worker() {
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    return fmt::format("{}:{}", host, ::getpid());
}

double metric(const Trial& trial, const char* name) {
    const auto it = trial.final_metrics.find(name);
    return it == trial.final_metrics.end() ? kNaN : it->second;
}

// The study's baseline: its first trial (the base spec), once done.
const Trial* baseline_of(const std::vector<Trial>& trials) {
    return !trials.empty() && trials.front().status == TrialStatus::done ? &trials.front() : nullptr;
}

// Mean σ-score of the components both trials have; NaN without a baseline or a shared component.
double fitness(const Trial& trial, const Trial* baseline) {
    if (baseline == nullptr || trial.status != TrialStatus::done) return kNaN;
    double sum = 0;
    int parts = 0;
    for (const auto& [name, lower_is_better] : {std::pair{"val_bpb", true}, std::pair{"mqar_accuracy", false}}) {
        const double value = metric(trial, name), reference = metric(*baseline, name);
        if (std::isnan(value) || std::isnan(reference)) continue;
        sum += improvement_score(value, reference, lower_is_better);
        ++parts;
    }
    return parts == 0 ? kNaN : sum / parts;
}

// Renews a running trial's lease every third of its length from a connection of its own, while the
// trial trains: a worker that dies stops renewing, and its trial is re-queued once the lease runs out.
class LeaseKeeper {
public:
    LeaseKeeper(const std::string& url, const Lease& lease, double lease_seconds)
        : thread_([this, url, lease, lease_seconds] { keep(url, lease, lease_seconds); }) {}
    ~LeaseKeeper() {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_all();
        thread_.join();
    }
    LeaseKeeper(const LeaseKeeper&) = delete;
    LeaseKeeper& operator=(const LeaseKeeper&) = delete;

private:
    void keep(const std::string& url, Lease lease, double lease_seconds) {
        std::unique_ptr<ExperimentDatabase> db;
        std::unique_lock lock(mutex_);
        const auto period = std::chrono::duration<double>(lease_seconds / 3);
        while (!wake_.wait_for(lock, period, [&] { return stopping_; })) {
            try {
                if (!db) db = open_database(url);
                db->renew_lease(lease, lease_seconds);
            } catch (const std::exception&) {
                // The lease is lost (re-queued after a stall) or the database is unreachable: the
                // trial's completion will say so; nothing to do here.
                return;
            }
        }
    }

    std::mutex mutex_;  // guards stopping_
    std::condition_variable wake_;
    bool stopping_ = false;
    std::thread thread_;  // last: starts after the members it uses
};

class Searcher {
public:
    explicit Searcher(const SearchOptions& options)
        : options_(options),
          space_(SearchSpace::load(options.space)),
          db_(open_database(options.database)),
          worker_(options.worker.empty() ? default_worker() : options.worker),
          rng_(options.seed, stream_id("search") + options.worker_index) {
        LINARCH_CHECK(options.steps >= 1, "search: --steps must be ≥ 1, got {}", options.steps);
        LINARCH_CHECK(options.trials >= 1, "search: --trials must be ≥ 1, got {}", options.trials);
        const std::string name =
            options.study.empty() ? std::filesystem::path(options.space).stem().string() : options.study;
        study_ = db_->open_study(name, read_file(options.space, "search space"));
    }

    SearchProgress run(const std::function<void(const SearchProgress&)>& on_progress) {
        const auto start = std::chrono::steady_clock::now();
        const auto out_of_time = [&] {
            return options_.minutes > 0 &&
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() >
                       options_.minutes * 60;
        };
        SearchProgress progress = summarise();
        while (progress.done + progress.failed < options_.trials && !out_of_time()) {
            const bool proposed = db_->counts(study_).queued > 0 || propose();
            const auto claim = db_->claim_next(study_, worker_, options_.lease_seconds);
            if (claim) run_trial(*claim);
            progress = summarise();
            if (on_progress) on_progress(progress);
            if (!proposed && !claim) {
                progress.exhausted = true;
                break;
            }
        }
        return progress;
    }

private:
    // The candidate spec as trials run it: every trial trains options.steps steps.
    Spec runnable(Spec spec) const {
        spec.run.steps = options_.steps;
        return spec;
    }

    // Enqueues one new function; false when kMaxDuplicates proposals in a row were functions the
    // study already has (the space, or the part evolution reaches, is exhausted).
    bool propose() {
        for (int attempt = 0; attempt < kMaxDuplicates; ++attempt) {
            // Read afresh: another worker may have added trials (the baseline, say) meanwhile.
            const std::vector<Trial> trials = db_->trials(study_);
            Candidate candidate;
            std::vector<int64_t> parents;
            if (trials.empty()) {
                candidate.spec = space_.base();
                candidate.assignment = space_.assignment_of(candidate.spec);
            } else if (static_cast<int64_t>(trials.size()) < options_.initial_random || !any_done(trials)) {
                candidate = random_candidate(space_, rng_);
            } else {
                const Trial* baseline = baseline_of(trials);
                std::vector<double> scores;
                std::vector<const Trial*> finished;
                for (const Trial& t : trials)
                    if (t.status == TrialStatus::done || t.status == TrialStatus::failed) {
                        scores.push_back(fitness(t, baseline));
                        finished.push_back(&t);
                    }
                const Trial& parent = *finished[aging_evolution_parent(scores, options_.population,
                                                                       options_.tournament, rng_)];
                candidate = mutate(space_, space_.assignment_of(parse_spec(parent.spec_toml, "trial spec")), rng_);
                parents.push_back(parent.id);
            }
            const Spec spec = runnable(candidate.spec);
            const EnqueueResult result =
                db_->enqueue(study_, {spec_to_toml(spec), hash_hex(functional_hash(spec)), parents});
            if (result.inserted) return true;
            ++duplicates_;
        }
        return false;
    }

    static bool any_done(const std::vector<Trial>& trials) {
        for (const Trial& t : trials)
            if (t.status == TrialStatus::done) return true;
        return false;
    }

    void run_trial(const Claim& claim) {
        const Trial& trial = claim.trial;
        std::map<std::string, double> metrics;
        const LeaseKeeper keeper(options_.database, claim.lease, options_.lease_seconds);
        try {
            const Spec spec = parse_spec(trial.spec_toml, fmt::format("trial {}", trial.number));
            const auto dir = options_.runs_dir / fmt::format("trial-{:05d}", trial.number);
            const ModelSize size = model_size(spec.model);
            metrics["parameters"] = double(size.parameters);
            metrics["train_flops_per_token"] = size.train_flops_per_token;
            metrics["val_bpb"] = train_resuming(spec, dir).val_bpb;
            if (options_.mqar_steps > 0) {
                Spec mqar = spec;
                mqar.data.task = "mqar";
                mqar.data.seq_len = 64;
                mqar.data.task_vocab_size = std::min<int64_t>(spec.model.vocab_size, 256);
                mqar.data.num_kv_pairs = 8;
                mqar.run.steps = options_.mqar_steps;
                check_synthetic_task(mqar.data);
                metrics["mqar_accuracy"] = train_resuming(mqar, dir / "mqar").val_accuracy;
            }
        } catch (const SearchInterrupted&) {
            throw;  // not the trial's fault: it stays claimed and is re-queued when its lease runs out
        } catch (const std::exception& e) {
            db_->fail_trial(claim.lease, e.what());
            return;
        }
        const std::vector<Trial> trials = db_->trials(study_);
        Trial finished = trial;
        finished.status = TrialStatus::done;
        finished.final_metrics = metrics;
        // The baseline scores itself 0.5 once its own metrics are in.
        const Trial* baseline = trial.number == 0 ? &finished : baseline_of(trials);
        if (const double f = fitness(finished, baseline); !std::isnan(f)) metrics["fitness"] = f;
        db_->complete(claim.lease, metrics);
    }

    // Trains into dir, continuing there when a killed attempt left a checkpoint.
    static TrainResult train_resuming(const Spec& spec, const std::filesystem::path& dir) {
        TrainOptions options;
        options.out_dir = dir;
        options.resume = std::filesystem::exists(dir / "checkpoints" / "latest");
        const TrainResult result = train(spec, options);
        if (result.interrupted)
            throw SearchInterrupted(fmt::format("interrupted at step {} of {} (checkpoint saved)", result.steps_done,
                                                dir.string()));
        return result;
    }

    SearchProgress summarise() const {
        const StudyCounts counts = db_->counts(study_);
        SearchProgress p;
        p.done = counts.done;
        p.failed = counts.failed;
        p.running = counts.running;
        p.queued = counts.queued;
        p.duplicates = duplicates_;
        const std::vector<Trial> trials = db_->trials(study_);
        const Trial* baseline = baseline_of(trials);
        for (const Trial& t : trials) {
            const double f = fitness(t, baseline);
            if (!std::isnan(f) && (std::isnan(p.best_fitness) || f > p.best_fitness)) {
                p.best_fitness = f;
                p.best_trial = fmt::format("trial {} (val_bpb {:.4f})", t.number, metric(t, "val_bpb"));
            }
        }
        return p;
    }

    SearchOptions options_;
    SearchSpace space_;
    std::unique_ptr<ExperimentDatabase> db_;
    std::string worker_;
    RngStream rng_;
    int64_t study_ = 0;
    int64_t duplicates_ = 0;
};
}  // namespace

double improvement_score(double value, double baseline, bool lower_is_better) {
    const double change = lower_is_better ? baseline - value : value - baseline;
    const double relative = std::clamp(change / std::max(0.1 * std::abs(baseline), 1e-12), -1.0, 1.0);
    return 1.0 / (1.0 + std::exp(-6.0 * relative));
}

SearchProgress run_search(const SearchOptions& options, const std::function<void(const SearchProgress&)>& on_progress) {
    Searcher searcher(options);
    return searcher.run(on_progress);
}

}  // namespace linarch
