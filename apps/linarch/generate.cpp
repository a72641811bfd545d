#include <cstdio>

#include <fmt/core.h>

#include "commands.hpp"
#include "infer/generate.hpp"
#include "train/checkpoint.hpp"

namespace linarch::cli {

void add_generate_command(CLI::App& app) {
    struct Options {
        std::string checkpoint, prompt;
        GenerateOptions generate;
    };
    auto options = std::make_shared<Options>();
    CLI::App* cmd = app.add_subcommand("generate", "Generate text from a checkpoint");
    cmd->add_option("--checkpoint", options->checkpoint, "Run directory or checkpoint directory")->required();
    cmd->add_option("--prompt,-p", options->prompt, "Text to continue");
    cmd->add_option("--max-tokens,-n", options->generate.max_tokens, "Tokens to generate")->capture_default_str();
    cmd->add_option("--temperature,-t", options->generate.sampling.temperature, "Sampling temperature (0 = greedy)")
        ->capture_default_str();
    cmd->add_option("--top-k", options->generate.sampling.top_k, "Keep the k most likely tokens (0 = all)");
    cmd->add_option("--top-p", options->generate.sampling.top_p, "Nucleus sampling mass (1 = off)");
    cmd->add_option("--seed", options->generate.seed, "Random seed (same seed, same text)")->capture_default_str();
    cmd->callback([options] {
        const auto dir = resolve_checkpoint(options->checkpoint);
        LanguageModel model(read_checkpoint_spec(dir).model);
        load_checkpoint(dir, model, nullptr, nullptr);
        fmt::print("{}", options->prompt);
        std::fflush(stdout);
        generate_text(model, options->prompt, options->generate, [](const std::string& piece) {
            fmt::print("{}", piece);
            std::fflush(stdout);
        });
        fmt::print("\n");
    });
}

}  // namespace linarch::cli
