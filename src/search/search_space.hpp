// A search space: a base spec and the spec fields that vary, each with its choices or range.
// A candidate is the base spec with one `--set key=value` per varying field, read by parse_spec
// itself, so it is a plain Spec that `linarch train` runs alone and that passed the spec's checks.
//
// File format (TOML):
//   base = "../presets/gated_deltanet.toml"   # a spec file, relative to this file's directory,
//   # or the spec inline:  [base.model] d_model = 64 ... (any table of a spec, under base.)
//   [vary]
//   model.mixer.decay = ["none", "fixed", "scalar", "vector"]   # choices (any TOML scalars)
//   model.n_layers = { min = 2, max = 6 }                       # integers, uniform in [min, max]
//   optim.lr = { min = 1e-4, max = 1e-2, log = true }           # numbers, uniform (log: in log space)
//   model.layers.0.decay = ["vector"]                           # per-layer keys: N < base n_layers
//   [[enqueue]]                  # optional hand-picked candidates (other presets, say), trained right
//   model.mixer.update = "additive"   # after the baseline (Optuna's enqueue_trial): varying keys only,
//   model.mixer.decay = "vector"      # the rest as in the base
// Each key under [vary] is a spec key exactly as --set takes it; each choice (and a range's ends)
// must be a value that key accepts on its own. Combinations that the spec rejects are allowed in
// the space (decay = "vector" with update = "delta"); the proposer draws again when it meets one.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "core/spec.hpp"

namespace linarch {

// One varying field: a list of choices, or a numeric range.
struct FieldDomain {
    std::string key;                   // dotted spec key: "model.mixer.decay"
    std::vector<std::string> choices;  // TOML literals ("\"scalar\"", "4", "0.5", "true"); empty for a range
    bool integer = false;              // range of integers (else of numbers)
    double min = 0, max = 0;           // inclusive range
    bool log = false;                  // draw uniformly in log space (numbers > 0 only)
    bool is_range() const { return choices.empty(); }
};

// The value of each varying field in one candidate: spec key → TOML literal.
using Assignment = std::map<std::string, std::string>;

// The TOML literal of a value, as assignments hold it: strings quoted, numbers in shortest
// round-trip form with floats always showing a '.' or exponent (so 3.0 stays a float).
std::string toml_literal(const std::string& text);
std::string toml_literal(int64_t value);
std::string toml_literal(double value);
std::string toml_literal(bool value);

class SearchSpace {
public:
    // Throws Error naming the file (and line), the [vary] key and what was expected.
    static SearchSpace load(const std::string& path);
    // `base_directory` resolves a relative `base = "file"`; `source_name` stands in for the file.
    static SearchSpace parse(const std::string& text, const std::string& source_name,
                             const std::string& base_directory);

    const std::string& source() const { return source_; }
    const std::vector<FieldDomain>& fields() const { return fields_; }
    const FieldDomain& field(const std::string& key) const;
    const Spec& base() const { return base_; }
    // The [[enqueue]] candidates, in file order; each passed realise() at load.
    const std::vector<Assignment>& enqueued() const { return enqueued_; }

    // The --set overrides of an assignment, in key order.
    static std::vector<std::string> overrides(const Assignment& assignment);
    // The candidate spec: the base with the assignment applied. Throws the spec's own Error (naming
    // the conflicting keys) when the combination is invalid.
    Spec realise(const Assignment& assignment) const;
    // The values this space's fields take in `spec` (a candidate, a preset, or a spec from another
    // proposer), so any spec can be a parent. A model.layers.N key not overridden in `spec` takes the
    // value of the mixer that layer uses.
    Assignment assignment_of(const Spec& spec) const;

private:
    std::string source_;
    std::string base_text_, base_name_;  // the base spec's own TOML, so partial layer tables stay partial
    Spec base_;
    std::vector<FieldDomain> fields_;
    std::vector<Assignment> enqueued_;
};

}  // namespace linarch
