#include <omp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>

#include <fmt/core.h>

#include "backend/cuda/device.hpp"
#include "commands.hpp"
#include "core/error.hpp"
#include "search/database.hpp"
#include "search/report.hpp"
#include "search/study.hpp"
#include "train/progress.hpp"

namespace linarch::cli {

namespace {
// How well each zero-cost proxy ranked the trials trained so far (the report's numbers).
void print_proxy_correlations(const SearchOptions& search) {
    auto db = open_database(search.database);
    const nlohmann::json proxies = build_study_report(*db, find_study(*db, study_name(search))).summary["proxies"];
    if (proxies.empty()) return;
    const auto cell = [](const nlohmann::json& row, const std::string& key) {
        return row.contains(key) && row[key].is_number() ? fmt::format("{:+.3f}", row[key].get<double>())
                                                           : std::string("-");
    };
    fmt::print("zero-cost proxies vs trained results (Kendall tau; a good proxy: -1 against val_bpb, +1 against "
               "MQAR accuracy):\n  {:<26} {:>9} {:>14} {:>4}\n", "proxy", "val_bpb", "mqar_accuracy", "n");
    for (const nlohmann::json& row : proxies)
        fmt::print("  {:<26} {:>9} {:>14} {:>4}\n", row["proxy"].get<std::string>(), cell(row, "kendall_tau_val_bpb"),
                   cell(row, "kendall_tau_mqar_accuracy"), row.value("n_val_bpb", 0));
}
volatile std::sig_atomic_t interrupted = 0;
void on_interrupt(int) { interrupted = 1; }

std::string worker_name(pid_t pid) {
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    return fmt::format("{}:{}", host, pid);
}

// Signals that mean the process itself crashed (not that something killed it).
bool is_crash(int signal) {
    return signal == SIGSEGV || signal == SIGABRT || signal == SIGBUS || signal == SIGFPE || signal == SIGILL;
}

// Fails the trial a crashed worker held: the crash is most likely the trial's own doing.
void fail_crashed_trial(const SearchOptions& search, pid_t pid, int signal) {
    try {
        auto db = open_database(search.database);
        for (const Trial& t : db->trials(find_study(*db, study_name(search))))
            if (t.status == TrialStatus::running && t.worker == worker_name(pid)) {
                const std::string error = fmt::format("the worker training it crashed with {} (signal {})",
                                                      strsignal(signal), signal);
                db->fail_trial({t.id, t.worker, t.attempts, 0}, error);
                fmt::print(stderr, "search: trial {} failed: {}\n", t.number, error);
            }
    } catch (const std::exception& e) {
        fmt::print(stderr, "search: cannot record the crash of worker {}: {}\n", worker_name(pid), e.what());
    }
}

// `--device cuda` without a usable GPU is one clear error before any worker starts. The probe runs in a
// child process: a CUDA runtime initialised here would be unusable in the workers forked from this one.
void require_gpu_for_workers() {
    if (!cuda::built_with_cuda()) cuda::require_device("search --device cuda");  // says how to build with CUDA
    const pid_t pid = fork();
    LINARCH_CHECK(pid >= 0, "search: cannot start the GPU probe: {}", strerror(errno));
    if (pid == 0) std::_Exit(cuda::device_count() > 0 ? 0 : 1);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    LINARCH_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "search --device cuda needs a CUDA GPU, but none is usable here (no device visible to the CUDA "
                  "runtime); run without --device cuda to train the trials on the CPU");
}

pid_t start_worker(SearchOptions search, uint64_t index, int workers,
                   const std::function<void(const SearchProgress&)>& report) {
    const pid_t pid = fork();
    LINARCH_CHECK(pid >= 0, "search: cannot start a worker process: {}", strerror(errno));
    if (pid != 0) return pid;
    std::signal(SIGINT, SIG_DFL);  // the trainer takes Ctrl-C over while a trial trains
    omp_set_num_threads(std::max(1, omp_get_num_procs() / workers));  // the cores are shared
    search.worker = worker_name(getpid());
    search.worker_index = index;
    try {
        const SearchProgress p = run_search(search, report);
        if (p.exhausted) fmt::print("the space is exhausted: every new proposal was a function already tried\n");
        std::_Exit(0);
    } catch (const SearchInterrupted& e) {
        fmt::print(stderr, "search worker {}: interrupted: {}\n", search.worker, e.what());
        std::_Exit(0);
    } catch (const std::exception& e) {
        fmt::print(stderr, "error: search worker {}: {}\n", search.worker, e.what());
        std::_Exit(1);
    }
}

struct SupervisorResult {
    int failed_workers = 0;
    bool interrupted = false;
};

// Runs the search in worker processes, forked before this process uses OpenMP (whose thread pool does
// not survive a fork), and keeps it going: a worker that crashes (SIGSEGV, SIGABRT, …) fails the trial
// it held with the signal's name, and one killed (SIGKILL: the OOM killer, a user) leaves its trial to
// be re-queued when its lease runs out; either way a new worker takes its place. Ctrl-C reaches every
// worker, which saves its trial's checkpoint and gives the trial back.
SupervisorResult supervise_workers(const SearchOptions& search, int workers,
                                   const std::function<void(const SearchProgress&)>& report) {
    const auto previous = std::signal(SIGINT, on_interrupt);
    std::map<pid_t, uint64_t> running;  // pid → worker index (its proposals' random stream)
    uint64_t next_index = 0;
    for (; next_index < uint64_t(workers); ++next_index)
        running[start_worker(search, next_index, workers, report)] = next_index;
    SupervisorResult result;
    int restarts = 0;
    while (!running.empty()) {
        int status = 0;
        const pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0) {
            if (errno == EINTR) continue;  // Ctrl-C: the workers got it too (one process group)
            break;
        }
        running.erase(pid);
        if (WIFEXITED(status)) {
            result.failed_workers += WEXITSTATUS(status) != 0;
            continue;
        }
        const int signal = WTERMSIG(status);
        if (interrupted || signal == SIGINT) continue;
        fmt::print(stderr, "search: worker {} died with {}\n", worker_name(pid), strsignal(signal));
        if (is_crash(signal)) fail_crashed_trial(search, pid, signal);
        if (++restarts > 3 * workers) {
            fmt::print(stderr, "search: {} workers died; not starting another\n", restarts);
            ++result.failed_workers;
            continue;
        }
        running[start_worker(search, next_index, workers, report)] = next_index;
        ++next_index;
    }
    std::signal(SIGINT, previous);
    result.interrupted = interrupted != 0;
    return result;
}
}  // namespace

void add_search_command(CLI::App& app) {
    struct Options {
        SearchOptions search;
        std::string runs_dir = "runs/search";
        std::string device = "cpu";
        int workers = 1;
    };
    auto options = std::make_shared<Options>();
    CLI::App* cmd = app.add_subcommand("search", "Search the mixer design space: propose, deduplicate, train, "
                                                 "record every trial (resumable: the same command continues)");
    SearchOptions& s = options->search;
    cmd->add_option("--space", s.space, "Search-space file (TOML: a base spec and the keys that vary)")->required();
    cmd->add_option("--db", s.database, "Experiment database URL: sqlite:///file.db or postgresql://user@host/db")->required();
    cmd->add_option("--study", s.study, "Study name (default: the space file's name)");
    cmd->add_option("--trials", s.trials, "Stop when the study has this many finished trials")->capture_default_str();
    cmd->add_option("--minutes", s.minutes, "Also stop after this many minutes (0: no limit)")->capture_default_str();
    cmd->add_option("--steps", s.steps, "Training steps per trial")->capture_default_str();
    cmd->add_option("--mqar-steps", s.mqar_steps, "Also train each candidate on MQAR for this many steps (0: off)")
        ->capture_default_str();
    cmd->add_option("--mqar-seq-len", s.mqar_seq_len, "MQAR copy: sequence length")->capture_default_str();
    cmd->add_option("--mqar-kv-pairs", s.mqar_kv_pairs, "MQAR copy: key-value pairs per sequence")
        ->capture_default_str();
    cmd->add_option("--mqar-vocab", s.mqar_vocab, "MQAR copy: token ids its keys and values are drawn from "
                                                  "(at most the model's vocabulary)")->capture_default_str();
    cmd->add_option("--initial-random", s.initial_random, "Trials (baseline included) before evolution starts")
        ->capture_default_str();
    cmd->add_option("--population", s.population, "Regularised evolution: the newest trials that can be parents")
        ->capture_default_str();
    cmd->add_option("--tournament", s.tournament, "Regularised evolution: trials drawn per parent selection")
        ->capture_default_str();
    cmd->add_option("--min-steps", s.min_steps, "Multi-fidelity: steps of the first successive-halving rung "
                                                "(rungs min·η^k; 0: every trial runs --steps)")->capture_default_str();
    cmd->add_option("--reduction-factor", s.reduction_factor, "Successive halving's η: 1/η of the trials go on "
                                                              "past each rung")->capture_default_str();
    cmd->add_option("--screen-pool", s.screen_pool, "Zero-cost screening: score this many new candidates per "
                                                    "proposal and train the best (1: off)")->capture_default_str();
    cmd->add_option("--screen-proxy", s.screen_proxy, "The proxy that screens: grad_norm, snip, synflow, naswot, "
                                                      "w_pca, parameters, ...")->capture_default_str();
    cmd->add_option("--target-parameters", s.target_parameters, "Scale every candidate's d_model to about this "
                                                                "many parameters (0: as proposed)")->capture_default_str();
    cmd->add_option("--proposer-command", s.proposer_command, "External proposer: a shell command that reads the "
                                                              "study as JSON on stdin and writes candidates as JSON "
                                                              "lines (docs/search.md)");
    cmd->add_option("--device", options->device, "Where trials train: cpu, or cuda (fp32 on the first GPU; the "
                                                 "zero-cost proxies stay on the CPU)")
        ->check(CLI::IsMember({"cpu", "cuda"}))
        ->capture_default_str();
    cmd->add_option("--runs", options->runs_dir, "Directory of the trials' run directories")->capture_default_str();
    cmd->add_option("--seed", s.seed, "Seed of the proposals")->capture_default_str();
    cmd->add_option("--workers", options->workers, "Worker processes on this machine (each claims trials)")
        ->capture_default_str();
    cmd->callback([options] {
        LINARCH_CHECK(options->workers >= 1, "search: --workers must be ≥ 1, got {}", options->workers);
        SearchOptions search = options->search;
        search.runs_dir = options->runs_dir;
        search.device = options->device == "cuda" ? Device::cuda : Device::cpu;
        const auto start = std::chrono::steady_clock::now();
        int64_t finished_at_start = -1;
        const auto report = [&](const SearchProgress& p) {
            const int64_t finished = p.done + p.failed;
            if (finished_at_start < 0) finished_at_start = finished;
            const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            const int64_t here = finished - finished_at_start, left = search.trials - finished;
            const std::string eta = here > 0 && left > 0 ? ", ETA " + format_duration(elapsed / double(here) * double(left))
                                                         : "";
            fmt::print(stderr, "search: {}/{} trials finished ({} failed, {} pruned), {} running, {} queued, {} "
                               "duplicates skipped; best {}{}\n",
                       finished, search.trials, p.failed, p.pruned, p.running, p.queued, p.duplicates,
                       std::isnan(p.best_fitness) ? std::string("-")
                                                  : fmt::format("fitness {:.3f}: {}", p.best_fitness, p.best_trial),
                       eta);
        };
        check_search(search);  // a bad option, space file or database: one clear error, before any worker
        if (search.device == Device::cuda) require_gpu_for_workers();
        const SupervisorResult result = supervise_workers(search, options->workers, report);
        if (result.interrupted) {
            fmt::print("search interrupted; run the same command again to continue (it resumes the trials from "
                       "their checkpoints)\n");
            return;
        }
        LINARCH_CHECK(result.failed_workers == 0, "search: {} worker(s) stopped with an error (their messages are "
                      "above)", result.failed_workers);
        auto db = open_database(search.database);
        const StudyCounts counts = db->counts(find_study(*db, study_name(search)));
        fmt::print("{} trials finished ({} failed), {} running, {} queued; the report: linarch report --db {} --out "
                   "report.html\n", counts.done + counts.failed, counts.failed, counts.running, counts.queued,
                   search.database);
        print_proxy_correlations(search);
    });
}

}  // namespace linarch::cli
