#include "search/study.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <ranges>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "core/rng.hpp"
#include "core/spec.hpp"
#include "search/database.hpp"
#include "search/external_proposer.hpp"
#include "search/functional_hash.hpp"
#include "search/proposer.hpp"
#include "search/search_space.hpp"
#include "search/zero_cost_proxies.hpp"
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
    if (baseline == nullptr || trial.status != TrialStatus::done || trial.final_metrics.contains("pruned_at_step"))
        return kNaN;
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

void check_search_options(const SearchOptions& options) {
    LINARCH_CHECK(options.steps >= 1, "search: --steps must be ≥ 1, got {}", options.steps);
    LINARCH_CHECK(options.trials >= 1, "search: --trials must be ≥ 1, got {}", options.trials);
    LINARCH_CHECK(options.min_steps >= 0 && options.min_steps < std::max<int64_t>(options.steps, 1),
                  "search: --min-steps must be in [0, --steps = {}), got {}", options.steps, options.min_steps);
    LINARCH_CHECK(options.reduction_factor >= 2, "search: --reduction-factor must be ≥ 2, got {}",
                  options.reduction_factor);
    LINARCH_CHECK(options.screen_pool >= 1, "search: --screen-pool must be ≥ 1, got {}", options.screen_pool);
    const std::vector<std::string>& proxies = zero_cost_proxy_names();
    LINARCH_CHECK(std::ranges::find(proxies, options.screen_proxy) != proxies.end(),
                  "search: --screen-proxy {}: not a proxy; expected one of {}", options.screen_proxy,
                  fmt::join(proxies, ", "));
    LINARCH_CHECK(options.target_parameters >= 0, "search: --target-parameters must be ≥ 0, got {}",
                  options.target_parameters);
    LINARCH_CHECK(options.mqar_steps >= 0, "search: --mqar-steps must be ≥ 0, got {}", options.mqar_steps);

    if (options.mqar_steps > 0) {
        DataSpec mqar;
        mqar.task = "mqar";
        mqar.seq_len = options.mqar_seq_len;
        mqar.num_kv_pairs = options.mqar_kv_pairs;
        mqar.task_vocab_size = options.mqar_vocab;
        try {
            check_synthetic_task(mqar);
        } catch (const std::exception& e) {
            throw Error(fmt::format("search: --mqar-seq-len {} --mqar-kv-pairs {} --mqar-vocab {}: {}",
                                    options.mqar_seq_len, options.mqar_kv_pairs, options.mqar_vocab, e.what()));
        }
    }
}

class Searcher {
public:
    explicit Searcher(const SearchOptions& options)
        : options_(options),
          space_(SearchSpace::load(options.space)),
          db_(open_database(options.database)),
          worker_(options.worker.empty() ? default_worker() : options.worker),
          rng_(options.seed, stream_id("search") + options.worker_index) {
        check_search_options(options);
        const std::string name = study_name(options);
        study_name_ = name;
        study_ = db_->open_study(name, read_file(options.space, "search space"));
    }

    SearchProgress run(const std::function<void(const SearchProgress&)>& on_progress) {
        const auto start = std::chrono::steady_clock::now();
        const auto out_of_time = [&] {
            return options_.minutes > 0 &&
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() >
                       options_.minutes * 60;
        };
        score_fitness(*db_, study_);  // a study resumed from a run that stopped between the two completions
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
    // The candidate spec as trials run it: every trial trains options.steps steps, at the target size
    // when there is one.
    Spec runnable(Spec spec) const {
        spec.run.steps = options_.steps;
        if (options_.target_parameters > 0)
            spec = scale_to_parameters(spec, options_.target_parameters, ScaleAxis::d_model).spec;
        return spec;
    }

    const Batch& proxy_inputs() {
        if (proxy_batch_.inputs.empty()) proxy_batch_ = proxy_batch(space_.base());
        return proxy_batch_;
    }

    // Enqueues one new function (with its zero-cost proxies); false when kMaxDuplicates proposals in
    // a row were functions the study already has (the space, or the part evolution reaches, is exhausted).
    bool propose() {
        for (int attempt = 0; attempt < kMaxDuplicates; ++attempt) {
            // Read afresh: another worker may have added trials (the baseline, say) meanwhile.
            const std::vector<Trial> trials = db_->trials(study_);
            if (trials.empty()) {
                // The baseline, then the hand-picked candidates.
                bool any = enqueue(space_.base(), {});
                for (const Assignment& picked : space_.enqueued()) any = enqueue(space_.realise(picked), {}) || any;
                if (any) return true;
                continue;
            }
            const bool evolving =
                static_cast<int64_t>(trials.size()) >= options_.initial_random && any_done(trials);
            if (evolving && !options_.proposer_command.empty()) {
                if (propose_externally(trials)) return true;
                continue;
            }
            // Screening: the best of screen_pool new functions by the screen proxy.
            std::optional<Screened> best;
            for (int64_t drawn = 0; drawn < options_.screen_pool; ++drawn) {
                Screened next = draw(trials, evolving);
                if (known(trials, next.hash)) {
                    ++duplicates_;
                    continue;
                }
                if (options_.screen_pool > 1) {
                    next.proxies = zero_cost_proxies(next.spec, proxy_inputs());
                    next.score = next.proxies.at(options_.screen_proxy);
                    if (best && !(next.score > best->score)) continue;
                }
                best = std::move(next);
                if (options_.screen_pool == 1) break;
            }
            if (best && enqueue(best->spec, best->parents, &best->proxies)) return true;
        }
        return false;
    }

    struct Screened {
        Spec spec;
        std::string hash;
        std::vector<int64_t> parents;
        std::map<std::string, double> proxies;
        double score = kNaN;
    };

    // A random candidate, or regularised evolution's mutation of a tournament parent.
    Screened draw(const std::vector<Trial>& trials, bool evolving) {
        Screened out;
        Candidate candidate;
        if (!evolving) {
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
            const Trial& parent =
                *finished[aging_evolution_parent(scores, options_.population, options_.tournament, rng_)];
            candidate = mutate(space_, space_.assignment_of(parse_spec(parent.spec_toml, "trial spec")), rng_);
            out.parents.push_back(parent.id);
        }
        out.spec = runnable(candidate.spec);
        out.hash = hash_hex(functional_hash(out.spec));
        return out;
    }

    static bool known(const std::vector<Trial>& trials, const std::string& hash) {
        for (const Trial& t : trials)
            if (t.functional_hash == hash) return true;
        return false;
    }

    // Enqueues the runnable form of `spec` with its proxies (measured here unless given); false for
    // a function the study already has.
    bool enqueue(const Spec& candidate, const std::vector<int64_t>& parents,
                 const std::map<std::string, double>* proxies = nullptr) {
        const Spec spec = runnable(candidate);
        const EnqueueResult result = db_->enqueue(study_, {spec_to_toml(spec), hash_hex(functional_hash(spec)), parents});
        if (!result.inserted) {
            ++duplicates_;
            return false;
        }
        try {
            db_->record_proxies(result.trial_id, proxies != nullptr && !proxies->empty()
                                                     ? *proxies
                                                     : zero_cost_proxies(spec, proxy_inputs()));
        } catch (const Error&) {
            // A model whose initial loss is not finite: no proxies; its training will fail and say why.
        }
        return true;
    }

    // One round of the external proposer: every new candidate it writes is enqueued.
    bool propose_externally(const std::vector<Trial>& trials) {
        const std::string input = proposer_input(study_name_, space_, trials, 1).dump();
        const ProposerOutput output = parse_proposer_output(run_proposer_command(options_.proposer_command, input), space_);
        for (const std::string& reason : output.rejected)
            fmt::print(stderr, "search: external proposer: skipped {}\n", reason);
        LINARCH_CHECK(!output.candidates.empty() || !output.rejected.empty(),
                      "search: external proposer \"{}\" wrote no candidate", options_.proposer_command);
        std::map<int64_t, int64_t> id_of;
        for (const Trial& t : trials) id_of[t.number] = t.id;
        bool any = false;
        for (const ProposedCandidate& candidate : output.candidates) {
            std::vector<int64_t> parents;
            for (int64_t number : candidate.parent_numbers) {
                if (const auto it = id_of.find(number); it != id_of.end()) parents.push_back(it->second);
                else fmt::print(stderr, "search: external proposer: parent trial {} does not exist; ignored\n", number);
            }
            any = enqueue(candidate.spec, parents) || any;
        }
        return any;
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
            const TrainResult corpus = train_resuming(spec, dir, validations(claim));
            metrics["val_bpb"] = corpus.val_bpb;
            metrics["train_tokens_per_second"] = corpus.tokens_per_second;
            if (corpus.stopped_early) {
                metrics["pruned_at_step"] = double(corpus.steps_done);
                db_->complete(claim.lease, metrics);
                return;
            }
            if (options_.mqar_steps > 0) {
                Spec mqar = spec;
                mqar.data.task = "mqar";
                mqar.data.seq_len = options_.mqar_seq_len;
                mqar.data.task_vocab_size = std::min(spec.model.vocab_size, options_.mqar_vocab);
                mqar.data.num_kv_pairs = options_.mqar_kv_pairs;
                mqar.run.steps = options_.mqar_steps;
                check_synthetic_task(mqar.data);
                TrainOptions on_device;
                on_device.device = options_.device;
                metrics["mqar_accuracy"] = train_resuming(mqar, dir / "mqar", on_device).val_accuracy;
            }
        } catch (const SearchInterrupted&) {
            db_->release(claim.lease);  // not the trial's fault: the next run resumes it from its checkpoint
            throw;
        } catch (const std::exception& e) {
            db_->fail_trial(claim.lease, e.what());
            return;
        }
        db_->complete(claim.lease, metrics);
        score_fitness(*db_, study_);
    }

    // The corpus run's validations: learning-curve points reported as intermediate values, and the
    // rungs where successive halving decides whether the trial goes on.
    TrainOptions validations(const Claim& claim) {
        TrainOptions options;
        options.device = options_.device;
        const int64_t steps = options_.steps;
        const std::vector<int64_t> rungs = rung_steps(options_.min_steps, options_.reduction_factor, steps);
        options.validate_at = rungs;
        for (int64_t quarter = 1; quarter <= 3; ++quarter)
            if (const int64_t step = steps * quarter / 4; step > 0) options.validate_at.push_back(step);
        options.on_validation = [this, claim, rungs](const ValidationPoint& point) {
            nlohmann::json values = {{"train_loss", point.train_loss}, {"val_loss", point.val_loss}};
            if (!std::isnan(point.val_bpb)) values["val_bpb"] = point.val_bpb;
            db_->report_intermediate(claim.lease, point.step, values);
            if (std::ranges::find(rungs, point.step) == rungs.end()) return true;
            std::vector<double> rung_values;
            for (const Trial& t : db_->trials(study_))
                for (const IntermediateValue& v : db_->intermediate_values(t.id))
                    if (v.step == point.step && v.metrics.contains("val_bpb") && v.metrics["val_bpb"].is_number())
                        rung_values.push_back(v.metrics["val_bpb"].get<double>());
            return promoted_at_rung(point.val_bpb, rung_values, options_.reduction_factor);
        };
        return options;
    }

    // Trains into dir, continuing there when a killed attempt left a checkpoint.
    static TrainResult train_resuming(const Spec& spec, const std::filesystem::path& dir, TrainOptions options) {
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
            p.pruned += t.final_metrics.contains("pruned_at_step");
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
    std::string study_name_;
    Batch proxy_batch_;  // the base spec's, built at the first proposal
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

void check_search(const SearchOptions& options) {
    check_search_options(options);
    SearchSpace::load(options.space);
    open_database(options.database);
}

std::string study_name(const SearchOptions& options) {
    return options.study.empty() ? std::filesystem::path(options.space).stem().string() : options.study;
}

void score_fitness(ExperimentDatabase& db, int64_t study) {
    const std::vector<Trial> trials = db.trials(study);
    const Trial* baseline = baseline_of(trials);
    for (const Trial& t : trials)
        if (!t.final_metrics.contains("fitness"))
            if (const double f = fitness(t, baseline); !std::isnan(f)) db.record_final_metrics(t.id, {{"fitness", f}});
}

bool promoted_at_rung(double value, std::vector<double> rung_values, int64_t reduction_factor) {
    LINARCH_CHECK(reduction_factor >= 2, "successive halving: reduction factor {} < 2", reduction_factor);
    if (std::isnan(value)) return false;
    std::erase_if(rung_values, [](double v) { return std::isnan(v); });
    std::ranges::sort(rung_values);
    if (rung_values.empty()) return true;
    const size_t kept = std::max<size_t>(rung_values.size() / size_t(reduction_factor), 1);
    return value <= rung_values[kept - 1];
}

std::vector<int64_t> rung_steps(int64_t min_steps, int64_t reduction_factor, int64_t steps) {
    std::vector<int64_t> rungs;
    if (min_steps <= 0) return rungs;
    for (int64_t r = min_steps; r < steps; r *= reduction_factor) rungs.push_back(r);
    return rungs;
}

SearchProgress run_search(const SearchOptions& options, const std::function<void(const SearchProgress&)>& on_progress) {
    Searcher searcher(options);
    return searcher.run(on_progress);
}

}  // namespace linarch
