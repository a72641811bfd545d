// Next-token sampling from logits: greedy, temperature, top-k, top-p (nucleus), min-p, the
// repetition / presence / frequency penalties over the tokens generated so far and OpenAI's logit bias;
// log-probabilities of the chosen and the top-n tokens. Reproducible per seed.
#pragma once
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "core/rng.hpp"

namespace linarch {

struct SamplingOptions {
    double temperature = 1.0;  // 0 = greedy
    int64_t top_k = 0;         // 0 = off
    double top_p = 1.0;        // 1 = off
    double min_p = 0.0;        // keep tokens with p ≥ min_p · p_max; 0 = off
    // Over the tokens generated so far (penalize_logits): the CTRL/Hugging Face repetition penalty
    // (a seen token's logit divided by it when positive, multiplied when negative; 1 = off) and
    // OpenAI's presence (once per seen token) and frequency (per occurrence) penalties (0 = off).
    double repetition_penalty = 1.0;
    double presence_penalty = 0.0;
    double frequency_penalty = 0.0;
    // OpenAI's logit_bias: (token id, bias in [−100, 100]) pairs, added to those tokens' logits after the
    // penalties (−100 in effect bans a token, +100 all but forces it); each token at most once.
    std::vector<std::pair<int32_t, double>> logit_bias = {};
    bool operator==(const SamplingOptions&) const = default;
    // The penalties need the generated tokens and the bias single entries of the full logits row, so
    // either takes the plain path (not fused sampling).
    bool penalized() const {
        return repetition_penalty != 1 || presence_penalty != 0 || frequency_penalty != 0 || !logit_bias.empty();
    }
};

// Checks the options' ranges; the message names the option.
void check_sampling_options(const SamplingOptions& options);

// Applies the penalties of `options` for the tokens in `history`, then its logit bias, to logits (in place).
void penalize_logits(std::span<float> logits, std::span<const int32_t> history, const SamplingOptions& options);

// Draws one token id from softmax(logits / temperature) restricted by top-k, then top-p, then min-p,
// by Gumbel-max with the fused sampler's noise (ops::lm_head_sample draws the same token from the
// same stream and logits); advances the stream past the draw (not at temperature 0).
int32_t sample_token(std::span<const float> logits, const SamplingOptions& options, RngStream& rng);

// log softmax(logits)[token], and the `top_n` most likely (token, log-probability) pairs, from the
// model's distribution (before temperature and truncation, as OpenAI's logprobs report).
struct TokenLogprobs {
    double logprob = 0;
    std::vector<std::pair<int32_t, double>> top;
};
TokenLogprobs token_logprobs(std::span<const float> logits, int32_t token, int64_t top_n);

}  // namespace linarch
