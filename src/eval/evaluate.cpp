#include "eval/evaluate.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.hpp"
#include "data/loader.hpp"
#include "model/language_model.hpp"

namespace linarch {

ModelScorer::ModelScorer(const LanguageModel& model, int64_t piece_tokens) : model_(model), piece_tokens_(piece_tokens) {
    LINARCH_CHECK(piece_tokens >= 1, "ModelScorer: piece_tokens must be ≥ 1, got {}", piece_tokens);
}

int64_t ModelScorer::vocab_size() const { return model_.spec().vocab_size; }

void ModelScorer::score(std::span<const int32_t> tokens, Tensor& logits) const {
    const auto T = static_cast<int64_t>(tokens.size());
    const int64_t V = vocab_size();
    check_shape(logits, {T, V}, "ModelScorer: logits");
    auto state = model_.new_decode_state();
    // The model's logits on its device; each piece's come to the host.
    const Device device = model_.parameters().device();
    Tensor piece_logits;
    for (int64_t start = 0; start < T; start += piece_tokens_) {
        const int64_t n = std::min(piece_tokens_, T - start);
        if (piece_logits.dim() == 0 || piece_logits.size(0) != n) piece_logits = Tensor::empty({n, V}, DType::f32, device);
        model_.step(state, tokens.subspan(static_cast<size_t>(start), static_cast<size_t>(n)), piece_logits);
        const Tensor host = piece_logits.to(Device::cpu);
        std::copy_n(host.data<float>(), n * V, logits.data<float>() + start * V);
    }
}

std::vector<double> token_losses(const Tensor& logits, std::span<const int32_t> targets) {
    const int64_t T = logits.size(0), V = logits.size(1);
    LINARCH_CHECK(static_cast<int64_t>(targets.size()) == T, "token_losses: {} targets for {} rows of logits",
                  targets.size(), T);
    std::vector<double> losses(static_cast<size_t>(T), std::numeric_limits<double>::quiet_NaN());
    const float* rows = logits.data<float>();
    for (int64_t t = 0; t < T; ++t) {
        const int32_t target = targets[static_cast<size_t>(t)];
        if (target < 0) continue;
        LINARCH_CHECK(target < V, "token_losses: target {} at position {} is outside the vocabulary of {}", target,
                      t, V);
        const float* row = rows + t * V;
        const double max = *std::max_element(row, row + V);
        double sum = 0;
        for (int64_t v = 0; v < V; ++v) sum += std::exp(double(row[v]) - max);
        losses[static_cast<size_t>(t)] = max + std::log(sum) - double(row[target]);
    }
    return losses;
}

namespace {
// Reads window w of `length` + 1 tokens (non-overlapping windows from the start of the split).
void read_window(const CorpusSplit& split, int64_t length, int64_t w, std::vector<int32_t>& inputs,
                 std::vector<int32_t>& targets) {
    std::vector<int32_t> window(static_cast<size_t>(length + 1));
    split.tokens.read(w * length, window);
    inputs.assign(window.begin(), window.end() - 1);
    targets.assign(window.begin() + 1, window.end());
}

int64_t windows_in(const CorpusSplit& split, int64_t length) {
    return split.tokens.size() > length ? (split.tokens.size() - 1) / length : 0;
}

void check_scorer_fits(const SequenceScorer& scorer, const CorpusSplit& split) {
    LINARCH_CHECK(split.tokens.vocab_size() <= scorer.vocab_size(),
                  "{}: the corpus's vocabulary ({} tokens, tokenizer \"{}\") is larger than the model's ({})",
                  split.tokens.name(), split.tokens.vocab_size(), split.manifest.tokenizer, scorer.vocab_size());
}
}  // namespace

std::vector<Measurement> evaluate_loss(const SequenceScorer& scorer, const CorpusSplit& split,
                                       const LossOptions& options) {
    check_scorer_fits(scorer, split);
    LINARCH_CHECK(options.seq_len >= 1 && options.max_windows >= 1,
                  "eval loss: seq_len and the window count must be ≥ 1, got {} and {}", options.seq_len,
                  options.max_windows);
    const int64_t windows = std::min(options.max_windows, windows_in(split, options.seq_len));
    LINARCH_CHECK(windows >= 1, "{}: the {} split holds {} tokens, too few for one window of {} + 1",
                  split.tokens.name(), split.name, split.tokens.size(), options.seq_len);
    Tensor logits = Tensor::empty({options.seq_len, scorer.vocab_size()});
    std::vector<int32_t> inputs, targets;
    double sum = 0;
    int64_t count = 0;
    for (int64_t w = 0; w < windows; ++w) {
        read_window(split, options.seq_len, w, inputs, targets);
        scorer.score(inputs, logits);
        for (double loss : token_losses(logits, targets)) {
            sum += loss;
            ++count;
        }
    }
    const double loss = sum / double(count);
    const auto measure = [&](const char* metric, double value) {
        Measurement m;
        m.suite = "loss";
        m.metric = metric;
        m.value = value;
        m.seq_len = options.seq_len;
        m.count = count;
        return m;
    };
    return {measure("val_loss", loss), measure("perplexity", std::exp(loss)),
            measure("bits_per_byte", split.info().bits_per_byte(loss))};
}

std::vector<Measurement> evaluate_mqar(const SequenceScorer& scorer, const MqarOptions& options) {
    LINARCH_CHECK(options.vocab_size <= scorer.vocab_size(),
                  "eval mqar: the task vocabulary ({}) is larger than the model's ({})", options.vocab_size,
                  scorer.vocab_size());
    LINARCH_CHECK(options.examples >= 1, "eval mqar: examples per cell must be ≥ 1, got {}", options.examples);
    const int64_t V = options.vocab_size;
    const double chance = 1.0 / double(V - V / 2);
    std::vector<Measurement> out;
    for (const int64_t T : options.seq_lens)
        for (const int64_t D : options.num_kv_pairs) {
            if (T < 4 * D || V < 2 * D + 2) continue;
            DataSpec data;
            data.task = "mqar";
            data.seq_len = T;
            data.task_vocab_size = V;
            data.num_kv_pairs = D;
            data.power_a = options.power_a;
            const auto task = make_synthetic_task(data, options.seed);
            std::vector<int32_t> inputs(static_cast<size_t>(T)), targets(static_cast<size_t>(T));
            Tensor logits = Tensor::empty({T, scorer.vocab_size()});
            TaskAccuracy accuracy;
            for (int64_t n = 0; n < options.examples; ++n) {
                task->example(n, inputs, targets);
                scorer.score(inputs, logits);
                accuracy += score_logits({logits.data<float>(), static_cast<size_t>(logits.numel())},
                                         scorer.vocab_size(), targets);
            }
            for (const auto& [metric, value] : {std::pair{"accuracy", accuracy.fraction()}, std::pair{"chance", chance}}) {
                Measurement m;
                m.suite = "mqar";
                m.metric = metric;
                m.value = value;
                m.seq_len = T;
                m.num_kv_pairs = D;
                m.count = accuracy.total;
                out.push_back(m);
            }
        }
    LINARCH_CHECK(!out.empty(), "eval mqar: no (seq_len, num_kv_pairs) cell is feasible with vocabulary {} "
                                "(MQAR needs seq_len ≥ 4·pairs and vocabulary ≥ 2·pairs + 2)", V);
    return out;
}

std::vector<std::pair<int64_t, int64_t>> position_buckets(int64_t length, int64_t first) {
    LINARCH_CHECK(length >= 1 && first >= 1, "position buckets: length and first bucket must be ≥ 1, got {} and {}",
                  length, first);
    std::vector<std::pair<int64_t, int64_t>> buckets;
    for (int64_t begin = 0, end = std::min(first, length); begin < length; begin = end, end = std::min(2 * end, length))
        buckets.emplace_back(begin, end);
    return buckets;
}

std::vector<Measurement> evaluate_extrapolation(const SequenceScorer& scorer, const CorpusSplit& split,
                                                const ExtrapolationOptions& options) {
    check_scorer_fits(scorer, split);
    LINARCH_CHECK(options.train_seq_len >= 1 && options.windows >= 1,
                  "eval extrapolation: the training length and window count must be ≥ 1, got {} and {}",
                  options.train_seq_len, options.windows);
    std::vector<Measurement> out;
    for (const int64_t multiple : options.multiples) {
        LINARCH_CHECK(multiple >= 1, "eval extrapolation: multiples must be ≥ 1, got {}", multiple);
        const int64_t length = multiple * options.train_seq_len;
        const int64_t windows = std::min(options.windows, windows_in(split, length));
        LINARCH_CHECK(windows >= 1, "{}: the {} split holds {} tokens, too few for one window of {} ({}× the "
                                    "training length) + 1", split.tokens.name(), split.name, split.tokens.size(),
                      length, multiple);
        const auto buckets = position_buckets(length, options.first_bucket);
        std::vector<double> sums(buckets.size(), 0.0);
        std::vector<int64_t> counts(buckets.size(), 0);
        Tensor logits = Tensor::empty({length, scorer.vocab_size()});
        std::vector<int32_t> inputs, targets;
        for (int64_t w = 0; w < windows; ++w) {
            read_window(split, length, w, inputs, targets);
            scorer.score(inputs, logits);
            const std::vector<double> losses = token_losses(logits, targets);
            for (size_t b = 0; b < buckets.size(); ++b)
                for (int64_t t = buckets[b].first; t < buckets[b].second; ++t) {
                    sums[b] += losses[static_cast<size_t>(t)];
                    ++counts[b];
                }
        }
        for (size_t b = 0; b < buckets.size(); ++b) {
            Measurement m;
            m.suite = "extrapolation";
            m.metric = "loss";
            m.value = sums[b] / double(counts[b]);
            m.seq_len = length;
            m.multiple = multiple;
            m.position_begin = buckets[b].first;
            m.position_end = buckets[b].second;
            m.count = counts[b];
            out.push_back(m);
        }
    }
    return out;
}

}  // namespace linarch
