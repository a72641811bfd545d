#include "ops/precision.hpp"

#include "core/error.hpp"

namespace linarch::ops {
namespace {
thread_local Precision current = Precision::fp32;
}  // namespace

Precision compute_precision() { return current; }

const char* precision_name(Precision precision) { return precision == Precision::bf16 ? "bf16" : "fp32"; }

Precision precision_from_name(std::string_view name) {
    if (name == "fp32") return Precision::fp32;
    if (name == "bf16") return Precision::bf16;
    fail("unknown precision \"{}\" (expected fp32 or bf16)", name);
}

ScopedPrecision::ScopedPrecision(Precision precision) : previous_(current) { current = precision; }

ScopedPrecision::~ScopedPrecision() { current = previous_; }

}  // namespace linarch::ops
