#include <chrono>

#include <fmt/core.h>

#include "commands.hpp"
#include "data/corpus.hpp"

namespace linarch::cli {

void add_data_command(CLI::App& app) {
    CLI::App* data = app.add_subcommand("data", "Prepare corpora");
    data->require_subcommand(1);
    struct Options {
        std::vector<std::string> inputs;
        std::string out, on_error = "fail";
        PrepareOptions prepare;
    };
    auto options = std::make_shared<Options>();
    CLI::App* prepare = data->add_subcommand(
        "prepare", "Tokenize text (.txt, .jsonl and their .gz forms) into train/validation token shards");
    prepare->add_option("--input,-i", options->inputs, "Files, directories or glob patterns (quoted)")->required();
    prepare->add_option("--tokenizer,-t", options->prepare.tokenizer, "\"byte\" or a SentencePiece .model file")
        ->capture_default_str();
    prepare->add_option("--out,-o", options->out, "Output directory")->required();
    prepare->add_option("--val-fraction", options->prepare.val_fraction, "Share of documents held out for validation")
        ->capture_default_str();
    prepare->add_option("--seed", options->prepare.seed, "Seed of the train/validation split")->capture_default_str();
    prepare->add_option("--text-field", options->prepare.text_field, "JSONL field holding a record's text")
        ->capture_default_str();
    prepare->add_option("--on-error", options->on_error, "A malformed JSONL record: fail, or skip and count it")
        ->check(CLI::IsMember({"fail", "skip"}))
        ->capture_default_str();
    prepare->add_option("--threads", options->prepare.threads, "Tokenizing threads (0 = one per core)")
        ->capture_default_str();
    prepare->add_option("--shard-tokens", options->prepare.shard_tokens, "Most tokens per shard file")
        ->capture_default_str();
    prepare->callback([options] {
        const auto start = std::chrono::steady_clock::now();
        options->prepare.on_error = options->on_error == "skip" ? OnError::skip : OnError::fail;
        const PrepareResult result = prepare_corpus(options->inputs, options->out, options->prepare);
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const CorpusManifest& manifest = result.manifest;
        for (const auto* name : {"train", "val"}) {
            const SplitInfo& split = manifest.split(name);
            fmt::print("{:5}  {} documents, {} bytes of text, {} tokens in {} shard{}\n", name, split.documents,
                       split.bytes, split.tokens, split.shards.size(), split.shards.size() == 1 ? "" : "s");
        }
        if (manifest.skipped_records > 0)
            fmt::print("skipped {} malformed records; the first: {}\n", manifest.skipped_records, result.first_skipped);
        fmt::print("wrote {} (tokenizer \"{}\", vocabulary {}) in {:.1f} s\n", manifest.path().string(),
                   manifest.tokenizer, manifest.vocab_size, seconds);
    });
}

}  // namespace linarch::cli
