#include "core/parameter.hpp"

namespace linarch {

Parameter& ParameterStore::add(const std::string& name, const Shape& shape, bool decay) {
    LINARCH_CHECK(find(name) == nullptr, "parameter \"{}\" defined twice", name);
    params_.push_back({name, Tensor::zeros(shape, dtype_, device_), Tensor::zeros(shape, dtype_, device_), decay});
    return params_.back();
}

const Parameter* ParameterStore::find(const std::string& name) const {
    for (const auto& p : params_)
        if (p.name == name) return &p;
    return nullptr;
}

Parameter& ParameterStore::get(const std::string& name) {
    for (auto& p : params_)
        if (p.name == name) return p;
    fail("no parameter named \"{}\"", name);
}

void ParameterStore::zero_grad() {
    for (auto& p : params_) p.grad.zero();
}

int64_t ParameterStore::count() const {
    int64_t n = 0;
    for (const auto& p : params_) n += p.value.numel();
    return n;
}

}  // namespace linarch
