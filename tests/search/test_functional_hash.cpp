#include <gtest/gtest.h>

#include <filesystem>
#include <map>

#include "core/rng.hpp"
#include "search/functional_hash.hpp"
#include "support/testkit.hpp"

using namespace linarch;

namespace {

// Two layers at d = 32 with a Mamba-2 gated delta rule, small chunks and a short conv.
Spec tiny_spec(const std::vector<std::string>& overrides = {}) {
    return parse_spec(R"(
[model]
d_model = 32
n_layers = 2
n_heads = 2
head_dim = 16
mlp_hidden = 64
init_std = 0.3
[model.mixer]
update = "delta"
decay = "scalar"
decay_parameterization = "mamba2"
qk_norm = "l2"
chunk_size = 4
conv_size = 3
[data]
seq_len = 48
)",
                      "tiny", overrides);
}

uint64_t hash_of(const std::vector<std::string>& overrides) { return functional_hash(tiny_spec(overrides)); }

}  // namespace

TEST(FunctionalHash, SyntacticallyDifferentSameFunctionHashesEqual) {
    const uint64_t base = hash_of({});
    EXPECT_EQ(hash_of({}), base);  // deterministic
    // Keys set to their defaults instead of left out.
    EXPECT_EQ(hash_of({"model.mixer.output_gate=\"none\"", "model.mixer.rotation=\"none\"", "model.norm_eps=1e-5"}),
              base);
    // A [model.layers.N] table that repeats the mixer the layer takes anyway.
    EXPECT_EQ(hash_of({"model.layers.1.decay=\"scalar\"", "model.layers.0.conv_size=3"}), base);
    // The same function by another route: chunkwise with other chunk lengths (float64 keeps the
    // rounding differences far below the grid).
    RngStream rng(testkit::test_seed(), 1);
    const int64_t chunk = int64_t(1) << (1 + rng.below(6));  // 2..64
    EXPECT_EQ(hash_of({fmt::format("model.mixer.chunk_size={}", chunk)}), base) << "chunk_size " << chunk;
    // Keys that only change logging, checkpointing or the thread count.
    EXPECT_EQ(hash_of({"run.log_every=7", "run.checkpoint_every=0", "run.threads=1", "run.eval_every=0"}), base);
}

TEST(FunctionalHash, SlightlyDifferentFunctionsHashDifferently) {
    const uint64_t base = hash_of({});
    RngStream rng(testkit::test_seed(), 2);
    // A 1-3% larger initialisation scale: every logit moves a little.
    const double init_std = 0.3 * (1.01 + 0.02 * rng.uniform());
    EXPECT_NE(hash_of({fmt::format("model.init_std={}", init_std)}), base) << "init_std " << init_std;
    EXPECT_NE(hash_of({"model.mixer.conv_size=4"}), base);
    EXPECT_NE(hash_of({"model.mixer.output_gate=\"sigmoid\""}), base);
    EXPECT_NE(hash_of({"model.layers.0.update=\"additive\""}), base);
    EXPECT_NE(hash_of({"model.mlp_hidden=72"}), base);
    // Same model, another training recipe: one function, two different trials.
    const Spec other_lr = tiny_spec({fmt::format("optim.lr={}", 1e-3 * (1 + rng.uniform()))});
    EXPECT_EQ(model_function_hash(other_lr.model, 48), model_function_hash(tiny_spec().model, 48));
    EXPECT_NE(functional_hash(other_lr), base);
    EXPECT_NE(hash_of({"run.seed=2"}), base);
}

TEST(FunctionalHash, HexIsSixteenDigits) {
    RngStream rng(testkit::test_seed(), 3);
    const uint64_t value = rng.next_u64();
    const std::string hex = hash_hex(value);
    EXPECT_EQ(hex.size(), 16u);
    EXPECT_EQ(std::stoull(hex, nullptr, 16), value);
    EXPECT_EQ(hash_hex(0x1f), "000000000000001f");
}

TEST(FunctionalHash, EveryPresetIsItsOwnFunction) {
    std::map<uint64_t, std::string> preset_of_hash;
    for (const auto& entry : std::filesystem::directory_iterator(std::string(LINARCH_SOURCE_DIR) + "/configs/presets")) {
        const Spec spec = load_spec(entry.path().string());
        const uint64_t hash = functional_hash(spec);
        const auto [it, inserted] = preset_of_hash.emplace(hash, entry.path().filename().string());
        EXPECT_TRUE(inserted) << entry.path() << " hashes like " << it->second;
    }
    EXPECT_GE(preset_of_hash.size(), 10u);
}
