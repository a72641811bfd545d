#include <fmt/format.h>

#include "commands.hpp"
#include "core/atomic_file.hpp"
#include "search/database.hpp"
#include "search/report.hpp"

namespace linarch::cli {

void add_report_command(CLI::App& app) {
    struct Options {
        std::string database, study, out, json;
    };
    auto options = std::make_shared<Options>();
    CLI::App* cmd = app.add_subcommand("report", "Write a search study's report: one self-contained HTML page "
                                                 "(leaderboard, Pareto fronts, lineage, learning curves, proxy "
                                                 "rank correlations)");
    cmd->add_option("--db", options->database, "Experiment database URL: sqlite:///file.db or postgresql://user@host/db")
        ->required();
    cmd->add_option("--study", options->study, "Study name (default: the database's only study)");
    cmd->add_option("--out", options->out, "HTML file to write")->required();
    cmd->add_option("--json", options->json, "Also write the numbers as JSON to this file (\"-\": to stdout)");
    cmd->footer("Example:\n  linarch report --db sqlite:///runs/search.db --out runs/search-report.html\n"
                "The page needs no network: open it in any browser.");
    cmd->callback([options] {
        const auto db = open_database(options->database);
        const int64_t study = find_study(*db, options->study);
        const StudyReport report = build_study_report(*db, study);
        write_file_atomic(options->out, report.html);
        const std::string json = report.summary.dump(2) + "\n";
        if (options->json == "-")
            fmt::print("{}", json);
        else if (!options->json.empty())
            write_file_atomic(options->json, json);
        const auto& counts = report.summary["counts"];
        fmt::print(options->json == "-" ? stderr : stdout, "report: study \"{}\" ({} done, {} failed) → {}\n",
                   report.summary["study"].get<std::string>(), counts["done"].get<int64_t>(),
                   counts["failed"].get<int64_t>(), options->out);
    });
}

}  // namespace linarch::cli
