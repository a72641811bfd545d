#include "train/trainer.hpp"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "backend/cuda/device.hpp"
#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "data/loader.hpp"
#include "data/synthetic_tasks.hpp"
#include "eval/evaluate.hpp"
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

// Mean validation loss (nats/token) over spec.run.eval_batches sequential batches of the corpus's
// validation split (wrapping around into further epochs of it when it is short).
double corpus_validation_loss(LanguageModel& model, const Spec& spec, const CorpusSplit& val) {
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

struct Validation {
    double loss = 0;
    double bits_per_byte = std::nan("");  // corpus only
    double accuracy = std::nan("");       // synthetic tasks only: at the answer positions
};

// Where a run's batches and its validation come from: the prepared corpus (random windows of the
// train split; sequential windows of the val split) or a synthetic task (data.task: example n of
// batch b is a pure function of (seed, b); validation uses examples keyed by another seed, so it
// never sees a training example).
class TrainingData {
public:
    virtual ~TrainingData() = default;
    virtual void batch(const DataPosition& at, Batch& out) const = 0;
    virtual DataPosition next(const DataPosition& at) const = 0;
    virtual Validation validate(LanguageModel& model) const = 0;
};

class CorpusData final : public TrainingData {
public:
    explicit CorpusData(const Spec& spec)
        : spec_(spec),
          train_(open_corpus_split(spec.data.corpus, "train")),
          val_(open_corpus_split(spec.data.corpus, "val")),
          sampler_(train_.tokens, sampler_options(spec)) {
        LINARCH_CHECK(train_.tokens.vocab_size() <= spec.model.vocab_size,
                      "{}: the corpus's vocabulary ({} tokens, tokenizer \"{}\") is larger than model.vocab_size {} "
                      "in {}; set model.vocab_size = {}", train_.tokens.name(), train_.tokens.vocab_size(),
                      train_.manifest.tokenizer, spec.model.vocab_size, spec.source, train_.tokens.vocab_size());
    }
    void batch(const DataPosition& at, Batch& out) const override { sampler_.batch(at, out); }
    DataPosition next(const DataPosition& at) const override { return sampler_.next(at); }
    Validation validate(LanguageModel& model) const override {
        Validation v;
        v.loss = corpus_validation_loss(model, spec_, val_);
        v.bits_per_byte = val_.info().bits_per_byte(v.loss);
        return v;
    }

private:
    static SamplerOptions sampler_options(const Spec& spec) {
        SamplerOptions options;
        options.batch_size = spec.data.batch_size;
        options.seq_len = spec.data.seq_len;
        options.seed = spec.run.seed;
        options.order = WindowOrder::random;
        return options;
    }
    const Spec& spec_;
    CorpusSplit train_, val_;
    WindowSampler sampler_;
};

class TaskData final : public TrainingData {
public:
    explicit TaskData(const Spec& spec)
        : spec_(spec),
          train_(make_synthetic_task(spec.data, spec.run.seed)),
          val_(make_synthetic_task(spec.data, spec.run.seed ^ validation_key)) {
        LINARCH_CHECK(spec.data.task_vocab_size <= spec.model.vocab_size,
                      "{}: data.task_vocab_size = {} is larger than model.vocab_size = {}", spec.source,
                      spec.data.task_vocab_size, spec.model.vocab_size);
    }
    void batch(const DataPosition& at, Batch& out) const override { train_->batch(at.batch, spec_.data.batch_size, out); }
    DataPosition next(const DataPosition& at) const override { return {at.epoch, at.batch + 1}; }
    Validation validate(LanguageModel& model) const override {
        Batch batch;
        double loss_sum = 0;
        int64_t answers = 0;
        TaskAccuracy accuracy;
        const Device device = model.parameters().device();
        const int64_t rows = spec_.data.batch_size * spec_.data.seq_len, V = spec_.model.vocab_size;
        Tensor logits = Tensor::empty({rows, V}, DType::f32, device);
        for (int64_t i = 0; i < spec_.run.eval_batches; ++i) {
            val_->batch(i, spec_.data.batch_size, batch);
            const double mean = model.forward(batch.inputs, batch.targets, batch.batch_size, batch.seq_len);
            loss_sum += mean * double(model.counted_tokens());
            answers += model.counted_tokens();
            model.last_logits(logits);
            const Tensor host = logits.to(Device::cpu);
            accuracy += score_logits({host.data<float>(), static_cast<size_t>(host.numel())}, V, batch.targets);
        }
        Validation v;
        v.loss = loss_sum / double(answers);
        v.accuracy = accuracy.fraction();
        return v;
    }

private:
    static constexpr uint64_t validation_key = 0x76616c6964617465;  // "validate"
    const Spec& spec_;
    std::unique_ptr<SyntheticTask> train_, val_;
};

std::unique_ptr<TrainingData> open_training_data(const Spec& spec) {
    if (spec.data.task == "corpus") return std::make_unique<CorpusData>(spec);
    return std::make_unique<TaskData>(spec);
}

nlohmann::json validation_record(int64_t step, const Validation& v) {
    nlohmann::json record = {{"step", step}, {"val_loss", v.loss}};
    if (!std::isnan(v.bits_per_byte)) record["val_bpb"] = v.bits_per_byte;
    if (!std::isnan(v.accuracy)) record["val_accuracy"] = v.accuracy;
    return record;
}

ValidationPoint validation_point(int64_t step, double train_loss, const Validation& v) {
    return {step, train_loss, v.loss, v.bits_per_byte, v.accuracy};
}

std::string validation_text(const Validation& v) {
    std::string text = fmt::format("val_loss {:.4f}", v.loss);
    if (!std::isnan(v.bits_per_byte)) text += fmt::format(", val_bpb {:.4f}", v.bits_per_byte);
    if (!std::isnan(v.accuracy)) text += fmt::format(", val_accuracy {:.4f}", v.accuracy);
    return text;
}
}  // namespace

TrainResult train(const Spec& spec, const TrainOptions& options) {
    if (spec.run.threads > 0) omp_set_num_threads(int(spec.run.threads));
    const std::unique_ptr<TrainingData> data = open_training_data(spec);

    LINARCH_CHECK(options.precision == ops::Precision::fp32 || options.device == Device::cuda,
                  "--precision {} needs --device cuda (the CPU trains in fp32)", ops::precision_name(options.precision));
    if (options.device == Device::cuda) cuda::require_device("linarch train --device cuda");
    const ops::ScopedPrecision precision(options.precision);
    LanguageModel model(spec.model, DType::f32, options.device);
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
    double training_seconds = 0;
    int64_t steps_here = 0;
    auto record = [&](const Validation& validation) {
        result.val_loss = validation.loss;
        result.val_bpb = validation.bits_per_byte;
        result.val_accuracy = validation.accuracy;
        result.tokens_per_second = steps_here > 0 ? double(steps_here * tokens_per_step) / training_seconds : 0;
    };
    while (state.step < spec.run.steps) {
        const auto start = std::chrono::steady_clock::now();
        model.parameters().zero_grad();
        double loss = 0;
        for (int64_t micro = 0; micro < spec.optim.grad_accum; ++micro) {
            data->batch(state.data, batch);
            state.data = data->next(state.data);
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
        training_seconds += seconds;
        ++steps_here;
        metrics.write({{"step", state.step}, {"loss", loss}, {"lr", lr}, {"grad_norm", grad_norm},
                       {"tokens_per_s", tokens_per_second}, {"tokens", state.tokens_seen}});
        progress.update(state.step - 1, loss, tokens_per_second);
        result.train_loss = loss;

        const bool last = state.step == spec.run.steps;
        const bool scheduled = spec.run.eval_every > 0 && state.step % spec.run.eval_every == 0;
        if (!last && (scheduled || std::ranges::find(options.validate_at, state.step) != options.validate_at.end())) {
            const Validation validation = data->validate(model);
            metrics.write(validation_record(state.step, validation));
            progress.message(fmt::format("step {}: {}", state.step, validation_text(validation)));
            if (options.on_validation && !options.on_validation(validation_point(state.step, loss, validation))) {
                save();
                progress.finish();
                record(validation);
                result.stopped_early = true;
                result.steps_done = state.step;
                return result;
            }
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
    const Validation validation = data->validate(model);
    record(validation);
    state.best_val_loss = result.val_loss;
    metrics.write(validation_record(state.step, validation));
    if (options.on_validation) options.on_validation(validation_point(state.step, result.train_loss, validation));
    save();
    result.steps_done = state.step;
    return result;
}

}  // namespace linarch
