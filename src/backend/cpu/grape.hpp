// CPU GRAPE-M (ops/grape.hpp): the float64 matrix exponential and the adjoint of its Fréchet
// derivative, and the kernels that apply G(n) = exp(n·L) to the rows of x and take it back. Raw
// pointers to contiguous row-major arrays; shapes were checked by ops/grape.cpp.
//     x, out, dout, dx [B,T,H,D]   positions [T] or null (0..T−1)
#pragma once
#include <cstdint>
#include <map>
#include <vector>

#include "core/tensor.hpp"
#include "ops/grape.hpp"

namespace linarch::cpu {

// out[n,n] = exp(X), X [n,n] (float64)
void matrix_exponential(double* out, const double* X, int64_t n);
// out[n,n] = L_exp(Xᵀ, G): the adjoint of the Fréchet derivative of exp at X applied to G, i.e. the
// gradient with respect to X of ⟨G, exp(X)⟩ (Higham, Functions of Matrices, 2008, §3.2 and §10.6).
void matrix_exponential_adjoint(double* out, const double* X, const double* G, int64_t n);

// The powers exp(q_j L_r) of a mixture's generator at the distinct positions q_0 < q_1 < … of one call,
// formed in float64 as the chain exp(q_j L_r) = exp(q_{j−1} L_r) · exp((q_j − q_{j−1}) L_r) whose first link is
// a direct exponential. A whole sequence (steps of 1, which reuse exp(L_r)) costs one r×r product per
// position, O(T r³), and its backward is the reverse recurrence; a decode step at p is one exponential.
// Accuracy: each float64 product adds at most ~r·u relative error (u = 1.1e−16), so 16k chained positions
// at r = 32 drift by ≤ ~6e−11 (about √T·√r·u ≈ 8e−14 as rounding errors add up at random), far below f32
// rounding and comparable with the direct exp(p L_r), whose own conditioning grows like p‖L_r‖. Memory:
// m·r² doubles (8 MB at T = 4096, r = 16). Host math, shared by the CPU kernels and the CUDA path.
struct SubspacePowers {
    std::vector<int64_t> distinct;                 // q_j, ascending
    std::vector<int64_t> index_of_token;           // [T]: j of positions[t]
    Tensor powers;                                 // [m·r·r] f64 on the CPU: exp(q_j L_r)
    std::map<int64_t, std::vector<double>> steps;  // gap g → exp(g L_r)

    // positions [T] or null (0..T−1)
    SubspacePowers(const int64_t* positions, int64_t seq_len, const ops::GrapeRotation& rotation);
    double* power(size_t j, int64_t r) { return powers.data<double>() + j * size_t(r * r); }
    const double* power(size_t j, int64_t r) const { return powers.data<double>() + j * size_t(r * r); }
};
// K_j = exp(q_j L_r) − I [m·r·r] (or each K_jᵀ), formed in float64 and rounded once to dtype (a CPU tensor).
Tensor power_offsets(const SubspacePowers& chain, int64_t r, bool transposed, DType dtype);
// dgenerator [r,r] += ∂loss/∂L_r given dpowers [m,r,r] = ∂loss/∂exp(q_j L_r) (consumed).
void subspace_powers_backward(double* dgenerator, double* dpowers, const SubspacePowers& chain,
                              const ops::GrapeRotation& rotation);

struct GrapeDims {
    int64_t batch, seq_len, heads, head_dim;
};

// out = G(positions[t]) x   (out may equal x)
template <typename T>
void grape_forward(T* out, const T* x, const int64_t* positions, const ops::GrapeRotation& rotation,
                   const GrapeDims& dims);
// dx += G(positions[t])ᵀ dout; the float64 gradients with respect to the derived matrices:
//   dbasis      commuting: ∂loss/∂Q [D,D];  mixture: ∂loss/∂E [D,r]
//   dgenerator  commuting: ∂loss/∂ω [D/2];  mixture: ∂loss/∂L_r [r,r]
// All add into their arrays; any may be null.
template <typename T>
void grape_backward(T* dx, double* dbasis, double* dgenerator, const T* dout, const T* x, const int64_t* positions,
                    const ops::GrapeRotation& rotation, const GrapeDims& dims);

}  // namespace linarch::cpu
