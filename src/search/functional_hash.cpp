#include "search/functional_hash.hpp"

#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "model/language_model.hpp"

namespace linarch {

namespace {
// Fixed for every hash ever stored: changing either changes every hash in every database.
constexpr uint64_t kInitSeed = 0x6c696e61726368;  // "linarch"
constexpr double kRelativeGrid = 1e-3;
}  // namespace

uint64_t model_function_hash(const ModelSpec& model, int64_t tokens) {
    LINARCH_CHECK(tokens >= 1, "functional hash: {} input tokens: expected >= 1", tokens);
    LanguageModel built(model, DType::f64);
    built.initialize(kInitSeed);
    RngStream rng(kInitSeed, stream_id("search.functional_hash.tokens"));
    std::vector<int32_t> inputs(static_cast<size_t>(tokens));
    for (int32_t& token : inputs) token = static_cast<int32_t>(rng.below(static_cast<uint64_t>(model.vocab_size)));
    Tensor logits = Tensor::empty({tokens, model.vocab_size}, DType::f64);
    LanguageModel::DecodeState state = built.new_decode_state();
    built.step(state, inputs, logits);

    const double* values = logits.data<double>();
    const int64_t vocab = model.vocab_size;
    std::vector<double> centred(static_cast<size_t>(tokens * vocab));
    double sum_squares = 0;
    for (int64_t t = 0; t < tokens; ++t) {
        double mean = 0;
        for (int64_t v = 0; v < vocab; ++v) mean += values[t * vocab + v];
        mean /= double(vocab);
        for (int64_t v = 0; v < vocab; ++v) {
            const double c = values[t * vocab + v] - mean;
            centred[size_t(t * vocab + v)] = c;
            sum_squares += c * c;
        }
    }
    const double rms = std::sqrt(sum_squares / double(centred.size()));
    LINARCH_CHECK(std::isfinite(rms), "functional hash: the model's logits at initialisation are not finite");
    // A model whose logits do not depend on the token (rms 0) hashes as all zeros on a unit grid.
    const double grid = rms > 0 ? kRelativeGrid * rms : 1.0;
    std::vector<int64_t> quantised(centred.size() + 1);
    quantised[0] = rms > 0 ? std::llround(std::log(rms) / kRelativeGrid) : std::numeric_limits<int64_t>::min();
    for (size_t i = 0; i < centred.size(); ++i) quantised[i + 1] = std::llround(centred[i] / grid);
    return XXH3_64bits(quantised.data(), quantised.size() * sizeof(int64_t));
}

uint64_t functional_hash(const Spec& spec) {
    // The recipe: everything but the model, with the keys that cannot change a result at defaults.
    Spec recipe = spec;
    recipe.model = ModelSpec{};
    const RunSpec defaults;
    recipe.run.log_every = defaults.log_every;
    recipe.run.eval_every = defaults.eval_every;
    recipe.run.checkpoint_every = defaults.checkpoint_every;
    recipe.run.threads = defaults.threads;
    const std::string recipe_text = spec_to_toml(recipe);
    const uint64_t parts[2] = {model_function_hash(spec.model, std::min<int64_t>(spec.data.seq_len, 64)),
                               XXH3_64bits(recipe_text.data(), recipe_text.size())};
    return XXH3_64bits(parts, sizeof(parts));
}

std::string hash_hex(uint64_t hash) { return fmt::format("{:016x}", hash); }

}  // namespace linarch
