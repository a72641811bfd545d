#include "ops/elementwise.hpp"

#include <initializer_list>

#include "backend/cpu/elementwise.hpp"
#if LINARCH_HAS_CUDA
#include "backend/cuda/mixer_elementwise.hpp"
#endif

namespace linarch::ops {

namespace {
// Every tensor: contiguous, on the device of the first and of its dtype (f32 or f64 on the CPU, f32
// on CUDA, where every op here has a kernel: backend/cuda/mixer_elementwise.cu).
void check_tensors(const char* op, std::initializer_list<std::pair<const char*, const Tensor*>> tensors) {
    const auto& [first_name, first] = *tensors.begin();
    const DType dtype = first->dtype();
    const Device device = first->device();
    LINARCH_CHECK(dtype == DType::f32 || (dtype == DType::f64 && device == Device::cpu),
                  "{}: {} is {} on {}, expected F32{}", op, first_name, dtype_name(dtype), device_name(device),
                  device == Device::cpu ? " or F64" : "");
    for (const auto& [name, t] : tensors) {
        LINARCH_CHECK(t->defined(), "{}: {} is not defined", op, name);
        LINARCH_CHECK(t->device() == device, "{}: {} is on {}, but {} is on {} (one device per call)", op, name,
                      device_name(t->device()), first_name, device_name(device));
        LINARCH_CHECK(t->dtype() == dtype, "{}: {} is {}, but {} is {}", op, name, dtype_name(t->dtype()),
                      first_name, dtype_name(dtype));
        LINARCH_CHECK(t->is_contiguous(), "{}: {} must be contiguous", op, name);
    }
}

void check_same_shape(const char* op, const Tensor& reference, const char* reference_name,
                      std::initializer_list<std::pair<const char*, const Tensor*>> tensors) {
    for (const auto& [name, t] : tensors)
        LINARCH_CHECK(t->shape() == reference.shape(), "{}: {}: expected shape {} (as {}), got {}", op, name,
                      shape_string(reference.shape()), reference_name, shape_string(t->shape()));
}

// Calls body(T{}) with T the element type of `t`.
template <typename F> void dispatch(const Tensor& t, F&& body) {
    if (t.dtype() == DType::f32) body(float{});
    else body(double{});
}

template <typename T> T* ptr(Tensor& t) { return t.data<T>(); }
template <typename T> const T* ptr(const Tensor& t) { return t.data<T>(); }
#if LINARCH_HAS_CUDA
float* f32(Tensor& t) { return t.data<float>(); }
const float* f32(const Tensor& t) { return t.data<float>(); }
#endif

// (rows, last dimension) of a tensor seen as a matrix.
std::pair<int64_t, int64_t> as_rows(const char* op, const Tensor& t, const char* name) {
    LINARCH_CHECK(t.dim() >= 1, "{}: {} must have at least one dimension", op, name);
    const int64_t cols = t.size(-1);
    return {cols == 0 ? 0 : t.numel() / cols, cols};
}
}  // namespace

FeatureMap feature_map_from_name(std::string_view name) {
    if (name == "identity") return FeatureMap::identity;
    if (name == "elu1") return FeatureMap::elu_plus_one;
    if (name == "relu") return FeatureMap::relu;
    if (name == "softmax") return FeatureMap::softmax;
    fail("unknown feature map \"{}\" (expected identity, elu1, relu or softmax)", name);
}

void feature_map_forward(Tensor& out, const Tensor& x, FeatureMap map) {
    check_tensors("feature_map_forward", {{"x", &x}, {"out", &out}});
    check_same_shape("feature_map_forward", x, "x", {{"out", &out}});
    const auto [rows, dim] = as_rows("feature_map_forward", x, "x");
#if LINARCH_HAS_CUDA
    if (x.device() == Device::cuda) return cuda::feature_map_forward(f32(out), f32(x), rows, dim, int(map));
#endif
    dispatch(x, [&]<typename T>(T) { cpu::feature_map_forward(ptr<T>(out), ptr<T>(x), rows, dim, int(map)); });
}

void feature_map_backward(Tensor& dx, const Tensor& dout, const Tensor& x, FeatureMap map) {
    check_tensors("feature_map_backward", {{"x", &x}, {"dout", &dout}, {"dx", &dx}});
    check_same_shape("feature_map_backward", x, "x", {{"dout", &dout}, {"dx", &dx}});
    const auto [rows, dim] = as_rows("feature_map_backward", x, "x");
#if LINARCH_HAS_CUDA
    if (x.device() == Device::cuda) return cuda::feature_map_backward(f32(dx), f32(dout), f32(x), rows, dim, int(map));
#endif
    dispatch(x, [&]<typename T>(T) {
        cpu::feature_map_backward(ptr<T>(dx), ptr<T>(dout), ptr<T>(x), rows, dim, int(map));
    });
}

void l2norm_forward(Tensor& out, Tensor& inv_norm, const Tensor& x, double eps) {
    check_tensors("l2norm_forward", {{"x", &x}, {"out", &out}, {"inv_norm", &inv_norm}});
    check_same_shape("l2norm_forward", x, "x", {{"out", &out}});
    const auto [rows, dim] = as_rows("l2norm_forward", x, "x");
    check_shape(inv_norm, {rows}, "l2norm_forward: inv_norm");
#if LINARCH_HAS_CUDA
    if (x.device() == Device::cuda) return cuda::l2norm_forward(f32(out), f32(inv_norm), f32(x), rows, dim, eps);
#endif
    dispatch(x, [&]<typename T>(T) {
        cpu::l2norm_forward(ptr<T>(out), ptr<T>(inv_norm), ptr<T>(x), rows, dim, eps);
    });
}

void l2norm_backward(Tensor& dx, const Tensor& dout, const Tensor& out, const Tensor& inv_norm) {
    check_tensors("l2norm_backward", {{"out", &out}, {"dout", &dout}, {"dx", &dx}, {"inv_norm", &inv_norm}});
    check_same_shape("l2norm_backward", out, "out", {{"dout", &dout}, {"dx", &dx}});
    const auto [rows, dim] = as_rows("l2norm_backward", out, "out");
    check_shape(inv_norm, {rows}, "l2norm_backward: inv_norm");
#if LINARCH_HAS_CUDA
    if (out.device() == Device::cuda) return cuda::l2norm_backward(f32(dx), f32(dout), f32(out), f32(inv_norm), rows, dim);
#endif
    dispatch(out, [&]<typename T>(T) {
        cpu::l2norm_backward(ptr<T>(dx), ptr<T>(dout), ptr<T>(out), ptr<T>(inv_norm), rows, dim);
    });
}

void add_bias_forward(Tensor& out, const Tensor& x, const Tensor& bias) {
    check_tensors("add_bias_forward", {{"x", &x}, {"out", &out}, {"bias", &bias}});
    check_same_shape("add_bias_forward", x, "x", {{"out", &out}});
    const auto [rows, cols] = as_rows("add_bias_forward", x, "x");
    check_shape(bias, {cols}, "add_bias_forward: bias");
#if LINARCH_HAS_CUDA
    if (x.device() == Device::cuda) return cuda::add_bias_forward(f32(out), f32(x), f32(bias), rows, cols);
#endif
    dispatch(x, [&]<typename T>(T) { cpu::add_bias_forward(ptr<T>(out), ptr<T>(x), ptr<T>(bias), rows, cols); });
}

void add_bias_backward(Tensor& dbias, const Tensor& dout) {
    check_tensors("add_bias_backward", {{"dout", &dout}, {"dbias", &dbias}});
    const auto [rows, cols] = as_rows("add_bias_backward", dout, "dout");
    check_shape(dbias, {cols}, "add_bias_backward: dbias");
#if LINARCH_HAS_CUDA
    if (dout.device() == Device::cuda) return cuda::add_bias_backward(f32(dbias), f32(dout), rows, cols);
#endif
    dispatch(dout, [&]<typename T>(T) { cpu::add_bias_backward(ptr<T>(dbias), ptr<T>(dout), rows, cols); });
}

void mamba2_decay_forward(Tensor& log_gate, const Tensor& x, const Tensor& a_log, const Tensor& dt_bias) {
    check_tensors("mamba2_decay_forward", {{"x", &x}, {"log_gate", &log_gate}, {"a_log", &a_log}, {"dt_bias", &dt_bias}});
    check_same_shape("mamba2_decay_forward", x, "x", {{"log_gate", &log_gate}});
    const auto [rows, heads] = as_rows("mamba2_decay_forward", x, "x");
    check_shape(a_log, {heads}, "mamba2_decay_forward: a_log");
    check_shape(dt_bias, {heads}, "mamba2_decay_forward: dt_bias");
#if LINARCH_HAS_CUDA
    if (x.device() == Device::cuda) return cuda::mamba2_decay_forward(f32(log_gate), f32(x), f32(a_log), f32(dt_bias), rows, heads);
#endif
    dispatch(x, [&]<typename T>(T) {
        cpu::mamba2_decay_forward(ptr<T>(log_gate), ptr<T>(x), ptr<T>(a_log), ptr<T>(dt_bias), rows, heads);
    });
}

void mamba2_decay_backward(Tensor& dx, Tensor& da_log, Tensor& ddt_bias, const Tensor& dlog_gate, const Tensor& x,
                           const Tensor& a_log, const Tensor& dt_bias) {
    check_tensors("mamba2_decay_backward", {{"x", &x}, {"dx", &dx}, {"dlog_gate", &dlog_gate}, {"a_log", &a_log},
                                            {"da_log", &da_log}, {"dt_bias", &dt_bias}, {"ddt_bias", &ddt_bias}});
    check_same_shape("mamba2_decay_backward", x, "x", {{"dx", &dx}, {"dlog_gate", &dlog_gate}});
    const auto [rows, heads] = as_rows("mamba2_decay_backward", x, "x");
    for (const auto& [name, t] : {std::pair{"a_log", &a_log}, {"da_log", &da_log}, {"dt_bias", &dt_bias},
                                  {"ddt_bias", &ddt_bias}})
        LINARCH_CHECK(t->shape() == Shape{heads}, "mamba2_decay_backward: {}: expected shape [{}], got {}", name,
                      heads, shape_string(t->shape()));
#if LINARCH_HAS_CUDA
    if (x.device() == Device::cuda) return cuda::mamba2_decay_backward(f32(dx), f32(da_log), f32(ddt_bias), f32(dlog_gate), f32(x), f32(a_log), f32(dt_bias), rows, heads);
#endif
    dispatch(x, [&]<typename T>(T) {
        cpu::mamba2_decay_backward(ptr<T>(dx), ptr<T>(da_log), ptr<T>(ddt_bias), ptr<T>(dlog_gate), ptr<T>(x),
                                   ptr<T>(a_log), ptr<T>(dt_bias), rows, heads);
    });
}

void logsigmoid_decay_forward(Tensor& log_gate, const Tensor& x, double temperature) {
    check_tensors("logsigmoid_decay_forward", {{"x", &x}, {"log_gate", &log_gate}});
    check_same_shape("logsigmoid_decay_forward", x, "x", {{"log_gate", &log_gate}});
    LINARCH_CHECK(temperature > 0, "logsigmoid_decay_forward: temperature must be > 0, got {}", temperature);
#if LINARCH_HAS_CUDA
    if (x.device() == Device::cuda) return cuda::logsigmoid_decay_forward(f32(log_gate), f32(x), x.numel(), temperature);
#endif
    dispatch(x, [&]<typename T>(T) {
        cpu::logsigmoid_decay_forward(ptr<T>(log_gate), ptr<T>(x), x.numel(), temperature);
    });
}

void logsigmoid_decay_backward(Tensor& dx, const Tensor& dlog_gate, const Tensor& x, double temperature) {
    check_tensors("logsigmoid_decay_backward", {{"x", &x}, {"dx", &dx}, {"dlog_gate", &dlog_gate}});
    check_same_shape("logsigmoid_decay_backward", x, "x", {{"dx", &dx}, {"dlog_gate", &dlog_gate}});
    LINARCH_CHECK(temperature > 0, "logsigmoid_decay_backward: temperature must be > 0, got {}", temperature);
#if LINARCH_HAS_CUDA
    if (x.device() == Device::cuda) return cuda::logsigmoid_decay_backward(f32(dx), f32(dlog_gate), f32(x), x.numel(), temperature);
#endif
    dispatch(x, [&]<typename T>(T) {
        cpu::logsigmoid_decay_backward(ptr<T>(dx), ptr<T>(dlog_gate), ptr<T>(x), x.numel(), temperature);
    });
}

void lower_bounded_decay_forward(Tensor& log_gate, const Tensor& x, double lower_bound) {
    check_tensors("lower_bounded_decay_forward", {{"x", &x}, {"log_gate", &log_gate}});
    check_same_shape("lower_bounded_decay_forward", x, "x", {{"log_gate", &log_gate}});
    LINARCH_CHECK(lower_bound >= 0 && lower_bound < 1, "lower_bounded_decay_forward: lower_bound must be in [0, 1), got {}",
                  lower_bound);
#if LINARCH_HAS_CUDA
    if (x.device() == Device::cuda) return cuda::lower_bounded_decay_forward(f32(log_gate), f32(x), x.numel(), lower_bound);
#endif
    dispatch(x, [&]<typename T>(T) {
        cpu::lower_bounded_decay_forward(ptr<T>(log_gate), ptr<T>(x), x.numel(), lower_bound);
    });
}

void lower_bounded_decay_backward(Tensor& dx, const Tensor& dlog_gate, const Tensor& x, double lower_bound) {
    check_tensors("lower_bounded_decay_backward", {{"x", &x}, {"dx", &dx}, {"dlog_gate", &dlog_gate}});
    check_same_shape("lower_bounded_decay_backward", x, "x", {{"dx", &dx}, {"dlog_gate", &dlog_gate}});
    LINARCH_CHECK(lower_bound >= 0 && lower_bound < 1,
                  "lower_bounded_decay_backward: lower_bound must be in [0, 1), got {}", lower_bound);
#if LINARCH_HAS_CUDA
    if (x.device() == Device::cuda) return cuda::lower_bounded_decay_backward(f32(dx), f32(dlog_gate), f32(x), x.numel(), lower_bound);
#endif
    dispatch(x, [&]<typename T>(T) {
        cpu::lower_bounded_decay_backward(ptr<T>(dx), ptr<T>(dlog_gate), ptr<T>(x), x.numel(), lower_bound);
    });
}

void key_from_decay_forward(Tensor& key, const Tensor& log_gate) {
    check_tensors("key_from_decay_forward", {{"log_gate", &log_gate}, {"key", &key}});
    check_same_shape("key_from_decay_forward", log_gate, "log_gate", {{"key", &key}});
#if LINARCH_HAS_CUDA
    if (log_gate.device() == Device::cuda) return cuda::key_from_decay_forward(f32(key), f32(log_gate), log_gate.numel());
#endif
    dispatch(log_gate, [&]<typename T>(T) {
        cpu::key_from_decay_forward(ptr<T>(key), ptr<T>(log_gate), log_gate.numel());
    });
}

void key_from_decay_backward(Tensor& dlog_gate, const Tensor& dkey, const Tensor& log_gate) {
    check_tensors("key_from_decay_backward", {{"log_gate", &log_gate}, {"dkey", &dkey}, {"dlog_gate", &dlog_gate}});
    check_same_shape("key_from_decay_backward", log_gate, "log_gate", {{"dkey", &dkey}, {"dlog_gate", &dlog_gate}});
#if LINARCH_HAS_CUDA
    if (log_gate.device() == Device::cuda) return cuda::key_from_decay_backward(f32(dlog_gate), f32(dkey), f32(log_gate), log_gate.numel());
#endif
    dispatch(log_gate, [&]<typename T>(T) {
        cpu::key_from_decay_backward(ptr<T>(dlog_gate), ptr<T>(dkey), ptr<T>(log_gate), log_gate.numel());
    });
}

GateActivation gate_activation_from_name(std::string_view name) {
    if (name == "sigmoid") return GateActivation::sigmoid;
    if (name == "swish") return GateActivation::swish;
    fail("unknown gate activation \"{}\" (expected sigmoid or swish)", name);
}

void output_gate_forward(Tensor& out, const Tensor& y, const Tensor& z, GateActivation act) {
    check_tensors("output_gate_forward", {{"y", &y}, {"z", &z}, {"out", &out}});
    check_same_shape("output_gate_forward", y, "y", {{"z", &z}, {"out", &out}});
#if LINARCH_HAS_CUDA
    if (y.device() == Device::cuda) return cuda::output_gate_forward(f32(out), f32(y), f32(z), y.numel(), int(act));
#endif
    dispatch(y, [&]<typename T>(T) {
        cpu::output_gate_forward(ptr<T>(out), ptr<T>(y), ptr<T>(z), y.numel(), int(act));
    });
}

void output_gate_backward(Tensor& dy, Tensor& dz, const Tensor& dout, const Tensor& y, const Tensor& z,
                          GateActivation act) {
    check_tensors("output_gate_backward", {{"y", &y}, {"z", &z}, {"dout", &dout}, {"dy", &dy}, {"dz", &dz}});
    check_same_shape("output_gate_backward", y, "y", {{"z", &z}, {"dout", &dout}, {"dy", &dy}, {"dz", &dz}});
#if LINARCH_HAS_CUDA
    if (y.device() == Device::cuda) return cuda::output_gate_backward(f32(dy), f32(dz), f32(dout), f32(y), f32(z), y.numel(), int(act));
#endif
    dispatch(y, [&]<typename T>(T) {
        cpu::output_gate_backward(ptr<T>(dy), ptr<T>(dz), ptr<T>(dout), ptr<T>(y), ptr<T>(z), y.numel(), int(act));
    });
}

void sigmoid_forward(Tensor& out, const Tensor& x) {
    check_tensors("sigmoid_forward", {{"x", &x}, {"out", &out}});
    check_same_shape("sigmoid_forward", x, "x", {{"out", &out}});
#if LINARCH_HAS_CUDA
    if (x.device() == Device::cuda) return cuda::sigmoid_forward(f32(out), f32(x), x.numel());
#endif
    dispatch(x, [&]<typename T>(T) { cpu::sigmoid_forward(ptr<T>(out), ptr<T>(x), x.numel()); });
}

void sigmoid_backward(Tensor& dx, const Tensor& dout, const Tensor& out) {
    check_tensors("sigmoid_backward", {{"out", &out}, {"dout", &dout}, {"dx", &dx}});
    check_same_shape("sigmoid_backward", out, "out", {{"dout", &dout}, {"dx", &dx}});
#if LINARCH_HAS_CUDA
    if (out.device() == Device::cuda) return cuda::sigmoid_backward(f32(dx), f32(dout), f32(out), out.numel());
#endif
    dispatch(out, [&]<typename T>(T) { cpu::sigmoid_backward(ptr<T>(dx), ptr<T>(dout), ptr<T>(out), out.numel()); });
}

}  // namespace linarch::ops
