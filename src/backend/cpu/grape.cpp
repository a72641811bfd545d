// CPU GRAPE-M. The basis products (Qᵀx and Q v, or Eᵀx and E w) are GEMMs over all B·T·H rows
// (OpenBLAS); between them the rows of each token are moved by its position: the commuting kind turns
// D/2 planes by angles n·ω formed in float64, the mixture multiplies by exp(n L_r) − I taken from a
// float64 chain of powers (SubspacePowers). OpenMP splits the tokens.
#include "backend/cpu/grape.hpp"

#include <cblas.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <map>
#include <numeric>
#include <vector>

#include "core/error.hpp"
#include "core/tensor.hpp"

namespace linarch::cpu {
namespace {

// Degree of the Taylor polynomial of exp after scaling to ‖X‖₁ ≤ 1: the remainder Σ_{k>18} 1/k! ≈ 8e−18
// lies below float64's unit roundoff, so what is left is rounding, amplified by the squarings.
constexpr int kTaylorDegree = 18;

blasint blas_size(int64_t value) {
    LINARCH_CHECK(value <= INT_MAX, "matrix dimension {} is too large for this OpenBLAS (32-bit indices)", value);
    return static_cast<blasint>(value);
}

// Row-major c[m,n] = op(a)·op(b) + beta·c, where op(a) is [m,k] and op(b) is [k,n] (stored
// transposed where asked).
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, const float* b, float beta,
          float* c) {
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                blas_size(m), blas_size(n), blas_size(k), 1.0f, a, blas_size(trans_a ? m : k), b,
                blas_size(trans_b ? k : n), beta, c, blas_size(n));
}
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const double* a, const double* b,
          double beta, double* c) {
    cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                blas_size(m), blas_size(n), blas_size(k), 1.0, a, blas_size(trans_a ? m : k), b,
                blas_size(trans_b ? k : n), beta, c, blas_size(n));
}

// max_j Σ_i |X[i,j]|
double norm_1(const double* X, int64_t n) {
    std::vector<double> columns(size_t(n), 0.0);
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) columns[size_t(j)] += std::abs(X[i * n + j]);
    return *std::max_element(columns.begin(), columns.end());
}

// A parallel region costs microseconds to open: tiny problems stay on the calling thread.
inline bool worth_threads(const GrapeDims& d) {
    return d.seq_len > 1 && d.batch * d.seq_len * d.heads * d.head_dim >= (int64_t(1) << 15);
}

inline double position_of(const int64_t* positions, int64_t t) { return positions ? double(positions[t]) : double(t); }

// Uninitialised scratch of `count` elements from the CPU pool (core/allocator.hpp), held by a tensor: a
// training step reuses the previous step's blocks instead of faulting in fresh pages.
template <typename T> Tensor scratch(int64_t count) { return Tensor::empty({count}, dtype_of<T>()); }

template <typename T> std::vector<T> rounded(const std::vector<double>& values) {
    return std::vector<T>(values.begin(), values.end());
}

// ---- commuting planes: G(n) = Q R(n ω) Qᵀ -------------------------------------------------------

// coords[B,T,H,D] = R(sign · n ω) coords on the planes (2i, 2i+1), in place.
template <typename T>
void rotate_planes(T* coords, const int64_t* positions, const double* frequencies, const GrapeDims& d, double sign) {
    const int64_t pairs = d.head_dim / 2, row = d.heads * d.head_dim;
#pragma omp parallel if (worth_threads(d))
    {
        std::vector<T> cosines(static_cast<size_t>(pairs)), sines(static_cast<size_t>(pairs));
#pragma omp for schedule(static)
        for (int64_t t = 0; t < d.seq_len; ++t) {
            const double position = position_of(positions, t);
            for (int64_t i = 0; i < pairs; ++i) {
                const double angle = sign * position * frequencies[i];
                cosines[size_t(i)] = T(std::cos(angle));
                sines[size_t(i)] = T(std::sin(angle));
            }
            for (int64_t b = 0; b < d.batch; ++b) {
                T* rows = coords + (b * d.seq_len + t) * row;
                for (int64_t n = 0; n < d.heads * pairs; ++n) {
                    const T c = cosines[size_t(n % pairs)], s = sines[size_t(n % pairs)];
                    const T v0 = rows[2 * n], v1 = rows[2 * n + 1];
                    rows[2 * n] = v0 * c - v1 * s;
                    rows[2 * n + 1] = v0 * s + v1 * c;
                }
            }
        }
    }
}

// dfrequencies[i] += Σ_rows n · (dv_2i+1 v_2i − dv_2i v_2i+1), since ∂v/∂φ = J v on each plane.
// Sums per token first (in parallel), then over tokens in order: the result does not depend on the
// thread count.
template <typename T>
void frequency_gradient(double* dfrequencies, const T* rotated, const T* drotated, const int64_t* positions,
                        const GrapeDims& d) {
    const int64_t pairs = d.head_dim / 2, row = d.heads * d.head_dim;
    std::vector<double> per_token(size_t(d.seq_len * pairs), 0.0);
#pragma omp parallel for schedule(static) if (worth_threads(d))
    for (int64_t t = 0; t < d.seq_len; ++t) {
        double* sums = per_token.data() + t * pairs;
        for (int64_t b = 0; b < d.batch; ++b) {
            const int64_t offset = (b * d.seq_len + t) * row;
            for (int64_t n = 0; n < d.heads * pairs; ++n) {
                const int64_t at = offset + 2 * n;
                sums[n % pairs] += double(drotated[at + 1]) * double(rotated[at]) -
                                   double(drotated[at]) * double(rotated[at + 1]);
            }
        }
    }
    for (int64_t t = 0; t < d.seq_len; ++t)
        for (int64_t i = 0; i < pairs; ++i)
            dfrequencies[i] += position_of(positions, t) * per_token[size_t(t * pairs + i)];
}

template <typename T>
void commuting_forward(T* out, const T* x, const int64_t* positions, const ops::GrapeRotation& rotation,
                       const GrapeDims& d) {
    const int64_t D = d.head_dim, rows = d.batch * d.seq_len * d.heads;
    const std::vector<T> basis = rounded<T>(rotation.basis);
    Tensor coords_buffer = scratch<T>(rows * D);
    T* coords = coords_buffer.data<T>();
    gemm(false, false, rows, D, D, x, basis.data(), T(0), coords);          // u = Qᵀ x  (U = X Q)
    rotate_planes(coords, positions, rotation.frequencies.data(), d, 1.0);  // v = R(n ω) u
    gemm(false, true, rows, D, D, coords, basis.data(), T(0), out);         // y = Q v  (Y = V Qᵀ)
}

template <typename T>
void commuting_backward(T* dx, double* dbasis, double* dfrequencies, const T* dout, const T* x,
                        const int64_t* positions, const ops::GrapeRotation& rotation, const GrapeDims& d) {
    const int64_t D = d.head_dim, rows = d.batch * d.seq_len * d.heads;
    const std::vector<T> basis = rounded<T>(rotation.basis);
    const double* frequencies = rotation.frequencies.data();
    Tensor dcoords_buffer = scratch<T>(rows * D), coords_buffer;
    T* dcoords = dcoords_buffer.data<T>();
    std::vector<T> dQ;
    gemm(false, false, rows, D, D, dout, basis.data(), T(0), dcoords);  // dv = Qᵀ dy
    if (dbasis || dfrequencies) {
        coords_buffer = scratch<T>(rows * D);
        gemm(false, false, rows, D, D, x, basis.data(), T(0), coords_buffer.data<T>());
        rotate_planes(coords_buffer.data<T>(), positions, frequencies, d, 1.0);  // v, as in the forward
        if (dfrequencies) frequency_gradient(dfrequencies, coords_buffer.data<T>(), dcoords, positions, d);
    }
    if (dbasis) {
        dQ.resize(size_t(D * D));
        gemm(true, false, D, D, rows, dout, coords_buffer.data<T>(), T(0), dQ.data());  // y = Q v:  Q̄ = dYᵀ V
    }
    rotate_planes(dcoords, positions, frequencies, d, -1.0);  // du = R(n ω)ᵀ dv
    if (dbasis) {
        gemm(true, false, D, D, rows, x, dcoords, T(1), dQ.data());  // u = Qᵀ x:  Q̄ += Xᵀ dU
        for (int64_t i = 0; i < D * D; ++i) dbasis[i] += double(dQ[size_t(i)]);
    }
    if (dx) gemm(false, true, rows, D, D, dcoords, basis.data(), T(1), dx);  // dx += Q du
}

// ---- low-rank mixture: G(n) = I + E (exp(n L_r) − I) Eᵀ -------------------------------------------

// exp(c · L_r) [r,r]
std::vector<double> exponential_of_multiple(const std::vector<double>& generator, double c, int64_t r) {
    std::vector<double> scaled(generator.size()), result(generator.size());
    for (size_t i = 0; i < generator.size(); ++i) scaled[i] = c * generator[i];
    matrix_exponential(result.data(), scaled.data(), r);
    return result;
}

// dgenerator[r,r] += c · L_exp(c L_rᵀ, dexp): the gradient through exp(c L_r), which sees L_r as c·L_r.
void add_exponential_gradient(double* dgenerator, double c, const double* dexp, const std::vector<double>& generator,
                              int64_t r) {
    if (c == 0) return;
    std::vector<double> scaled(generator.size()), adjoint(generator.size());
    for (size_t i = 0; i < generator.size(); ++i) scaled[i] = c * generator[i];
    matrix_exponential_adjoint(adjoint.data(), scaled.data(), dexp, r);
    for (size_t i = 0; i < generator.size(); ++i) dgenerator[i] += c * adjoint[i];
}

// dst[row] = src[row] · M_j (row vectors [r]) for the rows of each token t, M_j = matrices[index_of_token[t]]
// [r,r]; the row times a matrix runs as axpys over M_j's contiguous rows.
template <typename T>
void multiply_rows(T* dst, const T* src, const T* matrices, const std::vector<int64_t>& index_of_token,
                   const GrapeDims& d, int64_t r) {
#pragma omp parallel for schedule(static) if (worth_threads(d))
    for (int64_t t = 0; t < d.seq_len; ++t) {
        const T* M = matrices + index_of_token[size_t(t)] * r * r;
        for (int64_t b = 0; b < d.batch; ++b)
            for (int64_t h = 0; h < d.heads; ++h) {
                const int64_t row = ((b * d.seq_len + t) * d.heads + h) * r;
                T* out = dst + row;
                std::fill(out, out + r, T(0));
                for (int64_t c = 0; c < r; ++c) {
                    const T value = src[row + c];
                    for (int64_t a = 0; a < r; ++a) out[a] += value * M[c * r + a];
                }
            }
    }
}

template <typename T>
void mixture_forward(T* out, const T* x, const int64_t* positions, const ops::GrapeRotation& rotation,
                     const GrapeDims& d) {
    const int64_t D = d.head_dim, r = rotation.rank, rows = d.batch * d.seq_len * d.heads;
    const SubspacePowers chain(positions, d.seq_len, rotation);
    const std::vector<T> basis = rounded<T>(rotation.basis);
    const Tensor offsets_transposed = power_offsets(chain, r, true, dtype_of<T>());
    Tensor coords_buffer = scratch<T>(rows * r), moved_buffer = scratch<T>(rows * r);
    T *coords = coords_buffer.data<T>(), *moved = moved_buffer.data<T>();
    gemm(false, false, rows, r, D, x, basis.data(), T(0), coords);                                // u = Eᵀ x
    multiply_rows(moved, coords, offsets_transposed.data<T>(), chain.index_of_token, d, r);  // w = K u
    if (out != x) std::copy(x, x + rows * D, out);
    gemm(false, true, rows, D, r, moved, basis.data(), T(1), out);  // y = x + E w
}

template <typename T>
void mixture_backward(T* dx, double* dbasis, double* dgenerator, const T* dout, const T* x, const int64_t* positions,
                      const ops::GrapeRotation& rotation, const GrapeDims& d) {
    const int64_t D = d.head_dim, r = rotation.rank, rows = d.batch * d.seq_len * d.heads;
    const SubspacePowers chain(positions, d.seq_len, rotation);
    const std::vector<T> basis = rounded<T>(rotation.basis);
    Tensor dmoved_buffer = scratch<T>(rows * r), dcoords_buffer = scratch<T>(rows * r);
    T *dmoved = dmoved_buffer.data<T>(), *dcoords = dcoords_buffer.data<T>();
    const Tensor offsets = power_offsets(chain, r, false, dtype_of<T>());
    gemm(false, false, rows, r, D, dout, basis.data(), T(0), dmoved);              // dw = Eᵀ dy
    multiply_rows(dcoords, dmoved, offsets.data<T>(), chain.index_of_token, d, r);  // du = Kᵀ dw
    if (dx) {
        for (int64_t i = 0; i < rows * D; ++i) dx[i] += dout[i];
        gemm(false, true, rows, D, r, dcoords, basis.data(), T(1), dx);  // dx += dy + E du
    }
    if (!dbasis && !dgenerator) return;
    Tensor coords_buffer = scratch<T>(rows * r);
    T* coords = coords_buffer.data<T>();
    gemm(false, false, rows, r, D, x, basis.data(), T(0), coords);  // u, as in the forward
    if (dbasis) {
        const Tensor offsets_transposed = power_offsets(chain, r, true, dtype_of<T>());
        Tensor moved = scratch<T>(rows * r);
        std::vector<T> dE(size_t(D * r));
        multiply_rows(moved.data<T>(), coords, offsets_transposed.data<T>(), chain.index_of_token, d, r);  // w
        gemm(true, false, D, r, rows, dout, moved.data<T>(), T(0), dE.data());  // y = x + E w:  Ē = dYᵀ W
        gemm(true, false, D, r, rows, x, dcoords, T(1), dE.data());             // u = Eᵀ x:  Ē += Xᵀ dU
        for (int64_t i = 0; i < D * r; ++i) dbasis[i] += double(dE[size_t(i)]);
    }
    if (dgenerator) {
        // ∂loss/∂exp(q_j L_r) = Σ over the rows at q_j of dw uᵀ. Tokens are grouped by distinct position so
        // that each group has one writer.
        const size_t m = chain.distinct.size();
        std::vector<int64_t> tokens(size_t(d.seq_len)), group_start(m + 1, 0);
        for (int64_t t = 0; t < d.seq_len; ++t) ++group_start[size_t(chain.index_of_token[size_t(t)]) + 1];
        std::partial_sum(group_start.begin(), group_start.end(), group_start.begin());
        std::vector<int64_t> filled(group_start.begin(), group_start.end() - 1);
        for (int64_t t = 0; t < d.seq_len; ++t) tokens[size_t(filled[size_t(chain.index_of_token[size_t(t)])]++)] = t;
        Tensor dpowers_buffer = scratch<double>(chain.powers.numel());
        double* dpowers = dpowers_buffer.data<double>();
        std::fill(dpowers, dpowers + chain.powers.numel(), 0.0);
#pragma omp parallel for schedule(static) if (worth_threads(d))
        for (size_t j = 0; j < m; ++j) {
            double* dpower = dpowers + j * size_t(r * r);
            for (int64_t n = group_start[j]; n < group_start[j + 1]; ++n)
                for (int64_t b = 0; b < d.batch; ++b)
                    for (int64_t h = 0; h < d.heads; ++h) {
                        const int64_t row = ((b * d.seq_len + tokens[size_t(n)]) * d.heads + h) * r;
                        for (int64_t a = 0; a < r; ++a)
                            for (int64_t c = 0; c < r; ++c)
                                dpower[a * r + c] += double(dmoved[row + a]) * double(coords[row + c]);
                    }
        }
        subspace_powers_backward(dgenerator, dpowers, chain, rotation);
    }
}

}  // namespace

SubspacePowers::SubspacePowers(const int64_t* positions, int64_t seq_len, const ops::GrapeRotation& rotation) {
    const int64_t r = rotation.rank;
    for (int64_t t = 0; t < seq_len; ++t) distinct.push_back(positions ? positions[t] : t);
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    for (int64_t t = 0; t < seq_len; ++t) {
        const int64_t position = positions ? positions[t] : t;
        index_of_token.push_back(std::lower_bound(distinct.begin(), distinct.end(), position) - distinct.begin());
    }
    powers = scratch<double>(int64_t(distinct.size()) * r * r);
    const std::vector<double> first = exponential_of_multiple(rotation.generator, double(distinct[0]), r);
    std::copy(first.begin(), first.end(), power(0, r));
    for (size_t j = 1; j < distinct.size(); ++j) {
        const int64_t gap = distinct[j] - distinct[j - 1];
        auto step = steps.find(gap);
        if (step == steps.end())
            step = steps
                       .emplace(gap, gap == 1 ? rotation.step
                                              : exponential_of_multiple(rotation.generator, double(gap), r))
                       .first;
        gemm(false, false, r, r, r, power(j - 1, r), step->second.data(), 0.0, power(j, r));
    }
}

Tensor power_offsets(const SubspacePowers& chain, int64_t r, bool transposed, DType dtype) {
    const double* powers = chain.powers.data<double>();
    std::vector<double> data(size_t(chain.powers.numel()));
    for (size_t j = 0; j < chain.distinct.size(); ++j)
        for (int64_t a = 0; a < r; ++a)
            for (int64_t c = 0; c < r; ++c) {
                const size_t at = j * size_t(r * r);
                data[at + size_t(transposed ? c * r + a : a * r + c)] = powers[at + size_t(a * r + c)] - (a == c ? 1.0 : 0.0);
            }
    return Tensor::from_vector({chain.powers.numel()}, data, dtype);
}

// dgenerator += ∂loss/∂L_r given dpowers[m,r,r] = ∂loss/∂exp(q_j L_r) (consumed): the chain's reverse
// recurrence P̄_{j−1} += P̄_j Sᵀ, S̄ += P_{j−1}ᵀ P̄_j in O(m r³), then one adjoint Fréchet derivative
// for the first power and one per distinct step.
void subspace_powers_backward(double* dgenerator, double* dpowers, const SubspacePowers& chain,
                              const ops::GrapeRotation& rotation) {
    const int64_t r = rotation.rank;
    std::map<int64_t, std::vector<double>> dsteps;
    for (size_t j = chain.distinct.size() - 1; j >= 1; --j) {
        const int64_t gap = chain.distinct[j] - chain.distinct[j - 1];
        std::vector<double>& dstep = dsteps[gap];
        dstep.resize(size_t(r * r), 0.0);
        double* dpower = dpowers + j * size_t(r * r);
        gemm(true, false, r, r, r, chain.power(j - 1, r), dpower, 1.0, dstep.data());
        gemm(false, true, r, r, r, dpower, chain.steps.at(gap).data(), 1.0, dpower - r * r);
    }
    add_exponential_gradient(dgenerator, double(chain.distinct[0]), dpowers, rotation.generator, r);
    for (const auto& [gap, dstep] : dsteps)
        add_exponential_gradient(dgenerator, double(gap), dstep.data(), rotation.generator, r);
}

void matrix_exponential(double* out, const double* X, int64_t n) {
    const double norm = norm_1(X, n);
    LINARCH_CHECK(std::isfinite(norm), "matrix_exponential: the {}x{} matrix has non-finite entries", n, n);
    // Scaling and squaring: exp(X) = exp(X / 2^s)^(2^s) with ‖X / 2^s‖₁ ≤ 1.
    const int squarings = norm > 1 ? int(std::ceil(std::log2(norm))) : 0;
    const double scale = std::ldexp(1.0, -squarings);
    std::vector<double> scaled(size_t(n * n)), product(size_t(n * n));
    for (int64_t i = 0; i < n * n; ++i) scaled[size_t(i)] = scale * X[i];
    // Horner: P ← I + (X/k) P for k = degree … 1 gives Σ_{k ≤ degree} X^k / k!.
    for (int64_t i = 0; i < n * n; ++i) out[i] = (i % (n + 1) == 0) ? 1.0 : 0.0;
    for (int k = kTaylorDegree; k >= 1; --k) {
        gemm(false, false, n, n, n, scaled.data(), out, 0.0, product.data());
        for (int64_t i = 0; i < n * n; ++i) out[i] = product[size_t(i)] / k + ((i % (n + 1) == 0) ? 1.0 : 0.0);
    }
    for (int s = 0; s < squarings; ++s) {
        gemm(false, false, n, n, n, out, out, 0.0, product.data());
        std::copy(product.begin(), product.end(), out);
    }
}

void matrix_exponential_adjoint(double* out, const double* X, const double* G, int64_t n) {
    // exp([[Xᵀ, G], [0, Xᵀ]]) = [[exp(Xᵀ), L_exp(Xᵀ, G)], [0, exp(Xᵀ)]] (Higham 2008, eq. 3.16 with
    // Theorem 3.6 for the adjoint). L is linear in G, so G is scaled to the size of X first: a large
    // gradient would otherwise only add squarings, and their rounding.
    const double g_norm = norm_1(G, n);
    if (g_norm == 0) {
        std::fill(out, out + n * n, 0.0);
        return;
    }
    const double g_scale = std::max(norm_1(X, n), 1.0) / g_norm;
    const int64_t m = 2 * n;
    std::vector<double> block(size_t(m * m), 0.0), result(size_t(m * m));
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) {
            block[size_t(i * m + j)] = block[size_t((n + i) * m + n + j)] = X[j * n + i];
            block[size_t(i * m + n + j)] = g_scale * G[i * n + j];
        }
    matrix_exponential(result.data(), block.data(), m);
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) out[i * n + j] = result[size_t(i * m + n + j)] / g_scale;
}

template <typename T>
void grape_forward(T* out, const T* x, const int64_t* positions, const ops::GrapeRotation& rotation,
                   const GrapeDims& dims) {
    if (rotation.kind == ops::GrapeKind::commuting) commuting_forward(out, x, positions, rotation, dims);
    else mixture_forward(out, x, positions, rotation, dims);
}

template <typename T>
void grape_backward(T* dx, double* dbasis, double* dgenerator, const T* dout, const T* x, const int64_t* positions,
                    const ops::GrapeRotation& rotation, const GrapeDims& dims) {
    if (rotation.kind == ops::GrapeKind::commuting)
        commuting_backward(dx, dbasis, dgenerator, dout, x, positions, rotation, dims);
    else mixture_backward(dx, dbasis, dgenerator, dout, x, positions, rotation, dims);
}

#define LINARCH_INSTANTIATE(T)                                                                                  \
    template void grape_forward<T>(T*, const T*, const int64_t*, const ops::GrapeRotation&, const GrapeDims&); \
    template void grape_backward<T>(T*, double*, double*, const T*, const T*, const int64_t*,                  \
                                    const ops::GrapeRotation&, const GrapeDims&);
LINARCH_INSTANTIATE(float)
LINARCH_INSTANTIATE(double)
#undef LINARCH_INSTANTIATE

}  // namespace linarch::cpu
