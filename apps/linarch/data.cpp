#include <fmt/core.h>

#include "commands.hpp"
#include "data/byte_corpus.hpp"

namespace linarch::cli {

void add_data_command(CLI::App& app) {
    CLI::App* data = app.add_subcommand("data", "Prepare corpora");
    data->require_subcommand(1);
    struct Options {
        std::vector<std::string> inputs;
        std::string out;
        ByteCorpusOptions corpus;
    };
    auto options = std::make_shared<Options>();
    CLI::App* prepare = data->add_subcommand("prepare", "Tokenize text files (bytes) into train/validation shards");
    prepare->add_option("--input,-i", options->inputs, "Text files")->required()->check(CLI::ExistingFile);
    prepare->add_option("--out,-o", options->out, "Output directory")->required();
    prepare->add_option("--val-fraction", options->corpus.val_fraction, "Share of text held out for validation")
        ->capture_default_str();
    prepare->add_option("--seed", options->corpus.seed, "Seed of the train/validation split")->capture_default_str();
    prepare->callback([options] {
        std::vector<std::filesystem::path> inputs(options->inputs.begin(), options->inputs.end());
        const CorpusSummary summary = prepare_byte_corpus(inputs, options->out, options->corpus);
        fmt::print("wrote {}: {} train tokens, {} validation tokens ({} of {} blocks held out)\n", options->out,
                   summary.train_tokens, summary.val_tokens, summary.val_documents, summary.documents);
    });
}

}  // namespace linarch::cli
