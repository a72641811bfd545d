#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <sstream>

#include <fmt/format.h>

#include "commands.hpp"
#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "data/loader.hpp"
#include "eval/eval_report.hpp"
#include "train/checkpoint.hpp"

namespace linarch::cli {

namespace {
const std::vector<std::string> all_suites = {"loss", "mqar", "extrapolation"};

// "loss,mqar" or "all" → the suites in their canonical order; an unknown name is an error.
std::vector<std::string> parse_suites(const std::string& text) {
    std::vector<std::string> named;
    std::istringstream items(text);
    for (std::string item; std::getline(items, item, ',');) {
        if (item == "all") return all_suites;
        LINARCH_CHECK(std::find(all_suites.begin(), all_suites.end(), item) != all_suites.end(),
                      "eval --suite: unknown suite \"{}\"; expected a comma-separated list of loss, mqar, "
                      "extrapolation, or all", item);
        named.push_back(item);
    }
    LINARCH_CHECK(!named.empty(), "eval --suite: no suite named; expected loss, mqar, extrapolation or all");
    std::vector<std::string> suites;
    for (const std::string& suite : all_suites)
        if (std::find(named.begin(), named.end(), suite) != named.end()) suites.push_back(suite);
    return suites;
}

bool has(const std::vector<std::string>& suites, const char* suite) {
    return std::find(suites.begin(), suites.end(), suite) != suites.end();
}
}  // namespace

void add_eval_command(CLI::App& app) {
    struct Options {
        std::string checkpoint, suite = "all", corpus, json, plot, device = "cpu";
        int64_t seq_len = 0;
        LossOptions loss;
        MqarOptions mqar;
        ExtrapolationOptions extrapolation;
        int threads = 0;
    };
    auto options = std::make_shared<Options>();
    options->mqar.vocab_size = 0;  // 0: from the spec (below)
    CLI::App* cmd = app.add_subcommand("eval", "Evaluate a checkpoint: validation loss/perplexity/bits per byte, "
                                               "MQAR recall, loss by position beyond the training length");
    cmd->add_option("--checkpoint", options->checkpoint, "Run directory or checkpoint directory")->required();
    cmd->add_option("--suite", options->suite, "Comma-separated: loss, mqar, extrapolation, or all")
        ->capture_default_str();
    cmd->add_option("--corpus", options->corpus, "Prepared corpus directory (default: the spec's data.corpus)");
    cmd->add_option("--seq-len", options->seq_len, "Window length of the loss suite and the training length of "
                                                   "the extrapolation suite (default: the spec's data.seq_len)");
    cmd->add_option("--windows", options->loss.max_windows, "Validation windows for the loss suite (at most)")
        ->capture_default_str();
    cmd->add_option("--mqar-lengths", options->mqar.seq_lens, "MQAR sequence lengths")
        ->delimiter(',')
        ->capture_default_str();
    cmd->add_option("--mqar-pairs", options->mqar.num_kv_pairs, "MQAR key-value pair counts")
        ->delimiter(',')
        ->capture_default_str();
    cmd->add_option("--mqar-examples", options->mqar.examples, "MQAR examples per (length, pairs) cell")
        ->capture_default_str();
    cmd->add_option("--mqar-vocab", options->mqar.vocab_size,
                    "MQAR vocabulary (default: data.task_vocab_size when the spec trains on mqar, else up to 256)");
    cmd->add_option("--multiples", options->extrapolation.multiples, "Extrapolation window lengths, as multiples of "
                                                                     "the training length")
        ->delimiter(',')
        ->capture_default_str();
    cmd->add_option("--extrapolation-windows", options->extrapolation.windows, "Windows per multiple (at most)")
        ->capture_default_str();
    cmd->add_option("--json", options->json, "Write the results as JSON to this file (\"-\": to stdout, "
                                             "instead of the table)");
    cmd->add_option("--plot", options->plot, "Write the loss-by-position curve as a PNG (extrapolation suite)");
    cmd->add_option("--threads", options->threads, "Threads (0 = one per core)");
    cmd->add_option("--device", options->device, "Where the model runs: cpu, or cuda (fp32 on the first GPU)")
        ->check(CLI::IsMember({"cpu", "cuda"}))
        ->capture_default_str();
    cmd->callback([options] {
        if (options->threads > 0) omp_set_num_threads(options->threads);
        const std::vector<std::string> suites = parse_suites(options->suite);
        LINARCH_CHECK(options->plot.empty() || has(suites, "extrapolation"),
                      "eval --plot draws the extrapolation suite's curve: add extrapolation to --suite");
        const auto dir = resolve_checkpoint(options->checkpoint);
        const Spec spec = read_checkpoint_spec(dir);
        TrainerState state;
        const auto model = load_model(dir, options->device, "linarch eval", &state);
        const ModelScorer scorer(*model);

        EvalRun run;
        run.checkpoint = dir.string();
        run.step = state.step;
        run.suites = suites;
        const int64_t seq_len = options->seq_len > 0 ? options->seq_len : spec.data.seq_len;
        const auto add = [&](std::vector<Measurement> results) {
            run.results.insert(run.results.end(), results.begin(), results.end());
        };
        if (has(suites, "loss") || has(suites, "extrapolation")) {
            run.corpus = options->corpus.empty() ? spec.data.corpus : options->corpus;
            const CorpusSplit val = open_corpus_split(run.corpus, "val");
            if (has(suites, "loss")) {
                fmt::print(stderr, "eval: loss over up to {} validation windows of {} tokens\n",
                           options->loss.max_windows, seq_len);
                options->loss.seq_len = seq_len;
                add(evaluate_loss(scorer, val, options->loss));
            }
            if (has(suites, "extrapolation")) {
                fmt::print(stderr, "eval: loss by position at {} × {} tokens\n",
                           fmt::join(options->extrapolation.multiples, ", "), seq_len);
                options->extrapolation.train_seq_len = seq_len;
                add(evaluate_extrapolation(scorer, val, options->extrapolation));
            }
        }
        if (has(suites, "mqar")) {
            MqarOptions& mqar = options->mqar;
            if (mqar.vocab_size == 0)
                mqar.vocab_size = spec.data.task == "mqar" ? spec.data.task_vocab_size
                                                            : std::min<int64_t>(256, spec.model.vocab_size);
            fmt::print(stderr, "eval: MQAR, {} examples per cell, lengths {}, pairs {}, vocabulary {}\n",
                       mqar.examples, fmt::join(mqar.seq_lens, ","), fmt::join(mqar.num_kv_pairs, ","),
                       mqar.vocab_size);
            add(evaluate_mqar(scorer, mqar));
        }
        // Reorder to the canonical suite order (loss, mqar, extrapolation) for the outputs.
        std::stable_sort(run.results.begin(), run.results.end(), [](const Measurement& a, const Measurement& b) {
            const auto rank = [](const std::string& s) { return std::find(all_suites.begin(), all_suites.end(), s); };
            return rank(a.suite) < rank(b.suite);
        });

        if (!options->plot.empty()) write_position_loss_png(options->plot, run);
        const std::string json = eval_json(run).dump(2) + "\n";
        if (options->json == "-") {
            fmt::print("{}", json);
            return;
        }
        if (!options->json.empty()) write_file_atomic(options->json, json);
        fmt::print("{}", eval_table(run));
    });
}

}  // namespace linarch::cli
