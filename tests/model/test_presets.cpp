// Every preset in configs/presets/ loads, builds and learns: a few AdamW steps on a repeating
// pattern lower the loss.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "core/spec.hpp"
#include "model/language_model.hpp"
#include "support/testkit.hpp"
#include "train/optimizer.hpp"

using namespace linarch;

namespace {
std::vector<std::filesystem::path> presets() {
    std::vector<std::filesystem::path> files;
    for (const auto& entry : std::filesystem::directory_iterator(std::filesystem::path(LINARCH_SOURCE_DIR) / "configs" / "presets"))
        if (entry.path().extension() == ".toml") files.push_back(entry.path());
    std::sort(files.begin(), files.end());
    return files;
}
}  // namespace

TEST(Presets, EveryPresetTrainsAndItsLossFalls) {
    const auto files = presets();
    ASSERT_GE(files.size(), 4u);
    for (const auto& file : files) {
        // The preset's mixer design at a test-sized width.
        const Spec spec = load_spec(file.string(), {"model.d_model=32", "model.n_layers=4", "model.n_heads=2",
                                                    "model.head_dim=16", "model.mlp_hidden=64",
                                                    "model.mixer.chunk_size=8"});
        LanguageModel model(spec.model);
        model.initialize(testkit::test_seed());
        OptimSpec optim;
        optim.lr = 1e-2;
        optim.warmup_steps = 3;
        AdamW adam(optim, model.parameters());
        const std::string pattern = "in the beginning god created ";
        std::vector<int32_t> tokens;
        for (size_t i = 0; i < 4 * 24 + 1; ++i) tokens.push_back(pattern[i % pattern.size()]);
        const std::vector<int32_t> inputs(tokens.begin(), tokens.end() - 1), targets(tokens.begin() + 1, tokens.end());
        double first = 0, last = 0;
        for (int step = 0; step < 30; ++step) {
            model.parameters().zero_grad();
            last = model.forward(inputs, targets, 4, 24);
            if (step == 0) first = last;
            ASSERT_TRUE(std::isfinite(last)) << file.filename() << " step " << step;
            model.backward(1.0 / double(model.counted_tokens()));
            clip_grad_norm(model.parameters(), 1.0);
            adam.step(model.parameters(), learning_rate(optim, step, 30));
        }
        EXPECT_LT(last, 0.6 * first) << file.filename() << ": " << first << " -> " << last;
    }
}
