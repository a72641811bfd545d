#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <set>

#include "core/rng.hpp"
#include "data/synthetic_tasks.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using testkit::expect_error;

namespace {

DataSpec mqar_spec(int64_t vocab, int64_t seq_len, int64_t pairs, double power_a = 0.01) {
    DataSpec data;
    data.task = "mqar";
    data.task_vocab_size = vocab;
    data.seq_len = seq_len;
    data.num_kv_pairs = pairs;
    data.power_a = power_a;
    return data;
}

DataSpec selective_copy_spec(int64_t vocab, int64_t seq_len, int64_t tokens) {
    DataSpec data;
    data.task = "selective_copy";
    data.task_vocab_size = vocab;
    data.seq_len = seq_len;
    data.num_copy_tokens = tokens;
    return data;
}

DataSpec induction_spec(int64_t vocab, int64_t seq_len) {
    DataSpec data;
    data.task = "induction";
    data.task_vocab_size = vocab;
    data.seq_len = seq_len;
    return data;
}

std::span<const int32_t> row_of(const std::vector<int32_t>& values, const Batch& batch, int64_t row) {
    return std::span(values).subspan(size_t(row * batch.seq_len), size_t(batch.seq_len));
}

// The task's rule applied to the inputs: the answer a perfect model gives at every position.
std::vector<int32_t> oracle(const SyntheticTask& task, const Batch& batch) {
    std::vector<int32_t> predicted(batch.inputs.size(), 0);
    const int32_t last = int32_t(task.vocab_size() - 1);  // marker / trigger
    for (int64_t row = 0; row < batch.batch_size; ++row) {
        const auto in = row_of(batch.inputs, batch, row);
        int32_t* out = predicted.data() + row * batch.seq_len;
        if (task.name() == "mqar") {
            // The token after the first occurrence of the current token (the key's value).
            std::map<int32_t, int64_t> first;
            for (int64_t t = 0; t < batch.seq_len; ++t) {
                const auto [it, fresh] = first.emplace(in[size_t(t)], t);
                if (!fresh) out[t] = in[size_t(it->second + 1)];
            }
        } else if (task.name() == "selective_copy") {
            // At the k-th marker, the k-th token that is neither noise nor a marker.
            std::vector<int32_t> data_tokens;
            int64_t markers = 0;
            for (int64_t t = 0; t < batch.seq_len; ++t) {
                if (in[size_t(t)] == last) out[t] = data_tokens[size_t(markers++)];
                else if (in[size_t(t)] != 0) data_tokens.push_back(in[size_t(t)]);
            }
        } else {
            // The token after the first trigger.
            int64_t first = 0;
            while (in[size_t(first)] != last) ++first;
            std::fill(out, out + batch.seq_len, in[size_t(first + 1)]);
        }
    }
    return predicted;
}

std::vector<std::unique_ptr<SyntheticTask>> every_task(uint64_t seed) {
    std::vector<std::unique_ptr<SyntheticTask>> tasks;
    tasks.push_back(make_synthetic_task(mqar_spec(128, 96, 12), seed));
    tasks.push_back(make_synthetic_task(selective_copy_spec(16, 80, 16), seed));
    tasks.push_back(make_synthetic_task(induction_spec(16, 64), seed));
    return tasks;
}

}  // namespace

TEST(SyntheticTasks, BatchIsAPureFunctionOfSeedAndIndex) {
    const uint64_t seed = testkit::test_seed();
    const auto tasks = every_task(seed);
    const auto again = every_task(seed);
    const auto other_seed = every_task(seed + 1);
    for (size_t i = 0; i < tasks.size(); ++i) {
        SCOPED_TRACE(tasks[i]->name());
        Batch first, second, next, reseeded;
        tasks[i]->batch(7, 8, first);
        again[i]->batch(7, 8, second);
        EXPECT_EQ(first.batch_size, 8);
        EXPECT_EQ(first.seq_len, tasks[i]->seq_len());
        ASSERT_EQ(first.inputs.size(), size_t(8 * tasks[i]->seq_len()));
        EXPECT_EQ(first.inputs, second.inputs);
        EXPECT_EQ(first.targets, second.targets);
        tasks[i]->batch(8, 8, next);
        EXPECT_NE(first.inputs, next.inputs);
        other_seed[i]->batch(7, 8, reseeded);
        EXPECT_NE(first.inputs, reseeded.inputs);
        // Row r of batch 7 is example 7·8 + r, whoever asks for it.
        std::vector<int32_t> inputs(size_t(tasks[i]->seq_len())), targets(inputs.size());
        tasks[i]->example(7 * 8 + 3, inputs, targets);
        EXPECT_TRUE(std::ranges::equal(inputs, row_of(first.inputs, first, 3)));
        EXPECT_TRUE(std::ranges::equal(targets, row_of(first.targets, first, 3)));
        // Every token is in the task's vocabulary; every example has its answers.
        for (int32_t token : first.inputs) ASSERT_TRUE(token >= 0 && token < tasks[i]->vocab_size()) << token;
        for (int64_t row = 0; row < first.batch_size; ++row) {
            const auto targets_of_row = row_of(first.targets, first, row);
            EXPECT_EQ(std::ranges::count_if(targets_of_row, [](int32_t t) { return t >= 0; }),
                      tasks[i]->answers_per_example());
            EXPECT_TRUE(std::ranges::all_of(targets_of_row, [](int32_t t) { return t >= -1; }));
        }
    }
}

TEST(SyntheticTasks, AnyThreadCountGivesTheSameBatch) {
    // Large enough for the rows to be generated in parallel.
    const auto task = make_synthetic_task(mqar_spec(8192, 1024, 64), testkit::test_seed());
    const int threads = omp_get_max_threads();
    Batch serial, parallel;
    omp_set_num_threads(1);
    task->batch(3, 96, serial);
    omp_set_num_threads(4);
    task->batch(3, 96, parallel);
    omp_set_num_threads(threads);
    EXPECT_EQ(serial.inputs, parallel.inputs);
    EXPECT_EQ(serial.targets, parallel.targets);
}

TEST(SyntheticTasks, MqarLaysOutZoologysContextAndQueries) {
    const int64_t vocab = 64, seq_len = 80, pairs = 10;
    const auto task = make_synthetic_task(mqar_spec(vocab, seq_len, pairs), testkit::test_seed());
    EXPECT_EQ(task->answers_per_example(), pairs);
    Batch batch;
    for (int64_t index = 0; index < 20; ++index) {
        task->batch(index, 16, batch);
        for (int64_t row = 0; row < batch.batch_size; ++row) {
            const auto in = row_of(batch.inputs, batch, row);
            const auto target = row_of(batch.targets, batch, row);
            // Context: distinct keys from [1, V/2), distinct values from [V/2, V), no answers.
            std::set<int32_t> keys, values;
            for (int64_t i = 0; i < pairs; ++i) {
                const int32_t key = in[size_t(2 * i)], value = in[size_t(2 * i + 1)];
                EXPECT_TRUE(key >= 1 && key < vocab / 2) << key;
                EXPECT_TRUE(value >= vocab / 2 && value < vocab) << value;
                keys.insert(key);
                values.insert(value);
                EXPECT_EQ(target[size_t(2 * i)], -1);
                EXPECT_EQ(target[size_t(2 * i + 1)], -1);
            }
            EXPECT_EQ(keys.size(), size_t(pairs));
            EXPECT_EQ(values.size(), size_t(pairs));
            // Queries: each key once, at an even offset of the query region, its value the target.
            std::set<int32_t> queried;
            for (int64_t t = 2 * pairs; t < seq_len; ++t) {
                if (target[size_t(t)] < 0) continue;
                EXPECT_EQ((t - 2 * pairs) % 2, 0) << t;
                int64_t pair = 0;
                while (pair < pairs && in[size_t(2 * pair)] != in[size_t(t)]) ++pair;
                ASSERT_LT(pair, pairs) << "query " << in[size_t(t)] << " at " << t << " is no key of the context";
                EXPECT_EQ(target[size_t(t)], in[size_t(2 * pair + 1)]);
                queried.insert(in[size_t(t)]);
            }
            EXPECT_EQ(queried, keys);
        }
    }
}

// Zoology draws the query gaps without replacement from p(g) ∝ (g + 1)^(a − 1) (numpy's
// choice(replace=False, p)): the first key's gap has law p, the second's Σ_i p_i p_j / (1 − p_i).
// Each bin's frequency must be within 5 standard deviations of that law.
TEST(SyntheticTasks, MqarQueryGapsFollowZoologysPowerLaw) {
    const int64_t pairs = 2, seq_len = 40, slots = (seq_len - 2 * pairs) / 2, examples = 40000;
    for (double power_a : {0.01, 0.5, 1.0}) {
        SCOPED_TRACE(power_a);
        auto p = std::vector<double>(size_t(slots));
        for (int64_t g = 0; g < slots; ++g) p[size_t(g)] = std::pow(double(g + 1), power_a - 1);
        const double total = std::accumulate(p.begin(), p.end(), 0.0);
        for (double& x : p) x /= total;
        std::vector<double> second(size_t(slots), 0.0);
        for (int64_t j = 0; j < slots; ++j)
            for (int64_t i = 0; i < slots; ++i)
                if (i != j) second[size_t(j)] += p[size_t(i)] * p[size_t(j)] / (1 - p[size_t(i)]);

        const auto task = make_synthetic_task(mqar_spec(64, seq_len, pairs, power_a), testkit::test_seed());
        std::vector<int64_t> first_count(size_t(slots), 0), second_count(size_t(slots), 0);
        Batch batch;
        task->batch(0, examples, batch);
        for (int64_t row = 0; row < examples; ++row) {
            const auto in = row_of(batch.inputs, batch, row);
            const auto target = row_of(batch.targets, batch, row);
            for (int64_t t = 2 * pairs; t < seq_len; ++t) {
                if (target[size_t(t)] < 0) continue;
                const int64_t gap = (t - 2 * pairs) / 2;
                (in[size_t(t)] == in[0] ? first_count : second_count)[size_t(gap)]++;
            }
        }
        for (int64_t g = 0; g < slots; ++g) {
            for (const auto& [law, count] : {std::pair{p[size_t(g)], first_count[size_t(g)]},
                                             std::pair{second[size_t(g)], second_count[size_t(g)]}}) {
                const double sigma = std::sqrt(law * (1 - law) / double(examples));
                EXPECT_NEAR(double(count) / double(examples), law, 5 * sigma + 1e-4) << "gap " << g;
            }
        }
        // The point of the power law: early gaps are much likelier than late ones (a = 1: uniform).
        const int64_t early = std::accumulate(first_count.begin(), first_count.begin() + slots / 4, int64_t(0));
        const int64_t late = std::accumulate(first_count.end() - slots / 4, first_count.end(), int64_t(0));
        if (power_a == 0.01) {
            EXPECT_GT(early, 3 * late);
        } else if (power_a == 1.0) {
            EXPECT_NEAR(double(early) / double(late), 1.0, 0.1);
        }
    }
}

TEST(SyntheticTasks, SelectiveCopyScattersTokensThenAsksForThemInOrder) {
    const int64_t vocab = 10, seq_len = 60, tokens = 12;
    const auto task = make_synthetic_task(selective_copy_spec(vocab, seq_len, tokens), testkit::test_seed());
    Batch batch;
    task->batch(5, 64, batch);
    std::set<int64_t> first_positions;
    for (int64_t row = 0; row < batch.batch_size; ++row) {
        const auto in = row_of(batch.inputs, batch, row);
        const auto target = row_of(batch.targets, batch, row);
        std::vector<int32_t> data_tokens;
        for (int64_t t = 0; t < seq_len - tokens; ++t) {
            EXPECT_EQ(target[size_t(t)], -1);
            EXPECT_TRUE(in[size_t(t)] >= 0 && in[size_t(t)] <= vocab - 2) << in[size_t(t)];
            if (in[size_t(t)] != 0) {
                if (data_tokens.empty()) first_positions.insert(t);
                data_tokens.push_back(in[size_t(t)]);
            }
        }
        ASSERT_EQ(data_tokens.size(), size_t(tokens));
        for (int64_t k = 0; k < tokens; ++k) {
            EXPECT_EQ(in[size_t(seq_len - tokens + k)], vocab - 1);
            EXPECT_EQ(target[size_t(seq_len - tokens + k)], data_tokens[size_t(k)]);
        }
    }
    // The positions are random, not a fixed prefix.
    EXPECT_GT(first_positions.size(), 3u);
}

TEST(SyntheticTasks, InductionRepeatsTheTriggerAndAsksForItsSuccessor) {
    const int64_t vocab = 16, seq_len = 48;
    const auto task = make_synthetic_task(induction_spec(vocab, seq_len), testkit::test_seed());
    Batch batch;
    task->batch(0, 400, batch);
    std::vector<int64_t> trigger_at(size_t(seq_len), 0);
    for (int64_t row = 0; row < batch.batch_size; ++row) {
        const auto in = row_of(batch.inputs, batch, row);
        const auto target = row_of(batch.targets, batch, row);
        std::vector<int64_t> triggers;
        for (int64_t t = 0; t < seq_len; ++t)
            if (in[size_t(t)] == vocab - 1) triggers.push_back(t);
        ASSERT_EQ(triggers.size(), 2u);
        EXPECT_LE(triggers[0], seq_len - 4);
        EXPECT_EQ(triggers[1], seq_len - 1);
        trigger_at[size_t(triggers[0])]++;
        for (int64_t t = 0; t + 1 < seq_len; ++t) EXPECT_EQ(target[size_t(t)], -1);
        EXPECT_EQ(target[size_t(seq_len - 1)], in[size_t(triggers[0] + 1)]);
    }
    // The first trigger may be anywhere in [0, T − 4].
    EXPECT_GT(trigger_at[0] + trigger_at[1], 0);
    EXPECT_GT(trigger_at[size_t(seq_len - 4)] + trigger_at[size_t(seq_len - 5)], 0);
}

TEST(SyntheticTasks, AccuracyCountsOnlyScoredPositions) {
    const std::vector<int32_t> targets = {-1, 5, -1, 7, 2, -1};
    const std::vector<int32_t> right = {9, 5, 9, 7, 2, 9};  // wrong only where nothing is scored
    const std::vector<int32_t> wrong = {-1, 4, -1, 6, 3, -1};
    const std::vector<int32_t> partial = {0, 5, 0, 1, 2, 0};
    TaskAccuracy all = score_predictions(right, targets);
    EXPECT_EQ(all.correct, 3);
    EXPECT_EQ(all.total, 3);
    EXPECT_EQ(all.fraction(), 1.0);
    const TaskAccuracy none = score_predictions(wrong, targets);
    EXPECT_EQ(none.correct, 0);
    EXPECT_EQ(none.total, 3);
    EXPECT_EQ(none.fraction(), 0.0);
    const TaskAccuracy some = score_predictions(partial, targets);
    EXPECT_EQ(some.correct, 2);
    EXPECT_EQ(some.total, 3);
    all += some;  // aggregated across batches
    EXPECT_EQ(all.correct, 5);
    EXPECT_EQ(all.total, 6);
    EXPECT_EQ(TaskAccuracy{}.fraction(), 0.0);
    const std::vector<int32_t> unscored = {-1, -1};
    EXPECT_EQ(score_predictions(std::vector<int32_t>{1, 2}, unscored).total, 0);

    // Logits [3 positions, 4 tokens]: argmax 2, 0 (a tie: the lowest id), 3.
    const std::vector<float> logits = {0.1f, 0.2f, 0.9f, -1.0f,  //
                                       1.0f, 0.5f, 1.0f, 0.0f,   //
                                       -3.0f, -2.0f, -5.0f, -1.5f};
    const TaskAccuracy from_logits = score_logits(logits, 4, std::vector<int32_t>{2, 2, 3});
    EXPECT_EQ(from_logits.correct, 2);
    EXPECT_EQ(from_logits.total, 3);
    EXPECT_EQ(score_logits(logits, 4, std::vector<int32_t>{-1, 0, -1}).correct, 1);
    expect_error([&] { score_logits(logits, 5, std::vector<int32_t>{2, 2, 3}); }, {"score_logits", "vocab_size 5"});
    expect_error([&] { score_predictions(right, unscored); }, {"score_predictions", "6 predictions for 2 targets"});
}

// The rule of each task, applied to the inputs, answers every question; guessing scores chance.
TEST(SyntheticTasks, OracleScoresAllAndGuessingScoresChance) {
    const uint64_t seed = testkit::test_seed();
    const auto tasks = every_task(seed);
    RngStream guesses(seed, stream_id("synthetic-test-guesses"));
    for (const auto& task : tasks) {
        SCOPED_TRACE(task->name());
        // A guess from the alphabet answers come from: MQAR values, copied data tokens, induction tokens.
        const int32_t vocab = int32_t(task->vocab_size());
        const int32_t low = task->name() == "mqar" ? vocab / 2 : task->name() == "selective_copy" ? 1 : 0;
        const int32_t high = task->name() == "mqar" ? vocab : vocab - 1;  // exclusive
        const double chance = 1.0 / double(high - low);
        TaskAccuracy perfect, guessed;
        Batch batch;
        for (int64_t index = 0; index < 40; ++index) {
            task->batch(index, 64, batch);
            perfect += score_predictions(oracle(*task, batch), batch.targets);
            std::vector<int32_t> random(batch.inputs.size());
            for (int32_t& token : random) token = low + int32_t(guesses.below(uint64_t(high - low)));
            guessed += score_predictions(random, batch.targets);
        }
        EXPECT_EQ(perfect.total, 40 * 64 * task->answers_per_example());
        EXPECT_EQ(perfect.correct, perfect.total);
        EXPECT_EQ(guessed.total, perfect.total);
        const double sigma = std::sqrt(chance * (1 - chance) / double(guessed.total));
        EXPECT_NEAR(guessed.fraction(), chance, 5 * sigma);
    }
}

TEST(SyntheticTasks, BadParametersNameTheKey) {
    expect_error([] { make_synthetic_task(mqar_spec(8192, 60, 16), 1); },
                 {"data.seq_len = 60", "data.num_kv_pairs = 16", ">= 4 · num_kv_pairs = 64"});
    expect_error([] { make_synthetic_task(mqar_spec(20, 256, 10), 1); },
                 {"data.task_vocab_size = 20", "data.num_kv_pairs = 10", "must be >= 22"});
    expect_error([] { make_synthetic_task(mqar_spec(8192, 256, 8, 0.0), 1); }, {"data.power_a = 0", "(0, 1]"});
    expect_error([] { make_synthetic_task(mqar_spec(8192, 256, 0), 1); }, {"data.num_kv_pairs = 0"});
    expect_error([] { make_synthetic_task(selective_copy_spec(16, 31, 16), 1); },
                 {"data.seq_len = 31", "data.num_copy_tokens = 16", ">= 32"});
    expect_error([] { make_synthetic_task(selective_copy_spec(2, 64, 4), 1); }, {"data.task_vocab_size = 2", ">= 3"});
    expect_error([] { make_synthetic_task(induction_spec(16, 3), 1); }, {"data.seq_len = 3", "induction", ">= 4"});
    expect_error([] { make_synthetic_task(induction_spec(2, 64), 1); }, {"data.task_vocab_size = 2", "induction"});
    expect_error([] { make_synthetic_task(DataSpec{}, 1); }, {"data.task = \"corpus\"", "no synthetic generator"});
    DataSpec unknown = induction_spec(16, 64);
    unknown.task = "parity";
    expect_error([&] { make_synthetic_task(unknown, 1); }, {"data.task = \"parity\"", "\"mqar\""});
    // The limits themselves are accepted.
    EXPECT_NO_THROW(make_synthetic_task(mqar_spec(22, 40, 10), 1));
    EXPECT_NO_THROW(make_synthetic_task(selective_copy_spec(3, 32, 16), 1));
    EXPECT_NO_THROW(make_synthetic_task(induction_spec(3, 4), 1));

    const auto task = make_synthetic_task(induction_spec(16, 64), 1);
    std::vector<int32_t> inputs(63), targets(64);
    expect_error([&] { task->example(0, inputs, targets); }, {"induction", "data.seq_len = 64", "63 inputs"});
    Batch batch;
    expect_error([&] { task->batch(-1, 4, batch); }, {"induction", "batch -1"});
}
