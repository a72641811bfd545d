// Small model specs the inference tests share: fast to build and to run token by token.
#pragma once
#include <string>
#include <vector>

#include "core/spec.hpp"

namespace linarch::testkit {

// A 2-layer, d=32 byte-level model (vocabulary 259: bytes and BOS/EOS/PAD) with a gated (Mamba-2)
// linear mixer, a short conv and small chunks; `overrides` are --set style ("model.hybrid_every=2").
ModelSpec tiny_language_model(const std::vector<std::string>& overrides = {});

// configs/presets/<preset>.toml of the checkout (or of $LINARCH_SOURCE_DIR, where a test binary was copied
// to another machine: the GPU runs), with --set style overrides.
Spec load_preset(const std::string& preset, const std::vector<std::string>& overrides);

// "a=1 b=2" → {"a=1", "b=2"}: a test table's several overrides in one string.
std::vector<std::string> split_overrides(const std::string& words);

}  // namespace linarch::testkit
