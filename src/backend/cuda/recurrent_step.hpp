// CUDA recurrent (decode) step of the linear-attention family (mixers.md §1-6): one token for every
// sequence and head, the fp32 state updated in place. Developed, with its variants and figures, in
// dev/cuda/recurrent_step.cu (notes in dev/cuda/NOTES_recurrent_step.md).
//     additive:   S ← Diag(exp(g)) S + kᵀ v             g: none, per head [N,H], per key channel [N,H,Dk]
//     delta rule: S ← exp(g) (I − β kᵀ k) S + β kᵀ v     g: none or per head [N,H]; β [N,H]
//     o = scale · q S   (the updated S)
// Device pointers to contiguous arrays; ops/recurrent_step.cpp checks the shapes:
//     q,k [N,H,Dk]  v,o [N,H,Dv] (bf16, or fp32)  log_gate, beta fp32  state [N,H,Dk,Dv] fp32
// Memory-bound: the state is read once and written once (closed form in the .cu), everything in fp32.
#pragma once
#include <cstdint>

namespace linarch::cuda {

enum class StepUpdate { additive, delta };
enum class StepDecay { none, scalar, vector };  // vector: per key channel (GLA); additive only

struct RecurrentStep {
    const void* q;
    const void* k;
    const void* v;
    const float* log_gate;  // [N,H] (scalar) or [N,H,Dk] (vector); null without decay
    const float* beta;      // [N,H]; delta rule only
    float* state;           // [N,H,Dk,Dv], read and written in place
    void* o;
    int64_t num_seqs, heads, key_dim, value_dim;
    bool fp32_io;           // q, k, v, o in fp32 instead of bf16
    StepUpdate update;
    StepDecay decay;
    double scale;
};

// Head sizes the kernel is built for: Dk 64 or 128, Dv a multiple of 16.
bool recurrent_step_supports(int64_t key_dim, int64_t value_dim);
// Enqueues the step on the calling thread's default stream (cudaStreamPerThread, as the allocator): one
// kernel launch, no allocation, no synchronisation.
void recurrent_step(const RecurrentStep& args);

}  // namespace linarch::cuda
