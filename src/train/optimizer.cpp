#include "train/optimizer.hpp"

#include <cmath>
#include <vector>

#include "ops/dense.hpp"

namespace linarch {

AdamW::AdamW(const OptimSpec& spec, const ParameterStore& params) : spec_(spec) {
    for (const Parameter& p : params.all()) {
        m_.push_back(Tensor::zeros(p.value.shape(), p.value.dtype(), p.value.device()));
        v_.push_back(Tensor::zeros(p.value.shape(), p.value.dtype(), p.value.device()));
    }
}

void AdamW::step(ParameterStore& params, double lr) {
    ++step_;
    size_t i = 0;
    for (Parameter& p : params.all()) {
        const ops::AdamWParams hp{lr, spec_.beta1, spec_.beta2, spec_.eps, p.decay ? spec_.weight_decay : 0.0,
                                  step_};
        ops::adamw_update(p.value, p.grad, m_[i], v_[i], hp);
        ++i;
    }
}

double clip_grad_norm(ParameterStore& params, double max_norm) {
    std::vector<const Tensor*> grads;
    for (const Parameter& p : params.all()) grads.push_back(&p.grad);
    const double norm = std::sqrt(ops::sum_squares(grads));
    if (max_norm > 0 && norm > max_norm)
        for (Parameter& p : params.all()) ops::scale_inplace(p.grad, max_norm / norm);
    return norm;
}

double learning_rate(const OptimSpec& spec, int64_t step, int64_t total_steps) {
    if (step < spec.warmup_steps) return spec.lr * double(step + 1) / double(spec.warmup_steps);
    const double span = double(std::max<int64_t>(1, total_steps - 1 - spec.warmup_steps));
    const double progress = std::min(1.0, double(step - spec.warmup_steps) / span);
    const double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
    return spec.lr * (spec.min_lr_ratio + (1.0 - spec.min_lr_ratio) * cosine);
}

}  // namespace linarch
