#include "mixers/position_rotation.hpp"

#include "core/error.hpp"
#include "ops/rotary.hpp"

namespace linarch {

PositionRotation::PositionRotation(const MixerSpec& mixer, int64_t key_dim, ParameterStore& params,
                                   const std::string& prefix)
    : rope_base_(mixer.rope_base), key_dim_(key_dim), rank_(mixer.grape_rank) {
    if (mixer.rotation == "none") return;
    LINARCH_CHECK(key_dim % 2 == 0, "{}: rotation \"{}\" needs an even key width, got {}", prefix, mixer.rotation,
                  key_dim);
    if (mixer.rotation == "rope") {
        kind_ = Kind::rope;
        rope_frequencies_ = ops::rope_frequencies(key_dim, mixer.rope_base, params.dtype()).to(params.device());
        return;
    }
    const bool planes = mixer.rotation == "grape_planes";
    LINARCH_CHECK(planes || mixer.rotation == "grape_mixture",
                  "{}: unknown rotation \"{}\" (expected none, rope, grape_planes or grape_mixture)", prefix,
                  mixer.rotation);
    kind_ = planes ? Kind::grape_planes : Kind::grape_mixture;
    basis_generator_ = &params.add(prefix + ".rotation.basis_generator", {key_dim, key_dim}, false);
    if (planes)
        log_frequencies_ = &params.add(prefix + ".rotation.log_frequencies", {key_dim / 2}, false);
    else
        mixing_ = &params.add(prefix + ".rotation.mixing", {rank_, rank_}, false);
}

void PositionRotation::initialize() {
    // Both GRAPE kinds start as RoPE (on all features, or on the first grape_rank).
    if (basis_generator_) basis_generator_->value.zero();
    if (log_frequencies_)
        log_frequencies_->value.copy_from(ops::grape_initial_log_frequencies(key_dim_, rope_base_, DType::f64));
    if (mixing_) mixing_->value.copy_from(ops::grape_initial_mixing(rank_, rope_base_, DType::f64));
    prepared_from_.clear();
}

const ops::GrapeRotation& PositionRotation::prepared() const {
    // Read on the host (the parameters may live on the GPU): the rotation is derived there in float64.
    std::vector<double> values = basis_generator_->value.to(Device::cpu).to_vector();
    const std::vector<double> second = (log_frequencies_ ? log_frequencies_ : mixing_)->value.to(Device::cpu).to_vector();
    values.insert(values.end(), second.begin(), second.end());
    if (values != prepared_from_) {
        prepared_ = kind_ == Kind::grape_planes
                        ? ops::grape_prepare_commuting(basis_generator_->value, log_frequencies_->value)
                        : ops::grape_prepare_mixture(basis_generator_->value, mixing_->value);
        prepared_from_ = std::move(values);
    }
    return prepared_;
}

void PositionRotation::forward(Tensor& out, const Tensor& x, std::span<const int64_t> positions) const {
    if (kind_ == Kind::rope)
        ops::rope_forward(out, x, positions, rope_frequencies_);
    else
        ops::grape_forward(out, x, positions, prepared());
}

void PositionRotation::backward(Tensor& dx, const Tensor& dout, const Tensor& x, std::span<const int64_t> positions) {
    if (kind_ == Kind::rope) {
        ops::rope_backward(dx, dout, positions, rope_frequencies_);
        return;
    }
    ops::grape_backward(&dx, &basis_generator_->grad, log_frequencies_ ? &log_frequencies_->grad : nullptr,
                        mixing_ ? &mixing_->grad : nullptr, dout, x, positions, prepared());
}

}  // namespace linarch
