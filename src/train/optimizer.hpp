// AdamW over a ParameterStore, global-norm gradient clipping and the learning-rate schedule.
#pragma once
#include <cstdint>
#include <vector>

#include "core/parameter.hpp"
#include "core/spec.hpp"

namespace linarch {

class AdamW {
public:
    AdamW(const OptimSpec& spec, const ParameterStore& params);
    // One update with learning rate lr; weight decay only where Parameter::decay is set.
    void step(ParameterStore& params, double lr);
    int64_t steps_taken() const { return step_; }
    void set_steps_taken(int64_t steps) { step_ = steps; }
    // First and second moments, in parameter order (saved in checkpoints as "m.<name>", "v.<name>").
    std::vector<Tensor>& first_moments() { return m_; }
    std::vector<Tensor>& second_moments() { return v_; }
    const std::vector<Tensor>& first_moments() const { return m_; }
    const std::vector<Tensor>& second_moments() const { return v_; }

private:
    OptimSpec spec_;
    std::vector<Tensor> m_, v_;
    int64_t step_ = 0;
};

// Global L2 norm of all gradients; when max_norm > 0 and the norm exceeds it, scales every
// gradient by max_norm / norm. Returns the norm before clipping.
double clip_grad_norm(ParameterStore& params, double max_norm);

// Linear warm-up to the peak, then cosine decay to lr · min_lr_ratio at the last step.
double learning_rate(const OptimSpec& spec, int64_t step, int64_t total_steps);

}  // namespace linarch
