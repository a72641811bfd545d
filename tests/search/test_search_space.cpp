#include <gtest/gtest.h>


#include "core/error.hpp"
#include "core/rng.hpp"
#include "search/proposer.hpp"
#include "search/search_space.hpp"
#include "support/process.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using testkit::error_of;

namespace {

// A small inline base: two layers of Gated DeltaNet at d = 32.
constexpr const char* kInlineBase = R"(
[base.model]
d_model = 32
n_layers = 2
n_heads = 2
head_dim = 16
[base.model.mixer]
update = "delta"
decay = "scalar"
decay_parameterization = "mamba2"
qk_norm = "l2"
chunk_size = 8
)";

SearchSpace space_from(const std::string& vary) {
    return SearchSpace::parse(std::string(kInlineBase) + "\n[vary]\n" + vary, "space.toml", "");
}

}  // namespace

TEST(SearchSpace, ReadsTheShippedMixerSpace) {
    const SearchSpace space = SearchSpace::load(std::string(LINARCH_SOURCE_DIR) + "/configs/search/mixers.toml");
    EXPECT_EQ(space.base().model.mixer.update, "delta");  // the Gated DeltaNet preset
    ASSERT_EQ(space.fields().size(), 11u);
    const FieldDomain& layers = space.field("model.n_layers");
    EXPECT_TRUE(layers.is_range() && layers.integer);
    EXPECT_EQ(layers.min, 2);
    EXPECT_EQ(layers.max, 6);
    const FieldDomain& lr = space.field("optim.lr");
    EXPECT_TRUE(lr.is_range() && !lr.integer && lr.log);
    EXPECT_EQ(space.field("model.mixer.decay").choices,
              (std::vector<std::string>{"\"none\"", "\"fixed\"", "\"scalar\"", "\"vector\""}));
}

TEST(SearchSpace, CandidateIsAPlainSpecThatReadsBack) {
    const SearchSpace space = space_from(R"(
model.mixer.output_norm = ["rmsnorm", "groupnorm"]
model.n_layers = { min = 2, max = 5 }
model.layers.1.output_gate = ["none", "swish"]
optim.lr = { min = 1e-4, max = 1e-2, log = true }
)");
    RngStream rng(testkit::test_seed(), 1);
    const int64_t layers = 2 + int64_t(rng.below(4));
    const double lr = 1e-4 + 1e-3 * rng.uniform();
    const Assignment assignment = {{"model.mixer.output_norm", "\"groupnorm\""},
                                   {"model.n_layers", toml_literal(layers)},
                                   {"model.layers.1.output_gate", "\"swish\""},
                                   {"optim.lr", toml_literal(lr)}};
    const Spec spec = space.realise(assignment);
    EXPECT_EQ(spec.model.mixer.output_norm, "groupnorm");
    EXPECT_EQ(spec.model.n_layers, layers);
    EXPECT_EQ(spec.optim.lr, lr);
    EXPECT_EQ(spec.model.mixer_of_layer(1).output_gate, "swish");
    EXPECT_EQ(spec.model.mixer_of_layer(0).output_gate, "none");
    EXPECT_EQ(spec.model.d_model, 32);  // from the base
    // What `linarch train` would read from the stored spec is the same spec.
    EXPECT_TRUE(parse_spec(spec_to_toml(spec), "stored") == spec);
    // Reading the fields back from the spec gives the assignment.
    EXPECT_EQ(space.assignment_of(spec), assignment);
}

TEST(SearchSpace, ReadsKeysWrittenAsNestedTables) {
    const SearchSpace space = SearchSpace::parse(std::string(kInlineBase) + R"(
[vary.model.mixer]
output_gate = ["none", "sigmoid"]
[vary.optim]
lr = { min = 1e-4, max = 1e-2 }
)",
                                                 "space.toml", "");
    ASSERT_EQ(space.fields().size(), 2u);
    EXPECT_EQ(space.fields()[0].key, "model.mixer.output_gate");
    EXPECT_EQ(space.fields()[1].key, "optim.lr");
}

TEST(SearchSpace, AssignmentOfALayerKeyNotOverriddenIsTheLayersMixer) {
    const SearchSpace space = space_from(R"(model.layers.1.decay = ["none", "scalar"])");
    Spec spec = space.base();
    EXPECT_EQ(space.assignment_of(spec).at("model.layers.1.decay"), "\"scalar\"");
    spec.model.mixer.decay = "none";
    spec.model.mixer.decay_parameterization = "logsigmoid";
    EXPECT_EQ(space.assignment_of(spec).at("model.layers.1.decay"), "\"none\"");
}

TEST(SearchSpace, KeepsCombinationsOnlyOtherFieldsMakeValid) {
    // update = "additive" alone is fine; "delta" needs qk_norm = "l2", which the base has, and
    // decay "vector" conflicts with it: the space is accepted, only that combination is not.
    const SearchSpace space = space_from(R"(
model.mixer.update = ["additive", "delta"]
model.mixer.decay = ["scalar", "vector"]
model.mixer.decay_parameterization = ["mamba2", "logsigmoid"]
)");
    const std::string message = error_of([&] {
        space.realise({{"model.mixer.update", "\"delta\""},
                       {"model.mixer.decay", "\"vector\""},
                       {"model.mixer.decay_parameterization", "\"logsigmoid\""}});
    });
    EXPECT_NE(message.find("update = \"delta\""), std::string::npos) << message;
}

TEST(SearchSpace, RejectsBadSpacesNamingFileFieldAndExpectation) {
    struct Case {
        std::string text;
        std::vector<std::string> expected;  // substrings of the message
    };
    const std::string base = kInlineBase;
    const std::vector<Case> cases = {
        {base + "[vary]\nmodel.mixer.decya = [\"none\"]\n",
         {"space.toml:14", "vary.model.mixer.decya", "unknown key", "valid keys in [model.mixer]"}},
        {base + "[vary]\nmodel.mixer.decay = [\"none\", \"exponential\"]\n",
         {"space.toml:14", "vary.model.mixer.decay", "\"exponential\"", "one of \"none\", \"fixed\""}},
        {base + "[vary]\nmodel.n_layers = [2, \"four\"]\n",
         {"space.toml:14", "vary.model.n_layers", "expected an integer in [1, 1024]"}},
        {base + "[vary]\nmodel.n_layers = { min = 0, max = 3 }\n",
         {"space.toml:14", "vary.model.n_layers", "0 is not a value", "[1, 1024]"}},
        {base + "[vary]\nmodel.n_layers = { min = 6, max = 2 }\n",
         {"space.toml:14", "vary.model.n_layers", "expected min < max"}},
        {base + "[vary]\nmodel.n_layers = { min = 2 }\n", {"vary.model.n_layers", "needs both min and max"}},
        {base + "[vary]\nmodel.n_layers = { min = 2, max = 4, step = 2 }\n",
         {"vary.model.n_layers", "unknown range key \"step\""}},
        {base + "[vary]\nmodel.n_layers = { min = 2, max = 8, log = true }\n",
         {"vary.model.n_layers", "log = true", "range of numbers"}},
        {base + "[vary]\nmodel.mixer.decay = []\n", {"space.toml:14", "vary.model.mixer.decay", "empty list"}},
        {base + "[vary]\nmodel.mixer.decay = [\"none\", \"none\"]\n", {"vary.model.mixer.decay", "listed twice"}},
        {base + "[vary]\nmodel.mixer.decay = \"none\"\n", {"vary.model.mixer.decay", "expected a list of choices"}},
        {base + "[vary]\nmodel.layers.7.decay = [\"none\"]\n",
         {"vary.model.layers.7.decay", "expected a layer index in [0, 2)"}},
        {base + "[vary]\nmodel.mixer = [\"none\"]\n", {"vary.model.mixer", "is a table"}},
        {base + "[vary]\n", {"space.toml", "[vary] names no spec key"}},
        {base, {"space.toml", "missing [vary]"}},
        {"[vary]\nmodel.n_layers = [2]\n", {"space.toml", "missing base"}},
        {"base = \"no/such/spec.toml\"\n[vary]\nmodel.n_layers = [2]\n",
         {"space.toml:1", "base", "no/such/spec.toml"}},
        {"base = 3\n[vary]\nmodel.n_layers = [2]\n", {"space.toml:1", "base", "expected a spec file name"}},
        {"[base.model]\nd_model = -4\n[vary]\nmodel.n_layers = [2]\n",
         {"space.toml: base spec is invalid", "model.d_model", "expected an integer >= 1"}},
        {"seed = 3\n" + base + "[vary]\nmodel.n_layers = [2]\n", {"space.toml:1", "unknown key \"seed\"", "valid top-level keys"}},
        {base + "[vary\n", {"space.toml:13", "TOML syntax error"}},
        {"vary = 3\n" + base, {"space.toml:1", "vary: expected a table of spec keys, got 3"}},
    };
    for (const Case& c : cases) {
        const std::string message = error_of([&] { SearchSpace::parse(c.text, "space.toml", ""); });
        for (const std::string& expected : c.expected)
            EXPECT_NE(message.find(expected), std::string::npos) << "expected \"" << expected << "\" in: " << message;
    }
}

TEST(SearchSpace, HandPickedCandidatesAreReadCheckedAndRealised) {
    const SearchSpace space = space_from(R"(model.mixer.update = ["additive", "delta"]
model.mixer.decay = ["none", "scalar", "vector"]
model.mixer.decay_parameterization = ["mamba2", "logsigmoid"]
model.n_layers = { min = 1, max = 3 }
[[enqueue]]
model.mixer.update = "additive"
model.mixer.decay = "scalar"
[[enqueue]]
model.mixer = { update = "additive", decay = "vector", decay_parameterization = "logsigmoid" }
model.n_layers = 3
)");
    ASSERT_EQ(space.enqueued().size(), 2u);
    EXPECT_EQ(space.enqueued()[0], (Assignment{{"model.mixer.decay", "\"scalar\""}, {"model.mixer.update", "\"additive\""}}));
    const Spec second = space.realise(space.enqueued()[1]);
    EXPECT_EQ(second.model.mixer.decay, "vector");
    EXPECT_EQ(second.model.n_layers, 3);
    EXPECT_EQ(second.model.mixer.qk_norm, "l2");  // the rest as in the base

    const std::string vary = "model.mixer.update = [\"additive\", \"delta\"]\nmodel.mixer.decay = [\"none\", \"vector\"]\n";
    std::string message = error_of([&] { space_from(vary + "[[enqueue]]\nmodel.d_model = 64\n"); });
    EXPECT_NE(message.find("[[enqueue]] number 1"), std::string::npos) << message;
    EXPECT_NE(message.find("model.d_model does not vary"), std::string::npos) << message;
    message = error_of([&] {
        space_from(vary + "[[enqueue]]\nmodel.mixer.decay = \"scalar\"\n[[enqueue]]\nmodel.mixer.decay = \"vector\"\n");
    });
    EXPECT_NE(message.find("[[enqueue]] number 2"), std::string::npos) << message;  // vector decay: not with mamba2
    EXPECT_NE(message.find("the spec rejects it"), std::string::npos) << message;
    message = error_of([&] {
        SearchSpace::parse("enqueue = 3\n" + std::string(kInlineBase) + "[vary]\n" + vary, "space.toml", "");
    });
    EXPECT_NE(message.find("expected [[enqueue]] tables"), std::string::npos) << message;
}

TEST(SearchSpace, ResolvesTheBaseFileRelativeToTheSpaceFile) {
    testkit::TempDir dir;
    std::filesystem::create_directories(dir / "presets");
    std::filesystem::create_directories(dir / "search");
    const int64_t d_model = 16 * (1 + int64_t(RngStream(testkit::test_seed(), 2).below(8)));
    testkit::write_text(dir / "presets" / "small.toml", fmt::format("[model]\nd_model = {}\n", d_model));
    testkit::write_text(dir / "search" / "space.toml", "base = \"../presets/small.toml\"\n[vary]\nmodel.n_layers = [2, 3]\n");
    const SearchSpace space = SearchSpace::load((dir / "search" / "space.toml").string());
    EXPECT_EQ(space.base().model.d_model, d_model);
}
