#include "search/proposer.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "core/error.hpp"
#include "model/language_model.hpp"

namespace linarch {

namespace {

// Calls `propose` until the space realises what it returns, at most kMaxProposalAttempts times.
Candidate first_valid(const SearchSpace& space, const char* what, const std::function<Assignment()>& propose) {
    std::string last_rejection;
    for (int64_t attempt = 0; attempt < kMaxProposalAttempts; ++attempt) {
        Assignment assignment = propose();
        try {
            Spec spec = space.realise(assignment);
            return {std::move(assignment), std::move(spec)};
        } catch (const Error& e) {
            last_rejection = e.what();
        }
    }
    fail("{}: no valid {} in {} draws; the spec rejected the last one with: {}", space.source(), what,
         kMaxProposalAttempts, last_rejection);
}

// A value of `field` other than `current` where the field has another one to give.
std::string draw_different(const FieldDomain& field, const std::string& current, RngStream& rng) {
    if (!field.is_range()) {
        std::vector<std::string> others;
        for (const std::string& choice : field.choices)
            if (choice != current) others.push_back(choice);
        if (others.empty()) return current;  // a single choice: nothing to mutate to
        return others[rng.below(others.size())];
    }
    // A range (min < max) rarely redraws the same value; a bounded number of tries keeps this pure.
    std::string value = draw_value(field, rng);
    for (int tries = 0; tries < 64 && value == current; ++tries) value = draw_value(field, rng);
    return value;
}

int64_t parameters_at(const Spec& spec, const std::string& override_text) {
    return model_size(parse_spec(spec_to_toml(spec), spec.source, {override_text}).model).parameters;
}

}  // namespace

std::string draw_value(const FieldDomain& field, RngStream& rng) {
    if (!field.is_range()) return field.choices[rng.below(field.choices.size())];
    if (field.integer) {
        const auto low = static_cast<int64_t>(field.min), high = static_cast<int64_t>(field.max);
        return toml_literal(low + static_cast<int64_t>(rng.below(static_cast<uint64_t>(high - low) + 1)));
    }
    const double u = rng.uniform();
    if (field.log) return toml_literal(std::exp(std::log(field.min) + u * (std::log(field.max) - std::log(field.min))));
    return toml_literal(field.min + u * (field.max - field.min));
}

Candidate random_candidate(const SearchSpace& space, RngStream& rng) {
    return first_valid(space, "random candidate", [&] {
        Assignment assignment;
        for (const FieldDomain& field : space.fields()) assignment[field.key] = draw_value(field, rng);
        return assignment;
    });
}

Candidate mutate(const SearchSpace& space, const Assignment& parent, RngStream& rng, int64_t max_changed_fields) {
    LINARCH_CHECK(max_changed_fields >= 1, "mutate: max_changed_fields = {}: expected >= 1", max_changed_fields);
    const auto& fields = space.fields();
    return first_valid(space, "mutation", [&] {
        Assignment child;
        for (const FieldDomain& field : fields) {
            auto it = parent.find(field.key);
            child[field.key] = it != parent.end() ? it->second : draw_value(field, rng);
        }
        // Partial Fisher-Yates: the first `changes` entries of `order` are distinct random fields.
        const auto changes = static_cast<size_t>(
            1 + rng.below(static_cast<uint64_t>(std::min<int64_t>(max_changed_fields, int64_t(fields.size())))));
        std::vector<size_t> order(fields.size());
        for (size_t i = 0; i < order.size(); ++i) order[i] = i;
        for (size_t i = 0; i < changes; ++i) {
            std::swap(order[i], order[i + rng.below(order.size() - i)]);
            const FieldDomain& field = fields[order[i]];
            child[field.key] = draw_different(field, child[field.key], rng);
        }
        return child;
    });
}

Candidate crossover(const SearchSpace& space, const Assignment& first, const Assignment& second, RngStream& rng) {
    return first_valid(space, "crossover", [&] {
        Assignment child;
        for (const FieldDomain& field : space.fields()) {
            auto from_first = first.find(field.key), from_second = second.find(field.key);
            const bool take_first = rng.below(2) == 0;
            if (from_first != first.end() && (take_first || from_second == second.end()))
                child[field.key] = from_first->second;
            else if (from_second != second.end())
                child[field.key] = from_second->second;
            else
                child[field.key] = draw_value(field, rng);
        }
        return child;
    });
}

size_t aging_evolution_parent(std::span<const double> fitness, int64_t population_size, int64_t sample_size,
                              RngStream& rng) {
    LINARCH_CHECK(!fitness.empty(), "aging evolution: no trials to select a parent from");
    LINARCH_CHECK(population_size >= 1 && sample_size >= 1,
                  "aging evolution: population_size = {} and sample_size = {}: expected both >= 1", population_size,
                  sample_size);
    const size_t window = std::min(fitness.size(), static_cast<size_t>(population_size));
    const size_t first = fitness.size() - window;
    auto score = [&](size_t index) {
        const double value = fitness[index];
        return std::isnan(value) ? -std::numeric_limits<double>::infinity() : value;
    };
    size_t best = first + rng.below(window);
    for (int64_t draw = 1; draw < sample_size; ++draw) {
        const size_t index = first + rng.below(window);
        if (score(index) > score(best)) best = index;
    }
    return best;
}

ModelSize model_size(const ModelSpec& model) {
    const LanguageModel built(model);
    return {built.parameters().count(), built.train_flops_per_token()};
}

ScaledSpec scale_to_parameters(const Spec& spec, int64_t target_parameters, ScaleAxis axis, int64_t width_multiple) {
    LINARCH_CHECK(target_parameters >= 1, "scale_to_parameters: target {}: expected >= 1", target_parameters);
    LINARCH_CHECK(width_multiple >= 1, "scale_to_parameters: width_multiple {}: expected >= 1", width_multiple);
    // The knob's value at step i of the search (parameters grow with it), its lowest valid step and
    // its ceiling.
    std::string key;
    int64_t unit = 1, lowest = 1, highest = 0;
    if (axis == ScaleAxis::d_model) {
        key = "model.d_model";
        unit = width_multiple;
        highest = (int64_t(1) << 16) / width_multiple;
    } else {
        key = "model.n_layers";
        lowest = std::max<int64_t>(1, spec.model.hybrid_every);
        if (!spec.model.layer_mixers.empty()) lowest = std::max(lowest, spec.model.layer_mixers.rbegin()->first + 1);
        highest = 1024;
    }
    auto override_at = [&](int64_t step) { return fmt::format("{}={}", key, step * unit); };
    // The largest step whose size is at most the target (or the lowest step): doubling brackets it,
    // so no probe builds a model much larger than the target, then bisection finds it.
    int64_t low = lowest, high = lowest;
    if (parameters_at(spec, override_at(low)) < target_parameters) {
        while (high < highest && parameters_at(spec, override_at(high)) <= target_parameters) {
            low = high;
            high = std::min(highest, 2 * high);
        }
        while (low < high) {
            const int64_t mid = low + (high - low + 1) / 2;
            if (parameters_at(spec, override_at(mid)) <= target_parameters)
                low = mid;
            else
                high = mid - 1;
        }
    }
    int64_t best = low;
    if (low < highest) {
        const int64_t below = parameters_at(spec, override_at(low));
        const int64_t above = parameters_at(spec, override_at(low + 1));
        if (above - target_parameters < target_parameters - below) best = low + 1;
    }
    Spec scaled = parse_spec(spec_to_toml(spec), spec.source, {override_at(best)});
    const ModelSize size = model_size(scaled.model);
    return {std::move(scaled), size};
}

}  // namespace linarch
