#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/spec.hpp"
#include "support/process.hpp"
#include "train/checkpoint.hpp"

using namespace linarch;
using namespace linarch::testkit;
namespace fs = std::filesystem;

TEST(Checkpoint, StoresTheLoadersPosition) {
    TempDir dir;
    const Spec spec = parse_spec("[model]\nvocab_size = 259\nd_model = 8\nn_layers = 1\nn_heads = 1\nhead_dim = 8\n",
                                 "tiny.toml");
    LanguageModel model(spec.model);
    model.initialize(1);
    AdamW optimizer(spec.optim, model.parameters());
    TrainerState saved;
    saved.step = 12;
    saved.tokens_seen = 3072;
    saved.data = {2, 17};
    const fs::path checkpoint = save_checkpoint(dir.path(), spec, model, optimizer, saved);
    const auto trainer = nlohmann::json::parse(read_text(checkpoint / "trainer.json"));
    EXPECT_EQ(trainer["data"]["epoch"], 2);
    EXPECT_EQ(trainer["data"]["batch"], 17);

    TrainerState loaded;
    load_checkpoint(resolve_checkpoint(dir.path()), model, &optimizer, &loaded);
    EXPECT_EQ(loaded.step, 12);
    EXPECT_EQ(loaded.data, (DataPosition{2, 17}));

    // A checkpoint without a data position cannot be resumed exactly, and says so.
    auto old = trainer;
    old.erase("data");
    write_text(checkpoint / "trainer.json", old.dump());
    try {
        load_checkpoint(checkpoint, model, &optimizer, &loaded);
        ADD_FAILURE() << "expected an Error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("trainer.json has no data position"), std::string::npos) << e.what();
    }
}
