#include "train/trainer.hpp"

#include <omp.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "data/loader.hpp"
#include "model/language_model.hpp"
#include "train/checkpoint.hpp"
#include "train/optimizer.hpp"
#include "train/progress.hpp"

namespace linarch {

namespace {
volatile std::sig_atomic_t interrupt_requested = 0;
extern "C" void on_interrupt(int) { interrupt_requested = 1; }

// Installs the SIGINT handler for the lifetime of a training run, restoring the old one after.
class InterruptGuard {
public:
    InterruptGuard() {
        interrupt_requested = 0;
        struct sigaction action {};
        action.sa_handler = on_interrupt;
        sigemptyset(&action.sa_mask);
        sigaction(SIGINT, &action, &previous_);
    }
    ~InterruptGuard() { sigaction(SIGINT, &previous_, nullptr); }

private:
    struct sigaction previous_ {};
};

// DIR/metrics.jsonl: one JSON object per line, flushed as written. On resume, records after the
// checkpoint's step are dropped so the file reads as one uninterrupted run.
class MetricsLog {
public:
    MetricsLog(const std::filesystem::path& path, int64_t keep_through_step, bool resume) : path_(path) {
        std::string kept;
        if (resume && std::filesystem::exists(path)) {
            std::istringstream lines(read_file(path, "metrics file"));
            for (std::string line; std::getline(lines, line);) {
                const auto record = nlohmann::json::parse(line, nullptr, false);
                if (!record.is_discarded() && record.value("step", int64_t(0)) <= keep_through_step)
                    kept += line + "\n";
            }
        }
        write_file_atomic(path, kept);
        out_.open(path, std::ios::app);
        LINARCH_CHECK(out_.good(), "cannot open metrics file \"{}\" for writing", path.string());
    }
    void write(const nlohmann::json& record) {
        out_ << record.dump() << "\n";
        out_.flush();
    }

private:
    std::filesystem::path path_;
    std::ofstream out_;
};

bool has_checkpoint(const std::filesystem::path& run_dir) {
    return std::filesystem::exists(run_dir / "checkpoints" / "latest");
}
}  // namespace

double evaluate(LanguageModel& model, const Spec& spec, const CorpusSplit& val) {
    SamplerOptions options;
    options.batch_size = spec.data.batch_size;
    options.seq_len = spec.data.seq_len;
    options.seed = spec.run.seed;
    options.order = WindowOrder::sequential;
    const WindowSampler sampler(val.tokens, options);
    Batch batch;
    DataPosition at;
    double loss_sum = 0;
    int64_t tokens = 0;
    for (int64_t i = 0; i < spec.run.eval_batches; ++i, at = sampler.next(at)) {
        sampler.batch(at, batch);
        const double mean = model.forward(batch.inputs, batch.targets, batch.batch_size, batch.seq_len);
        loss_sum += mean * double(model.counted_tokens());
        tokens += model.counted_tokens();
    }
    return loss_sum / double(tokens);
}

TrainResult train(const Spec& spec, const TrainOptions& options) {
    if (spec.run.threads > 0) omp_set_num_threads(int(spec.run.threads));
    const CorpusSplit train_split = open_corpus_split(spec.data.corpus, "train");
    const CorpusSplit val_split = open_corpus_split(spec.data.corpus, "val");
    LINARCH_CHECK(train_split.tokens.vocab_size() <= spec.model.vocab_size,
                  "{}: the corpus's vocabulary ({} tokens, tokenizer \"{}\") is larger than model.vocab_size {} in {}; "
                  "set model.vocab_size = {}", train_split.tokens.name(), train_split.tokens.vocab_size(),
                  train_split.manifest.tokenizer, spec.model.vocab_size, spec.source, train_split.tokens.vocab_size());
    SamplerOptions sampler_options;
    sampler_options.batch_size = spec.data.batch_size;
    sampler_options.seq_len = spec.data.seq_len;
    sampler_options.seed = spec.run.seed;
    sampler_options.order = WindowOrder::random;
    const WindowSampler sampler(train_split.tokens, sampler_options);

    LanguageModel model(spec.model);
    AdamW optimizer(spec.optim, model.parameters());
    TrainerState state;
    std::filesystem::create_directories(options.out_dir);
    if (options.resume) {
        LINARCH_CHECK(has_checkpoint(options.out_dir), "--resume: \"{}\" holds no checkpoint to resume from",
                      options.out_dir.string());
        load_checkpoint(resolve_checkpoint(options.out_dir), model, &optimizer, &state);
    } else {
        LINARCH_CHECK(!has_checkpoint(options.out_dir),
                      "\"{}\" already holds a run; pass --resume to continue it or choose another --out",
                      options.out_dir.string());
        model.initialize(spec.run.seed);
    }
    write_file_atomic(options.out_dir / "spec.toml", spec_to_toml(spec));
    MetricsLog metrics(options.out_dir / "metrics.jsonl", state.step, options.resume);

    TrainResult result;
    InterruptGuard interrupt_guard;
    ProgressBar progress(state.step, spec.run.steps, spec.run.log_every);
    if (options.resume) progress.message(fmt::format("resumed from step {} in {}", state.step, options.out_dir.string()));
    const int64_t tokens_per_step = spec.data.batch_size * spec.data.seq_len * spec.optim.grad_accum;
    Batch batch;
    auto save = [&] {
        result.checkpoint = save_checkpoint(options.out_dir, spec, model, optimizer, state);
    };
    while (state.step < spec.run.steps) {
        const auto start = std::chrono::steady_clock::now();
        model.parameters().zero_grad();
        double loss = 0;
        for (int64_t micro = 0; micro < spec.optim.grad_accum; ++micro) {
            sampler.batch(state.data, batch);
            state.data = sampler.next(state.data);
            const double micro_loss = model.forward(batch.inputs, batch.targets, batch.batch_size, batch.seq_len);
            // Mean over every token of every micro-batch: scale each micro-batch's sum by 1/total.
            model.backward(1.0 / double(model.counted_tokens() * spec.optim.grad_accum));
            loss += micro_loss / double(spec.optim.grad_accum);
        }
        if (!std::isfinite(loss)) {
            progress.finish();
            const std::string kept = has_checkpoint(options.out_dir)
                                         ? "the last good checkpoint " + resolve_checkpoint(options.out_dir).string() +
                                               " is kept"
                                         : "no checkpoint had been written yet";
            fail("training stopped: the loss became {} at step {} ({}); lower optim.lr or raise optim.grad_clip "
                 "and resume", loss, state.step + 1, kept);
        }
        const double grad_norm = clip_grad_norm(model.parameters(), spec.optim.grad_clip);
        const double lr = learning_rate(spec.optim, state.step, spec.run.steps);
        optimizer.step(model.parameters(), lr);
        ++state.step;
        state.tokens_seen += tokens_per_step;
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const double tokens_per_second = double(tokens_per_step) / seconds;
        metrics.write({{"step", state.step}, {"loss", loss}, {"lr", lr}, {"grad_norm", grad_norm},
                       {"tokens_per_s", tokens_per_second}, {"tokens", state.tokens_seen}});
        progress.update(state.step - 1, loss, tokens_per_second);
        result.train_loss = loss;

        const bool last = state.step == spec.run.steps;
        if (!last && spec.run.eval_every > 0 && state.step % spec.run.eval_every == 0) {
            const double val_loss = evaluate(model, spec, val_split);
            const double val_bpb = val_split.info().bits_per_byte(val_loss);
            metrics.write({{"step", state.step}, {"val_loss", val_loss}, {"val_bpb", val_bpb}});
            progress.message(fmt::format("step {}: val_loss {:.4f}, val_bpb {:.4f}", state.step, val_loss, val_bpb));
        }
        if (interrupt_requested) {
            save();
            progress.message(fmt::format("interrupted: saved {} at step {}", result.checkpoint.string(), state.step));
            result.interrupted = true;
            result.steps_done = state.step;
            return result;
        }
        if (!last && spec.run.checkpoint_every > 0 && state.step % spec.run.checkpoint_every == 0) save();
    }
    progress.finish();
    result.val_loss = evaluate(model, spec, val_split);
    result.val_bpb = val_split.info().bits_per_byte(result.val_loss);
    state.best_val_loss = result.val_loss;
    metrics.write({{"step", state.step}, {"val_loss", result.val_loss}, {"val_bpb", result.val_bpb}});
    save();
    result.steps_done = state.step;
    return result;
}

}  // namespace linarch
