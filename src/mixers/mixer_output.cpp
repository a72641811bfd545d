#include "mixers/mixer_output.hpp"

#include "core/rng.hpp"
#include "ops/dense.hpp"

namespace linarch {

namespace {
void fill_normal(Parameter& p, uint64_t seed, double std) {
    RngStream rng(seed, stream_id(p.name.c_str()));
    std::vector<double> values(static_cast<size_t>(p.value.numel()));
    for (double& v : values) v = std * rng.normal();
    p.value.copy_from(Tensor::from_vector(p.value.shape(), values, DType::f64));
}
}  // namespace

MixerOutput::MixerOutput(const ModelSpec& model, const MixerSpec& mixer, ParameterStore& params,
                         const std::string& prefix)
    : dtype_(params.dtype()),
      device_(params.device()),
      heads_(model.n_heads),
      value_dim_(mixer.value_dim(model.head_dim)),
      width_(model.n_heads * value_dim_),
      norm_eps_(model.norm_eps),
      o_proj_(params.add(prefix + ".o_proj.weight", {model.d_model, width_})) {
    if (mixer.output_norm == "rmsnorm") {
        out_norm_ = &params.add(prefix + ".out_norm.weight", {value_dim_}, false);
    } else if (mixer.output_norm == "groupnorm") {
        out_norm_ = &params.add(prefix + ".out_norm.weight", {width_}, false);
        out_norm_bias_ = &params.add(prefix + ".out_norm.bias", {width_}, false);
    }
    if (mixer.output_gate != "none") {
        gate_proj_ = &params.add(prefix + ".out_gate_proj.weight", {width_, model.d_model});
        gate_activation_ = ops::gate_activation_from_name(mixer.output_gate);
    }
}

void MixerOutput::initialize(uint64_t seed, double input_std, double output_std) {
    fill_normal(o_proj_, seed, output_std);
    if (gate_proj_) fill_normal(*gate_proj_, seed, input_std);
    if (out_norm_) out_norm_->value.fill(1.0);
    if (out_norm_bias_) out_norm_bias_->value.zero();
}

void MixerOutput::forward(Tensor& out, const Tensor& o, const Tensor& x, Cache& c) const {
    const int64_t n = x.size(0);
    c.x = x;
    c.o = o.view({n, width_});
    c.o_norm = c.o;
    if (out_norm_) {
        c.o_norm = Tensor::empty({n, width_}, dtype_, device_);
        c.o_rstd = Tensor::empty({n * heads_}, dtype_, device_);
        if (out_norm_bias_) {
            c.o_mean = Tensor::empty({n * heads_}, dtype_, device_);
            ops::group_norm_forward(c.o_norm, c.o_mean, c.o_rstd, c.o, out_norm_->value, out_norm_bias_->value, heads_,
                                    norm_eps_);
        } else {
            Tensor rows = c.o_norm.view({n * heads_, value_dim_});
            ops::rmsnorm_forward(rows, c.o_rstd, c.o.view({n * heads_, value_dim_}), out_norm_->value, norm_eps_);
        }
    }
    c.gated = c.o_norm;
    if (gate_proj_) {
        c.gate_input = Tensor::empty({n, width_}, dtype_, device_);
        ops::matmul_forward(c.gate_input, x, gate_proj_->value);
        c.gated = Tensor::empty({n, width_}, dtype_, device_);
        ops::output_gate_forward(c.gated, c.o_norm, c.gate_input, gate_activation_);
    }
    ops::matmul_forward(out, c.gated, o_proj_.value);
}

Tensor MixerOutput::backward(Tensor& dx, const Tensor& dout, const Cache& c) {
    const int64_t n = c.x.size(0);
    Tensor d_gated = Tensor::zeros({n, width_}, dtype_, device_);
    ops::matmul_backward(&d_gated, &o_proj_.grad, dout, c.gated, o_proj_.value);
    Tensor d_o_norm = d_gated;
    if (gate_proj_) {
        d_o_norm = Tensor::zeros({n, width_}, dtype_, device_);
        Tensor d_gate_input = Tensor::zeros({n, width_}, dtype_, device_);
        ops::output_gate_backward(d_o_norm, d_gate_input, d_gated, c.o_norm, c.gate_input, gate_activation_);
        ops::matmul_backward(&dx, &gate_proj_->grad, d_gate_input, c.x, gate_proj_->value);
    }
    if (!out_norm_) return d_o_norm;
    Tensor d_o = Tensor::zeros({n, width_}, dtype_, device_);
    if (out_norm_bias_) {
        ops::group_norm_backward(d_o, out_norm_->grad, out_norm_bias_->grad, d_o_norm, c.o, out_norm_->value, c.o_mean,
                                 c.o_rstd, heads_);
        return d_o;
    }
    Tensor d_rows = d_o.view({n * heads_, value_dim_});
    ops::rmsnorm_backward(&d_rows, &out_norm_->grad, d_o_norm.view({n * heads_, value_dim_}),
                          c.o.view({n * heads_, value_dim_}), out_norm_->value, c.o_rstd);
    return d_o;
}

}  // namespace linarch
