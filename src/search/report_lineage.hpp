// The lineage of a study's best candidates: every trial they descend from through parent_ids
// (mutation has one parent, crossover two), back to the roots (the baseline and random trials),
// drawn as a layered graph with one row per generation.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "search/database.hpp"

namespace linarch {

struct LineageNode {
    int64_t trial_id = 0, number = 0;
    int generation = 0;               // the longest parent chain above it: roots are 0
    std::vector<int64_t> parent_ids;  // those among the nodes (a parent outside the study is left out)
    double fitness = 0;               // NaN when it has none
    int rank = 0;                     // 1-based position among the leaves; 0 for an ancestor only
};

// The leaves (trial ids, best first) and all their ancestors, by generation then trial number.
std::vector<LineageNode> lineage_of(const std::vector<Trial>& trials, const std::vector<int64_t>& leaves);

// The nodes as an <svg>: boxes labelled with trial number and fitness, leaves highlighted, an edge
// from each parent to its child. Empty nodes: an empty string.
std::string lineage_svg(const std::vector<LineageNode>& nodes);

}  // namespace linarch
