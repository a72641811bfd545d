// Each subcommand registers itself on the root app; its callback does the work through library
// calls and prints the result.
#pragma once
#include <CLI/CLI.hpp>

namespace linarch::cli {

void add_train_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_data_command(CLI::App& app);
void add_tokenizer_command(CLI::App& app);
void add_serve_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_search_command(CLI::App& app);
void add_report_command(CLI::App& app);

}  // namespace linarch::cli
