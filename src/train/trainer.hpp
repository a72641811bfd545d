// The training loop: data → forward → backward → clip → AdamW, with evaluation, metrics
// (DIR/metrics.jsonl), checkpoints, exact resume, SIGINT = save and stop, NaN = stop, keep the
// last good checkpoint.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <vector>

#include "core/allocator.hpp"
#include "core/spec.hpp"
#include "ops/precision.hpp"

namespace linarch {

// One validation of a run, as on_validation sees it.
struct ValidationPoint {
    int64_t step = 0;
    double train_loss = 0;    // the last step's loss
    double val_loss = 0;      // nats per token
    double val_bpb = 0;       // NaN on a synthetic task
    double val_accuracy = 0;  // NaN on a corpus
};

struct TrainOptions {
    std::filesystem::path out_dir = "runs/default";
    bool resume = false;
    // Device::cuda trains on the first GPU (checkpoints are the same files either way).
    Device device = Device::cpu;
    // bf16: mixed precision on the GPU (ops/precision.hpp): bf16 operands on the tensor cores, fp32
    // weights, activations, gradients and optimizer state. fp32: exact, the CPU's run to 1e-3.
    ops::Precision precision = ops::Precision::fp32;
    // Validate at these steps too, besides every run.eval_every steps and at the end.
    std::vector<int64_t> validate_at;
    // Called after every validation, the last included; returning false stops the run there with a
    // checkpoint saved (TrainResult::stopped_early): how a search prunes a hopeless trial.
    std::function<bool(const ValidationPoint&)> on_validation;
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
    bool stopped_early = false; // on_validation returned false at steps_done
    double tokens_per_second = 0;  // training tokens over the time of this run's optimiser steps
    std::filesystem::path checkpoint;
};

TrainResult train(const Spec& spec, const TrainOptions& options);

}  // namespace linarch
