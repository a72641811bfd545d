#include <cstdio>

#include <fmt/core.h>

#include "commands.hpp"
#include "infer/generate.hpp"
#include "train/checkpoint.hpp"

namespace linarch::cli {

void add_generate_command(CLI::App& app) {
    struct Options {
        std::string checkpoint, prompt, tokenizer = "byte", device = "cpu";
        GenerateOptions generate;
    };
    auto options = std::make_shared<Options>();
    CLI::App* cmd = app.add_subcommand("generate", "Generate text from a checkpoint");
    cmd->add_option("--checkpoint", options->checkpoint, "Run directory or checkpoint directory")->required();
    cmd->add_option("--prompt,-p", options->prompt, "Text to continue");
    cmd->add_option("--tokenizer", options->tokenizer, "\"byte\" or a SentencePiece .model file")
        ->capture_default_str();
    cmd->add_option("--device", options->device, "Where the model runs: cpu, or cuda (fp32 on the first GPU)")
        ->check(CLI::IsMember({"cpu", "cuda"}))
        ->capture_default_str();
    auto& generate = options->generate;
    cmd->add_option("--max-tokens,-n", generate.max_tokens, "Tokens to generate")->capture_default_str();
    cmd->add_option("--temperature,-t", generate.sampling.temperature, "Sampling temperature (0 = greedy)")
        ->capture_default_str();
    cmd->add_option("--top-k", generate.sampling.top_k, "Keep the k most likely tokens (0 = all)");
    cmd->add_option("--top-p", generate.sampling.top_p, "Nucleus sampling mass (1 = off)");
    cmd->add_option("--min-p", generate.sampling.min_p, "Keep tokens with p ≥ min_p · p_max (0 = off)");
    cmd->add_option("--repetition-penalty", generate.sampling.repetition_penalty, "Repetition penalty (1 = off)");
    cmd->add_option("--presence-penalty", generate.sampling.presence_penalty, "Presence penalty in [-2, 2]");
    cmd->add_option("--frequency-penalty", generate.sampling.frequency_penalty, "Frequency penalty in [-2, 2]");
    cmd->add_option("--seed", generate.seed, "Random seed (same seed, same text)")->capture_default_str();
    cmd->add_option("--stop", generate.stop, "Stop before this text (repeatable: --stop A --stop B)")
        ->allow_extra_args(false);
    cmd->callback([options] {
        const auto dir = resolve_checkpoint(options->checkpoint);
        const auto model = load_model(dir, options->device, "linarch generate");
        const auto tokenizer = load_tokenizer(options->tokenizer);
        fmt::print("{}", options->prompt);
        std::fflush(stdout);
        generate_text(*model, *tokenizer, options->prompt, options->generate, [](const std::string& piece) {
            fmt::print("{}", piece);
            std::fflush(stdout);
        });
        fmt::print("\n");
    });
}

}  // namespace linarch::cli
