// Next-token sampling from logits: greedy, temperature, top-k, top-p (nucleus), reproducible per seed.
#pragma once
#include <cstdint>
#include <span>

#include "core/rng.hpp"

namespace linarch {

struct SamplingOptions {
    double temperature = 1.0;  // 0 = greedy
    int64_t top_k = 0;         // 0 = off
    double top_p = 1.0;        // 1 = off
};

// Draws one token id from softmax(logits / temperature) restricted by top-k then top-p.
int32_t sample_token(std::span<const float> logits, const SamplingOptions& options, RngStream& rng);

}  // namespace linarch
