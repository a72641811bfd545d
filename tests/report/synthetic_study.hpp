// A small study written through the ExperimentDatabase API, shared by the report's tests: a baseline
// and five more done trials with lineage, proxies and learning curves, a failed trial whose error
// holds HTML, one trial running and one queued. Its values are chosen so the expected leaderboard,
// Pareto front and rank correlations can be worked out by hand (see the .cpp).
#pragma once
#include <cstdint>
#include <string>

#include "search/database.hpp"

namespace linarch::report_test {

// The study name holds HTML too, to check escaping.
inline const std::string kStudyName = "mixers <b>&</b>";
// The failed trial's error.
inline const std::string kError = "diverged: <script>alert(1)</script> & \"loss\" is NaN";

// Writes the study into the database at `url` (a new study named `name`); returns its id.
int64_t write_synthetic_study(ExperimentDatabase& db, const std::string& name = kStudyName);

}  // namespace linarch::report_test
