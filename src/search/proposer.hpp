// Proposers over a search space: random sampling, mutation, crossover, regularised (aging)
// evolution's parent selection, and scaling a candidate to a parameter budget. Each is a pure
// function of its inputs and an RngStream, so a search replays exactly from its seed.
#pragma once
#include <cstdint>
#include <span>

#include "core/rng.hpp"
#include "search/search_space.hpp"

namespace linarch {

struct Candidate {
    Assignment assignment;  // the varying fields' values
    Spec spec;              // the base with them applied: valid, runnable alone
};

// Draws spent on one proposal before giving up: an Error then names the space and the spec's
// last complaint (most likely a combination no draw can avoid).
constexpr int64_t kMaxProposalAttempts = 1000;

// One value of a field: a uniform choice, or a uniform (log-uniform) draw from its range.
std::string draw_value(const FieldDomain& field, RngStream& rng);

// Every field drawn independently; drawn again while the spec rejects the combination.
Candidate random_candidate(const SearchSpace& space, RngStream& rng);

// The parent with 1..max_changed_fields fields (uniform count, distinct fields) set to a different
// value; fields missing from `parent` are drawn fresh.
Candidate mutate(const SearchSpace& space, const Assignment& parent, RngStream& rng, int64_t max_changed_fields = 1);

// Uniform crossover: each field from one parent or the other with equal odds.
Candidate crossover(const SearchSpace& space, const Assignment& first, const Assignment& second, RngStream& rng);

// Regularised evolution's selection (Real et al., "Regularized Evolution for Image Classifier
// Architecture Search", arXiv 1802.01548, Algorithm 1): the population is the newest
// `population_size` trials (older ones have aged out); `sample_size` of them are drawn uniformly
// with replacement and the fittest is the parent. `fitness` holds every trial oldest first, higher
// is better, NaN (a failed trial) loses to any number. Returns the parent's index into `fitness`.
size_t aging_evolution_parent(std::span<const double> fitness, int64_t population_size, int64_t sample_size,
                              RngStream& rng);

// What a model costs: its trainable scalars and LanguageModel::train_flops_per_token (which
// counts attention-like terms at its default length of 512 tokens).
struct ModelSize {
    int64_t parameters = 0;
    double train_flops_per_token = 0;
};
// Builds the model (uninitialised) to count; the model's own code is the one definition of its size.
ModelSize model_size(const ModelSpec& model);

// Which knob scale_to_parameters turns; everything else stays as the spec has it.
enum class ScaleAxis { d_model, n_layers };
struct ScaledSpec {
    Spec spec;
    ModelSize size;
};
// The spec with model.d_model (a multiple of `width_multiple`) or model.n_layers set so its
// parameter count is the closest reachable to `target_parameters`, so candidates compare at equal
// size. The result passed the spec's checks (n_layers stays ≥ hybrid_every and above any
// [model.layers.N] index).
ScaledSpec scale_to_parameters(const Spec& spec, int64_t target_parameters, ScaleAxis axis,
                               int64_t width_multiple = 64);

}  // namespace linarch
