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
//
// Every enqueued candidate also gets its zero-cost proxies (zero_cost_proxies.hpp) recorded, from the
// base spec's proxy batch; with screen_pool > 1 each proposal is the best of that many new candidates
// by the screen_proxy. Trials report learning-curve points (intermediate values: train_loss, val_loss,
// val_bpb at a quarter, half and three quarters of their steps and at the end). With min_steps > 0 the
// study is multi-fidelity: trials are validated at the rungs min_steps · η^k (η = reduction_factor)
// and continue past a rung only while successive halving promotes them (promoted_at_rung); a stopped
// trial is done with its metrics at that rung, `pruned_at_step`, and no fitness.
// With proposer_command, evolution's proposals come from that program instead (external_proposer.hpp).
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/allocator.hpp"

namespace linarch {

class ExperimentDatabase;

struct SearchOptions {
    std::string space;                 // search-space file (search_space.hpp)
    std::string database;              // sqlite:///file.db
    std::string study;                 // study name; default: the space file's stem
    std::filesystem::path runs_dir = "runs/search";  // trial-NNNNN/ run directories
    int64_t trials = 8;                // stop once the study has this many finished (done or failed) trials
    double minutes = 0;                // also stop after this much wall time (0: no limit)
    int64_t steps = 100;               // training steps per trial (overrides run.steps)
    int64_t mqar_steps = 0;            // > 0: also train each candidate on MQAR for this many steps
    int64_t mqar_seq_len = 64, mqar_kv_pairs = 8;  // the MQAR copy's sequences and key-value pairs in each
    int64_t mqar_vocab = 256;          // its keys and values come from this many token ids (at most the model's)
    Device device = Device::cpu;       // where trials train (zero-cost proxies stay on the CPU, in float64)
    int64_t initial_random = 4;        // trials (the baseline included) before evolution starts
    int64_t population = 8, tournament = 3;
    uint64_t seed = 1;
    std::string worker = "";           // default: host:pid
    uint64_t worker_index = 0;         // workers of one search draw from streams seed + index
    double lease_seconds = 300;        // renewed every third of it while a trial runs
    int64_t min_steps = 0;             // multi-fidelity: the first rung's steps (0: every trial runs `steps`)
    int64_t reduction_factor = 3;      // successive halving's η: a third continue past each rung
    std::string screen_proxy = "synflow";  // the proxy that screens proposals (screen_pool > 1)
    int64_t screen_pool = 1;           // candidates scored per proposal; the best is trained (1: no screening)
    int64_t target_parameters = 0;     // > 0: every candidate's d_model scaled to this many parameters
    std::string proposer_command;      // external proposer (external_proposer.hpp); empty: built-in evolution
};

struct SearchProgress {
    int64_t done = 0, failed = 0, running = 0, queued = 0, duplicates = 0;
    int64_t pruned = 0;  // of the done trials, those successive halving stopped early
    double best_fitness = std::numeric_limits<double>::quiet_NaN();  // NaN when none yet
    std::string best_trial;  // "trial 3 (val_bpb 1.92)"
    bool exhausted = false;  // stopped early: every proposal was a function the study already has
};

// Thrown by run_search when Ctrl-C stopped a trial's training: its checkpoint is saved and the trial
// is released back to the queue, so the next search run resumes it from there.
class SearchInterrupted : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Checks what a search needs before any worker starts: the options, the search-space file (and its
// base spec), and that the database opens. Throws an Error naming what is wrong.
void check_search(const SearchOptions& options);

// The study a search records into: options.study, or the space file's stem.
std::string study_name(const SearchOptions& options);

// Runs the loop until the study has options.trials finished trials, the time is up or the space is
// exhausted; `on_progress` is called after each round. Returns the final counts.
SearchProgress run_search(const SearchOptions& options,
                          const std::function<void(const SearchProgress&)>& on_progress = {});

// ASI-Arch's score of one component (its released code; mission/discovery.md §1.3): the change over
// the baseline relative to 10% of it, positive when better, clamped to [−1, 1], then σ(6 · that).
// 0.5: as good as the baseline; only the range ±10% matters.
double improvement_score(double value, double baseline, bool lower_is_better);

// Records `fitness` (the mean improvement_score of val_bpb and mqar_accuracy against the baseline, trial
// 0; the baseline gets 0.5) for every done trial of the study that has none yet. Called after each
// completion: a trial done before the baseline is scored once the baseline is done, by whichever of the
// two completes second. Pruned trials and trials without a shared component get no fitness.
void score_fitness(ExperimentDatabase& db, int64_t study);

// Successive halving's promotion rule as ASHA applies it asynchronously (Li et al., "A System for
// Massively Parallel Hyperparameter Tuning", arXiv 1810.05934; Optuna's SuccessiveHalvingPruner):
// a trial reaching a rung goes on when its value (lower is better) is among the best ⌊n/η⌋, at least
// one, of the n values recorded at that rung so far, its own included. NaN is never promoted.
bool promoted_at_rung(double value, std::vector<double> rung_values, int64_t reduction_factor);
// The rungs below `steps`: min_steps · η^k.
std::vector<int64_t> rung_steps(int64_t min_steps, int64_t reduction_factor, int64_t steps);

}  // namespace linarch
