// Text generation with the recurrent (O(1)-state) form: the prompt is fed token by token into the
// decode state, then tokens are sampled one at a time. Byte-level tokens.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "infer/sampling.hpp"
#include "model/language_model.hpp"

namespace linarch {

struct GenerateOptions {
    int64_t max_tokens = 200;
    SamplingOptions sampling;
    uint64_t seed = 1;
};

// Returns the generated continuation (without the prompt). on_token, if set, receives each new
// piece of text as it is produced (for streaming to a terminal).
std::string generate_text(const LanguageModel& model, const std::string& prompt, const GenerateOptions& options,
                          const std::function<void(const std::string&)>& on_token = {});

}  // namespace linarch
