// The generation engine: many sequences decoded together with continuous batching. Requests join
// (their prompts prefilled in the chunkwise form) and leave (stop token, stop string, max tokens)
// between steps; every step feeds one token of each active sequence through the model as one batch.
// Each request samples from its own seeded stream, so its output does not depend on what else runs
// beside it: a request gives the same tokens alone or in any batch. Decode steps sample fused into the
// LM head (FlashSampling, ops::lm_head_sample: no [B, V] logits) except for requests whose penalties or
// top-n logprobs need the whole row; both draw the same token from the same stream.
// State per sequence is the model's DecodeState: fixed-size for linear layers (a KV cache only in the
// softmax layers of hybrids), so memory does not grow with the generated length of a pure linear model.
#pragma once
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "data/tokenizer.hpp"
#include "infer/sampling.hpp"
#include "model/language_model.hpp"

namespace linarch {

struct GenerationRequest {
    std::vector<int32_t> prompt;  // at least one token
    int64_t max_tokens = 16;
    SamplingOptions sampling;
    uint64_t seed = 1;
    std::vector<int32_t> stop_tokens;        // generation ends after emitting one (it is reported)
    std::vector<std::string> stop_strings;   // ends when the text contains one (needs a tokenizer)
    int64_t top_logprobs = -1;               // ≥ 0: report the chosen token's logprob and this many top ones
};

enum class FinishReason { none, length, stop };

// One generated token of one request.
struct TokenEvent {
    int64_t request = 0;
    int32_t token = 0;
    std::string text;  // the token's text (empty without a tokenizer)
    std::optional<TokenLogprobs> logprobs;
    FinishReason finish = FinishReason::none;  // set on the request's last token
};

class Engine {
public:
    // tokenizer may be null (then stop strings are refused and events carry no text).
    Engine(const LanguageModel& model, const Tokenizer* tokenizer, int64_t max_batch);

    // Queues a request; returns its id. Bad requests (empty prompt, out-of-vocabulary ids, bad
    // sampling options) are refused here with a message naming the field.
    int64_t submit(GenerationRequest request);
    // One round: admits queued requests while there is room (prefilling each prompt, which yields its
    // first token), then one batched decode step over the sequences admitted earlier.
    std::vector<TokenEvent> step();
    bool idle() const { return waiting_.empty() && active_.empty(); }
    int64_t active() const { return int64_t(active_.size()); }
    int64_t waiting() const { return int64_t(waiting_.size()); }

    // Drops a request (queued or active), e.g. when its client went away.
    void cancel(int64_t request);

private:
    struct Sequence {
        int64_t id;
        GenerationRequest request;
        LanguageModel::DecodeState state;
        RngStream rng;
        std::vector<int32_t> generated;
        std::string text;  // decoded generated text, for stop strings
    };
    // Samples the next token of `sequence` from its logits row; returns the event (finish set if done).
    TokenEvent emit(Sequence& sequence, std::span<float> logits);
    // Records a drawn token: text, stop conditions; returns the event.
    TokenEvent record(Sequence& sequence, int32_t token, std::optional<TokenLogprobs> logprobs);
    // One draw for each active sequence from its final hidden state [n, d] (below).
    std::vector<TokenEvent> draw_active(const Tensor& hidden);

    const LanguageModel& model_;
    const Tokenizer* tokenizer_;
    int64_t max_batch_;
    int64_t next_id_ = 0;
    std::deque<Sequence> waiting_;
    std::vector<Sequence> active_;
};

}  // namespace linarch
