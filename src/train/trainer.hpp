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
    // Bits per byte of text: val_loss / ln 2 · tokens / bytes of the validation split, both from the
    // corpus manifest (tokens include each document's EOS), so any two tokenizers compare. NaN when
    // training on a synthetic task (data.task), whose val_loss counts the answer positions only.
    double val_bpb = 0;
    double val_accuracy = 0;    // synthetic tasks: accuracy at the answer positions; NaN on a corpus
    bool interrupted = false;   // stopped by SIGINT (a checkpoint was saved)
    std::filesystem::path checkpoint;
};

TrainResult train(const Spec& spec, const TrainOptions& options);

}  // namespace linarch
