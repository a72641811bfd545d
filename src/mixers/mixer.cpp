#include "mixers/mixer.hpp"

#include "core/error.hpp"
#include "mixers/linear_attention_mixer.hpp"
#include "mixers/softmax_attention_mixer.hpp"

namespace linarch {

namespace {
Tensor deep_copy(const Tensor& t) { return t.defined() ? t.clone() : Tensor(); }
}  // namespace

MixerState MixerState::clone() const {
    MixerState copy;
    copy.position = position;
    copy.attention = deep_copy(attention);
    copy.key_moment = deep_copy(key_moment);
    copy.correction = deep_copy(correction);
    for (int i = 0; i < 3; ++i) copy.conv_window[i] = deep_copy(conv_window[i]);
    copy.keys = deep_copy(keys);
    copy.values = deep_copy(values);
    copy.log_forget = deep_copy(log_forget);
    copy.spatial = {deep_copy(spatial.columns), deep_copy(spatial.row_scan), deep_copy(spatial.row_keys),
                    deep_copy(spatial.row_values)};
    return copy;
}

void Mixer::step_sequences(Tensor& out, const Tensor& x, std::span<MixerState* const> states) const {
    const auto G = static_cast<int64_t>(states.size());
    LINARCH_CHECK(G >= 1 && x.size(0) % G == 0, "step_sequences: {} rows for {} sequences", x.size(0), G);
    const int64_t T = x.size(0) / G;
    for (int64_t g = 0; g < G; ++g) {
        Tensor rows = Tensor::empty({T, out.size(1)}, out.dtype(), out.device());
        step(rows, x.narrow(0, g * T, T).contiguous(), *states[static_cast<size_t>(g)]);
        out.narrow(0, g * T, T).copy_from(rows);
    }
}

std::unique_ptr<Mixer> make_mixer(const ModelSpec& model, const MixerSpec& mixer, ParameterStore& params,
                                  const std::string& prefix, int64_t layer) {
    if (mixer.kind == "linear_attention")
        return std::make_unique<LinearAttentionMixer>(model, mixer, params, prefix, layer);
    if (mixer.kind == "softmax_attention") return std::make_unique<SoftmaxAttentionMixer>(model, mixer, params, prefix);
    fail("unknown mixer kind \"{}\" (expected linear_attention or softmax_attention)", mixer.kind);
}

}  // namespace linarch
