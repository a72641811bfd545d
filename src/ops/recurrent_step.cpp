// Recurrent step ops: check every tensor (device, dtype, contiguity, shape), then run the step: on the
// CPU as the recurrent forward of ops/linear_attention.hpp or ops/delta_rule.hpp with T = 1, on CUDA
// tensors as one kernel launch (backend/cuda/recurrent_step.hpp). The checks allocate nothing (shapes
// are built only for messages): this runs once per layer and token while decoding.
#include "ops/recurrent_step.hpp"

#include <algorithm>
#include <initializer_list>

#include "ops/delta_rule.hpp"
#include "ops/linear_attention.hpp"
#if LINARCH_HAS_CUDA
#include "backend/cuda/recurrent_step.hpp"
#endif

namespace linarch::ops {
namespace {

struct StepShape {
    int64_t N, H, Dk, Dv;
    Device device;
    DType io_dtype;     // q, k, v, o
    DType state_dtype;  // state, log_gate, beta: the io dtype on the CPU, fp32 on CUDA
};

bool has_shape(const Tensor& t, std::initializer_list<int64_t> dims) {
    return t.dim() == int64_t(dims.size()) && std::equal(dims.begin(), dims.end(), t.shape().begin());
}

// Defined, on q's device, contiguous, of the given dtype and shape.
void check_step_operand(const char* op, const char* name, const Tensor& t, Device device, DType dtype,
                        std::initializer_list<int64_t> dims) {
    LINARCH_CHECK(t.defined(), "{}: {}: tensor is not defined", op, name);
    LINARCH_CHECK(t.device() == device, "{}: {}: tensor is on {}, expected {} like q", op, name,
                  device_name(t.device()), device_name(device));
    LINARCH_CHECK(t.dtype() == dtype, "{}: {}: expected dtype {} on {}, got {}", op, name, dtype_name(dtype),
                  device_name(device), dtype_name(t.dtype()));
    LINARCH_CHECK(t.is_contiguous(), "{}: {}: expected a contiguous tensor", op, name);
    LINARCH_CHECK(has_shape(t, dims), "{}: {}: expected shape {}, got {}", op, name, shape_string(Shape(dims)),
                  shape_string(t.shape()));
}

// q, k, v, o and the state.
StepShape check_step(const char* op, const Tensor& o, const Tensor& state, const Tensor& q, const Tensor& k,
                     const Tensor& v) {
    LINARCH_CHECK(q.defined(), "{}: q: tensor is not defined", op);
    LINARCH_CHECK(q.dim() == 3 && q.numel() > 0, "{}: q: expected a non-empty [N, H, Dk] tensor, got shape {}", op,
                  shape_string(q.shape()));
    StepShape d{q.size(0), q.size(1), q.size(2), 0, q.device(), q.dtype(), q.dtype()};
    if (d.device == Device::cpu) {
        LINARCH_CHECK(d.io_dtype == DType::f32 || d.io_dtype == DType::f64,
                      "{}: q: expected dtype F32 or F64 on cpu, got {}", op, dtype_name(d.io_dtype));
    } else {
        LINARCH_CHECK(d.io_dtype == DType::bf16 || d.io_dtype == DType::f32,
                      "{}: q: expected dtype BF16 or F32 on cuda, got {}", op, dtype_name(d.io_dtype));
        d.state_dtype = DType::f32;  // accumulated in fp32 across steps
    }
    check_step_operand(op, "q", q, d.device, d.io_dtype, {d.N, d.H, d.Dk});
    check_step_operand(op, "k", k, d.device, d.io_dtype, {d.N, d.H, d.Dk});
    LINARCH_CHECK(v.defined() && v.dim() == 3 && v.size(2) > 0, "{}: v: expected shape [{}, {}, Dv], got {}", op, d.N,
                  d.H, v.defined() ? shape_string(v.shape()) : "undefined");
    d.Dv = v.size(2);
    check_step_operand(op, "v", v, d.device, d.io_dtype, {d.N, d.H, d.Dv});
    check_step_operand(op, "o", o, d.device, d.io_dtype, {d.N, d.H, d.Dv});
    check_step_operand(op, "state", state, d.device, d.state_dtype, {d.N, d.H, d.Dk, d.Dv});
    return d;
}

// An [N,H] log gate, or (vector_allowed) an [N,H,Dk] one; true for the per-key-channel gate.
bool check_log_gate(const char* op, const Tensor& g, const StepShape& d, bool vector_allowed) {
    const bool vector = vector_allowed && g.dim() == 3;
    if (vector) check_step_operand(op, "log_gate", g, d.device, d.state_dtype, {d.N, d.H, d.Dk});
    else if (vector_allowed && g.dim() != 2)
        fail("{}: log_gate: expected shape [{}, {}] or [{}, {}, {}], got {}", op, d.N, d.H, d.N, d.H, d.Dk,
             shape_string(g.shape()));
    else check_step_operand(op, "log_gate", g, d.device, d.state_dtype, {d.N, d.H});
    return vector;
}

#if LINARCH_HAS_CUDA
void run_cuda(const char* op, Tensor& o, Tensor& state, const Tensor& q, const Tensor& k, const Tensor& v,
              const Tensor* beta, const Tensor& log_gate, bool vector_gate, double scale, const StepShape& d) {
    LINARCH_CHECK(cuda::recurrent_step_supports(d.Dk, d.Dv),
                  "{}: the CUDA kernel is built for Dk 64 or 128 and Dv a multiple of 16, got Dk={}, Dv={}", op, d.Dk,
                  d.Dv);
    const cuda::StepDecay decay = !log_gate.defined() ? cuda::StepDecay::none
                                  : vector_gate       ? cuda::StepDecay::vector
                                                      : cuda::StepDecay::scalar;
    cuda::recurrent_step({q.raw_data(), k.raw_data(), v.raw_data(),
                          log_gate.defined() ? log_gate.data<float>() : nullptr,
                          beta ? beta->data<float>() : nullptr, state.data<float>(), o.raw_data(), d.N, d.H, d.Dk,
                          d.Dv, d.io_dtype == DType::f32,
                          beta ? cuda::StepUpdate::delta : cuda::StepUpdate::additive, decay, scale});
}
#endif

}  // namespace

bool recurrent_step_takes(Device device, int64_t key_dim, int64_t value_dim) {
    if (device == Device::cpu) return true;
#if LINARCH_HAS_CUDA
    return cuda::recurrent_step_supports(key_dim, value_dim);
#else
    (void)key_dim, (void)value_dim;
    return false;
#endif
}

void linear_attention_step(Tensor& o, Tensor& state, const Tensor& q, const Tensor& k, const Tensor& v,
                           const Tensor& log_gate, double scale) {
    const char* op = "linear_attention_step";
    const StepShape d = check_step(op, o, state, q, k, v);
    const bool vector_gate = log_gate.defined() && check_log_gate(op, log_gate, d, true);
#if LINARCH_HAS_CUDA
    if (d.device == Device::cuda) return run_cuda(op, o, state, q, k, v, nullptr, log_gate, vector_gate, scale, d);
#endif
    // The recurrent forward over views with T = 1. The state is both its initial and its final state:
    // it copies each head's state in before the step and out after it.
    LinearAttentionArgs args;
    args.scale = scale;
    if (log_gate.defined())
        args.log_gate = vector_gate ? log_gate.view({d.N, 1, d.H, d.Dk}) : log_gate.view({d.N, 1, d.H});
    Tensor o_tokens = o.view({d.N, 1, d.H, d.Dv});
    linear_attention_recurrent_forward(o_tokens, &state, q.view({d.N, 1, d.H, d.Dk}), k.view({d.N, 1, d.H, d.Dk}),
                                       v.view({d.N, 1, d.H, d.Dv}), &state, args);
}

void delta_rule_step(Tensor& o, Tensor& state, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta,
                     const Tensor& log_gate, double scale) {
    const char* op = "delta_rule_step";
    const StepShape d = check_step(op, o, state, q, k, v);
    check_step_operand(op, "beta", beta, d.device, d.state_dtype, {d.N, d.H});
    if (log_gate.defined()) check_log_gate(op, log_gate, d, false);
#if LINARCH_HAS_CUDA
    if (d.device == Device::cuda) return run_cuda(op, o, state, q, k, v, &beta, log_gate, false, scale, d);
#endif
    // As above; the delta rule's recurrent forward also copies each head's state in and out.
    DeltaRuleArgs args;
    args.scale = scale;
    if (log_gate.defined()) args.log_gate = log_gate.view({d.N, 1, d.H});
    Tensor o_tokens = o.view({d.N, 1, d.H, d.Dv});
    delta_rule_recurrent_forward(o_tokens, &state, q.view({d.N, 1, d.H, d.Dk}), k.view({d.N, 1, d.H, d.Dk}),
                                 v.view({d.N, 1, d.H, d.Dv}), beta.view({d.N, 1, d.H}), &state, args);
}

}  // namespace linarch::ops
