// Second-order HLA ops: check every tensor (device, dtype, contiguity, shape), the decay and cu_seqlens,
// then dispatch to the backend: the CPU one, or for f32 CUDA tensors the fp32 chunkwise kernels
// (backend/cuda/higher_order_attention.hpp), which stand for both forward forms (each is exact).
#include "ops/higher_order_attention.hpp"

#include <algorithm>
#include <span>
#include <string>

#include "backend/cpu/higher_order_attention.hpp"
#include "ops/operand_checks.hpp"
#if LINARCH_HAS_CUDA
#include "backend/cuda/device.hpp"
#include "backend/cuda/higher_order_attention.hpp"
#include "ops/cuda_operands.hpp"
#endif

namespace linarch::ops {
namespace {

// Sizes the inputs agree on, and N, the number of sequences (the states' leading dim).
struct Checked {
    cpu::HigherOrderDims dims;
    int64_t sequences;
};

// A state's moments (if the state is given): S [N,H,Dk,Dk], C [N,H,Dk,Dv], and G [N,H,Dk,Dv] exactly
// when masked, each checked by check(op, name, tensor, shape). `name` is the state's role (initial_state,
// final_state, …).
template <typename Check>
void check_moments(const char* op, const char* name, const HigherOrderState* state, const cpu::HigherOrderDims& d,
                   int64_t sequences, bool masked, Check&& check) {
    if (!state) return;
    const std::string prefix = std::string(name) + ".";
    check(op, prefix + "key_moment", state->key_moment, Shape{sequences, d.heads, d.key_dim, d.key_dim});
    check(op, prefix + "query_value_moment", state->query_value_moment,
          Shape{sequences, d.heads, d.key_dim, d.value_dim});
    if (masked)
        check(op, prefix + "correction", state->correction, Shape{sequences, d.heads, d.key_dim, d.value_dim});
    else
        LINARCH_CHECK(!state->correction.defined(),
                      "{}: {}correction: the unmasked form has no correction moment G (leave it undefined)", op,
                      prefix);
}

void check_state(const char* op, const char* name, const HigherOrderState* state, DType dtype, const Checked& c,
                 bool masked) {
    check_moments(op, name, state, c.dims, c.sequences, masked,
                  [dtype](const char* o, const std::string& n, const Tensor& t, const Shape& shape) {
                      check_operand(o, n, t, dtype, shape);
                  });
}

// Every value of a log decay must be ≤ 0 (α = e^g ≤ 1 keeps the moments bounded); `!(x <= 0)` also
// rejects NaN. Reads the typed data directly: the gate is one value per token and head, checked every step.
template <typename T> void check_non_positive(const char* op, const char* name, const Tensor& t) {
    const T* values = t.data<T>();
    for (int64_t i = 0; i < t.numel(); ++i)
        LINARCH_CHECK(values[i] <= T(0), "{}: {}: expected every value ≤ 0, got {} at index {}", op, name,
                      double(values[i]), i);
}

// At most one of log_decay [H] and log_gate [B,T,H], every value ≤ 0.
void check_decay(const char* op, const HigherOrderAttentionArgs& args, DType dtype, const cpu::HigherOrderDims& d) {
    const Tensor* given = nullptr;
    const char* name = nullptr;
    if (args.log_decay.defined()) {
        LINARCH_CHECK(!args.log_gate.defined(),
                      "{}: log_gate: expected at most one of log_decay and log_gate, got both", op);
        check_operand(op, "log_decay", args.log_decay, dtype, {d.heads});
        given = &args.log_decay;
        name = "log_decay";
    } else if (args.log_gate.defined()) {
        check_operand(op, "log_gate", args.log_gate, dtype, {d.batch, d.seq_len, d.heads});
        given = &args.log_gate;
        name = "log_gate";
    }
    if (given) dispatch(dtype, [&](auto tag) { check_non_positive<decltype(tag)>(op, name, *given); });
}

// Checks q, k, v, cu_seqlens, the decay and the initial state.
Checked check_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                     const HigherOrderState* initial_state, const HigherOrderAttentionArgs& args) {
    const QkvShape shape = check_qkv(op, q, k, v);
    const DType dtype = shape.dtype;
    const int64_t B = shape.batch, T = shape.seq_len, H = shape.heads, Dk = shape.key_dim;
    int64_t N = B;
    if (!args.cu_seqlens.empty()) {
        const std::vector<int64_t>& cu = args.cu_seqlens;
        LINARCH_CHECK(B == 1, "{}: cu_seqlens: packed sequences need batch size 1, got q of shape {}", op,
                      shape_string(q.shape()));
        LINARCH_CHECK(cu.size() >= 2 && cu.front() == 0 && cu.back() == T,
                      "{}: cu_seqlens: expected offsets from 0 to T = {} (at least two), got {} offsets from {} to {}",
                      op, T, cu.size(), cu.front(), cu.back());
        for (size_t n = 0; n + 1 < cu.size(); ++n)
            LINARCH_CHECK(cu[n] < cu[n + 1], "{}: cu_seqlens: expected strictly increasing offsets, got {} then {}",
                          op, cu[n], cu[n + 1]);
        N = int64_t(cu.size()) - 1;
    }
    const Checked c{{B, T, H, Dk, v.size(3)}, N};
    check_state(op, "initial_state", initial_state, dtype, c, args.masked);
    check_decay(op, args, dtype, c.dims);
    return c;
}

void check_chunk_size(const char* op, const HigherOrderAttentionArgs& args) {
    LINARCH_CHECK(args.chunk_size >= 1, "{}: chunk_size: expected ≥ 1, got {}", op, args.chunk_size);
}

Shape token_shape(const cpu::HigherOrderDims& d, int64_t dim) { return {d.batch, d.seq_len, d.heads, dim}; }

template <typename T> cpu::HigherOrderDecay<T> decay_of(const HigherOrderAttentionArgs& args) {
    return {args.log_decay.defined() ? args.log_decay.data<T>() : nullptr,
            args.log_gate.defined() ? args.log_gate.data<T>() : nullptr};
}

template <typename T> cpu::Moments<const T*> moments_of(const HigherOrderState* state) {
    if (!state) return {};
    const Tensor& g = state->correction;
    return {state->key_moment.data<T>(), state->query_value_moment.data<T>(), g.defined() ? g.data<T>() : nullptr};
}
template <typename T> cpu::Moments<T*> moments_of(HigherOrderState* state) {
    if (!state) return {};
    Tensor& g = state->correction;
    return {state->key_moment.data<T>(), state->query_value_moment.data<T>(), g.defined() ? g.data<T>() : nullptr};
}

// The two forward forms share their checks and signature.
template <typename Kernel>
void forward(const char* op, Tensor& o, HigherOrderState* final_state, const Tensor& q, const Tensor& k,
             const Tensor& v, const HigherOrderState* initial_state, const HigherOrderAttentionArgs& args,
             Kernel&& kernel) {
    const Checked c = check_inputs(op, q, k, v, initial_state, args);
    check_operand(op, "o", o, q.dtype(), token_shape(c.dims, c.dims.value_dim));
    check_state(op, "final_state", final_state, q.dtype(), c, args.masked);
    dispatch(q.dtype(), [&](auto tag) {
        using T = decltype(tag);
        kernel(o.data<T>(), moments_of<T>(final_state), q.data<T>(), k.data<T>(), v.data<T>(),
               moments_of<T>(initial_state), decay_of<T>(args), c.dims);
    });
}

#if LINARCH_HAS_CUDA
// The CUDA path: every operand f32 on the GPU. The decay values are not checked to be ≤ 0 there (that
// would copy them to the host on every call); the layers make them so by construction.
void check_cuda_f32(const char* op, const std::string& name, const Tensor& t, const Shape& shape) {
    check_cuda_operand(op, name.c_str(), t, DType::f32, shape);
}

cuda::HigherOrderMoments cuda_moments(const HigherOrderState* state) {
    if (!state) return {};
    const auto ptr = [](const Tensor& t) { return t.defined() ? const_cast<float*>(t.data<float>()) : nullptr; };
    return {ptr(state->key_moment), ptr(state->query_value_moment), ptr(state->correction)};
}

// The backend's arguments (cu_seqlens still on the host) and the dims, from checked operands.
struct CudaChecked {
    cuda::HigherOrderAttention args;
    cpu::HigherOrderDims dims;
};

CudaChecked check_cuda_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                              const HigherOrderState* initial_state, const HigherOrderAttentionArgs& args) {
    LINARCH_CHECK(q.dim() == 4 && q.numel() > 0, "{}: q: expected a non-empty [B, T, H, Dk] tensor, got shape {}",
                  op, shape_string(q.shape()));
    const int64_t B = q.size(0), T = q.size(1), H = q.size(2), Dk = q.size(3);
    check_cuda_f32(op, "q", q, q.shape());
    check_cuda_f32(op, "k", k, q.shape());
    LINARCH_CHECK(v.defined() && v.dim() == 4 && v.size(3) > 0, "{}: v: expected shape [{}, {}, {}, Dv]", op, B, T,
                  H);
    check_cuda_f32(op, "v", v, {B, T, H, v.size(3)});
    const cpu::HigherOrderDims d{B, T, H, Dk, v.size(3)};
    const int64_t N = check_cu_seqlens(op, args.cu_seqlens, B, T);
    int64_t max_length = args.cu_seqlens.empty() ? T : 0;
    for (size_t n = 0; n + 1 < args.cu_seqlens.size(); ++n)
        max_length = std::max(max_length, args.cu_seqlens[n + 1] - args.cu_seqlens[n]);
    check_moments(op, "initial_state", initial_state, d, N, args.masked, check_cuda_f32);
    LINARCH_CHECK(!(args.log_decay.defined() && args.log_gate.defined()),
                  "{}: log_gate: expected at most one of log_decay and log_gate, got both", op);
    if (args.log_decay.defined()) check_cuda_f32(op, "log_decay", args.log_decay, {H});
    if (args.log_gate.defined()) check_cuda_f32(op, "log_gate", args.log_gate, {B, T, H});
    cuda::HigherOrderAttention a{};
    a.q = q.data<float>();
    a.k = k.data<float>();
    a.v = v.data<float>();
    a.log_decay = args.log_decay.defined() ? args.log_decay.data<float>() : nullptr;
    a.log_gate = args.log_gate.defined() ? args.log_gate.data<float>() : nullptr;
    a.initial = cuda_moments(initial_state);
    a.sequences = N;
    a.batch = B, a.seq_len = T, a.heads = H, a.key_dim = Dk, a.value_dim = d.value_dim;
    // (The recurrent op takes any chunk_size, the chunkwise one checked it: the kernels need a chunk ≥ 1.)
    a.chunk = std::clamp<int64_t>(args.chunk_size, 1, max_length);
    a.max_length = max_length;
    a.masked = args.masked;
    a.scale = args.scale;
    return {a, d};
}

void cuda_forward(const char* op, Tensor& o, HigherOrderState* final_state, const Tensor& q, const Tensor& k,
                  const Tensor& v, const HigherOrderState* initial_state, const HigherOrderAttentionArgs& args) {
    CudaChecked c = check_cuda_inputs(op, q, k, v, initial_state, args);
    check_cuda_f32(op, "o", o, token_shape(c.dims, c.dims.value_dim));
    check_moments(op, "final_state", final_state, c.dims, c.args.sequences, args.masked, check_cuda_f32);
    const cuda::DeviceBuffer cu_seqlens(args.cu_seqlens);
    c.args.cu_seqlens = cu_seqlens.as<int64_t>();
    const cuda::DeviceBuffer scratch(cuda::higher_order_attention_scratch_floats(c.args, false) * sizeof(float));
    cuda::higher_order_attention_forward(c.args, o.data<float>(), cuda_moments(final_state), scratch.as<float>());
}

void cuda_backward(const char* op, Tensor& dq, Tensor& dk, Tensor& dv, HigherOrderState* dinitial_state,
                   const Tensor& dout, const HigherOrderState* dfinal_state, const Tensor& q, const Tensor& k,
                   const Tensor& v, const HigherOrderState* initial_state, const HigherOrderAttentionArgs& args,
                   Tensor* dlog_gate) {
    CudaChecked c = check_cuda_inputs(op, q, k, v, initial_state, args);
    const cpu::HigherOrderDims& d = c.dims;
    check_cuda_f32(op, "dout", dout, token_shape(d, d.value_dim));
    check_moments(op, "dfinal_state", dfinal_state, d, c.args.sequences, args.masked, check_cuda_f32);
    check_cuda_f32(op, "dq", dq, token_shape(d, d.key_dim));
    check_cuda_f32(op, "dk", dk, token_shape(d, d.key_dim));
    check_cuda_f32(op, "dv", dv, token_shape(d, d.value_dim));
    check_moments(op, "dinitial_state", dinitial_state, d, c.args.sequences, args.masked, check_cuda_f32);
    if (present(dlog_gate)) {
        LINARCH_CHECK(args.log_gate.defined(), "{}: dlog_gate: given, but args.log_gate is not defined", op);
        check_cuda_f32(op, "dlog_gate", *dlog_gate, args.log_gate.shape());
    }
    const cuda::DeviceBuffer cu_seqlens(args.cu_seqlens);
    c.args.cu_seqlens = cu_seqlens.as<int64_t>();
    const cuda::DeviceBuffer scratch(cuda::higher_order_attention_scratch_floats(c.args, true) * sizeof(float));
    cuda::HigherOrderAttentionGrads g{};
    g.dout = dout.data<float>();
    g.dfinal_state = cuda_moments(dfinal_state);
    g.dq = dq.data<float>();
    g.dk = dk.data<float>();
    g.dv = dv.data<float>();
    g.dlog_gate = data_or_null<float>(dlog_gate);
    g.dinitial_state = cuda_moments(dinitial_state);
    cuda::higher_order_attention_backward(c.args, g, scratch.as<float>());
}
#endif

}  // namespace

void higher_order_attention_recurrent_forward(Tensor& o, HigherOrderState* final_state, const Tensor& q,
                                              const Tensor& k, const Tensor& v,
                                              const HigherOrderState* initial_state,
                                              const HigherOrderAttentionArgs& args) {
    const char* op = "higher_order_attention_recurrent_forward";
#if LINARCH_HAS_CUDA
    if (q.defined() && q.device() == Device::cuda) return cuda_forward(op, o, final_state, q, k, v, initial_state, args);
#endif
    forward(op, o, final_state, q, k, v, initial_state, args,
            [&](auto* out, auto fin, auto* q_, auto* k_, auto* v_, auto s0, const auto& decay, auto& d) {
                cpu::higher_order_attention_recurrent_forward(out, fin, q_, k_, v_, s0, decay, args.masked,
                                                              args.scale, d, std::span(args.cu_seqlens));
            });
}

void higher_order_attention_chunkwise_forward(Tensor& o, HigherOrderState* final_state, const Tensor& q,
                                              const Tensor& k, const Tensor& v,
                                              const HigherOrderState* initial_state,
                                              const HigherOrderAttentionArgs& args) {
    const char* op = "higher_order_attention_chunkwise_forward";
    check_chunk_size(op, args);
#if LINARCH_HAS_CUDA
    if (q.defined() && q.device() == Device::cuda) return cuda_forward(op, o, final_state, q, k, v, initial_state, args);
#endif
    forward(op, o, final_state, q, k, v, initial_state, args,
            [&](auto* out, auto fin, auto* q_, auto* k_, auto* v_, auto s0, const auto& decay, auto& d) {
                cpu::higher_order_attention_chunkwise_forward(out, fin, q_, k_, v_, s0, decay, args.masked,
                                                              args.scale, args.chunk_size, d,
                                                              std::span(args.cu_seqlens));
            });
}

void higher_order_attention_chunkwise_backward(Tensor& dq, Tensor& dk, Tensor& dv,
                                               HigherOrderState* dinitial_state, const Tensor& dout,
                                               const HigherOrderState* dfinal_state, const Tensor& q,
                                               const Tensor& k, const Tensor& v,
                                               const HigherOrderState* initial_state,
                                               const HigherOrderAttentionArgs& args, Tensor* dlog_gate) {
    const char* op = "higher_order_attention_chunkwise_backward";
    check_chunk_size(op, args);
#if LINARCH_HAS_CUDA
    if (q.defined() && q.device() == Device::cuda)
        return cuda_backward(op, dq, dk, dv, dinitial_state, dout, dfinal_state, q, k, v, initial_state, args,
                             dlog_gate);
#endif
    const Checked c = check_inputs(op, q, k, v, initial_state, args);
    const cpu::HigherOrderDims& d = c.dims;
    const DType dtype = q.dtype();
    check_operand(op, "dout", dout, dtype, token_shape(d, d.value_dim));
    check_state(op, "dfinal_state", dfinal_state, dtype, c, args.masked);
    check_operand(op, "dq", dq, dtype, token_shape(d, d.key_dim));
    check_operand(op, "dk", dk, dtype, token_shape(d, d.key_dim));
    check_operand(op, "dv", dv, dtype, token_shape(d, d.value_dim));
    check_state(op, "dinitial_state", dinitial_state, dtype, c, args.masked);
    if (present(dlog_gate)) {
        LINARCH_CHECK(args.log_gate.defined(), "{}: dlog_gate: given, but args.log_gate is not defined", op);
        check_operand(op, "dlog_gate", *dlog_gate, dtype, args.log_gate.shape());
    }
    dispatch(dtype, [&](auto tag) {
        using T = decltype(tag);
        cpu::higher_order_attention_chunkwise_backward<T>(
            dq.data<T>(), dk.data<T>(), dv.data<T>(), moments_of<T>(dinitial_state), data_or_null<T>(dlog_gate),
            dout.data<T>(), moments_of<T>(dfinal_state), q.data<T>(), k.data<T>(), v.data<T>(),
            moments_of<T>(initial_state), decay_of<T>(args), args.masked, args.scale, args.chunk_size, d,
            std::span(args.cu_seqlens));
    });
}

}  // namespace linarch::ops
