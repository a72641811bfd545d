// One recurrent (decode) step of the linear-attention family: one new token for each of N sequences,
// every head, the state updated in place. The T = 1 case of the recurrent forms in ops/linear_attention.hpp
// (additive, mixers.md §1-4) and ops/delta_rule.hpp (§6), without the T axis:
//     additive:   S ← Diag(exp(g)) S + kᵀ v,               o = scale · q S
//     delta rule: S ← exp(g) (I − β kᵀ k) S + β kᵀ v,      o = scale · q S      (S the updated state)
// q,k [N,H,Dk]  v,o [N,H,Dv]  state [N,H,Dk,Dv]  beta [N,H]; log_gate ≤ 0 undefined (no decay), [N,H]
// (per head) or, additive only, [N,H,Dk] (per key channel, GLA).
// CPU: every tensor of one dtype, f32 or f64. CUDA (q on the GPU): q, k, v, o bf16 or fp32, the state,
// log_gate and beta fp32; Dk 64 or 128, Dv a multiple of 16; one kernel launch on the calling thread's
// default stream, no allocation, no synchronisation (the gate's sign and β's range are not checked there:
// that would copy them to the host every step).
#pragma once
#include "core/tensor.hpp"

namespace linarch::ops {

// Whether the step ops take heads of this size on this device: any on the CPU; on CUDA, what the kernel is
// built for.
bool recurrent_step_takes(Device device, int64_t key_dim, int64_t value_dim);

void linear_attention_step(Tensor& o, Tensor& state, const Tensor& q, const Tensor& k, const Tensor& v,
                           const Tensor& log_gate, double scale);
void delta_rule_step(Tensor& o, Tensor& state, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta,
                     const Tensor& log_gate, double scale);

}  // namespace linarch::ops
