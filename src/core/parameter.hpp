// Trainable parameters: a value and its gradient, under a stable name (the checkpoint key).
#pragma once
#include <string>
#include <deque>
#include <vector>

#include "core/tensor.hpp"

namespace linarch {

struct Parameter {
    std::string name;
    Tensor value;  // master copy: f32 for training, f64 for reference checks
    Tensor grad;   // same shape, accumulated by backward passes
    bool decay = true;  // weight decay applies (not to norms' gains)
};

// Owns every parameter of a model in creation order (the order checkpoints and optimisers use).
class ParameterStore {
public:
    explicit ParameterStore(DType dtype = DType::f32, Device device = Device::cpu)
        : dtype_(dtype), device_(device) {}
    DType dtype() const { return dtype_; }
    // Where values, gradients and (by the layers' convention) their activations live.
    Device device() const { return device_; }
    Parameter& add(const std::string& name, const Shape& shape, bool decay = true);
    Parameter& get(const std::string& name);
    const Parameter* find(const std::string& name) const;
    std::deque<Parameter>& all() { return params_; }
    const std::deque<Parameter>& all() const { return params_; }
    void zero_grad();
    int64_t count() const;  // total number of scalars

private:
    DType dtype_;
    Device device_;
    std::deque<Parameter> params_;  // deque: layers keep references to their parameters
};

}  // namespace linarch
