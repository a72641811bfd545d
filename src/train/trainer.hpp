// The training loop: data → forward → backward → clip → AdamW, with evaluation, metrics
// (DIR/metrics.jsonl), checkpoints, exact resume, SIGINT = save and stop, NaN = stop, keep the
// last good checkpoint.
#pragma once
#include <cstdint>
#include <filesystem>

#include "core/spec.hpp"

namespace linarch {

struct TrainOptions {
    std::filesystem::path out_dir = "runs/default";
    bool resume = false;
};

struct TrainResult {
    int64_t steps_done = 0;     // optimiser steps completed in total (including before a resume)
    double train_loss = 0;      // last step's loss
    double val_loss = 0;        // nats per token at the end
    double val_bpb = 0;         // bits per byte (byte tokens: val_loss / ln 2)
    bool interrupted = false;   // stopped by SIGINT (a checkpoint was saved)
    std::filesystem::path checkpoint;
};

TrainResult train(const Spec& spec, const TrainOptions& options);

// Mean validation loss (nats/token) over spec.run.eval_batches sequential batches.
class LanguageModel;
double evaluate(LanguageModel& model, const Spec& spec);

}  // namespace linarch
