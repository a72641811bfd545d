// Checkpoints: DIR/checkpoints/step-NNNNNNNN/{model.safetensors, optimizer.safetensors, spec.toml,
// trainer.json} and DIR/checkpoints/latest naming the newest. A checkpoint directory is built
// under a temporary name and renamed into place, and `latest` is replaced atomically, so a kill at
// any moment leaves the previous checkpoint usable.
#pragma once
#include <cstdint>
#include <filesystem>

#include "core/spec.hpp"
#include "data/loader.hpp"
#include "model/language_model.hpp"
#include "train/optimizer.hpp"

namespace linarch {

struct TrainerState {
    int64_t step = 0;           // optimiser steps completed
    int64_t tokens_seen = 0;
    double best_val_loss = 0;   // 0 = not evaluated yet
    DataPosition data;          // the training loader's next batch (trainer.json: "data": {epoch, batch})
};

// Writes a checkpoint of `step` under run_dir and keeps the newest `keep` of them.
std::filesystem::path save_checkpoint(const std::filesystem::path& run_dir, const Spec& spec,
                                      const LanguageModel& model, const AdamW& optimizer,
                                      const TrainerState& state, int keep = 2);

// A run directory (its latest checkpoint) or a checkpoint directory → the checkpoint directory.
std::filesystem::path resolve_checkpoint(const std::filesystem::path& path);
// The spec stored with a checkpoint.
Spec read_checkpoint_spec(const std::filesystem::path& checkpoint_dir);
// Loads weights into `model` (and optimiser/trainer state when given). Every tensor is checked
// against the model's shapes before anything is changed; a mismatch names the file and tensor.
void load_checkpoint(const std::filesystem::path& checkpoint_dir, LanguageModel& model, AdamW* optimizer,
                     TrainerState* state);

}  // namespace linarch
