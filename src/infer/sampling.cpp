#include "infer/sampling.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "core/error.hpp"
#include "ops/fused_sampling.hpp"

namespace linarch {

void check_sampling_options(const SamplingOptions& options) {
    LINARCH_CHECK(options.temperature >= 0 && std::isfinite(options.temperature), "temperature must be ≥ 0, got {}",
                  options.temperature);
    LINARCH_CHECK(options.top_p > 0 && options.top_p <= 1, "top_p must be in (0, 1], got {}", options.top_p);
    LINARCH_CHECK(options.top_k >= 0, "top_k must be ≥ 0, got {}", options.top_k);
    LINARCH_CHECK(options.min_p >= 0 && options.min_p <= 1, "min_p must be in [0, 1], got {}", options.min_p);
    LINARCH_CHECK(options.repetition_penalty > 0 && std::isfinite(options.repetition_penalty),
                  "repetition_penalty must be > 0, got {}", options.repetition_penalty);
    LINARCH_CHECK(std::abs(options.presence_penalty) <= 2 && std::abs(options.frequency_penalty) <= 2,
                  "presence_penalty and frequency_penalty must be in [-2, 2] (as OpenAI's API), got {} and {}",
                  options.presence_penalty, options.frequency_penalty);
    std::vector<int32_t> biased;
    for (const auto& [token, bias] : options.logit_bias) {
        LINARCH_CHECK(token >= 0, "logit_bias: token ids must be ≥ 0, got {}", token);
        LINARCH_CHECK(std::abs(bias) <= 100, "logit_bias: biases must be in [-100, 100] (as OpenAI's API), got {} for "
                      "token {}", bias, token);
        biased.push_back(token);
    }
    std::sort(biased.begin(), biased.end());
    LINARCH_CHECK(std::adjacent_find(biased.begin(), biased.end()) == biased.end(),
                  "logit_bias: token {} is given more than once", *std::adjacent_find(biased.begin(), biased.end()));
}

namespace {

// The repetition, presence and frequency penalties for the tokens in history (in place).
void apply_penalties(std::span<float> logits, std::span<const int32_t> history, const SamplingOptions& options) {
    if (options.repetition_penalty == 1 && options.presence_penalty == 0 && options.frequency_penalty == 0) return;
    std::vector<int32_t> seen(history.begin(), history.end());
    std::sort(seen.begin(), seen.end());
    for (size_t i = 0; i < seen.size();) {
        size_t j = i;
        while (j < seen.size() && seen[j] == seen[i]) ++j;
        const int32_t token = seen[i];
        LINARCH_CHECK(token >= 0 && size_t(token) < logits.size(), "penalize_logits: token {} outside [0, {})", token,
                      logits.size());
        float& logit = logits[size_t(token)];
        logit = logit > 0 ? float(logit / options.repetition_penalty) : float(logit * options.repetition_penalty);
        logit -= float(options.presence_penalty + options.frequency_penalty * double(j - i));
        i = j;
    }
}

}  // namespace

void penalize_logits(std::span<float> logits, std::span<const int32_t> history, const SamplingOptions& options) {
    for (const auto& [token, bias] : options.logit_bias)
        LINARCH_CHECK(token >= 0 && size_t(token) < logits.size(), "logit_bias: token {} outside the vocabulary [0, {})",
                      token, logits.size());
    apply_penalties(logits, history, options);
    for (const auto& [token, bias] : options.logit_bias) logits[size_t(token)] += float(bias);
}

TokenLogprobs token_logprobs(std::span<const float> logits, int32_t token, int64_t top_n) {
    LINARCH_CHECK(token >= 0 && size_t(token) < logits.size(), "token_logprobs: token {} outside [0, {})", token,
                  logits.size());
    double max_logit = -std::numeric_limits<double>::infinity(), sum = 0;
    for (float x : logits) max_logit = std::max(max_logit, double(x));
    for (float x : logits) sum += std::exp(double(x) - max_logit);
    const double log_total = max_logit + std::log(sum);
    TokenLogprobs out;
    out.logprob = double(logits[size_t(token)]) - log_total;
    const size_t n = std::min(logits.size(), size_t(std::max<int64_t>(top_n, 0)));
    std::vector<int32_t> order(logits.size());
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + std::ptrdiff_t(n), order.end(),
                      [&](int32_t a, int32_t b) { return logits[size_t(a)] > logits[size_t(b)]; });
    for (size_t i = 0; i < n; ++i) out.top.emplace_back(order[i], double(logits[size_t(order[i])]) - log_total);
    return out;
}

int32_t sample_token(std::span<const float> logits, const SamplingOptions& options, RngStream& rng) {
    LINARCH_CHECK(!logits.empty(), "sample_token: empty logits");
    check_sampling_options(options);
    if (options.temperature == 0)
        return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    // Candidates by descending logit; top-k keeps a prefix, top-p the smallest prefix whose
    // probability mass reaches p (always at least one token).
    std::vector<int32_t> order(logits.size());
    std::iota(order.begin(), order.end(), 0);
    // Equal logits in id order, as the fused sampler orders them: the same top-k set on ties.
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
        return logits[size_t(a)] > logits[size_t(b)] || (logits[size_t(a)] == logits[size_t(b)] && a < b);
    });
    size_t keep = order.size();
    if (options.top_k > 0) keep = std::min(keep, size_t(options.top_k));
    const double max_logit = logits[size_t(order[0])];
    std::vector<double> weights(keep);
    double total = 0;
    for (size_t i = 0; i < keep; ++i) {
        weights[i] = std::exp((logits[size_t(order[i])] - max_logit) / options.temperature);
        total += weights[i];
    }
    if (options.top_p < 1) {
        double mass = 0;
        size_t cut = 0;
        while (cut < keep && mass < options.top_p * total) mass += weights[cut++];
        keep = std::max<size_t>(cut, 1);
    }
    if (options.min_p > 0) {
        // weights[0] is the most likely token's (p_max relative to the same normaliser).
        size_t cut = 1;
        while (cut < keep && weights[cut] >= options.min_p * weights[0]) ++cut;
        keep = cut;
    }
    // Gumbel-max over the kept tokens with the fused sampler's noise (ops/fused_sampling.hpp): the
    // argmax of l/T + g samples softmax(l/T) restricted to them, and both paths draw the same token
    // from the same stream position. Ties go to the lower id, as there.
    const double inv_temperature = 1.0 / options.temperature;
    int32_t best = order[0];
    double best_score = -std::numeric_limits<double>::infinity();
    for (size_t i = 0; i < keep; ++i) {
        const int32_t token = order[i];
        const double score = double(logits[size_t(token)]) * inv_temperature + ops::sampling_gumbel_noise(rng, token);
        if (score > best_score || (score == best_score && token < best)) {
            best = token;
            best_score = score;
        }
    }
    ops::advance_past_draw(rng, int64_t(logits.size()));
    return best;
}

}  // namespace linarch
