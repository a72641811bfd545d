// End-to-end tests of the linarch CLI: training, exact kill-and-resume, Ctrl-C, bad inputs.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "backend/cuda/device.hpp"
#include "core/rng.hpp"
#include "support/process.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using namespace linarch::testkit;
namespace fs = std::filesystem;

namespace {
const std::string kCli = LINARCH_CLI;

// A small corpus of random sentences over a few words: enough structure to learn quickly.
std::string make_text(uint64_t seed) {
    const char* words[] = {"the", "lord", "said", "unto", "him", "and", "they", "went", "into", "land", "of", "light"};
    RngStream rng(seed, 11);
    std::string text;
    for (int sentence = 0; sentence < 1500; ++sentence) {
        const int length = 3 + int(rng.below(6));
        for (int w = 0; w < length; ++w) {
            text += words[rng.below(12)];
            text += w + 1 < length ? " " : ".\n";
        }
    }
    return text;
}

class Cli : public ::testing::Test {
protected:
    void SetUp() override {
        write_text(dir / "corpus.txt", make_text(test_seed()));
        const auto result = run_command({kCli, "data", "prepare", "--input", (dir / "corpus.txt").string(), "--out",
                                         (dir / "corpus").string(), "--val-fraction", "0.1"});
        ASSERT_EQ(result.exit_code, 0) << result.output;
        write_text(dir / "tiny.toml", fmt::format(R"([model]
vocab_size = 259
d_model = 32
n_layers = 2
n_heads = 2
head_dim = 16
mlp_hidden = 64

[model.mixer]
decay = "fixed"
chunk_size = 8
conv_size = 3

[data]
corpus = "{}"
seq_len = 24
batch_size = 4

[optim]
lr = 1e-2
warmup_steps = 5

[run]
steps = 16
eval_every = 0
eval_batches = 2
checkpoint_every = 4
log_every = 4
threads = 1
)", (dir / "corpus").string()));
    }

    std::vector<std::string> train_args(const fs::path& out, std::vector<std::string> extra = {}) const {
        std::vector<std::string> args = {kCli, "train", "--config", (dir / "tiny.toml").string(), "--out", out.string()};
        args.insert(args.end(), extra.begin(), extra.end());
        return args;
    }

    // step → loss from a run's metrics.jsonl (training records only).
    static std::map<int64_t, double> losses(const fs::path& run) {
        std::map<int64_t, double> out;
        std::istringstream lines(read_text(run / "metrics.jsonl"));
        for (std::string line; std::getline(lines, line);) {
            const auto record = nlohmann::json::parse(line);
            if (record.contains("loss")) out[record["step"].get<int64_t>()] = record["loss"].get<double>();
        }
        return out;
    }

    static int64_t latest_step(const fs::path& run) {
        const auto latest = run / "checkpoints" / "latest";
        if (!fs::exists(latest)) return -1;
        const std::string name = read_text(latest);
        if (name.size() < 13) return -1;
        return std::stoll(name.substr(5, 8));
    }

    static pid_t wait_for_checkpoint_then(const std::vector<std::string>& args, const fs::path& run,
                                          const fs::path& log, int64_t min_step) {
        const pid_t pid = start_command(args, log);
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
        while (latest_step(run) < min_step && std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        return pid;
    }

    TempDir dir;
};
}  // namespace

TEST_F(Cli, VersionAndHelp) {
    auto version = run_command({kCli, "--version"});
    EXPECT_EQ(version.exit_code, 0);
    EXPECT_NE(version.output.find(std::string("linarch ") + LINARCH_VERSION), std::string::npos);
    for (auto sub : {std::vector<std::string>{"train"}, {"generate"}, {"data", "prepare"}}) {
        std::vector<std::string> args = {kCli};
        args.insert(args.end(), sub.begin(), sub.end());
        args.push_back("--help");
        auto help = run_command(args);
        EXPECT_EQ(help.exit_code, 0) << help.output;
        EXPECT_NE(help.output.find("Usage"), std::string::npos) << help.output;
    }
}

TEST_F(Cli, TrainWritesMetricsCheckpointsAndGenerates) {
    const auto run = dir / "run";
    auto result = run_command(train_args(run));
    ASSERT_EQ(result.exit_code, 0) << result.output;
    EXPECT_NE(result.output.find("val_bpb="), std::string::npos);
    const auto loss = losses(run);
    ASSERT_EQ(loss.size(), 16u);
    EXPECT_LT(loss.at(16), loss.at(1));  // it learns
    EXPECT_EQ(latest_step(run), 16);
    // Only the newest two checkpoints are kept.
    EXPECT_TRUE(fs::exists(run / "checkpoints" / "step-00000016" / "model.safetensors"));
    EXPECT_TRUE(fs::exists(run / "checkpoints" / "step-00000012"));
    EXPECT_FALSE(fs::exists(run / "checkpoints" / "step-00000008"));
    // Generation is reproducible for a seed and differs across seeds.
    auto gen = [&](const std::string& seed) {
        return run_command({kCli, "generate", "--checkpoint", run.string(), "--prompt", "the lord", "--max-tokens", "40",
                            "--seed", seed});
    };
    const auto a = gen("1"), b = gen("1"), c = gen("2");
    ASSERT_EQ(a.exit_code, 0) << a.output;
    EXPECT_EQ(a.output, b.output);
    EXPECT_NE(a.output, c.output);
    EXPECT_EQ(a.output.rfind("the lord", 0), 0u);
    // A second training run into the same directory without --resume is refused, nothing overwritten.
    auto again = run_command(train_args(run));
    EXPECT_NE(again.exit_code, 0);
    EXPECT_NE(again.output.find("already holds a run"), std::string::npos) << again.output;
    EXPECT_EQ(latest_step(run), 16);
}

TEST_F(Cli, KillAndResumeIsBitwiseIdentical) {
    const auto straight = dir / "straight", killed = dir / "killed";
    const std::vector<std::string> longer = {"--steps", "120"};
    ASSERT_EQ(run_command(train_args(straight, longer)).exit_code, 0);
    const pid_t pid = wait_for_checkpoint_then(train_args(killed, longer), killed, dir / "killed.log", 8);
    ::kill(pid, SIGKILL);
    ASSERT_EQ(wait_command(pid), -SIGKILL) << "the run finished before it could be killed";
    const int64_t resumed_from = latest_step(killed);
    ASSERT_GE(resumed_from, 8);
    ASSERT_LT(resumed_from, 120);
    auto extra = longer;
    extra.push_back("--resume");
    auto resumed = run_command(train_args(killed, extra));
    ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
    const auto expected = losses(straight), got = losses(killed);
    ASSERT_EQ(expected.size(), 120u);
    ASSERT_EQ(got.size(), expected.size());
    for (const auto& [step, loss] : expected) EXPECT_EQ(got.at(step), loss) << "step " << step;
}

TEST_F(Cli, InterruptSavesAndExitsZero) {
    const auto run = dir / "run";
    const pid_t pid = wait_for_checkpoint_then(train_args(run, {"--steps", "100000"}), run, dir / "int.log", 4);
    ::kill(pid, SIGINT);
    EXPECT_EQ(wait_command(pid), 0);
    const std::string log = read_text(dir / "int.log");
    EXPECT_NE(log.find("interrupted"), std::string::npos) << log;
    const int64_t step = latest_step(run);
    EXPECT_GT(step, 4);
    const auto trainer = nlohmann::json::parse(
        read_text(run / "checkpoints" / fmt::format("step-{:08}", step) / "trainer.json"));
    EXPECT_EQ(trainer["step"].get<int64_t>(), step);
    EXPECT_EQ(losses(run).rbegin()->first, step);
}

TEST_F(Cli, BadSpecsNameFileLineAndKey) {
    const auto bad = dir / "bad.toml";
    write_text(bad, "[model]\nd_model = 32\nn_layerz = 2\n");
    auto unknown = run_command({kCli, "train", "--config", bad.string(), "--out", (dir / "r").string()});
    EXPECT_EQ(unknown.exit_code, 1);
    EXPECT_NE(unknown.output.find("bad.toml:3"), std::string::npos) << unknown.output;
    EXPECT_NE(unknown.output.find("n_layerz"), std::string::npos) << unknown.output;
    EXPECT_NE(unknown.output.find("n_layers"), std::string::npos) << unknown.output;  // lists valid keys
    write_text(bad, "[optim]\nlr = \"fast\"\n");
    auto type = run_command({kCli, "train", "--config", bad.string(), "--out", (dir / "r").string()});
    EXPECT_EQ(type.exit_code, 1);
    EXPECT_NE(type.output.find("bad.toml:2"), std::string::npos) << type.output;
    EXPECT_NE(type.output.find("optim.lr"), std::string::npos) << type.output;
    auto range = run_command(train_args(dir / "r", {"--set", "model.n_layers=0"}));
    EXPECT_EQ(range.exit_code, 1);
    EXPECT_NE(range.output.find("model.n_layers"), std::string::npos) << range.output;
    EXPECT_FALSE(fs::exists(dir / "r" / "checkpoints"));
}

TEST_F(Cli, CorruptedOrMismatchedCheckpointsAreRefused) {
    const auto run = dir / "run";
    ASSERT_EQ(run_command(train_args(run, {"--steps", "8"})).exit_code, 0);
    // A checkpoint whose shapes disagree with the spec names the tensor.
    auto mismatch = run_command(train_args(run, {"--steps", "12", "--resume", "--set", "model.d_model=48"}));
    EXPECT_NE(mismatch.exit_code, 0);
    EXPECT_NE(mismatch.output.find("embedding.weight"), std::string::npos) << mismatch.output;
    EXPECT_EQ(latest_step(run), 8);
    // A truncated weights file is refused, by generate and by resume, and left as it is.
    const auto weights = run / "checkpoints" / "step-00000008" / "model.safetensors";
    const auto size = fs::file_size(weights);
    fs::resize_file(weights, size - 100);
    auto gen = run_command({kCli, "generate", "--checkpoint", run.string(), "--prompt", "x"});
    EXPECT_NE(gen.exit_code, 0);
    EXPECT_NE(gen.output.find("model.safetensors"), std::string::npos) << gen.output;
    auto resume = run_command(train_args(run, {"--steps", "12", "--resume"}));
    EXPECT_NE(resume.exit_code, 0);
    EXPECT_EQ(fs::file_size(weights), size - 100);
    EXPECT_EQ(latest_step(run), 8);
}

TEST_F(Cli, NonFiniteLossStopsAndKeepsTheLastCheckpoint) {
    const auto run = dir / "run";
    ASSERT_EQ(run_command(train_args(run, {"--steps", "8"})).exit_code, 0);
    auto blown = run_command(train_args(run, {"--steps", "30", "--resume", "--set", "optim.lr=1e30", "--set",
                                              "optim.grad_clip=0", "--set", "optim.warmup_steps=0"}));
    EXPECT_NE(blown.exit_code, 0);
    EXPECT_NE(blown.output.find("the loss became"), std::string::npos) << blown.output;
    EXPECT_NE(blown.output.find("step-00000008"), std::string::npos) << blown.output;
    EXPECT_EQ(latest_step(run), 8);
}

TEST_F(Cli, TrainOnCudaWithoutAGpuSaysSo) {
    if (cuda::device_count() > 0) GTEST_SKIP() << "a GPU is present: " << cuda::describe_device();
    auto result = run_command(train_args(dir / "gpu", {"--device", "cuda"}));
    EXPECT_EQ(result.exit_code, 1);
    EXPECT_NE(result.output.find("linarch train --device cuda needs a CUDA GPU"), std::string::npos) << result.output;
    EXPECT_FALSE(fs::exists(dir / "gpu" / "checkpoints"));
    auto unknown = run_command(train_args(dir / "tpu", {"--device", "tpu"}));
    EXPECT_NE(unknown.exit_code, 0);
    EXPECT_NE(unknown.output.find("--device"), std::string::npos) << unknown.output;
}

TEST_F(Cli, GenerateServeAndEvalOnCudaWithoutAGpuSaySo) {
    if (cuda::device_count() > 0) GTEST_SKIP() << "a GPU is present: " << cuda::describe_device();
    const auto run = dir / "run";
    ASSERT_EQ(run_command(train_args(run, {"--steps", "2"})).exit_code, 0);
    const auto generate = run_command({kCli, "generate", "--checkpoint", run.string(), "--prompt", "x", "--device", "cuda"});
    EXPECT_EQ(generate.exit_code, 1);
    EXPECT_NE(generate.output.find("linarch generate --device cuda needs a CUDA GPU"), std::string::npos)
        << generate.output;
    const auto serve = run_command({kCli, "serve", "--checkpoint", run.string(), "--port", "0", "--device", "cuda"});
    EXPECT_EQ(serve.exit_code, 1);
    EXPECT_NE(serve.output.find("linarch serve --device cuda needs a CUDA GPU"), std::string::npos) << serve.output;
    const auto eval = run_command({kCli, "eval", "--checkpoint", run.string(), "--suite", "mqar", "--device", "cuda"});
    EXPECT_EQ(eval.exit_code, 1);
    EXPECT_NE(eval.output.find("linarch eval --device cuda needs a CUDA GPU"), std::string::npos) << eval.output;
}

TEST_F(Cli, DataPrepareErrors) {
    auto missing = run_command({kCli, "data", "prepare", "--input", (dir / "nope.txt").string(), "--out",
                                (dir / "o").string()});
    EXPECT_NE(missing.exit_code, 0);
    EXPECT_NE(missing.output.find("nope.txt"), std::string::npos) << missing.output;
    write_text(dir / "empty.txt", "");
    auto empty = run_command({kCli, "data", "prepare", "--input", (dir / "empty.txt").string(), "--out",
                              (dir / "o").string()});
    EXPECT_NE(empty.exit_code, 0);
    EXPECT_NE(empty.output.find("empty"), std::string::npos) << empty.output;
    EXPECT_FALSE(fs::exists(dir / "o" / "train.bin"));
}

TEST_F(Cli, EvalRunsEverySuiteIntoJsonATableAndAPlot) {
    const auto run = dir / "run";
    ASSERT_EQ(run_command(train_args(run, {"--steps", "4"})).exit_code, 0);
    const std::vector<std::string> small = {"--windows", "3", "--mqar-examples", "3", "--mqar-lengths", "32,64",
                                            "--mqar-pairs", "2,4", "--multiples", "1,2", "--extrapolation-windows",
                                            "2", "--threads", "1"};
    std::vector<std::string> args = {kCli, "eval", "--checkpoint", run.string(), "--suite", "all", "--json", "-"};
    args.insert(args.end(), small.begin(), small.end());
    const auto as_json = run_command(args);
    ASSERT_EQ(as_json.exit_code, 0) << as_json.output;
    const auto json = nlohmann::json::parse(as_json.output.substr(as_json.output.find('{')));
    EXPECT_EQ(json["step"], 4);
    EXPECT_EQ(json["suites"], nlohmann::json({"loss", "mqar", "extrapolation"}));
    std::map<std::string, int> per_suite;
    double loss = 0, perplexity = 0;
    for (const auto& r : json["results"]) {
        ++per_suite[r["suite"].get<std::string>()];
        if (r["metric"] == "val_loss") loss = r["value"].get<double>();
        if (r["metric"] == "perplexity") perplexity = r["value"].get<double>();
    }
    EXPECT_EQ(per_suite["loss"], 3);
    EXPECT_EQ(per_suite["mqar"], 2 * 4);                // 2 lengths × 2 pair counts × (accuracy, chance)
    EXPECT_EQ(per_suite["extrapolation"], 2 + 3);       // buckets of 24 and of 48 positions
    EXPECT_GT(loss, 0.5);
    EXPECT_NEAR(perplexity, std::exp(loss), 1e-9 * perplexity);

    args = {kCli, "eval", "--checkpoint", run.string(), "--suite", "loss,extrapolation", "--plot",
            (dir / "positions.png").string(), "--json", (dir / "eval.json").string()};
    args.insert(args.end(), small.begin(), small.end());
    const auto as_table = run_command(args);
    ASSERT_EQ(as_table.exit_code, 0) << as_table.output;
    EXPECT_NE(as_table.output.find("bits_per_byte"), std::string::npos) << as_table.output;
    EXPECT_NE(as_table.output.find("[16, 24)"), std::string::npos) << as_table.output;
    EXPECT_EQ(read_text(dir / "positions.png").substr(1, 3), "PNG");
    EXPECT_EQ(nlohmann::json::parse(read_text(dir / "eval.json"))["results"].size(), 3u + 5u);

    const auto unknown = run_command({kCli, "eval", "--checkpoint", run.string(), "--suite", "loss,mqqar"});
    EXPECT_NE(unknown.exit_code, 0);
    EXPECT_NE(unknown.output.find("unknown suite \"mqqar\""), std::string::npos) << unknown.output;
    const auto no_plot = run_command({kCli, "eval", "--checkpoint", run.string(), "--suite", "loss", "--plot",
                                      (dir / "p.png").string()});
    EXPECT_NE(no_plot.exit_code, 0);
    EXPECT_NE(no_plot.output.find("add extrapolation to --suite"), std::string::npos) << no_plot.output;
}

TEST_F(Cli, TrainsOnASyntheticTaskAndReportsAccuracy) {
    const auto run = dir / "mqar";
    const auto result = run_command(train_args(run, {"--set", "data.task=mqar", "--set", "data.task_vocab_size=32",
                                                     "--set", "data.seq_len=32", "--set", "data.num_kv_pairs=4"}));
    ASSERT_EQ(result.exit_code, 0) << result.output;
    EXPECT_NE(result.output.find("val_accuracy="), std::string::npos) << result.output;
    EXPECT_EQ(result.output.find("val_bpb="), std::string::npos) << result.output;
    // The task's vocabulary must fit the model's.
    const auto too_big = run_command(train_args(dir / "big", {"--set", "data.task=mqar", "--set",
                                                              "data.task_vocab_size=4096", "--set", "data.seq_len=32"}));
    EXPECT_NE(too_big.exit_code, 0);
    EXPECT_NE(too_big.output.find("task_vocab_size"), std::string::npos) << too_big.output;
}
