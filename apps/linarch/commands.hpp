// Each subcommand registers itself on the root app; its callback does the work through library
// calls and prints the result.
#pragma once
#include <filesystem>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "model/language_model.hpp"
#include "train/checkpoint.hpp"

namespace linarch::cli {

void add_train_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_data_command(CLI::App& app);
void add_tokenizer_command(CLI::App& app);
void add_serve_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_search_command(CLI::App& app);
void add_report_command(CLI::App& app);

// The checkpoint's model for inference on `device`: "cpu", or "cuda" (fp32 on the first GPU; without a
// usable one, an error naming `command`); the trainer's state too where `state` is given.
std::unique_ptr<LanguageModel> load_model(const std::filesystem::path& checkpoint_dir, const std::string& device,
                                          const std::string& command, TrainerState* state = nullptr);

}  // namespace linarch::cli
