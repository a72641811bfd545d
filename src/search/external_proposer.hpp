// The external-proposer interface: any program that reads a study as JSON on its stdin and writes
// candidate specs on its stdout, so that an LLM agent (as in ASI-Arch) or any other strategy can
// drive `linarch search --proposer-command CMD`. The search still deduplicates, scales, screens,
// trains and records what it proposes.
//
// stdin, one JSON object:
//   {"study": name, "space": the search-space file's text, "base_spec": TOML,
//    "fields": [{"key", "choices": [...]} | {"key", "min", "max", "integer", "log"}],
//    "count": how many candidates are wanted,
//    "trials": [{"number", "status", "parents": [numbers], "spec": TOML, "assignment": {key: value},
//                "metrics": {fitness, val_bpb, mqar_accuracy, parameters, ...}, "proxies": {...},
//                "error"}]}   (every trial, oldest first: the leaderboard and the lineage)
// stdout, JSON lines (or one JSON array), one candidate each:
//   {"assignment": {"model.mixer.update": "delta", ...}, "parents": [3, 7]}  the space's fields
//                                         (missing ones keep the base spec's values), or
//   {"spec": "<a whole spec in TOML>", "parents": [...]}                      any spec at all.
// A candidate that does not parse or that the spec rejects is skipped with its reason; a command that
// fails (non-zero exit) or writes no usable candidate is an Error quoting its output.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/spec.hpp"
#include "search/database.hpp"
#include "search/search_space.hpp"

namespace linarch {

struct ProposedCandidate {
    Spec spec;
    std::vector<int64_t> parent_numbers;  // trial numbers within the study
};

struct ProposerOutput {
    std::vector<ProposedCandidate> candidates;
    std::vector<std::string> rejected;  // "line 2: model.d_model: expected ..." per skipped line
};

nlohmann::json proposer_input(const std::string& study, const SearchSpace& space, const std::vector<Trial>& trials,
                              int64_t count);
ProposerOutput parse_proposer_output(const std::string& output, const SearchSpace& space);
// Runs `command` with the shell, `input` on its stdin; returns its stdout. Error on a non-zero exit.
std::string run_proposer_command(const std::string& command, const std::string& input);

}  // namespace linarch
