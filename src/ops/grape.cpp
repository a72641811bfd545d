// GRAPE-M op: check the parameters and derive the float64 rotation (the orthogonal basis
// exp(A − Aᵀ) and the generator) on the host, check tensors and positions, dispatch to the CPU backend or,
// for f32 CUDA tensors, run the same steps on the GPU (the basis products through cuBLASLt, the row moves
// in backend/cuda/grape.hpp, the mixture's float64 chain of powers on the host), and carry the
// gradients with respect to the derived matrices back to the parameters (on the host, in float64).
#include "ops/grape.hpp"

#include <cmath>
#include <vector>

#include "backend/cpu/grape.hpp"
#include "ops/dense.hpp"
#include "ops/operand_checks.hpp"
#if LINARCH_HAS_CUDA
#include "backend/cuda/device.hpp"
#include "backend/cuda/grape.hpp"
#include "ops/cuda_operands.hpp"
#endif

namespace linarch::ops {
namespace {

// The parameters are read on the host, wherever they live (a few D×D values).
Tensor on_cpu(const Tensor& t) { return t.defined() ? t.to(Device::cpu) : t; }

// The basis generator A [D,D] (D even) fixes the parameters' dtype; returns D.
int64_t check_basis_generator(const char* op, const Tensor& basis_generator) {
    LINARCH_CHECK(basis_generator.defined(), "{}: basis_generator: tensor is not defined", op);
    const DType dtype = basis_generator.dtype();
    LINARCH_CHECK(dtype == DType::f32 || dtype == DType::f64, "{}: basis_generator: expected dtype F32 or F64, got {}",
                  op, dtype_name(dtype));
    check_operand(op, "basis_generator", basis_generator, dtype);
    const Shape& shape = basis_generator.shape();
    LINARCH_CHECK(shape.size() == 2 && shape[0] == shape[1] && shape[0] > 0,
                  "{}: basis_generator: expected a square [D, D] tensor, got shape {}", op, shape_string(shape));
    LINARCH_CHECK(shape[0] % 2 == 0, "{}: basis_generator: the head dim D = {} must be even (rotations act on planes)",
                  op, shape[0]);
    return shape[0];
}

// M − Mᵀ of a square tensor, in float64.
std::vector<double> skew_part(const Tensor& square) {
    const int64_t n = square.size(0);
    const std::vector<double> values = square.to_vector();
    std::vector<double> skew(values.size());
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) skew[size_t(i * n + j)] = values[size_t(i * n + j)] - values[size_t(j * n + i)];
    return skew;
}

std::vector<double> exponential(const std::vector<double>& square, int64_t n) {
    std::vector<double> result(square.size());
    cpu::matrix_exponential(result.data(), square.data(), n);
    return result;
}

// A tensor of one call: on x's device (the CUDA path takes f32), contiguous, of the dtype and shape.
void check_tensor(const char* op, const char* name, const Tensor& t, DType dtype, const Shape& shape, Device device) {
#if LINARCH_HAS_CUDA
    if (device == Device::cuda) return check_cuda_operand(op, name, t, dtype, shape);
#endif
    (void)device;
    check_operand(op, name, t, dtype, shape);
}

// Checks x (or dout) against the rotation and the positions; returns the sizes.
cpu::GrapeDims check_rows(const char* op, const char* name, const Tensor& x, std::span<const int64_t> positions,
                          const GrapeRotation& rotation) {
    LINARCH_CHECK(rotation.head_dim > 0, "{}: rotation: not prepared (use grape_prepare_commuting or _mixture)", op);
    LINARCH_CHECK(x.defined(), "{}: {}: tensor is not defined", op, name);
    LINARCH_CHECK(x.dtype() == rotation.dtype, "{}: {}: expected dtype {} (the dtype of the GRAPE parameters), got {}",
                  op, name, dtype_name(rotation.dtype), dtype_name(x.dtype()));
    LINARCH_CHECK(x.device() == Device::cpu || x.dtype() == DType::f32,
                  "{}: {}: the CUDA path takes F32 rows (and parameters), got {}", op, name, dtype_name(x.dtype()));
    check_tensor(op, name, x, rotation.dtype, x.shape(), x.device());
    LINARCH_CHECK(x.dim() == 4 && x.numel() > 0, "{}: {}: expected a non-empty [B, T, H, D] tensor, got shape {}", op,
                  name, shape_string(x.shape()));
    LINARCH_CHECK(x.size(3) == rotation.head_dim, "{}: {}: expected head dim D = {} (the rotation's), got {}", op, name,
                  rotation.head_dim, x.size(3));
    LINARCH_CHECK(positions.empty() || int64_t(positions.size()) == x.size(1),
                  "{}: positions: expected T = {} positions (or none for 0..T−1), got {}", op, x.size(1),
                  positions.size());
    return {x.size(0), x.size(1), x.size(2), x.size(3)};
}

// grad += values (float64 → the gradient's dtype), on the gradient's device.
void add_values(Tensor& grad, const std::vector<double>& values) {
    if (grad.device() != Device::cpu) {
        const Tensor delta = Tensor::from_vector(grad.shape(), values, grad.dtype()).to(grad.device());
        return add_into(grad, delta);
    }
    dispatch(grad.dtype(), [&](auto tag) {
        using T = decltype(tag);
        T* data = grad.data<T>();
        for (size_t i = 0; i < values.size(); ++i) data[i] += T(values[i]);
    });
}

#if LINARCH_HAS_CUDA
// The CUDA path: the CPU backend's steps (backend/cpu/grape.cpp) on the GPU, the rows f32.
struct CudaRows {
    cpu::GrapeDims d;
    int64_t rows;                       // B·T·H
    cuda::DeviceBuffer positions;       // [T] or empty
    bool have_positions;
    cuda::GrapeRows of(int64_t width) const {
        return {d.batch, d.seq_len, d.heads, width, have_positions ? positions.as<int64_t>() : nullptr};
    }
    CudaRows(const cpu::GrapeDims& dims, std::span<const int64_t> p)
        : d(dims), rows(dims.batch * dims.seq_len * dims.heads),
          positions(std::vector<int64_t>(p.begin(), p.end())), have_positions(!p.empty()) {}
};

Tensor on_gpu(const Shape& shape) { return Tensor::empty(shape, DType::f32, Device::cuda); }

// c[m,n] = op(a) · op(b) + beta · c on f32 GPU tensors.
void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, int64_t m, int64_t n, int64_t k,
          float beta) {
    gemm_f32(a.data<float>(), trans_a, b.data<float>(), trans_b, c.data<float>(), m, n, k, beta);
}

// The basis rounded to f32 on the GPU: Q [D,D] or E [D,r].
Tensor device_basis(const GrapeRotation& rotation) {
    return Tensor::from_vector({rotation.head_dim, rotation.rank}, rotation.basis, DType::f32).to(Device::cuda);
}

// dst (host float64) += src (a GPU f32 tensor).
void add_from_gpu(std::vector<double>& dst, const Tensor& src) {
    const std::vector<double> values = src.to(Device::cpu).to_vector();
    for (size_t i = 0; i < dst.size(); ++i) dst[i] += values[i];
}

void commuting_forward_cuda(Tensor& out, const Tensor& x, const CudaRows& c, const GrapeRotation& rotation) {
    const int64_t D = c.d.head_dim;
    const Tensor Q = device_basis(rotation);
    const cuda::DeviceBuffer frequencies(rotation.frequencies);
    Tensor coords = on_gpu({c.rows, D});
    gemm(x, false, Q, false, coords, c.rows, D, D, 0.f);                                     // U = X Q
    cuda::grape_rotate_planes(coords.data<float>(), frequencies.as<double>(), 1.0, c.of(D));  // V = R(n ω) U
    gemm(coords, false, Q, true, out, c.rows, D, D, 0.f);                                    // Y = V Qᵀ
}

void commuting_backward_cuda(Tensor* dx, std::vector<double>* dbasis, std::vector<double>* dfrequencies,
                             const Tensor& dout, const Tensor& x, const CudaRows& c, const GrapeRotation& rotation) {
    const int64_t D = c.d.head_dim;
    const Tensor Q = device_basis(rotation);
    const cuda::DeviceBuffer frequencies(rotation.frequencies);
    Tensor dcoords = on_gpu({c.rows, D}), coords, dQ;
    gemm(dout, false, Q, false, dcoords, c.rows, D, D, 0.f);  // dV = dY Q
    if (dbasis || dfrequencies) {
        coords = on_gpu({c.rows, D});
        gemm(x, false, Q, false, coords, c.rows, D, D, 0.f);
        cuda::grape_rotate_planes(coords.data<float>(), frequencies.as<double>(), 1.0, c.of(D));  // V
        if (dfrequencies) {
            const cuda::DeviceBuffer scratch(size_t(c.d.seq_len * D / 2) * sizeof(double));
            Tensor sums = Tensor::zeros({D / 2}, DType::f64, Device::cuda);
            cuda::grape_frequency_gradient(sums.data<double>(), coords.data<float>(), dcoords.data<float>(),
                                           scratch.as<double>(), c.of(D));
            add_from_gpu(*dfrequencies, sums);
        }
    }
    if (dbasis) {
        dQ = on_gpu({D, D});
        gemm(dout, true, coords, false, dQ, D, D, c.rows, 0.f);  // Q̄ = dYᵀ V
    }
    cuda::grape_rotate_planes(dcoords.data<float>(), frequencies.as<double>(), -1.0, c.of(D));  // dU = R(n ω)ᵀ dV
    if (dbasis) {
        gemm(x, true, dcoords, false, dQ, D, D, c.rows, 1.f);  // Q̄ += Xᵀ dU
        add_from_gpu(*dbasis, dQ);
    }
    if (present(dx)) gemm(dcoords, false, Q, true, *dx, c.rows, D, D, 1.f);  // dX += dU Qᵀ
}

// The chain's K_j (or K_jᵀ) and each token's j, on the GPU.
struct DevicePowers {
    Tensor offsets;
    cuda::DeviceBuffer index_of_token;
    DevicePowers(const cpu::SubspacePowers& chain, int64_t r, bool transposed)
        : offsets(cpu::power_offsets(chain, r, transposed, DType::f32).to(Device::cuda)),
          index_of_token(chain.index_of_token) {}
};

void mixture_forward_cuda(Tensor& out, const Tensor& x, std::span<const int64_t> positions, const CudaRows& c,
                          const GrapeRotation& rotation) {
    const int64_t D = c.d.head_dim, r = rotation.rank;
    const cpu::SubspacePowers chain(positions.empty() ? nullptr : positions.data(), c.d.seq_len, rotation);
    const DevicePowers moves(chain, r, true);
    const Tensor E = device_basis(rotation);
    Tensor coords = on_gpu({c.rows, r}), moved = on_gpu({c.rows, r});
    gemm(x, false, E, false, coords, c.rows, r, D, 0.f);  // U = X E
    cuda::grape_multiply_rows(moved.data<float>(), coords.data<float>(), moves.offsets.data<float>(),
                              moves.index_of_token.as<int64_t>(), c.of(r));  // W: w = K u per row
    if (out.raw_data() != x.raw_data()) out.copy_from(x);
    gemm(moved, false, E, true, out, c.rows, D, r, 1.f);  // Y = X + W Eᵀ
}

void mixture_backward_cuda(Tensor* dx, std::vector<double>* dbasis, std::vector<double>* dgenerator,
                           const Tensor& dout, const Tensor& x, std::span<const int64_t> positions, const CudaRows& c,
                           const GrapeRotation& rotation) {
    const int64_t D = c.d.head_dim, r = rotation.rank, T = c.d.seq_len;
    const cpu::SubspacePowers chain(positions.empty() ? nullptr : positions.data(), T, rotation);
    const DevicePowers back(chain, r, false);
    const Tensor E = device_basis(rotation);
    Tensor dmoved = on_gpu({c.rows, r}), dcoords = on_gpu({c.rows, r});
    gemm(dout, false, E, false, dmoved, c.rows, r, D, 0.f);  // dW = dY E
    cuda::grape_multiply_rows(dcoords.data<float>(), dmoved.data<float>(), back.offsets.data<float>(),
                              back.index_of_token.as<int64_t>(), c.of(r));  // dU: du = Kᵀ dw per row
    if (present(dx)) {
        add_into(*dx, dout);
        gemm(dcoords, false, E, true, *dx, c.rows, D, r, 1.f);  // dX += dY + dU Eᵀ
    }
    if (!dbasis && !dgenerator) return;
    Tensor coords = on_gpu({c.rows, r});
    gemm(x, false, E, false, coords, c.rows, r, D, 0.f);  // U, as in the forward
    if (dbasis) {
        const DevicePowers moves(chain, r, true);
        Tensor moved = on_gpu({c.rows, r}), dE = on_gpu({D, r});
        cuda::grape_multiply_rows(moved.data<float>(), coords.data<float>(), moves.offsets.data<float>(),
                                  moves.index_of_token.as<int64_t>(), c.of(r));  // W
        gemm(dout, true, moved, false, dE, D, r, c.rows, 0.f);   // Ē = dYᵀ W
        gemm(x, true, dcoords, false, dE, D, r, c.rows, 1.f);    // Ē += Xᵀ dU
        add_from_gpu(*dbasis, dE);
    }
    if (dgenerator) {
        // ∂loss/∂exp(q_j L_r) = Σ over the rows at q_j of dw uᵀ: per token on the GPU, per position here.
        Tensor per_token = Tensor::empty({T, r, r}, DType::f64, Device::cuda);
        cuda::grape_power_gradient(per_token.data<double>(), dmoved.data<float>(), coords.data<float>(), c.of(r));
        const Tensor host = per_token.to(Device::cpu);
        std::vector<double> dpowers(size_t(chain.powers.numel()), 0.0);
        for (int64_t t = 0; t < T; ++t) {
            double* dpower = dpowers.data() + size_t(chain.index_of_token[size_t(t)] * r * r);
            const double* token = host.data<double>() + t * r * r;
            for (int64_t e = 0; e < r * r; ++e) dpower[e] += token[e];
        }
        cpu::subspace_powers_backward(dgenerator->data(), dpowers.data(), chain, rotation);
    }
}
#endif

}  // namespace

GrapeRotation grape_prepare_commuting(const Tensor& basis_generator_on_device, const Tensor& log_frequencies_on_device) {
    const char* op = "grape_prepare_commuting";
    const Tensor basis_generator = on_cpu(basis_generator_on_device), log_frequencies = on_cpu(log_frequencies_on_device);
    const int64_t D = check_basis_generator(op, basis_generator);
    check_operand(op, "log_frequencies", log_frequencies, basis_generator.dtype(), {D / 2});
    GrapeRotation rotation;
    rotation.kind = GrapeKind::commuting;
    rotation.dtype = basis_generator.dtype();
    rotation.head_dim = rotation.rank = D;
    rotation.skew = skew_part(basis_generator);
    rotation.basis = exponential(rotation.skew, D);
    for (double log_frequency : log_frequencies.to_vector()) rotation.frequencies.push_back(std::exp(log_frequency));
    return rotation;
}

GrapeRotation grape_prepare_mixture(const Tensor& basis_generator_on_device, const Tensor& mixing_on_device) {
    const char* op = "grape_prepare_mixture";
    const Tensor basis_generator = on_cpu(basis_generator_on_device), mixing = on_cpu(mixing_on_device);
    const int64_t D = check_basis_generator(op, basis_generator);
    check_operand(op, "mixing", mixing, basis_generator.dtype());
    const Shape& shape = mixing.shape();
    LINARCH_CHECK(shape.size() == 2 && shape[0] == shape[1],
                  "{}: mixing: expected a square [r, r] tensor, got shape {}", op, shape_string(shape));
    const int64_t r = shape[0];
    LINARCH_CHECK(r >= 2 && r <= D && r % 2 == 0,
                  "{}: mixing: the rank r = {} must be even and in [2, D = {}] (span E holds whole planes)", op, r, D);
    GrapeRotation rotation;
    rotation.kind = GrapeKind::mixture;
    rotation.dtype = basis_generator.dtype();
    rotation.head_dim = D;
    rotation.rank = r;
    rotation.skew = skew_part(basis_generator);
    const std::vector<double> full_basis = exponential(rotation.skew, D);
    for (int64_t i = 0; i < D; ++i)
        for (int64_t c = 0; c < r; ++c) rotation.basis.push_back(full_basis[size_t(i * D + c)]);
    rotation.generator = skew_part(mixing);
    rotation.step = exponential(rotation.generator, r);
    return rotation;
}

void grape_forward(Tensor& out, const Tensor& x, std::span<const int64_t> positions, const GrapeRotation& rotation) {
    const char* op = "grape_forward";
    const cpu::GrapeDims d = check_rows(op, "x", x, positions, rotation);
    check_tensor(op, "out", out, x.dtype(), x.shape(), x.device());
#if LINARCH_HAS_CUDA
    if (x.device() == Device::cuda) {
        const CudaRows rows(d, positions);
        if (rotation.kind == GrapeKind::commuting) commuting_forward_cuda(out, x, rows, rotation);
        else mixture_forward_cuda(out, x, positions, rows, rotation);
        return;
    }
#endif
    dispatch(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::grape_forward<T>(out.data<T>(), x.data<T>(), positions.empty() ? nullptr : positions.data(), rotation, d);
    });
}

void grape_backward(Tensor* dx, Tensor* dbasis_generator, Tensor* dlog_frequencies, Tensor* dmixing,
                    const Tensor& dout, const Tensor& x, std::span<const int64_t> positions,
                    const GrapeRotation& rotation) {
    const char* op = "grape_backward";
    const cpu::GrapeDims d = check_rows(op, "dout", dout, positions, rotation);
    const Device device = dout.device();
    check_tensor(op, "x", x, dout.dtype(), dout.shape(), device);
    const int64_t D = rotation.head_dim, r = rotation.rank;
    const bool commuting = rotation.kind == GrapeKind::commuting;
    if (present(dx)) check_tensor(op, "dx", *dx, dout.dtype(), dout.shape(), device);
    if (present(dbasis_generator)) check_tensor(op, "dbasis_generator", *dbasis_generator, dout.dtype(), {D, D}, device);
    if (present(dlog_frequencies)) {
        LINARCH_CHECK(commuting, "{}: dlog_frequencies: a mixture rotation has no log_frequencies (pass null)", op);
        check_tensor(op, "dlog_frequencies", *dlog_frequencies, dout.dtype(), {D / 2}, device);
    }
    if (present(dmixing)) {
        LINARCH_CHECK(!commuting, "{}: dmixing: a commuting rotation has no mixing parameter (pass null)", op);
        check_tensor(op, "dmixing", *dmixing, dout.dtype(), {r, r}, device);
    }
    // Gradients with respect to the derived matrices (Q or E; ω or L_r), in float64.
    std::vector<double> dbasis, dgenerator;
    if (present(dbasis_generator)) dbasis.assign(size_t(D * r), 0.0);
    if (present(dlog_frequencies) || present(dmixing)) dgenerator.assign(size_t(commuting ? D / 2 : r * r), 0.0);
#if LINARCH_HAS_CUDA
    if (device == Device::cuda) {
        const CudaRows rows(d, positions);
        std::vector<double>* basis_grad = dbasis.empty() ? nullptr : &dbasis;
        std::vector<double>* generator_grad = dgenerator.empty() ? nullptr : &dgenerator;
        if (commuting) commuting_backward_cuda(dx, basis_grad, generator_grad, dout, x, rows, rotation);
        else mixture_backward_cuda(dx, basis_grad, generator_grad, dout, x, positions, rows, rotation);
    }
#endif
    if (device == Device::cpu)
        dispatch(dout.dtype(), [&](auto tag) {
            using T = decltype(tag);
            cpu::grape_backward<T>(data_or_null<T>(dx), dbasis.empty() ? nullptr : dbasis.data(),
                                   dgenerator.empty() ? nullptr : dgenerator.data(), dout.data<T>(), x.data<T>(),
                                   positions.empty() ? nullptr : positions.data(), rotation, d);
        });
    if (present(dbasis_generator)) {
        // E is the first r columns of Q = exp(S), S = A − Aᵀ:
        //     Q̄ = [Ē | 0],   S̄ = L_exp(Sᵀ, Q̄),   Ā = S̄ − S̄ᵀ
        std::vector<double> dfull(size_t(D * D), 0.0), dskew(size_t(D * D)), dgenerator_basis(size_t(D * D));
        for (int64_t i = 0; i < D; ++i)
            for (int64_t c = 0; c < r; ++c) dfull[size_t(i * D + c)] = dbasis[size_t(i * r + c)];
        cpu::matrix_exponential_adjoint(dskew.data(), rotation.skew.data(), dfull.data(), D);
        for (int64_t i = 0; i < D; ++i)
            for (int64_t j = 0; j < D; ++j)
                dgenerator_basis[size_t(i * D + j)] = dskew[size_t(i * D + j)] - dskew[size_t(j * D + i)];
        add_values(*dbasis_generator, dgenerator_basis);
    }
    if (present(dlog_frequencies)) {
        // ω = exp(log_frequencies)
        for (int64_t i = 0; i < D / 2; ++i) dgenerator[size_t(i)] *= rotation.frequencies[size_t(i)];
        add_values(*dlog_frequencies, dgenerator);
    }
    if (present(dmixing)) {
        // L_r = W − Wᵀ
        std::vector<double> dw(size_t(r * r));
        for (int64_t a = 0; a < r; ++a)
            for (int64_t c = 0; c < r; ++c)
                dw[size_t(a * r + c)] = dgenerator[size_t(a * r + c)] - dgenerator[size_t(c * r + a)];
        add_values(*dmixing, dw);
    }
}

Tensor grape_initial_log_frequencies(int64_t head_dim, double base, DType dtype) {
    LINARCH_CHECK(head_dim > 0 && head_dim % 2 == 0,
                  "grape_initial_log_frequencies: head_dim: expected a positive even number, got {}", head_dim);
    LINARCH_CHECK(base > 1, "grape_initial_log_frequencies: base: expected > 1, got {}", base);
    std::vector<double> log_frequencies(size_t(head_dim / 2));
    for (int64_t i = 0; i < head_dim / 2; ++i)
        log_frequencies[size_t(i)] = -2.0 * double(i) / double(head_dim) * std::log(base);
    return Tensor::from_vector({head_dim / 2}, log_frequencies, dtype);
}

Tensor grape_initial_mixing(int64_t rank, double base, DType dtype) {
    LINARCH_CHECK(rank > 0 && rank % 2 == 0, "grape_initial_mixing: rank: expected a positive even number, got {}",
                  rank);
    LINARCH_CHECK(base > 1, "grape_initial_mixing: base: expected > 1, got {}", base);
    std::vector<double> mixing(size_t(rank * rank), 0.0);
    // L_r[2i+1, 2i] = θ_i = −L_r[2i, 2i+1]: the plane (2i, 2i+1) turns by θ_i J, as RoPE's pair i.
    for (int64_t i = 0; i < rank / 2; ++i)
        mixing[size_t((2 * i + 1) * rank + 2 * i)] = std::pow(base, -2.0 * double(i) / double(rank));
    return Tensor::from_vector({rank, rank}, mixing, dtype);
}

}  // namespace linarch::ops
