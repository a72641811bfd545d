// The output side every mixer shares: per-head norm (optional: RMSNorm with one weight [Dv] shared by the
// heads, as fla's FusedRMSNormGated; or GroupNorm with a weight and bias per channel [H·Dv], as RetNet)
// → output gate act(x·W_gᵀ) (optional; GLA, RetNet, gated attention) → ·W_oᵀ.
#pragma once
#include <string>

#include "core/parameter.hpp"
#include "core/spec.hpp"
#include "ops/elementwise.hpp"

namespace linarch {

class MixerOutput {
public:
    MixerOutput(const ModelSpec& model, const MixerSpec& mixer, ParameterStore& params, const std::string& prefix);
    void initialize(uint64_t seed, double input_std, double output_std);

    struct Cache {
        Tensor x, o, o_norm, o_mean, o_rstd, gate_input, gated;
    };
    // out[N,d] from the heads' outputs o[N, H·Dv] and the mixer input x[N,d].
    void forward(Tensor& out, const Tensor& o, const Tensor& x, Cache& cache) const;
    // Returns ∂/∂o [N, H·Dv]; adds ∂/∂x into dx and the parameter gradients.
    Tensor backward(Tensor& dx, const Tensor& dout, const Cache& cache);

private:
    DType dtype_;
    Device device_;
    int64_t heads_, value_dim_, width_;
    double norm_eps_;
    Parameter& o_proj_;
    Parameter* out_norm_ = nullptr;       // RMSNorm or GroupNorm weight
    Parameter* out_norm_bias_ = nullptr;  // GroupNorm only
    Parameter* gate_proj_ = nullptr;
    ops::GateActivation gate_activation_ = ops::GateActivation::sigmoid;
};

}  // namespace linarch
