// The data path against its peers, in one run:
//   prepare  `linarch data prepare` with a SentencePiece BPE model (both cores) against Debian's
//            `spm_encode --output_format=id` (one process) on the same text file: tokens/s and MB/s;
//   loader   random training windows per second against what a training step of the spec's model
//            consumes (forward + backward of one batch, measured here too): the loader must be ≥ 100×
//            faster than the step.
//   build/bin/data_pipeline [--text data/kjv.txt] [--spm-model F] [--vocab-size 8000] [--corpus data/kjv]
//                           [--config configs/demo.toml]
// Without --spm-model a BPE model of --vocab-size pieces is trained on the text first (not timed).
#include <sys/wait.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "data/corpus.hpp"
#include "data/loader.hpp"
#include "data/tokenizer.hpp"
#include "model/language_model.hpp"

using namespace linarch;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

namespace {
double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

int64_t count_words(const fs::path& path) {
    std::ifstream in(path);
    return std::distance(std::istream_iterator<std::string>(in), std::istream_iterator<std::string>());
}

struct Rate {
    double seconds = 0;
    int64_t tokens = 0;
};

Rate run_spm_encode(const fs::path& model, const fs::path& text, const fs::path& out) {
    const std::string command = fmt::format("spm_encode --model='{}' --output_format=id < '{}' > '{}'", model.string(),
                                            text.string(), out.string());
    const auto start = Clock::now();
    const int status = std::system(command.c_str());
    Rate rate{seconds_since(start), 0};
    LINARCH_CHECK(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "`{}` failed (is Debian's sentencepiece package installed? scripts/setup installs it)", command);
    rate.tokens = count_words(out);
    return rate;
}
}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"Data path: corpus preparation vs spm_encode, loader vs the training step"};
    std::string text = "data/kjv.txt", spm_model, corpus = "data/kjv", config = "configs/demo.toml";
    int64_t vocab_size = 8000, repeats = 3;
    app.add_option("--text", text, "Text file to tokenize")->capture_default_str();
    app.add_option("--spm-model", spm_model, "SentencePiece model (default: train a BPE model on --text)");
    app.add_option("--vocab-size", vocab_size, "Pieces of the BPE model trained when --spm-model is not given")
        ->capture_default_str();
    app.add_option("--corpus", corpus, "Prepared corpus for the loader")->capture_default_str();
    app.add_option("--config", config, "Spec whose model and batch the loader is compared with")->capture_default_str();
    app.add_option("--repeats", repeats, "Timed repeats (the best is kept)")->capture_default_str();
    CLI11_PARSE(app, argc, argv);

    const fs::path work = fs::temp_directory_path() / fmt::format("linarch-bench-data-{}", ::getpid());
    fs::create_directories(work);
    nlohmann::json record;
    try {
        if (spm_model.empty()) {
            spm_model = (work / "bpe.model").string();
            SentencePieceTrainOptions options;
            options.vocab_size = vocab_size;
            options.threads = 2;
            const auto start = Clock::now();
            train_sentencepiece({text}, spm_model, options);
            fmt::print("trained a BPE model of {} pieces on {} in {:.1f} s (not timed below)\n", vocab_size, text,
                       seconds_since(start));
        }
        const double megabytes = double(fs::file_size(text)) / 1e6;
        Rate spm, ours;
        spm.seconds = ours.seconds = 1e30;
        for (int64_t r = 0; r < repeats; ++r) {
            const Rate s = run_spm_encode(spm_model, text, work / "ids.txt");
            if (s.seconds < spm.seconds) spm = s;
            PrepareOptions options;
            options.tokenizer = spm_model;
            options.val_fraction = 0.02;
            const auto start = Clock::now();
            const CorpusManifest manifest = prepare_corpus({text}, work / "corpus", options).manifest;
            const double seconds = seconds_since(start);
            if (seconds < ours.seconds) ours = {seconds, manifest.train.tokens + manifest.val.tokens};
        }
        fmt::print("prepare, {} ({:.1f} MB), SentencePiece BPE-{}:\n", text, megabytes, vocab_size);
        fmt::print("  spm_encode (1 process)        {:7.3f} s  {:10.0f} tokens/s  {:6.2f} MB/s  ({} tokens)\n",
                   spm.seconds, double(spm.tokens) / spm.seconds, megabytes / spm.seconds, spm.tokens);
        fmt::print("  linarch data prepare (shards) {:7.3f} s  {:10.0f} tokens/s  {:6.2f} MB/s  ({} tokens, EOS "
                   "included)\n", ours.seconds, double(ours.tokens) / ours.seconds, megabytes / ours.seconds,
                   ours.tokens);
        fmt::print("  speed vs spm_encode (bytes/s): {:.2f}×\n", spm.seconds / ours.seconds);
        record["prepare"] = {{"text", text},          {"megabytes", megabytes},
                             {"spm_seconds", spm.seconds}, {"spm_tokens", spm.tokens},
                             {"seconds", ours.seconds}, {"tokens", ours.tokens},
                             {"speedup", spm.seconds / ours.seconds}};

        // Loader against the training step.
        const Spec spec = load_spec(config);
        const CorpusSplit train = open_corpus_split(corpus, "train");
        SamplerOptions options;
        options.batch_size = spec.data.batch_size;
        options.seq_len = spec.data.seq_len;
        const WindowSampler sampler(train.tokens, options);
        Batch batch;
        DataPosition at;
        const int64_t batches = 2000;
        const auto loader_start = Clock::now();
        for (int64_t i = 0; i < batches; ++i, at = sampler.next(at)) sampler.batch(at, batch);
        const double per_batch = seconds_since(loader_start) / double(batches);

        LanguageModel model(spec.model);
        model.initialize(1);
        double per_step = 1e30;
        for (int64_t r = 0; r < repeats; ++r) {
            sampler.batch(at, batch);
            const auto start = Clock::now();
            model.forward(batch.inputs, batch.targets, batch.batch_size, batch.seq_len);
            model.backward(1.0);
            per_step = std::min(per_step, seconds_since(start));
        }
        fmt::print("loader, {} ({} tokens), batches of {} × {} random windows:\n", corpus, train.tokens.size(),
                   options.batch_size, options.seq_len);
        fmt::print("  loader {:9.1f} µs per batch; training step of {} (forward + backward) {:8.1f} ms: the loader "
                   "is {:.0f}× faster (target ≥ 100×)\n", per_batch * 1e6, config, per_step * 1e3,
                   per_step / per_batch);
        record["loader"] = {{"batch_us", per_batch * 1e6}, {"step_ms", per_step * 1e3}, {"ratio", per_step / per_batch}};
    } catch (const std::exception& e) {
        fs::remove_all(work);
        fmt::print(stderr, "error: {}\n", e.what());
        return 1;
    }
    fs::remove_all(work);
    fmt::print("{}\n", record.dump());
    return 0;
}
