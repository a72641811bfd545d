// Multiplicative GRAPE (GRAPE-M, mixers.md §7.1) beyond RoPE: positions act on q and k through a
// learned one-parameter subgroup G(n) = exp(n·L) of SO(D), shared by all heads of a layer. q and k at
// absolute position n are both mapped x ↦ G(n) x; since G(n) is orthogonal and G(m+n) = G(m) G(n),
//     ⟨G(i) q, G(j) k⟩ = ⟨q, G(j−i) k⟩      (the exact relative law)
// and a key rotated once on arrival can be cached (decode applies the same op to one token at p).
//
// Both kinds take an orthogonal basis Q = exp(A − Aᵀ) from an unconstrained basis_generator A [D,D]
// (A = 0 gives Q = I):
//  - commuting ("learned commuting subspaces"): L = Q (⊕_i ω_i J) Qᵀ, J = [[0,−1],[1,0]] acting on the
//    basis planes (Q e_2i, Q e_2i+1) — RoPE's interleaved pairing — with ω_i = exp(log_frequencies[i]).
//    G(n) x = Q R(n ω) Qᵀ x, O(D²) per row. With A = 0 and grape_initial_log_frequencies this is RoPE.
//  - mixture (low-rank non-commuting): L = E L_r Eᵀ with E = Q[:, :r] (orthonormal columns) and
//    L_r = W − Wᵀ ∈ so(r), W = mixing [r,r]: a mixture of the r(r−1)/2 plane generators of span E,
//    which need not commute. G(n) = I + E (exp(n L_r) − I) Eᵀ, O(rD) per row; the identity on the
//    orthogonal complement of span E. With A = 0 and grape_initial_mixing it is RoPE on the first r
//    coordinates (frequencies of a head of size r) and the identity on the rest ("partial RoPE").
// Every L ∈ so(D) is Q (⊕ ω_i J) Qᵀ for some orthogonal Q (the real spectral theorem), so the commuting
// kind already reaches every one-parameter subgroup of SO(D) (ω_i > 0 aside); a single G(n) = exp(n·L)
// built from non-commuting plane generators is still a commuting-plane rotation in some basis. The
// mixture is therefore the cheaper rank-r restriction (O(rD) per row, no D×D basis product), learned
// through plane couplings instead of a spectrum.
// Parameters share the dtype of x (f32 or f64); the matrix functions (exp, its Fréchet derivative,
// the powers exp(n L_r)) and the angles n·ω run in float64, so f32 positions of 10⁵ keep their digits.
// On the GPU (f32 x and parameters there): the same steps, the basis products through cuBLASLt and the
// row moves in kernels (backend/cuda/grape.hpp); the rotation is still prepared on the host, and the
// mixture's powers and every parameter gradient's matrix functions stay there (O(D³ + T r³) float64).
// Conventions as in ops/dense.hpp (backward adds into grads, null gradient pointers skip work).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "core/tensor.hpp"

namespace linarch::ops {

enum class GrapeKind { commuting, mixture };

// The float64 matrices that a forward or backward needs, derived from the parameters once per
// parameter update (a layer that rotates both q and k prepares once; inference prepares at load):
// preparing costs one D×D exponential, O(D³). Each mixture call then builds exp(n L_r) for its own
// positions (O(T r³) for a sequence, one r×r exponential for a decode step). Row-major.
struct GrapeRotation {
    GrapeKind kind = GrapeKind::commuting;
    DType dtype = DType::f32;         // of the parameters; x, out and all gradients share it
    int64_t head_dim = 0;             // D
    int64_t rank = 0;                 // r for a mixture, D for commuting planes
    std::vector<double> skew;         // A − Aᵀ [D,D], kept for the backward through exp
    std::vector<double> basis;        // commuting: Q [D,D]; mixture: E = Q[:, :r] as [D,r]
    std::vector<double> frequencies;  // commuting: ω [D/2]
    std::vector<double> generator;    // mixture: L_r = W − Wᵀ [r,r]
    std::vector<double> step;         // mixture: exp(L_r) [r,r], one position's rotation of span E
};

// basis_generator A [D,D], log_frequencies [D/2]; D even.
GrapeRotation grape_prepare_commuting(const Tensor& basis_generator, const Tensor& log_frequencies);
// basis_generator A [D,D], mixing W [r,r]; r even, 2 ≤ r ≤ D.
GrapeRotation grape_prepare_mixture(const Tensor& basis_generator, const Tensor& mixing);

// out[B,T,H,D] = G(positions[t]) x; positions has length T, or is empty for 0..T−1; out may be x.
void grape_forward(Tensor& out, const Tensor& x, std::span<const int64_t> positions, const GrapeRotation& rotation);
// dx[B,T,H,D] += G(positions[t])ᵀ dout;   dbasis_generator [D,D] += ∂loss/∂A;
// dlog_frequencies [D/2] += ∂loss/∂log_frequencies (commuting only);  dmixing [r,r] += ∂loss/∂W
// (mixture only). x is the forward's input (the parameter gradients need it); any pointer may be null.
void grape_backward(Tensor* dx, Tensor* dbasis_generator, Tensor* dlog_frequencies, Tensor* dmixing,
                    const Tensor& dout, const Tensor& x, std::span<const int64_t> positions,
                    const GrapeRotation& rotation);

// log θ_i = −(2i/D) · log(base), i = 0..D/2−1: RoPE's frequencies (ops/rotary.hpp), in log space.
Tensor grape_initial_log_frequencies(int64_t head_dim, double base = 10000.0, DType dtype = DType::f32);
// W [r,r] with W[2i+1, 2i] = base^(−2i/r) and zeros elsewhere, so L_r = ⊕_i θ_i J: the r/2 planes
// start at RoPE's log-uniform band for a head of size r (1 down to ~1/base, mid frequencies included)
// and the other r(r−1)/2 − r/2 couplings start at 0, free to grow under training.
Tensor grape_initial_mixing(int64_t rank, double base = 10000.0, DType dtype = DType::f32);

}  // namespace linarch::ops
