#include "ops/cuda_recurrent_scan.hpp"

#if LINARCH_HAS_CUDA
#include <algorithm>

#include "backend/cuda/device.hpp"
#include "backend/cuda/recurrent_scan.hpp"
#include "ops/operand_checks.hpp"

namespace linarch::ops {
namespace {

void check_cuda_f32(const char* op, const char* name, const Tensor& t, const Shape& shape) {
    LINARCH_CHECK(t.defined(), "{}: {}: tensor is not defined", op, name);
    LINARCH_CHECK(t.device() == Device::cuda, "{}: {}: tensor is on {}, expected cuda (one device per call)", op, name,
                  device_name(t.device()));
    LINARCH_CHECK(t.dtype() == DType::f32, "{}: {}: expected F32 (the exact CUDA path), got {}", op, name,
                  dtype_name(t.dtype()));
    LINARCH_CHECK(t.is_contiguous(), "{}: {}: expected a contiguous tensor", op, name);
    LINARCH_CHECK(t.shape() == shape, "{}: {}: expected shape {}, got {}", op, name, shape_string(shape),
                  shape_string(t.shape()));
}

const float* f32_or_null(const Tensor* t) { return present(t) ? t->data<float>() : nullptr; }
float* f32_or_null(Tensor* t) { return present(t) ? t->data<float>() : nullptr; }

// The checked problem: the backend's arguments (cu_seqlens still on the host) and the longest sequence.
struct Checked {
    cuda::RecurrentScan scan;
    int64_t max_length;
    Shape state_shape;
};

// Gate values are not checked to be ≤ 0 (or β to lie in [0, 1]) here: that would copy them to the
// host on every call; the layers make them so by construction.
Checked check_inputs(const char* op, const CudaScanInputs& in) {
    LINARCH_CHECK(in.q.defined() && in.q.dim() == 4 && in.q.numel() > 0,
                  "{}: q: expected a non-empty [B, T, H, Dk] tensor, got shape {}", op,
                  in.q.defined() ? shape_string(in.q.shape()) : "undefined");
    const int64_t B = in.q.size(0), T = in.q.size(1), H = in.q.size(2), Dk = in.q.size(3);
    check_cuda_f32(op, "q", in.q, in.q.shape());
    check_cuda_f32(op, "k", in.k, in.q.shape());
    LINARCH_CHECK(in.v.defined() && in.v.dim() == 4 && in.v.size(3) > 0, "{}: v: expected shape [{}, {}, {}, Dv]",
                  op, B, T, H);
    const int64_t Dv = in.v.size(3);
    check_cuda_f32(op, "v", in.v, {B, T, H, Dv});
    LINARCH_CHECK(Dk <= cuda::kScanMaxKeyDim && Dv <= cuda::kScanMaxValueDim,
                  "{}: head sizes Dk = {}, Dv = {}: the fp32 CUDA path holds up to Dk {} and Dv {}", op, Dk, Dv,
                  cuda::kScanMaxKeyDim, cuda::kScanMaxValueDim);
    const int64_t N = check_cu_seqlens(op, in.cu_seqlens, B, T);
    int64_t max_length = T;
    if (!in.cu_seqlens.empty()) {
        max_length = 0;
        for (size_t n = 0; n + 1 < in.cu_seqlens.size(); ++n)
            max_length = std::max(max_length, in.cu_seqlens[n + 1] - in.cu_seqlens[n]);
    }
    cuda::RecurrentScan scan{};
    scan.q = in.q.data<float>();
    scan.k = in.k.data<float>();
    scan.v = in.v.data<float>();
    if (in.beta) {
        check_cuda_f32(op, "beta", *in.beta, {B, T, H});
        scan.beta = in.beta->data<float>();
    }
    LINARCH_CHECK(!(in.log_gate.defined() && in.log_decay.defined()),
                  "{}: log_gate: expected at most one of log_decay and log_gate, got both", op);
    if (in.log_gate.defined()) {
        const Shape scalar{B, T, H}, vector{B, T, H, Dk};
        const bool is_vector = in.log_gate.shape() == vector && !in.beta;
        check_cuda_f32(op, "log_gate", in.log_gate, is_vector ? vector : scalar);
        scan.log_gate = in.log_gate.data<float>();
        scan.vector_gate = is_vector;
    }
    if (in.log_decay.defined()) {
        check_cuda_f32(op, "log_decay", in.log_decay, {H});
        scan.log_decay = in.log_decay.data<float>();
    }
    const Shape state_shape{N, H, Dk, Dv};
    if (present(in.initial_state)) check_cuda_f32(op, "initial_state", *in.initial_state, state_shape);
    scan.initial_state = f32_or_null(in.initial_state);
    scan.sequences = N;
    scan.batch = B, scan.seq_len = T, scan.heads = H, scan.key_dim = Dk, scan.value_dim = Dv;
    scan.scale = in.scale;
    return {scan, max_length, state_shape};
}

}  // namespace

void cuda_scan_forward(const char* op, Tensor& o, Tensor* final_state, const CudaScanInputs& in) {
    Checked c = check_inputs(op, in);
    check_cuda_f32(op, "o", o, {c.scan.batch, c.scan.seq_len, c.scan.heads, c.scan.value_dim});
    if (present(final_state)) check_cuda_f32(op, "final_state", *final_state, c.state_shape);
    const cuda::DeviceBuffer cu_seqlens(in.cu_seqlens);
    c.scan.cu_seqlens = cu_seqlens.as<int64_t>();
    cuda::recurrent_scan_forward(c.scan, o.data<float>(), f32_or_null(final_state));
}

void cuda_scan_backward(const char* op, const CudaScanGrads& g, const CudaScanInputs& in) {
    Checked c = check_inputs(op, in);
    const Shape keys = in.q.shape(), values = in.v.shape();
    check_cuda_f32(op, "dout", g.dout, values);
    check_cuda_f32(op, "dq", g.dq, keys);
    check_cuda_f32(op, "dk", g.dk, keys);
    check_cuda_f32(op, "dv", g.dv, values);
    if (in.beta) {
        LINARCH_CHECK(g.dbeta != nullptr, "{}: dbeta: required with beta", op);
        check_cuda_f32(op, "dbeta", *g.dbeta, in.beta->shape());
    }
    if (present(g.dlog_gate)) {
        LINARCH_CHECK(in.log_gate.defined(), "{}: dlog_gate: given, but no log_gate is", op);
        check_cuda_f32(op, "dlog_gate", *g.dlog_gate, in.log_gate.shape());
    }
    if (present(g.dinitial_state)) check_cuda_f32(op, "dinitial_state", *g.dinitial_state, c.state_shape);
    if (present(g.dfinal_state)) check_cuda_f32(op, "dfinal_state", *g.dfinal_state, c.state_shape);
    const cuda::DeviceBuffer cu_seqlens(in.cu_seqlens);
    c.scan.cu_seqlens = cu_seqlens.as<int64_t>();
    const cuda::DeviceBuffer scratch(cuda::recurrent_scan_scratch_floats(c.scan, c.max_length) * sizeof(float));
    cuda::RecurrentScanGrads grads{};
    grads.dout = g.dout.data<float>();
    grads.dfinal_state = f32_or_null(g.dfinal_state);
    grads.dq = g.dq.data<float>();
    grads.dk = g.dk.data<float>();
    grads.dv = g.dv.data<float>();
    grads.dbeta = in.beta ? g.dbeta->data<float>() : nullptr;
    grads.dlog_gate = f32_or_null(g.dlog_gate);
    grads.dinitial_state = f32_or_null(g.dinitial_state);
    grads.scratch = scratch.as<float>();
    cuda::recurrent_scan_backward(c.scan, grads, c.max_length);
}

}  // namespace linarch::ops
#endif
