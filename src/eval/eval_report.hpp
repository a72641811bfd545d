// The outputs of `linarch eval`: one JSON schema for every suite, a readable table, and the PNG of
// the extrapolation suite's loss by position.
//   { "format": "linarch-eval", "version": 1, "checkpoint": "runs/demo/checkpoints/step-00001200",
//     "step": 1200, "corpus": "data/kjv", "suites": ["loss", "mqar"],
//     "results": [ {"suite": "loss", "metric": "val_loss", "value": 1.23, "seq_len": 256, "count": 65536},
//                  {"suite": "mqar", "metric": "accuracy", "value": 0.5, "seq_len": 128, "num_kv_pairs": 8,
//                   "count": 512}, ... ] }
// A result carries only the coordinates that apply to it (Measurement's fields other than −1).
#pragma once
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/evaluate.hpp"

namespace linarch {

struct EvalRun {
    std::string checkpoint, corpus;
    int64_t step = 0;
    std::vector<std::string> suites;
    std::vector<Measurement> results;
};

nlohmann::json eval_json(const EvalRun& run);
// One block per suite: the loss numbers, the MQAR grid (lengths × pairs), the loss by position
// (buckets × multiples).
std::string eval_table(const EvalRun& run);
// Loss against position (log-2 axis at bucket ends), one line per multiple of the training length.
void write_position_loss_png(const std::filesystem::path& path, const EvalRun& run);

}  // namespace linarch
