// Functional deduplication: two specs that compute the same function are one trial.
//
// The model is built in float64, initialised at a fixed seed and run on fixed random tokens; its
// logits, centred per position (a shift of all logits is the same distribution) and quantised on
// a grid of 1e-3 × their RMS, are hashed with XXH3 together with their RMS's log on a 1e-3 grid.
// Float64 keeps the arithmetic noise (~1e-13) far below the grid, so the same function computed
// by a different route (another chunk_size, a layer override that repeats the base mixer) lands on
// the same grid points, while any change of the function by more than ~0.1% of the logits' spread
// moves some of them.
//
// What counts as "the same": parameters are initialised from streams named after the parameters
// (LanguageModel::initialize), so two specs hash equal when they build the same parameter names
// and shapes with the same initial values and the same computation on them — e.g. a key set to
// its default vs left out, or [model.layers.N] equal to the mixer layer N takes anyway. Specs that
// compute the same function through differently named parameters (a permutation of heads) hash
// differently: dedup misses them, it never merges different functions.
#pragma once
#include <cstdint>
#include <string>

#include "core/spec.hpp"

namespace linarch {

// Hash of the model's function at initialisation, on `tokens` fixed random input tokens.
uint64_t model_function_hash(const ModelSpec& model, int64_t tokens = 64);

// The trial's identity: model_function_hash (on min(data.seq_len, 64) tokens) combined with what
// else its result depends on (data, optim, run.steps/seed/eval_batches); run keys that only change
// logging, checkpointing or the thread count are left out.
uint64_t functional_hash(const Spec& spec);

// 16 lowercase hex digits: how the database stores a hash.
std::string hash_hex(uint64_t hash);

}  // namespace linarch
