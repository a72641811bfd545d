#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <set>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "search/proposer.hpp"
#include "support/testkit.hpp"

using namespace linarch;

namespace {

SearchSpace mixer_space() {
    return SearchSpace::load(std::string(LINARCH_SOURCE_DIR) + "/configs/search/mixers.toml");
}

// Whether `value` (a TOML literal) is one the field can take.
bool in_domain(const FieldDomain& field, const std::string& value) {
    if (!field.is_range()) return std::find(field.choices.begin(), field.choices.end(), value) != field.choices.end();
    const double number = std::stod(value);
    if (field.integer && value.find_first_of(".e") != std::string::npos) return false;
    return number >= field.min && number <= field.max;
}

size_t fields_changed(const Assignment& a, const Assignment& b) {
    size_t changed = 0;
    for (const auto& [key, value] : a) changed += b.at(key) != value;
    return changed;
}

}  // namespace

TEST(Proposer, RandomCandidatesAreValidSpecsInsideTheSpace) {
    const SearchSpace space = mixer_space();
    RngStream rng(testkit::test_seed(), 10);
    std::set<std::string> decays;
    for (int i = 0; i < 40; ++i) {
        const Candidate candidate = random_candidate(space, rng);
        ASSERT_EQ(candidate.assignment.size(), space.fields().size());
        for (const FieldDomain& field : space.fields())
            EXPECT_TRUE(in_domain(field, candidate.assignment.at(field.key)))
                << field.key << " = " << candidate.assignment.at(field.key);
        // Runnable alone: the stored TOML reads back to the same spec, and it is the space's spec.
        EXPECT_TRUE(parse_spec(spec_to_toml(candidate.spec), "stored") == candidate.spec);
        EXPECT_TRUE(space.realise(candidate.assignment) == candidate.spec);
        EXPECT_EQ(space.assignment_of(candidate.spec), candidate.assignment);
        decays.insert(candidate.spec.model.mixer.decay);
    }
    EXPECT_GE(decays.size(), 3u);  // the draws explore the space
}

TEST(Proposer, SameStreamSameProposalsOtherStreamOthers) {
    const SearchSpace space = mixer_space();
    const uint64_t seed = testkit::test_seed();
    auto proposals = [&](uint64_t stream) {
        RngStream rng(seed, stream);
        std::vector<Assignment> out;
        const Candidate first = random_candidate(space, rng), second = random_candidate(space, rng);
        out.push_back(first.assignment);
        out.push_back(second.assignment);
        out.push_back(mutate(space, first.assignment, rng, 2).assignment);
        out.push_back(crossover(space, first.assignment, second.assignment, rng).assignment);
        return out;
    };
    EXPECT_EQ(proposals(20), proposals(20));
    EXPECT_NE(proposals(20), proposals(21));
}

TEST(Proposer, MutationChangesBetweenOneAndMaxFields) {
    const SearchSpace space = mixer_space();
    RngStream rng(testkit::test_seed(), 30);
    const Candidate parent = random_candidate(space, rng);
    std::set<size_t> counts;
    for (int i = 0; i < 40; ++i) {
        const Candidate child = mutate(space, parent.assignment, rng, 3);
        const size_t changed = fields_changed(parent.assignment, child.assignment);
        EXPECT_GE(changed, 1u);
        EXPECT_LE(changed, 3u);
        counts.insert(changed);
        for (const FieldDomain& field : space.fields())
            EXPECT_TRUE(in_domain(field, child.assignment.at(field.key)));
    }
    EXPECT_GE(counts.size(), 2u);
    for (int i = 0; i < 10; ++i)
        EXPECT_EQ(fields_changed(parent.assignment, mutate(space, parent.assignment, rng).assignment), 1u);
}

TEST(Proposer, CrossoverTakesEachFieldFromAParent) {
    const SearchSpace space = mixer_space();
    RngStream rng(testkit::test_seed(), 40);
    for (int i = 0; i < 20; ++i) {
        const Assignment first = random_candidate(space, rng).assignment, second = random_candidate(space, rng).assignment;
        const Candidate child = crossover(space, first, second, rng);
        for (const auto& [key, value] : child.assignment) EXPECT_TRUE(value == first.at(key) || value == second.at(key));
    }
}

TEST(Proposer, ImpossibleSpaceIsAClearError) {
    // The delta rule needs qk_norm = "l2", and the base has "none": every draw is rejected.
    const SearchSpace space = SearchSpace::parse(R"(
[base.model]
d_model = 32
[vary]
model.mixer.update = ["delta"]
model.n_layers = [1, 2]
)",
                                                 "impossible.toml", "");
    RngStream rng(testkit::test_seed(), 50);
    try {
        random_candidate(space, rng);
        FAIL() << "expected an Error";
    } catch (const Error& e) {
        const std::string message = e.what();
        EXPECT_NE(message.find("impossible.toml: no valid random candidate in 1000 draws"), std::string::npos) << message;
        EXPECT_NE(message.find("qk_norm = \"l2\""), std::string::npos) << message;
    }
}

TEST(Proposer, AgingEvolutionPicksTheFittestOfASampleFromTheNewest) {
    RngStream data(testkit::test_seed(), 60);
    std::vector<double> fitness(30);
    for (double& f : fitness) f = data.uniform();
    fitness[0] = 10;  // the best trial ever, but aged out of a population of the newest 20
    fitness[25] = std::nan("");
    RngStream rng(testkit::test_seed(), 61);
    std::set<size_t> chosen;
    for (int i = 0; i < 400; ++i) {
        const size_t parent = aging_evolution_parent(fitness, 20, 1, rng);
        EXPECT_GE(parent, 10u);
        chosen.insert(parent);
    }
    EXPECT_EQ(chosen.size(), 20u);  // a sample of one: every member of the window, uniformly
    // A large sample finds the fittest member of the window (never the NaN one).
    size_t best = 10;
    for (size_t i = 10; i < 30; ++i)
        if (!std::isnan(fitness[i]) && fitness[i] > fitness[best]) best = i;
    EXPECT_EQ(aging_evolution_parent(fitness, 20, 400, rng), best);
    // Only failed trials in the window: one of them, not an error.
    const std::vector<double> failed = {1.0, std::nan(""), std::nan("")};
    EXPECT_GE(aging_evolution_parent(failed, 2, 5, rng), 1u);
}

TEST(Proposer, ScalesToTheClosestParameterCount) {
    const Spec base = parse_spec(R"(
[model]
d_model = 32
n_layers = 2
n_heads = 2
head_dim = 16
hybrid_every = 2
[model.mixer]
decay = "scalar"
)",
                                 "tiny");
    RngStream rng(testkit::test_seed(), 70);
    // A target between the sizes of two widths 8 apart: the nearer one wins.
    const int64_t width = 8 * (6 + int64_t(rng.below(10)));
    auto params_at = [&](const std::string& override_text) {
        return model_size(parse_spec(spec_to_toml(base), "tiny", {override_text}).model).parameters;
    };
    const int64_t low = params_at(fmt::format("model.d_model={}", width));
    const int64_t high = params_at(fmt::format("model.d_model={}", width + 8));
    const int64_t target = low + int64_t(double(high - low) * (0.05 + 0.9 * rng.uniform()));
    const ScaledSpec scaled = scale_to_parameters(base, target, ScaleAxis::d_model, 8);
    EXPECT_EQ(scaled.spec.model.d_model, target - low < high - target ? width : width + 8);
    EXPECT_EQ(scaled.size.parameters, params_at(fmt::format("model.d_model={}", scaled.spec.model.d_model)));
    EXPECT_GT(scaled.size.train_flops_per_token, 6.0 * double(scaled.size.parameters) * 0.5);
    EXPECT_EQ(scaled.spec.model.n_layers, 2);

    // Depth: the exact size of some depth is reached exactly; hybrid_every = 2 keeps depth >= 2.
    const int64_t layers = 2 + int64_t(rng.below(6));
    const ScaledSpec deeper =
        scale_to_parameters(base, params_at(fmt::format("model.n_layers={}", layers)), ScaleAxis::n_layers);
    EXPECT_EQ(deeper.spec.model.n_layers, layers);
    EXPECT_EQ(scale_to_parameters(base, 1, ScaleAxis::n_layers).spec.model.n_layers, 2);
}
