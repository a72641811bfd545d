// The search loop of `linarch search` (mission/discovery.md): one worker that proposes candidates,
// skips functional duplicates, trains the survivors and records everything in the experiment
// database, so that the same command continues a study and several workers share one.
//
// Each round: when no trial is queued, the worker proposes one — the base spec itself first (the
// named baseline every fitness is measured against), then random candidates until the study has
// `initial_random` trials, then regularised evolution (a tournament parent from the newest
// `population` finished trials, mutated) — and enqueues it under its functional hash (a duplicate
// is counted and skipped). Then it claims the oldest queued trial, trains it for `steps` steps on
// the spec's corpus (and, with `mqar_steps` > 0, a copy of it on MQAR), and completes it with:
//   val_bpb        bits per byte of the corpus's validation split
//   mqar_accuracy  held-out MQAR accuracy (when trained on MQAR)
//   parameters, train_flops_per_token
//   fitness        ASI-Arch's quantitative score (arXiv 2507.18074): the mean over the components
//                  of improvement_score against the baseline trial (below), 0.5 = as good as the
//                  baseline; absent until the baseline is done. (ASI-Arch adds an LLM judge.)
// A trial whose training fails (a NaN loss, a bad spec) is recorded as failed and the study goes on.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>

namespace linarch {

struct SearchOptions {
    std::string space;                 // search-space file (search_space.hpp)
    std::string database;              // sqlite:///file.db
    std::string study;                 // study name; default: the space file's stem
    std::filesystem::path runs_dir = "runs/search";  // trial-NNNNN/ run directories
    int64_t trials = 8;                // stop once the study has this many finished (done or failed) trials
    double minutes = 0;                // also stop after this much wall time (0: no limit)
    int64_t steps = 100;               // training steps per trial (overrides run.steps)
    int64_t mqar_steps = 0;            // > 0: also train each candidate on MQAR for this many steps
    int64_t initial_random = 4;        // trials (the baseline included) before evolution starts
    int64_t population = 8, tournament = 3;
    uint64_t seed = 1;
    std::string worker = "";           // default: host:pid
    uint64_t worker_index = 0;         // workers of one search draw from streams seed + index
    double lease_seconds = 300;        // renewed every third of it while a trial runs
};

struct SearchProgress {
    int64_t done = 0, failed = 0, running = 0, queued = 0, duplicates = 0;
    double best_fitness = std::numeric_limits<double>::quiet_NaN();  // NaN when none yet
    std::string best_trial;  // "trial 3 (val_bpb 1.92)"
    bool exhausted = false;  // stopped early: every proposal was a function the study already has
};

// Thrown by run_search when Ctrl-C stopped a trial's training: its checkpoint is saved and the trial
// stays claimed; once its lease runs out, the next search run re-queues it and resumes from there.
class SearchInterrupted : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Runs the loop until the study has options.trials finished trials, the time is up or the space is
// exhausted; `on_progress` is called after each round. Returns the final counts.
SearchProgress run_search(const SearchOptions& options,
                          const std::function<void(const SearchProgress&)>& on_progress = {});

// ASI-Arch's score of one component (its released code; mission/discovery.md §1.3): the change over
// the baseline relative to 10% of it, positive when better, clamped to [−1, 1], then σ(6 · that).
// 0.5: as good as the baseline; only the range ±10% matters.
double improvement_score(double value, double baseline, bool lower_is_better);

}  // namespace linarch
