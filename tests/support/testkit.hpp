// Shared test helpers: fresh random inputs, relative error, finite-difference gradient checks,
// expected errors.
#pragma once
#include <cstdint>
#include <functional>
#include <source_location>
#include <string>
#include <vector>

#include "core/tensor.hpp"

namespace linarch::testkit {

// Base seed of this test process: random each run (so tests see fresh inputs), or
// LINARCH_TEST_SEED to replay a failure. Printed once so a failing run can be reproduced.
uint64_t test_seed();

// Tensor of independent N(0, std²) draws (stream distinguishes tensors within one test).
Tensor random_normal(const Shape& shape, DType dtype, uint64_t stream, double std = 1.0);
// Uniform draws in [low, high).
Tensor random_uniform(const Shape& shape, DType dtype, uint64_t stream, double low, double high);
// Normal draws with every row (last axis) scaled to unit L2 norm, as layers normalise q and k.
Tensor random_unit_rows(const Shape& shape, DType dtype, uint64_t stream);
// Integers uniform in [0, n).
std::vector<int32_t> random_ids(int64_t count, int32_t n, uint64_t stream);

// ‖out − ref‖ / ‖ref‖ over all elements, in double; shapes must match.
double relative_error(const Tensor& out, const Tensor& ref);

// a − b element by element, in float64 on the CPU (what a backward added into nonzero gradients).
Tensor minus(const Tensor& a, const Tensor& b);

// Entries of a CPU tensor that are NaN or ±inf.
int64_t count_non_finite(const Tensor& t);

// Σ_i a_i · b_i in double (projects an output onto a random direction to make a scalar loss).
double dot(const Tensor& a, const Tensor& b);

// Central finite differences of `loss` with respect to up to `max_entries` entries of `input`
// (an f64 tensor that `loss` reads), compared with `analytic` (the gradient a backward pass
// produced). Returns ‖fd − analytic‖ / ‖fd‖ over the checked entries.
//
// `extrapolate` adds Richardson extrapolation, (4·D(h) − D(2h))/3, which cancels the h² error of the
// central difference for twice the evaluations: whole models need it, because a norm of a near-zero vector
// (a head's first output, q·k ≈ 0) makes the loss so curved there that D(h) alone is off by ~1e-4. It
// also tells where the loss is not smooth within ±2h (a ReLU feature crossing 0: a random input lands
// there now and then): D(h) and D(2h) then differ by over 1% of the slope, not by O(h²), and such an entry,
// which no finite difference can check, is left out (an all-kink sample is an error).
double gradient_check(const std::function<double()>& loss, Tensor& input, const Tensor& analytic,
                      int64_t max_entries = 64, double step = 1e-6, bool extrapolate = false);

// The checks below run inside testkit.cpp, so they report a failure at `where`, the caller's line,
// rather than at a line of theirs that every test shares.

// The message of the linarch::Error that `action` throws; a test failure (and "") when it throws nothing.
std::string error_of(const std::function<void()>& action,
                     std::source_location where = std::source_location::current());

// A test failure for each of `fragments` that `message` does not contain.
void expect_contains(const std::string& message, const std::vector<std::string>& fragments,
                     std::source_location where = std::source_location::current());

// Runs `action` and expects a linarch::Error whose message contains every one of `fragments`.
void expect_error(const std::function<void()>& action, const std::vector<std::string>& fragments,
                  std::source_location where = std::source_location::current());

}  // namespace linarch::testkit
