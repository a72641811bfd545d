// The report of a search study: one self-contained HTML page (inline CSS and SVG, no script, no
// network) with the study's counts and search space, the leaderboard, Pareto fronts of validation
// bits per byte against size and cost, the lineage of the best candidates, learning curves, and
// how well each zero-cost proxy ranks the trials (Kendall's τ, Spearman's ρ); plus the same
// numbers as JSON for scripts. `linarch report` writes them.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "search/database.hpp"

namespace linarch {

// Which points are Pareto-optimal for two objectives, each minimised or maximised: a point is on the
// front unless another is at least as good in both and better in one. Points with a NaN are never
// on the front (and never dominate); equal points are all on it.
std::vector<bool> pareto_front(std::span<const double> x, bool minimise_x, std::span<const double> y,
                               bool minimise_y);

// The study named `name`, or the database's only study when `name` is empty. An Error lists the
// studies when the name is unknown or there are several to choose from, and says so when there
// is none.
int64_t find_study(ExperimentDatabase& db, const std::string& name);

struct StudyReport {
    std::string html;
    nlohmann::json summary;  // study, counts, leaderboard, failed trials, Pareto fronts, lineage, proxies
};

// Reads the study's trials, intermediate values and configuration and builds both outputs.
StudyReport build_study_report(ExperimentDatabase& db, int64_t study);

}  // namespace linarch
