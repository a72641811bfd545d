#include <omp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include <fmt/core.h>

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
}  // namespace

void add_search_command(CLI::App& app) {
    struct Options {
        SearchOptions search;
        std::string runs_dir = "runs/search";
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
    cmd->add_option("--runs", options->runs_dir, "Directory of the trials' run directories")->capture_default_str();
    cmd->add_option("--seed", s.seed, "Seed of the proposals")->capture_default_str();
    cmd->add_option("--workers", options->workers, "Worker processes on this machine (each claims trials)")
        ->capture_default_str();
    cmd->callback([options] {
        LINARCH_CHECK(options->workers >= 1, "search: --workers must be ≥ 1, got {}", options->workers);
        SearchOptions search = options->search;
        search.runs_dir = options->runs_dir;
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
        if (options->workers == 1) {
            SearchProgress p;
            try {
                p = run_search(search, report);
            } catch (const SearchInterrupted& e) {
                fmt::print("search interrupted: {}; run the same command again to continue (it resumes the "
                           "trial from its checkpoint)\n", e.what());
                return;
            }
            if (p.exhausted) fmt::print("the space is exhausted: every new proposal was a function already tried\n");
            fmt::print("{} trials finished ({} failed, {} pruned); best: {}\n", p.done + p.failed, p.failed, p.pruned,
                       std::isnan(p.best_fitness) ? std::string("-")
                                                  : fmt::format("{} fitness {:.3f}", p.best_trial, p.best_fitness));
            print_proxy_correlations(search);
            return;
        }
        // Worker processes, each with its own database connection, coordinating through the database.
        std::vector<pid_t> children;
        for (int w = 0; w < options->workers; ++w) {
            const pid_t pid = fork();
            LINARCH_CHECK(pid >= 0, "search: cannot start worker {}", w);
            if (pid == 0) {
                // The cores are shared among the workers.
                omp_set_num_threads(std::max(1, omp_get_num_procs() / options->workers));
                search.worker_index = uint64_t(w);
                try {
                    run_search(search, report);
                    std::_Exit(0);
                } catch (const SearchInterrupted& e) {
                    fmt::print(stderr, "search worker {} interrupted: {}\n", w, e.what());
                    std::_Exit(0);
                } catch (const std::exception& e) {
                    fmt::print(stderr, "error: search worker {}: {}\n", w, e.what());
                    std::_Exit(1);
                }
            }
            children.push_back(pid);
        }
        int failures = 0;
        for (const pid_t pid : children) {
            int status = 0;
            waitpid(pid, &status, 0);
            failures += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        }
        LINARCH_CHECK(failures == 0, "search: {} of {} workers failed (their messages are above)", failures,
                      options->workers);
        print_proxy_correlations(search);
    });
}

}  // namespace linarch::cli
