#include "support/models.hpp"

#include <cstdlib>
#include <sstream>

namespace linarch::testkit {

ModelSpec tiny_language_model(const std::vector<std::string>& overrides) {
    return parse_spec(R"(
[model]
vocab_size = 259
d_model = 32
n_layers = 2
n_heads = 2
head_dim = 16
mlp_hidden = 64
init_std = 0.3
[model.mixer]
decay = "scalar"
decay_parameterization = "mamba2"
chunk_size = 4
conv_size = 3
qk_norm = "l2"
)",
                      "tiny test model", overrides)
        .model;
}

Spec load_preset(const std::string& preset, const std::vector<std::string>& overrides) {
    const char* moved = std::getenv("LINARCH_SOURCE_DIR");
    const std::string source = moved ? moved : LINARCH_SOURCE_DIR;
    return load_spec(source + "/configs/presets/" + preset + ".toml", overrides);
}

std::vector<std::string> split_overrides(const std::string& words) {
    std::istringstream in(words);
    std::vector<std::string> out;
    for (std::string word; in >> word;) out.push_back(word);
    return out;
}

}  // namespace linarch::testkit
