// The measurements of `linarch eval` (mission/discovery.md §4), each a function of a scorer (the
// next-token logits after every token of a sequence) so that the evaluator can be pinned on scorers
// whose answers are known: uniform logits, an MQAR oracle, a constant predictor.
//   loss           validation loss (nats/token), perplexity e^loss, and bits per byte of text from
//                  the corpus manifest (tokenizer-independent: byte and BPE models compare)
//   mqar           multi-query associative recall accuracy over a grid of sequence lengths and
//                  key-value pair counts, scored only at the query positions
//   extrapolation  loss by position bucket on validation windows 1×, 2×, 4× the training length
// Every result is a Measurement, one flat record per number (eval_report.hpp writes them out).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/spec.hpp"
#include "core/tensor.hpp"
#include "data/synthetic_tasks.hpp"

namespace linarch {

struct CorpusSplit;
class LanguageModel;

// Scores whole sequences: logits [T, V] (f32) receives the next-token logits after each of the T tokens.
class SequenceScorer {
public:
    virtual ~SequenceScorer() = default;
    virtual int64_t vocab_size() const = 0;
    virtual void score(std::span<const int32_t> tokens, Tensor& logits) const = 0;
};

// A language model through its streaming step: the sequence is fed in pieces of at most
// `piece_tokens` (chunkwise form, state carried), so memory does not grow with the length beyond
// the [T, V] logits the caller asked for. Equal to the training forward (tests/model).
class ModelScorer final : public SequenceScorer {
public:
    explicit ModelScorer(const LanguageModel& model, int64_t piece_tokens = 512);
    int64_t vocab_size() const override;
    void score(std::span<const int32_t> tokens, Tensor& logits) const override;

private:
    const LanguageModel& model_;
    int64_t piece_tokens_;
};

// One number of an evaluation. Coordinates that do not apply stay −1.
struct Measurement {
    std::string suite;   // "loss", "mqar", "extrapolation"
    std::string metric;  // "val_loss", "perplexity", "bits_per_byte", "accuracy", "chance", "loss"
    double value = 0;
    int64_t seq_len = -1;       // the evaluated sequence length
    int64_t num_kv_pairs = -1;  // mqar
    int64_t multiple = -1;      // extrapolation: seq_len / the training length
    int64_t position_begin = -1, position_end = -1;  // extrapolation: the bucket [begin, end)
    int64_t count = 0;          // tokens, or scored answers, behind the value
};

// Cross-entropy (nats) of next-token targets from logits [T, V]; targets < 0 are skipped. Returns the
// per-position losses (NaN where skipped), computed in double.
std::vector<double> token_losses(const Tensor& logits, std::span<const int32_t> targets);

struct LossOptions {
    int64_t seq_len = 256;
    int64_t max_windows = 256;  // the first non-overlapping windows of the split, at most this many
};
// val_loss, perplexity and bits_per_byte over the split's first windows of seq_len + 1 tokens.
std::vector<Measurement> evaluate_loss(const SequenceScorer& scorer, const CorpusSplit& split,
                                       const LossOptions& options);

struct MqarOptions {
    std::vector<int64_t> seq_lens = {64, 128, 256, 512};
    std::vector<int64_t> num_kv_pairs = {4, 8, 16, 32};
    int64_t examples = 64;          // per cell
    int64_t vocab_size = 256;       // data.task_vocab_size of the examples (≤ the model's vocabulary)
    double power_a = 0.01;
    uint64_t seed = 0x6576616cu;    // the evaluation set's seed: held out from any training seed
};
// accuracy and chance (2/V: the expected accuracy of any fixed answer, values being uniform on
// [V/2, V)) per feasible (seq_len, num_kv_pairs) cell; infeasible cells (T < 4D or V < 2D + 2) are
// left out.
std::vector<Measurement> evaluate_mqar(const SequenceScorer& scorer, const MqarOptions& options);

struct ExtrapolationOptions {
    int64_t train_seq_len = 256;
    std::vector<int64_t> multiples = {1, 2, 4};
    int64_t windows = 16;         // per multiple (fewer when the split is short)
    int64_t first_bucket = 16;    // buckets [0, 16), [16, 32), [32, 64), ... up to the window
};
// loss per position bucket for each multiple (windows of multiple · train_seq_len tokens).
std::vector<Measurement> evaluate_extrapolation(const SequenceScorer& scorer, const CorpusSplit& split,
                                                const ExtrapolationOptions& options);

// The power-of-two position buckets: [0, first), [first, 2·first), ... the last ending at length.
std::vector<std::pair<int64_t, int64_t>> position_buckets(int64_t length, int64_t first);

}  // namespace linarch
