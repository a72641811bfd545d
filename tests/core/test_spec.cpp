#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>

#include "core/atomic_file.hpp"
#include "core/rng.hpp"
#include "core/spec.hpp"
#include "support/process.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using testkit::TempDir;
using testkit::error_of;
using testkit::expect_contains;

namespace {

std::string parse_error(const std::string& text, const std::vector<std::string>& overrides = {}) {
    return error_of([&] { parse_spec(text, "configs/demo.toml", overrides); });
}

// Every field set to a non-default value, as a file and as the Spec it describes.
const char* kFullFile = R"(# every key
[model]
vocab_size = 512
d_model = 384
n_layers = 6
n_heads = 6
head_dim = 32
mlp_hidden = 1024
norm_eps = 1e-6
init_std = 0.015

[model.mixer]
kind = "linear_attention"
decay = "fixed"
chunk_size = 128
conv_size = 0
output_norm = "none"

[data]
corpus = "data/shakespeare"
seq_len = 512
batch_size = 8
task = "induction"
task_vocab_size = 16
num_kv_pairs = 4
power_a = 0.5
num_copy_tokens = 8

[optim]
lr = 6e-4
min_lr_ratio = 0.0
warmup_steps = 0
weight_decay = 0
beta1 = 0.8
beta2 = 0.99
eps = 1e-10
grad_clip = 0.5
grad_accum = 4

[run]
steps = 5000
seed = 1234
eval_every = 0
eval_batches = 32
checkpoint_every = 1000
log_every = 1
threads = 2
)";

Spec full_spec() {
    Spec s;
    s.model.vocab_size = 512;
    s.model.d_model = 384;
    s.model.n_layers = 6;
    s.model.n_heads = 6;
    s.model.head_dim = 32;
    s.model.mlp_hidden = 1024;
    s.model.norm_eps = 1e-6;
    s.model.init_std = 0.015;
    s.model.mixer.kind = "linear_attention";
    s.model.mixer.decay = "fixed";
    s.model.mixer.chunk_size = 128;
    s.model.mixer.conv_size = 0;
    s.model.mixer.output_norm = "none";
    s.data.corpus = "data/shakespeare";
    s.data.seq_len = 512;
    s.data.batch_size = 8;
    s.data.task = "induction";
    s.data.task_vocab_size = 16;
    s.data.num_kv_pairs = 4;
    s.data.power_a = 0.5;
    s.data.num_copy_tokens = 8;
    s.optim.lr = 6e-4;
    s.optim.min_lr_ratio = 0.0;
    s.optim.warmup_steps = 0;
    s.optim.weight_decay = 0;
    s.optim.beta1 = 0.8;
    s.optim.beta2 = 0.99;
    s.optim.eps = 1e-10;
    s.optim.grad_clip = 0.5;
    s.optim.grad_accum = 4;
    s.run.steps = 5000;
    s.run.seed = 1234;
    s.run.eval_every = 0;
    s.run.eval_batches = 32;
    s.run.checkpoint_every = 1000;
    s.run.log_every = 1;
    s.run.threads = 2;
    return s;
}

}  // namespace

TEST(SpecDefaults, EmptyFileAndEmptyTablesGiveTheStructDefaults) {
    const Spec empty = parse_spec("", "empty.toml");
    EXPECT_TRUE(empty == Spec{});
    EXPECT_EQ(empty.source, "empty.toml");
    EXPECT_EQ(empty.model.vocab_size, 259);  // the byte tokenizer: 256 bytes + BOS, EOS, PAD
    EXPECT_EQ(empty.model.mixer.decay, "none");
    EXPECT_EQ(empty.optim.lr, 3e-3);
    EXPECT_EQ(empty.run.seed, 1u);
    const Spec tables = parse_spec("[model]\n[model.mixer]\n[data]\n[optim]\n[run]\n", "tables.toml");
    EXPECT_TRUE(tables == Spec{});
    // A file setting one key changes only that key.
    Spec expected;
    expected.model.mixer.chunk_size = 32;
    EXPECT_TRUE(parse_spec("[model.mixer]\nchunk_size = 32\n", "one.toml") == expected);
    EXPECT_TRUE(parse_spec("model.mixer.chunk_size = 32\n", "dotted.toml") == expected);
}

TEST(SpecFile, FullFileLoadsAndRoundTrips) {
    TempDir dir;
    const auto path = dir.path() / "full.toml";
    write_file_atomic(path, kFullFile);
    const Spec spec = load_spec(path.string());
    EXPECT_TRUE(spec == full_spec()) << spec_to_toml(spec);
    EXPECT_EQ(spec.source, path.string());
    EXPECT_FALSE(spec == Spec{});

    const std::string text = spec_to_toml(spec);
    const Spec again = parse_spec(text, "checkpoint");
    EXPECT_TRUE(again == spec) << text;
    EXPECT_EQ(spec_to_toml(again), text);
    // The printed form names every table.
    expect_contains(text, {"[model]", "[model.mixer]", "[data]", "[optim]", "[run]", "decay = \"fixed\""});
}

TEST(SpecFile, MissingFileIsAnErrorNamingIt) {
    TempDir dir;
    const std::string path = (dir.path() / "x.toml").string();
    expect_contains(error_of([&] { load_spec(path); }),
                    {"cannot open spec file \"" + path + "\": No such file or directory"});
}

TEST(SpecErrors, UnknownKeyNamesFileLineKeyAndValidKeys) {
    const std::string text = "# demo\n[model]\nvocab_size = 256\nd_model = 128\n\n# typo below\nd_modle = 64\n";
    expect_contains(parse_error(text),
                    {"configs/demo.toml:7: unknown key \"model.d_modle\"",
                     "(valid keys in [model]: vocab_size, d_model, n_layers, n_heads, head_dim, mlp_hidden, "
                     "norm_eps, init_std, hybrid_every, mixer, hybrid_mixer)"});
    expect_contains(parse_error("[model.mixer]\nkind = \"linear_attention\"\ndecy = \"fixed\"\n"),
                    {"configs/demo.toml:3:", "\"model.mixer.decy\"",
                     "valid keys in [model.mixer]: kind, update, order, hla_masked, feature_map, qk_norm, decay, decay_parameterization, decay_sharing, gate_temperature, decay_init, gate_low_rank, grid_height, grid_width, chunk_size, conv_size, expand_k, expand_v, output_norm, output_gate, rotation, rope_base, grape_rank, position_bias, window"});
    expect_contains(parse_error("[run]\nsteps = 10\n\n[optimizer]\nlr = 1\n"),
                    {"configs/demo.toml:4: unknown table \"optimizer\"", "valid tables: [model], [data], [optim], [run]"});
    expect_contains(parse_error("lr = 0.1\n"), {"configs/demo.toml:1: unknown top-level key \"lr\"", "valid tables"});
}

TEST(SpecErrors, WrongTypeNamesFileLineKeyAndExpectation) {
    std::string text = "[optim]\n";
    for (int line = 2; line < 12; ++line) text += "\n";
    text += "lr = \"fast\"\n";  // line 12
    expect_contains(parse_error(text), {"configs/demo.toml:12: optim.lr: expected a number > 0, got string \"fast\""});
    // Integers given as floats are not integers; integers are fine for number fields.
    expect_contains(parse_error("[model]\nn_layers = 3.0\n"),
                    {"configs/demo.toml:2: model.n_layers: expected an integer in [1, 1024], got float 3.0"});
    EXPECT_EQ(parse_spec("[optim]\nlr = 1\n", "x.toml").optim.lr, 1.0);
    expect_contains(parse_error("[model.mixer]\nhla_masked = 1\n"),
                    {"configs/demo.toml:2: model.mixer.hla_masked: expected a boolean", "got integer 1"});
    expect_contains(parse_error("[model.mixer]\noutput_norm = true\n"),
                    {"configs/demo.toml:2: model.mixer.output_norm: expected one of \"none\", \"rmsnorm\", "
                     "\"groupnorm\", got boolean true"});
    expect_contains(parse_error("[data]\ncorpus = 3\n"),
                    {"configs/demo.toml:2: data.corpus: expected a non-empty string, got integer 3"});
    expect_contains(parse_error("[data]\nseq_len = [1, 2]\n"), {"configs/demo.toml:2: data.seq_len:", "got array"});
    expect_contains(parse_error("model = 3\n"), {"configs/demo.toml:1: model: expected a table, got integer 3"});
    expect_contains(parse_error("[model]\nmixer = \"linear\"\n"),
                    {"configs/demo.toml:2: model.mixer: expected a table, got string \"linear\""});
}

TEST(SpecErrors, OutOfRangeNamesFileLineKeyAndRange) {
    expect_contains(parse_error("[model]\nd_model = 64\nn_layers = 0\n"),
                    {"configs/demo.toml:3: model.n_layers: expected an integer in [1, 1024], got 0"});
    expect_contains(parse_error("[model.mixer]\ndecay = \"exp\"\n"),
                    {"configs/demo.toml:2: model.mixer.decay: expected one of \"none\", \"fixed\", \"scalar\", \"vector\", \"spatial\", got \"exp\""});
    expect_contains(parse_error("[model.mixer]\nkind = \"mamba\"\n"),
                    {"configs/demo.toml:2: model.mixer.kind: expected one of \"linear_attention\", \"softmax_attention\", got \"mamba\""});
    expect_contains(parse_error("[model.mixer]\nconv_size = 1\n"),
                    {"configs/demo.toml:2: model.mixer.conv_size: expected 0 or an integer in [2, 8], got 1"});
    expect_contains(parse_error("[optim]\nbeta2 = 1.0\n"),
                    {"configs/demo.toml:2: optim.beta2: expected a number in [0, 1), got 1.0"});
    expect_contains(parse_error("[optim]\nlr = inf\n"), {"configs/demo.toml:2: optim.lr: expected a number > 0, got inf"});
    expect_contains(parse_error("[optim]\neps = nan\n"), {"configs/demo.toml:2: optim.eps:", "got nan"});
    expect_contains(parse_error("[run]\nseed = -1\n"), {"configs/demo.toml:2: run.seed: expected an integer >= 0"});
    expect_contains(parse_error("[data]\ncorpus = \"\"\n"), {"configs/demo.toml:2: data.corpus: expected a non-empty string"});
}

// Each bound of each range: the value just outside is an error naming the key, the one at the
// bound is accepted.
TEST(SpecErrors, EveryRangeBoundIsChecked) {
    struct Bound {
        const char* table;
        const char* key;
        const char* bad;
        const char* good;
    };
    const Bound bounds[] = {
        {"model", "vocab_size", "1", "2"},          {"model", "vocab_size", "16777217", "16777216"},
        {"model", "d_model", "0", "1"},             {"model", "n_layers", "0", "1"},
        {"model", "n_layers", "1025", "1024"},      {"model", "n_heads", "0", "1"},
        {"model", "head_dim", "0", "1"},            {"model", "mlp_hidden", "-1", "0"},
        {"model", "norm_eps", "0", "1e-300"},       {"model", "init_std", "-0.1", "1e-9"},
        {"model.mixer", "chunk_size", "0", "1"},    {"model.mixer", "chunk_size", "1025", "1024"},
        {"model.mixer", "conv_size", "9", "8"},     {"model.mixer", "conv_size", "-1", "2"},
        {"data", "seq_len", "1", "2"},              {"data", "batch_size", "0", "1"},
        {"data", "task_vocab_size", "1", "2"},      {"data", "task_vocab_size", "16777217", "16777216"},
        {"data", "num_kv_pairs", "0", "1"},         {"data", "power_a", "0", "1e-9"},
        {"data", "power_a", "1.5", "1"},            {"data", "num_copy_tokens", "0", "1"},
        {"optim", "lr", "0", "1e-12"},              {"optim", "min_lr_ratio", "-0.01", "0"},
        {"optim", "min_lr_ratio", "1.01", "1"},     {"optim", "warmup_steps", "-1", "0"},
        {"optim", "weight_decay", "-0.5", "0"},    {"optim", "beta1", "-0.1", "0"},
        {"optim", "beta1", "1", "0.999999"},        {"optim", "beta2", "1.5", "0.5"},
        {"optim", "eps", "0.0", "1e-30"},           {"optim", "grad_clip", "-1", "0"},
        {"optim", "grad_accum", "0", "1"},          {"run", "steps", "0", "1"},
        {"run", "eval_every", "-1", "0"},           {"run", "eval_batches", "0", "1"},
        {"run", "checkpoint_every", "-1", "0"},     {"run", "log_every", "0", "1"},
        {"run", "threads", "-1", "0"},
    };
    for (const Bound& b : bounds) {
        const std::string dotted = fmt::format("{}.{}", b.table, b.key);
        expect_contains(parse_error(fmt::format("[{}]\n{} = {}\n", b.table, b.key, b.bad)),
                        {"configs/demo.toml:2: " + dotted + ": expected ", fmt::format(", got {}", b.bad)});
        EXPECT_NO_THROW(parse_spec(fmt::format("[{}]\n{} = {}\n", b.table, b.key, b.good), "ok.toml")) << dotted;
    }
}

TEST(SpecErrors, SyntaxErrorsCarryTheParsersLineAndColumn) {
    const std::string message = parse_error("[model]\nd_model = 64\nn_layers = = 3\n");
    expect_contains(message, {"configs/demo.toml:3:", "TOML syntax error"});
    expect_contains(parse_error("[model]\nd_model = 64\nd_model = 65\n"), {"configs/demo.toml:3:", "d_model"});
    expect_contains(parse_error("[model\n"), {"configs/demo.toml:1:", "TOML syntax error"});
}

TEST(SpecOverrides, ValidOverridesApplyOnTopOfTheFile) {
    const std::string text = "[optim]\nlr = 0.1\n[model]\nn_layers = 2\n";
    const Spec spec = parse_spec(text, "configs/demo.toml",
                                 {"optim.lr=1e-3", "model.mixer.decay=\"fixed\"", "model.mixer.conv_size = 0",
                                  "data.corpus=data/other dir", "run.seed=18446744073709551615",
                                  "model.mixer.output_norm=none", "model.n_layers=3", "model.n_layers=5",
                                  "optim.beta1=0"});
    EXPECT_EQ(spec.optim.lr, 1e-3);
    EXPECT_EQ(spec.model.mixer.decay, "fixed");
    EXPECT_EQ(spec.model.mixer.conv_size, 0);
    EXPECT_EQ(spec.data.corpus, "data/other dir");
    EXPECT_EQ(spec.run.seed, 18446744073709551615u);
    EXPECT_EQ(spec.model.mixer.output_norm, "none");
    EXPECT_EQ(spec.model.n_layers, 5);  // the last override of a key wins
    EXPECT_EQ(spec.optim.beta1, 0.0);
    // A bare word is a string.
    EXPECT_EQ(parse_spec("", "x.toml", {"model.mixer.decay=fixed"}).model.mixer.decay, "fixed");

    TempDir dir;
    write_file_atomic(dir.path() / "s.toml", text);
    EXPECT_EQ(load_spec((dir.path() / "s.toml").string(), {"optim.lr=2e-3"}).optim.lr, 2e-3);
}

TEST(SpecOverrides, BadValuesNameTheOverride) {
    expect_contains(parse_error("[optim]\nlr = 0.1\n", {"optim.lr=abc"}),
                    {"--set optim.lr=abc: optim.lr: expected a number > 0, got string \"abc\""});
    expect_contains(parse_error("", {"model.n_layers=0"}),
                    {"--set model.n_layers=0: model.n_layers: expected an integer in [1, 1024], got 0"});
    expect_contains(parse_error("", {"model.mixer.decay=exp"}),
                    {"--set model.mixer.decay=exp: model.mixer.decay: expected one of \"none\", \"fixed\""});
    expect_contains(parse_error("", {"optim.lr"}), {"--set optim.lr: expected dotted.key=value"});
    expect_contains(parse_error("", {"optim.lr="}), {"--set optim.lr=:", "missing the value"});
    expect_contains(parse_error("", {"=3"}), {"--set =3:", "missing the key"});
    // An error in the file still names the file line when overrides touch other keys.
    expect_contains(parse_error("[optim]\nlr = -1\n", {"optim.eps=1e-9"}), {"configs/demo.toml:2: optim.lr"});
}

TEST(SpecOverrides, TypeMismatchesNameTheOverride) {
    expect_contains(parse_error("", {"model.n_layers=2.5"}),
                    {"--set model.n_layers=2.5: model.n_layers: expected an integer in [1, 1024], got float 2.5"});
    expect_contains(parse_error("", {"model.mixer.hla_masked=yes"}),
                    {"--set model.mixer.hla_masked=yes: model.mixer.hla_masked: expected a boolean",
                     "got string \"yes\""});
    expect_contains(parse_error("", {"data.corpus=12"}),
                    {"--set data.corpus=12: data.corpus: expected a non-empty string, got integer 12"});
    expect_contains(parse_error("[model]\nmixer = 1\n", {"model.mixer.decay=fixed"}),
                    {"--set model.mixer.decay=fixed:", "model.mixer", "configs/demo.toml:2", "not a table"});
}

TEST(SpecOverrides, UnknownKeysListTheValidOnes) {
    expect_contains(parse_error("", {"optim.lrr=1"}),
                    {"--set optim.lrr=1: unknown key \"optim.lrr\"",
                     "valid keys in [optim]: lr, min_lr_ratio, warmup_steps, weight_decay, beta1, beta2, eps, "
                     "grad_clip, grad_accum"});
    expect_contains(parse_error("", {"data.tsk=mqar"}),
                    {"--set data.tsk=mqar: unknown key \"data.tsk\"",
                     "valid keys in [data]: corpus, seq_len, batch_size, task, task_vocab_size, num_kv_pairs, "
                     "power_a, num_copy_tokens"});
    expect_contains(parse_error("", {"model.mixer.gamma=0.9"}),
                    {"--set model.mixer.gamma=0.9: unknown key \"model.mixer.gamma\"", "valid keys in [model.mixer]"});
    expect_contains(parse_error("", {"model.d_model.x=1"}), {"--set model.d_model.x=1: unknown key", "[model]"});
    expect_contains(parse_error("", {"optimizer.lr=1"}),
                    {"--set optimizer.lr=1: unknown table \"optimizer\"", "valid tables: [model], [data], [optim], [run]"});
    expect_contains(parse_error("", {"model.mixer=1"}), {"--set model.mixer=1:", "is a table", "valid keys in [model.mixer]"});
    expect_contains(parse_error("", {"run=1"}), {"--set run=1:", "is a table"});
}

TEST(SpecEquality, EveryFieldTakesPartButNotTheSource) {
    const std::vector<std::function<void(Spec&)>> changes = {
        [](Spec& s) { s.model.vocab_size++; },       [](Spec& s) { s.model.d_model++; },
        [](Spec& s) { s.model.n_layers++; },         [](Spec& s) { s.model.n_heads++; },
        [](Spec& s) { s.model.head_dim++; },         [](Spec& s) { s.model.mlp_hidden++; },
        [](Spec& s) { s.model.norm_eps *= 2; },      [](Spec& s) { s.model.init_std *= 2; },
        [](Spec& s) { s.model.mixer.kind.push_back('x'); },   [](Spec& s) { s.model.mixer.decay = "fixed"; },
        [](Spec& s) { s.model.mixer.chunk_size++; }, [](Spec& s) { s.model.mixer.conv_size++; },
        [](Spec& s) { s.model.mixer.output_norm = "groupnorm"; },
        [](Spec& s) { s.model.mixer.expand_k = 0.5; },  [](Spec& s) { s.model.mixer.expand_v = 2; },
        [](Spec& s) { s.model.mixer.decay_init = 0.9; }, [](Spec& s) { s.model.mixer.rotation = "grape_planes"; },
        [](Spec& s) { s.model.mixer.grape_rank = 4; },   [](Spec& s) { s.model.mixer.feature_map = "softmax"; },
        [](Spec& s) { s.model.hybrid_mixer.window = 8; },
        [](Spec& s) { s.model.layer_mixers[1] = s.model.mixer; },
        [](Spec& s) { s.model.layer_mixers[0].decay = "fixed"; },
        [](Spec& s) { s.data.corpus += "x"; },       [](Spec& s) { s.data.seq_len++; },
        [](Spec& s) { s.data.batch_size++; },        [](Spec& s) { s.data.task = "mqar"; },
        [](Spec& s) { s.data.task_vocab_size++; },   [](Spec& s) { s.data.num_kv_pairs++; },
        [](Spec& s) { s.data.power_a /= 2; },        [](Spec& s) { s.data.num_copy_tokens++; },
        [](Spec& s) { s.optim.lr *= 2; },
        [](Spec& s) { s.optim.min_lr_ratio *= 2; },  [](Spec& s) { s.optim.warmup_steps++; },
        [](Spec& s) { s.optim.weight_decay *= 2; },  [](Spec& s) { s.optim.beta1 /= 2; },
        [](Spec& s) { s.optim.beta2 /= 2; },         [](Spec& s) { s.optim.eps *= 2; },
        [](Spec& s) { s.optim.grad_clip *= 2; },     [](Spec& s) { s.optim.grad_accum++; },
        [](Spec& s) { s.run.steps++; },              [](Spec& s) { s.run.seed++; },
        [](Spec& s) { s.run.eval_every++; },         [](Spec& s) { s.run.eval_batches++; },
        [](Spec& s) { s.run.checkpoint_every++; },   [](Spec& s) { s.run.log_every++; },
        [](Spec& s) { s.run.threads++; },
    };
    for (size_t i = 0; i < changes.size(); ++i) {
        Spec changed;
        changes[i](changed);
        EXPECT_FALSE(changed == Spec{}) << "change " << i;
        // And the printed form carries the change (kind has no other valid value to print).
        if (changed.model.mixer.kind == Spec{}.model.mixer.kind) {
            EXPECT_TRUE(parse_spec(spec_to_toml(changed), "x") == changed) << "change " << i;
        }
    }
    Spec other_source;
    other_source.source = "elsewhere.toml";
    EXPECT_TRUE(other_source == Spec{});
}

TEST(SpecRoundTrip, RandomValuesRoundTripExactly) {
    RngStream rng(testkit::test_seed(), 91);
    auto integer = [&](int64_t low, int64_t high) { return low + int64_t(rng.below(uint64_t(high - low + 1))); };
    // Doubles with full 53-bit mantissas over many magnitudes: the printed form must be exact.
    auto positive = [&](int low_exp, int high_exp) {
        return (0.5 + rng.uniform()) * std::pow(10.0, double(integer(low_exp, high_exp)));
    };
    const char* corpora[] = {"data/kjv", "a dir/with \"quotes\" and \\backslashes\\", "tab\there, ünïcødé",
                             "line\nbreak", "#not a comment", "x"};
    for (int trial = 0; trial < 300; ++trial) {
        Spec s;
        s.model.vocab_size = integer(2, int64_t(1) << 24);
        s.model.d_model = integer(1, int64_t(1) << 40);
        s.model.n_layers = integer(1, 1024);
        s.model.n_heads = integer(1, 64);
        s.model.head_dim = integer(1, 256);
        s.model.mlp_hidden = integer(0, 100000);
        s.model.norm_eps = positive(-300, -1);
        s.model.init_std = positive(-10, 300);
        s.model.mixer.decay = std::vector<std::string>{"none", "fixed", "scalar", "vector"}[rng.below(4)];
        s.model.mixer.feature_map = rng.below(2) ? "identity" : "elu1";
        s.model.mixer.qk_norm = rng.below(2) ? "none" : "l2";
        s.model.mixer.gate_temperature = 1 + 31 * rng.uniform();
        s.model.mixer.gate_low_rank = integer(0, 64);
        s.model.mixer.output_gate = rng.below(2) ? "none" : "swish";
        s.model.mixer.chunk_size = integer(1, 1024);
        s.model.mixer.conv_size = rng.below(3) == 0 ? 0 : integer(2, 8);
        s.model.mixer.output_norm = std::vector<std::string>{"none", "rmsnorm", "groupnorm"}[rng.below(3)];
        s.model.mixer.expand_k = s.model.head_dim % 2 == 0 && rng.below(2) ? 0.5 : double(integer(1, 3));
        s.model.mixer.decay_init = rng.uniform() * 0.999 + 1e-4;
        s.model.mixer.rotation = s.model.mixer.key_dim(s.model.head_dim) % 2 == 0 && rng.below(2) ? "rope" : "none";
        // A few layers overridden (layer indices within n_layers).
        for (int i = 0, count = int(rng.below(3)); i < count; ++i) {
            MixerSpec layer = s.model.mixer;
            layer.decay = rng.below(2) ? "fixed" : "none";
            layer.chunk_size = integer(1, 1024);
            s.model.layer_mixers[integer(0, s.model.n_layers - 1)] = layer;
        }
        s.data.corpus = corpora[rng.below(std::size(corpora))];
        s.data.seq_len = integer(2, int64_t(1) << 20);
        s.data.batch_size = integer(1, 4096);
        // A synthetic task within what the model and the sequence allow, or the corpus with any
        // task parameters (they are checked only for the chosen task).
        const char* tasks[] = {"corpus", "mqar", "selective_copy", "induction"};
        s.data.task = s.model.vocab_size >= 4 && s.data.seq_len >= 4 ? tasks[rng.below(4)] : "corpus";
        const bool synthetic = s.data.task != "corpus";
        s.data.task_vocab_size = synthetic ? integer(4, s.model.vocab_size) : integer(2, int64_t(1) << 24);
        s.data.num_kv_pairs =
            integer(1, synthetic ? std::min(s.data.seq_len / 4, s.data.task_vocab_size / 2 - 1) : 100000);
        s.data.power_a = 1.0 - rng.uniform();  // (0, 1]
        s.data.num_copy_tokens = integer(1, synthetic ? s.data.seq_len / 2 : 100000);
        s.optim.lr = positive(-8, 2);
        s.optim.min_lr_ratio = rng.below(4) == 0 ? double(rng.below(2)) : rng.uniform();
        s.optim.warmup_steps = integer(0, 100000);
        s.optim.weight_decay = rng.below(4) == 0 ? 0.0 : positive(-5, 1);
        s.optim.beta1 = rng.uniform();
        s.optim.beta2 = 1.0 - std::ldexp(1.0, -int(integer(1, 53)));  // near 1, still below
        s.optim.eps = positive(-20, -1);
        s.optim.grad_clip = rng.below(4) == 0 ? 0.0 : positive(-3, 17);  // up to > 2^53: integral doubles
        s.optim.grad_accum = integer(1, 64);
        s.run.steps = integer(1, INT64_MAX - 1);
        s.run.seed = rng.next_u64();
        s.run.eval_every = integer(0, 10000);
        s.run.eval_batches = integer(1, 10000);
        s.run.checkpoint_every = integer(0, 10000);
        s.run.log_every = integer(1, 1000);
        s.run.threads = integer(0, 256);
        const std::string text = spec_to_toml(s);
        Spec back;
        ASSERT_NO_THROW(back = parse_spec(text, "random.toml")) << text;
        ASSERT_TRUE(back == s) << "trial " << trial << ":\n" << text << "\nread back as:\n" << spec_to_toml(back);
    }
    // Integral doubles print as floats, never as integers that could overflow TOML's range.
    Spec big;
    big.model.init_std = 1e300;
    big.optim.grad_clip = 9007199254740994.0;
    EXPECT_TRUE(parse_spec(spec_to_toml(big), "big.toml") == big) << spec_to_toml(big);
}

TEST(SpecErrors, IncompatibleMixerOptionsNameBothKeys) {
    expect_contains(parse_error("[model.mixer]\ndecay = \"vector\"\ndecay_parameterization = \"mamba2\"\n"),
                    {"configs/demo.toml", "model.mixer.decay_parameterization", "model.mixer.decay", "\"vector\""});
    expect_contains(parse_error("[model.mixer]\ndecay_parameterization = \"mamba2\"\n", {"model.mixer.decay=fixed"}),
                    {"model.mixer.decay_parameterization", "\"fixed\""});
    // The same options are fine together with a scalar decay.
    const Spec ok = parse_spec("[model.mixer]\ndecay = \"scalar\"\ndecay_parameterization = \"mamba2\"\n", "x.toml");
    EXPECT_EQ(ok.model.mixer.decay_parameterization, "mamba2");
}

TEST(SpecErrors, MixerKindsRejectOptionsTheyCannotUse) {
    expect_contains(parse_error("[model.mixer]\nkind = \"softmax_attention\"\ndecay = \"fixed\"\n"),
                    {"model.mixer.kind", "softmax_attention", "decay \"fixed\""});
    expect_contains(parse_error("[model.mixer]\nposition_bias = \"alibi\"\n"),
                    {"model.mixer.position_bias", "linear_attention"});
    expect_contains(parse_error("[model]\nn_layers = 2\nhybrid_every = 3\n"), {"model.hybrid_every", "model.n_layers"});
    expect_contains(parse_error("[model]\nhybrid_every = 2\n[model.hybrid_mixer]\nconv_size = 4\n"),
                    {"model.hybrid_mixer.kind", "conv_size 4"});
    // A hybrid's defaults are valid: gated softmax attention with RoPE every 2nd layer.
    const Spec hybrid = parse_spec("[model]\nhybrid_every = 2\n", "x.toml");
    EXPECT_EQ(hybrid.model.hybrid_mixer.kind, "softmax_attention");
    EXPECT_EQ(hybrid.model.hybrid_mixer.rotation, "rope");
}

TEST(SpecErrors, DeltaRuleNeedsUnitKeysAndAScalarOrNoDecay) {
    expect_contains(parse_error("[model.mixer]\nupdate = \"delta\"\n"), {"model.mixer.update", "qk_norm", "\"l2\""});
    expect_contains(parse_error("[model.mixer]\nupdate = \"delta\"\nqk_norm = \"l2\"\ndecay = \"vector\"\n"),
                    {"model.mixer.update", "model.mixer.decay", "\"vector\""});
    EXPECT_EQ(parse_spec("[model.mixer]\nupdate = \"delta\"\nqk_norm = \"l2\"\ndecay = \"scalar\"\n", "x.toml")
                  .model.mixer.update,
              "delta");
}

TEST(SpecErrors, KeyTiedDecayNeedsAVectorDecayAndPlainKeys) {
    expect_contains(parse_error("[model.mixer]\ndecay_sharing = \"key\"\ndecay = \"scalar\"\n"),
                    {"model.mixer.decay_sharing", "decay \"scalar\""});
    expect_contains(parse_error("[model.mixer]\ndecay_sharing = \"key\"\ndecay = \"vector\"\nrotation = \"rope\"\n"),
                    {"model.mixer.decay_sharing", "rotation \"rope\""});
    expect_contains(parse_error("[model.mixer]\ndecay_sharing = \"key\"\ndecay = \"vector\"\n"
                                "decay_parameterization = \"constant\"\n"),
                    {"model.mixer.decay_sharing", "decay_parameterization \"constant\""});
    EXPECT_EQ(parse_spec("[model.mixer]\ndecay_sharing = \"key\"\ndecay = \"vector\"\n", "x.toml").model.mixer.decay_sharing,
              "key");
}

TEST(SpecErrors, SecondOrderNeedsAPerHeadDecayAndTheAdditiveUpdate) {
    expect_contains(parse_error("[model.mixer]\norder = 2\ndecay = \"vector\"\n"), {"model.mixer.order", "decay \"vector\""});
    expect_contains(parse_error("[model.mixer]\norder = 2\nupdate = \"delta\"\nqk_norm = \"l2\"\n"),
                    {"model.mixer.order", "update \"delta\""});
    EXPECT_EQ(parse_spec("[model.mixer]\norder = 2\ndecay = \"scalar\"\n", "x.toml").model.mixer.decay, "scalar");
    expect_contains(parse_error("[model.mixer]\norder = 3\n"), {"model.mixer.order", "[1, 2]"});
}

TEST(SpecErrors, SyntheticTasksMustFitTheModelAndTheSequence) {
    expect_contains(parse_error("[model]\nvocab_size = 256\n[data]\ntask = \"mqar\"\ntask_vocab_size = 8192\n"),
                    {"configs/demo.toml: model.vocab_size = 256 is smaller than data.task_vocab_size = 8192",
                     "data.task = \"mqar\""});
    expect_contains(parse_error("[data]\ntask = \"mqar\"\nnum_kv_pairs = 65\n"),
                    {"configs/demo.toml: data.seq_len = 256 is too short for data.num_kv_pairs = 65", ">= 4 · "
                     "num_kv_pairs = 260"});
    expect_contains(parse_error("[data]\ntask = \"mqar\"\n", {"data.task_vocab_size=16"}),
                    {"configs/demo.toml: data.task_vocab_size = 16 is too small for data.num_kv_pairs = 8"});
    expect_contains(parse_error("[data]\ntask = \"selective_copy\"\nseq_len = 20\nnum_copy_tokens = 11\n"),
                    {"data.seq_len = 20", "data.num_copy_tokens = 11", ">= 22"});
    expect_contains(parse_error("[data]\ntask = \"induction\"\nseq_len = 3\n"), {"data.seq_len = 3", "induction"});
    expect_contains(parse_error("[data]\ntask = \"copy\"\n"),
                    {"configs/demo.toml:2: data.task: expected one of \"corpus\", \"mqar\", \"selective_copy\", "
                     "\"induction\", got \"copy\""});
    // Only the chosen task's parameters are checked: the corpus ignores them.
    EXPECT_NO_THROW(parse_spec("[data]\nnum_kv_pairs = 1000\ntask_vocab_size = 65536\n", "x.toml"));
    const Spec mqar = parse_spec("[model]\nvocab_size = 8192\n[data]\ntask = \"mqar\"\ntask_vocab_size = 8192\n"
                                 "num_kv_pairs = 64\npower_a = 0.01\n", "x.toml");
    EXPECT_EQ(mqar.data.task, "mqar");
    EXPECT_EQ(mqar.data.num_kv_pairs, 64);
    EXPECT_TRUE(parse_spec(spec_to_toml(mqar), "x.toml") == mqar);
    const Spec copy = parse_spec("", "x.toml", {"data.task=selective_copy", "data.task_vocab_size=16"});
    EXPECT_EQ(copy.data.task, "selective_copy");
    EXPECT_EQ(copy.data.num_copy_tokens, 16);
}

TEST(SpecLayers, LayerTablesOverrideTheMixerTheLayerWouldTake) {
    const Spec spec = parse_spec(R"([model]
n_layers = 4
hybrid_every = 2
[model.mixer]
decay = "scalar"
[model.layers.0]
decay = "vector"
gate_low_rank = 8
[model.layers.3]
window = 16
)", "layers.toml");
    const ModelSpec& m = spec.model;
    // Layer 0: the main mixer with two keys changed; layer 1 the hybrid mixer (hybrid_every = 2: the
    // 2nd and 4th layers); layer 2 the main mixer; layer 3 the hybrid mixer with a window.
    EXPECT_EQ(m.mixer_of_layer(0).decay, "vector");
    EXPECT_EQ(m.mixer_of_layer(0).gate_low_rank, 8);
    EXPECT_EQ(m.mixer_of_layer(0).conv_size, m.mixer.conv_size);
    EXPECT_EQ(&m.mixer_of_layer(1), &m.hybrid_mixer);
    EXPECT_EQ(&m.mixer_of_layer(2), &m.mixer);
    EXPECT_EQ(m.mixer_of_layer(2).decay, "scalar");
    EXPECT_EQ(m.mixer_of_layer(3).kind, "softmax_attention");
    EXPECT_EQ(m.mixer_of_layer(3).window, 16);
    EXPECT_EQ(m.mixer_of_layer(3).rotation, "rope");
    // Printed and read back: the same spec.
    EXPECT_TRUE(parse_spec(spec_to_toml(spec), "x.toml") == spec) << spec_to_toml(spec);
    // --set reaches a layer's keys, and starts a layer table the file does not have.
    const Spec set = parse_spec("[model]\nn_layers = 3\n", "x.toml", {"model.layers.2.decay=fixed"});
    EXPECT_EQ(set.model.mixer_of_layer(2).decay, "fixed");
    EXPECT_EQ(set.model.mixer_of_layer(1).decay, "none");
}

TEST(SpecLayers, BadLayerTablesNameTheLayerAndKey) {
    expect_contains(parse_error("[model]\nn_layers = 2\n[model.layers.2]\ndecay = \"fixed\"\n"),
                    {"configs/demo.toml:3", "model.layers.2", "[0, 2)"});
    expect_contains(parse_error("[model.layers.first]\ndecay = \"fixed\"\n"), {"model.layers.first", "layer index"});
    expect_contains(parse_error("[model.layers.1]\ndecya = \"fixed\"\n"),
                    {"configs/demo.toml:2", "model.layers.1.decya", "valid keys"});
    expect_contains(parse_error("[model.layers.1]\ndecay = \"sometimes\"\n"), {"model.layers.1.decay", "\"vector\""});
    // The combination checks run per layer and name it.
    expect_contains(parse_error("[model.layers.0]\nupdate = \"delta\"\n"), {"model.layers.0.update", "qk_norm"});
    expect_contains(parse_error("[model]\nlayers = 3\n"), {"model.layers", "[model.layers.N]"});
    expect_contains(parse_error("", {"model.layers.1=3"}), {"--set model.layers.1=3", "model.layers.N.key"});
    expect_contains(parse_error("", {"model.layers.9.decay=fixed"}), {"--set model.layers.9.decay=fixed", "[0, 4)"});
}

TEST(SpecErrors, HeadExpansionsRotationsAndGridsAreChecked) {
    expect_contains(parse_error("[model]\nhead_dim = 6\n[model.mixer]\nexpand_k = 0.25\n"),
                    {"model.mixer.expand_k", "1.5", "whole number"});
    expect_contains(parse_error("[model]\nhead_dim = 6\n[model.mixer]\nexpand_k = 0.5\nrotation = \"rope\"\n"),
                    {"model.mixer.rotation", "even", "3"});
    expect_contains(parse_error("[model.mixer]\nrotation = \"grape_mixture\"\ngrape_rank = 5\n"),
                    {"model.mixer.grape_rank", "even"});
    expect_contains(parse_error("[model.mixer]\ngrid_height = 4\n"), {"model.mixer.grid_height", "spatial"});
    expect_contains(parse_error("[model.mixer]\ndecay = \"spatial\"\n"), {"model.mixer.decay", "grid_height"});
    expect_contains(parse_error("[model.mixer]\ndecay = \"spatial\"\ngrid_height = 4\ngrid_width = 4\n"),
                    {"data.seq_len", "16", "256"});
    expect_contains(parse_error("[model]\nhybrid_every = 1\n[model.hybrid_mixer]\nexpand_v = 2\n"),
                    {"model.hybrid_mixer.kind", "expand_v 2"});
    expect_contains(parse_error("[model.mixer]\ndecay_init = 1.0\n"), {"model.mixer.decay_init", "(0, 1)"});
    const Spec grid = parse_spec("[model.mixer]\ndecay = \"spatial\"\ngrid_height = 4\ngrid_width = 8\n"
                                 "[data]\nseq_len = 32\n", "x.toml");
    EXPECT_EQ(grid.model.mixer.key_dim(grid.model.head_dim), 64);
    const Spec wide = parse_spec("[model]\nhead_dim = 6\n[model.mixer]\nexpand_k = 0.5\nexpand_v = 2\n", "x.toml");
    EXPECT_EQ(wide.model.mixer.key_dim(6), 3);
    EXPECT_EQ(wide.model.mixer.value_dim(6), 12);
}
