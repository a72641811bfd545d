// The search loop end to end on a tiny model and corpus: the baseline first, random candidates,
// then evolved ones with their parents; every trial recorded with its metrics; the same call
// continues a study; failing trials are recorded and the study goes on.
#include <signal.h>

#include <chrono>
#include <cmath>
#include <optional>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "backend/cuda/device.hpp"
#include "core/rng.hpp"
#include "data/corpus.hpp"
#include "search/database.hpp"
#include "search/study.hpp"
#include "support/process.hpp"
#include "support/testkit.hpp"

namespace linarch {
namespace {
using namespace testkit;

class Study : public ::testing::Test {
protected:
    void SetUp() override {
        RngStream rng(test_seed(), stream_id("study corpus"));
        std::string text;
        for (int line = 0; line < 4000; ++line) {
            for (int w = 0; w < 6; ++w) text += std::string(1 + rng.below(5), char('a' + rng.below(8))) + " ";
            text += "\n";
        }
        write_text(dir / "corpus.txt", text);
        PrepareOptions prepare;
        prepare.val_fraction = 0.3;
        prepare_corpus({(dir / "corpus.txt").string()}, dir / "corpus", prepare);
        write_base(dir / "corpus");
        write_text(dir / "space.toml", R"(base = "base.toml"
[vary]
model.mixer.decay = ["none", "fixed", "scalar"]
model.mixer.conv_size = [0, 2]
model.n_layers = { min = 1, max = 2 }
)");
    }

    void write_base(const std::filesystem::path& corpus) const {
        write_text(dir / "base.toml", fmt::format(R"([model]
vocab_size = 259
d_model = 32
n_layers = 1
n_heads = 2
head_dim = 16
mlp_hidden = 64
[model.mixer]
chunk_size = 8
conv_size = 0
decay = "fixed"
[data]
corpus = "{}"
seq_len = 16
batch_size = 2
[optim]
lr = 1e-2
warmup_steps = 1
[run]
eval_every = 0
eval_batches = 1
checkpoint_every = 0
log_every = 100
threads = 1
)", corpus.string()));
    }

    SearchOptions options(int64_t trials) const {
        SearchOptions o;
        o.space = (dir / "space.toml").string();
        o.database = "sqlite:///" + (dir / "search.db").string();
        o.runs_dir = dir / "runs";
        o.trials = trials;
        o.steps = 3;
        o.initial_random = 3;
        o.population = 4;
        o.tournament = 2;
        o.seed = test_seed();
        return o;
    }

    TempDir dir;
};

TEST_F(Study, BaselineRandomThenEvolvedTrialsAllRecordedAndResumable) {
    int64_t reports = 0;
    SearchProgress progress = run_search(options(5), [&](const SearchProgress&) { ++reports; });
    EXPECT_EQ(progress.done, 5);
    EXPECT_EQ(progress.failed, 0);
    EXPECT_GE(reports, 5);
    EXPECT_FALSE(std::isnan(progress.best_fitness));

    auto db = open_database(options(5).database);
    const int64_t study = db->open_study("space", "");
    std::vector<Trial> trials = db->trials(study);
    ASSERT_EQ(trials.size(), 5u);
    // The baseline is the base spec and scores 0.5 against itself.
    EXPECT_NE(trials[0].spec_toml.find("decay = \"fixed\""), std::string::npos);
    EXPECT_DOUBLE_EQ(trials[0].final_metrics.at("fitness"), 0.5);
    std::set<std::string> hashes;
    for (const Trial& t : trials) {
        EXPECT_EQ(t.status, TrialStatus::done) << t.error;
        EXPECT_GT(t.final_metrics.at("val_bpb"), 0.5);
        EXPECT_GT(t.final_metrics.at("parameters"), 1000);
        const double f = t.final_metrics.at("fitness");
        EXPECT_GT(f, 0.0);
        EXPECT_LT(f, 1.0);
        EXPECT_TRUE(hashes.insert(t.functional_hash).second) << "a duplicate function was trained";
        EXPECT_TRUE(std::filesystem::exists(dir / "runs" / fmt::format("trial-{:05d}", t.number) / "metrics.jsonl"));
    }
    // Before initial_random trials: no parents; after: one parent each (mutation).
    for (size_t i = 0; i < trials.size(); ++i) EXPECT_EQ(trials[i].parent_ids.size(), i < 3 ? 0u : 1u) << i;

    // The same call with a larger budget continues the study where it stopped: the finished trials
    // are kept as they were, two more are added.
    const auto before = trials;
    progress = run_search(options(7));
    EXPECT_EQ(progress.done, 7);
    trials = db->trials(study);
    ASSERT_EQ(trials.size(), 7u);
    for (size_t i = 0; i < before.size(); ++i) {
        EXPECT_EQ(trials[i].spec_toml, before[i].spec_toml);
        EXPECT_EQ(trials[i].final_metrics, before[i].final_metrics);
    }
}

TEST_F(Study, FailingTrialsAreRecordedAndTheStudyGoesOn) {
    write_base(dir / "no-such-corpus");
    const SearchProgress progress = run_search(options(3));
    EXPECT_EQ(progress.failed, 3);
    EXPECT_TRUE(std::isnan(progress.best_fitness));
    auto db = open_database(options(3).database);
    for (const Trial& t : db->trials(db->open_study("space", ""))) {
        EXPECT_EQ(t.status, TrialStatus::failed);
        EXPECT_NE(t.error.find("no-such-corpus"), std::string::npos) << t.error;
    }
}

TEST_F(Study, AnExhaustedSpaceEndsTheSearch) {
    write_text(dir / "space.toml", "base = \"base.toml\"\n[vary]\nmodel.mixer.decay = [\"none\", \"fixed\"]\n");
    const SearchProgress progress = run_search(options(5));
    EXPECT_TRUE(progress.exhausted);
    EXPECT_EQ(progress.done, 2);  // the two functions the space holds
    EXPECT_GE(progress.duplicates, 100);
}

TEST_F(Study, MultiFidelityPrunesHopelessTrialsAndRecordsCurvesAndProxies) {
    SearchOptions o = options(7);
    o.steps = 9;
    o.min_steps = 1;  // rungs at steps 1 and 3
    o.reduction_factor = 3;
    const SearchProgress progress = run_search(o);
    EXPECT_EQ(progress.done + progress.failed, 7);
    EXPECT_GE(progress.pruned, 1);

    auto db = open_database(o.database);
    const std::vector<Trial> trials = db->trials(db->open_study("space", ""));
    int64_t pruned = 0;
    for (const Trial& t : trials) {
        ASSERT_EQ(t.status, TrialStatus::done) << t.error;
        // Every trial was scored at initialisation.
        for (const char* proxy : {"grad_norm", "snip", "synflow", "naswot", "w_pca", "parameters"})
            EXPECT_TRUE(t.proxies.contains(proxy) && std::isfinite(t.proxies.at(proxy))) << t.number << " " << proxy;
        std::vector<int64_t> steps;
        for (const IntermediateValue& v : db->intermediate_values(t.id)) {
            steps.push_back(v.step);
            EXPECT_TRUE(v.metrics.contains("train_loss") && v.metrics.contains("val_bpb")) << v.metrics.dump();
        }
        ASSERT_FALSE(steps.empty()) << t.number;
        EXPECT_EQ(steps.front(), 1);  // the first rung
        if (t.final_metrics.contains("pruned_at_step")) {
            ++pruned;
            const double at = t.final_metrics.at("pruned_at_step");
            EXPECT_TRUE(at == 1 || at == 3) << at;
            EXPECT_EQ(steps.back(), int64_t(at));
            EXPECT_FALSE(t.final_metrics.contains("fitness"));
            // Stopped because at least one trial before it did better at that rung.
            bool beaten = false;
            for (const Trial& other : trials) {
                if (other.id >= t.id) break;
                for (const IntermediateValue& v : db->intermediate_values(other.id))
                    beaten |= v.step == int64_t(at) && v.metrics["val_bpb"].get<double>() <
                                                           t.final_metrics.at("val_bpb");
            }
            EXPECT_TRUE(beaten) << t.number;
        } else {
            EXPECT_EQ(steps.back(), 9);
            EXPECT_TRUE(t.final_metrics.contains("fitness")) << t.number;
            EXPECT_GT(t.final_metrics.at("train_tokens_per_second"), 0);
        }
    }
    EXPECT_EQ(pruned, progress.pruned);
    EXPECT_FALSE(trials[0].final_metrics.contains("pruned_at_step"));  // the first at every rung goes on
}

TEST_F(Study, AnExternalProposerDrivesEvolution) {
    // Reads the study on stdin, keeps it, and proposes the next of a list of assignments (one bad line
    // first, which is skipped with its reason).
    write_text(dir / "proposer.sh", fmt::format(R"(#!/bin/sh
cat > {0}/input.json
n=$(cat {0}/count 2>/dev/null || echo 0)
echo $((n + 1)) > {0}/count
echo '{{"assignment": {{"model.mixer.decay": "laplace"}}}}'
case $n in
  0) echo '{{"assignment": {{"model.mixer.decay": "scalar", "model.n_layers": 3, "model.mixer.conv_size": 2}}, "parents": [0]}}' ;;
  1) echo '{{"assignment": {{"model.mixer.decay": "none", "model.n_layers": 3, "model.mixer.conv_size": 2}}, "parents": [0, 1]}}' ;;
  *) echo '{{"assignment": {{"model.mixer.decay": "fixed", "model.n_layers": 3, "model.mixer.conv_size": '$n'}}}}' ;;
esac
)", dir.path().string()));
    SearchOptions o = options(5);
    o.proposer_command = "sh " + (dir / "proposer.sh").string();
    const SearchProgress progress = run_search(o);
    EXPECT_EQ(progress.done, 5);

    const nlohmann::json input = nlohmann::json::parse(read_text(dir / "input.json"));
    EXPECT_EQ(input["study"], "space");
    EXPECT_EQ(input["fields"].size(), 3u);
    ASSERT_GE(input["trials"].size(), 3u);
    EXPECT_EQ(input["trials"][0]["number"], 0);
    EXPECT_TRUE(input["trials"][0]["metrics"].contains("val_bpb"));
    EXPECT_TRUE(input["trials"][0]["proxies"].contains("synflow"));
    EXPECT_EQ(input["trials"][0]["assignment"]["model.mixer.decay"], "fixed");

    auto db = open_database(o.database);
    const std::vector<Trial> trials = db->trials(db->open_study("space", ""));
    ASSERT_EQ(trials.size(), 5u);
    // Trials 3 and 4 came from the proposer: three layers (random draws have one or two), in its order,
    // with the parents it named.
    EXPECT_NE(trials[3].spec_toml.find("n_layers = 3"), std::string::npos) << trials[3].spec_toml;
    EXPECT_NE(trials[4].spec_toml.find("n_layers = 3"), std::string::npos) << trials[4].spec_toml;
    EXPECT_NE(trials[3].spec_toml.find("decay = \"scalar\""), std::string::npos) << trials[3].spec_toml;
    EXPECT_EQ(trials[3].parent_ids, std::vector<int64_t>{trials[0].id});
    EXPECT_EQ(trials[4].parent_ids, (std::vector<int64_t>{trials[0].id, trials[1].id}));

    // A proposer that fails stops the search with its output quoted.
    write_text(dir / "broken.sh", "echo 'out of tokens' && exit 3\n");
    o.trials = 6;
    o.proposer_command = "sh " + (dir / "broken.sh").string();
    try {
        run_search(o);
        ADD_FAILURE() << "a failing proposer was not reported";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("exit status 3"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("out of tokens"), std::string::npos) << e.what();
    }
}

// `linarch search` runs its workers as child processes and keeps the study going when one crashes: the
// trial it held fails with the signal's name, a new worker takes its place, and the search finishes.
TEST_F(Study, ACrashingWorkerFailsItsTrialAndTheSearchGoesOn) {
    const std::string url = options(4).database;
    const pid_t search = start_command({LINARCH_CLI, "search", "--space", (dir / "space.toml").string(), "--db", url,
                                        "--runs", (dir / "runs").string(), "--trials", "4", "--steps", "1000",
                                        "--initial-random", "2", "--seed", "3"},
                                       dir / "search.log");
    // Wait for a trial to be training, then crash its worker as a failed assertion or std::terminate would
    // (SIGABRT: under AddressSanitizer a SIGSEGV becomes ASan's report and exit status 1, not a signal).
    std::optional<Trial> victim;
    for (int poll = 0; poll < 3000 && !victim; ++poll) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        try {
            auto db = open_database(url);
            for (const Trial& t : db->trials(db->open_study("space", "")))
                if (t.status == TrialStatus::running && !db->intermediate_values(t.id).empty()) victim = t;
        } catch (const Error&) {
            // The database may not exist yet.
        }
    }
    ASSERT_TRUE(victim) << read_text(dir / "search.log");
    const pid_t worker = static_cast<pid_t>(std::stol(victim->worker.substr(victim->worker.rfind(':') + 1)));
    ASSERT_EQ(kill(worker, SIGABRT), 0);
    EXPECT_EQ(wait_command(search), 0) << read_text(dir / "search.log");

    auto db = open_database(url);
    const std::vector<Trial> trials = db->trials(db->open_study("space", ""));
    const Trial crashed = db->trial(victim->id);
    EXPECT_EQ(crashed.status, TrialStatus::failed);
    EXPECT_NE(crashed.error.find("crashed with Aborted (signal 6)"), std::string::npos) << crashed.error;
    int64_t done = 0, failed = 0;
    for (const Trial& t : trials) {
        done += t.status == TrialStatus::done;
        failed += t.status == TrialStatus::failed;
    }
    EXPECT_EQ(failed, 1);
    EXPECT_EQ(done, 3);  // the study went on to its 4 finished trials
    EXPECT_NE(read_text(dir / "search.log").find("died with Aborted"), std::string::npos);
}

TEST_F(Study, BadSearchInputIsOneClearErrorBeforeAnyWorker) {
    write_text(dir / "bad.toml", "base = \"base.toml\"\n[vary]\nmodel.mixer.decay = [\"sideways\"]\n");
    const CommandResult bad_space = run_command({LINARCH_CLI, "search", "--space", (dir / "bad.toml").string(), "--db",
                                                 options(1).database});
    EXPECT_NE(bad_space.exit_code, 0);
    EXPECT_NE(bad_space.output.find("sideways"), std::string::npos) << bad_space.output;
    EXPECT_EQ(bad_space.output.find("worker"), std::string::npos) << bad_space.output;  // refused before forking
    const CommandResult bad_proxy =
        run_command({LINARCH_CLI, "search", "--space", (dir / "space.toml").string(), "--db", options(1).database,
                     "--screen-pool", "4", "--screen-proxy", "vibes"});
    EXPECT_NE(bad_proxy.exit_code, 0);
    EXPECT_NE(bad_proxy.output.find("--screen-proxy vibes: not a proxy; expected one of grad_norm"), std::string::npos)
        << bad_proxy.output;
    const CommandResult bad_mqar =
        run_command({LINARCH_CLI, "search", "--space", (dir / "space.toml").string(), "--db", options(1).database,
                     "--mqar-steps", "10", "--mqar-seq-len", "20", "--mqar-kv-pairs", "8"});
    EXPECT_NE(bad_mqar.exit_code, 0);
    EXPECT_NE(bad_mqar.output.find("--mqar-seq-len 20 --mqar-kv-pairs 8 --mqar-vocab 256: data.seq_len = 20 is too "
                                   "short"),
              std::string::npos)
        << bad_mqar.output;
    if (cuda::device_count() == 0) {  // without a GPU, --device cuda is refused before any worker starts
        const CommandResult no_gpu = run_command(
            {LINARCH_CLI, "search", "--space", (dir / "space.toml").string(), "--db", options(1).database, "--device",
             "cuda"});
        EXPECT_NE(no_gpu.exit_code, 0);
        EXPECT_NE(no_gpu.output.find("search --device cuda needs a CUDA GPU"), std::string::npos) << no_gpu.output;
        EXPECT_EQ(no_gpu.output.find("worker"), std::string::npos) << no_gpu.output;
    }
}

TEST(SuccessiveHalving, PromotesTheBestFractionOfEachRung) {
    // The first trial at a rung always goes on; later ones while within the best ⌊n/η⌋ (at least 1).
    EXPECT_TRUE(promoted_at_rung(2.0, {2.0}, 3));
    EXPECT_FALSE(promoted_at_rung(2.0, {1.0, 2.0}, 3));
    EXPECT_TRUE(promoted_at_rung(1.0, {1.0, 2.0}, 3));
    // n = 6, η = 3: the best two go on.
    EXPECT_TRUE(promoted_at_rung(1.5, {1.0, 1.5, 2.0, 2.5, 3.0, 3.5}, 3));
    EXPECT_FALSE(promoted_at_rung(2.0, {1.0, 1.5, 2.0, 2.5, 3.0, 3.5}, 3));
    EXPECT_TRUE(promoted_at_rung(2.0, {1.0, 1.5, 2.0, 2.5, 3.0, 3.5}, 2));
    EXPECT_FALSE(promoted_at_rung(std::nan(""), {1.0}, 3));
    EXPECT_TRUE(promoted_at_rung(1.0, {std::nan(""), 1.0}, 3));

    EXPECT_EQ(rung_steps(0, 3, 100), std::vector<int64_t>{});
    EXPECT_EQ(rung_steps(4, 3, 100), (std::vector<int64_t>{4, 12, 36}));
    EXPECT_EQ(rung_steps(10, 2, 40), (std::vector<int64_t>{10, 20}));
}

TEST(ImprovementScore, FollowsAsiArchsClampedSigmoid) {
    EXPECT_DOUBLE_EQ(improvement_score(2.0, 2.0, true), 0.5);
    // 5% lower bits per byte: half of the ±10% range → σ(3).
    EXPECT_NEAR(improvement_score(1.9, 2.0, true), 1.0 / (1.0 + std::exp(-3.0)), 1e-12);
    EXPECT_NEAR(improvement_score(2.1, 2.0, true), 1.0 / (1.0 + std::exp(3.0)), 1e-12);
    // Beyond ±10% it saturates at σ(±6).
    EXPECT_NEAR(improvement_score(1.0, 2.0, true), 1.0 / (1.0 + std::exp(-6.0)), 1e-12);
    EXPECT_NEAR(improvement_score(0.6, 0.5, false), 1.0 / (1.0 + std::exp(-6.0)), 1e-12);
    // A baseline accuracy of 0: any gain saturates, no division by zero.
    EXPECT_NEAR(improvement_score(0.1, 0.0, false), 1.0 / (1.0 + std::exp(-6.0)), 1e-12);
    EXPECT_DOUBLE_EQ(improvement_score(0.0, 0.0, false), 0.5);
}

}  // namespace
}  // namespace linarch
