// Entry points of the dense ops: check everything a backend takes on trust (device, dtype,
// contiguity, shapes, id ranges), then dispatch on the device and dtype to the CPU backend (f32, f64)
// or the CUDA one (f32 device tensors).
#include "ops/dense.hpp"

#include <string>
#include <vector>

#include "backend/cpu/dense.hpp"
#include "ops/precision.hpp"
#if LINARCH_HAS_CUDA
#include "backend/cuda/dense.hpp"
#include "backend/cuda/device.hpp"
#include "backend/cuda/gemm.hpp"
#endif

namespace linarch::ops {
namespace {

// Whether an op has a CUDA implementation: without one, CUDA tensors are refused by name.
enum class Cuda { implemented, missing };

// The checks every op makes on its tensors. The first tensor checked fixes the call's device and
// dtype; every message starts with the op and the tensor's name ("rmsnorm_forward: weight: ...").
class OpChecks {
public:
    explicit OpChecks(const char* op, Cuda cuda = Cuda::missing) : op_(op), cuda_(cuda) {}

    // Contiguous; on the CPU f32/f64, on CUDA f32; the same device and dtype as the tensors before it.
    void tensor(const Tensor& t, const char* name) {
        LINARCH_CHECK(t.defined(), "{}: {} is an undefined tensor", op_, name);
        LINARCH_CHECK(t.device() == Device::cpu || cuda_ == Cuda::implemented,
                      "{}: {} is a CUDA tensor, but {} has no CUDA implementation yet", op_, name, op_);
        if (t.device() == Device::cuda)
            LINARCH_CHECK(t.dtype() == DType::f32, "{}: {} has dtype {}; dense ops on CUDA take F32", op_, name,
                          dtype_name(t.dtype()));
        LINARCH_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::f64,
                      "{}: {} has dtype {}; dense ops take F32 or F64", op_, name, dtype_name(t.dtype()));
        if (first_ == nullptr) {
            first_ = name;
            dtype_ = t.dtype();
            device_ = t.device();
        }
        LINARCH_CHECK(t.device() == device_, "{}: {} is on {} but {} is on {} (one device per call)", op_, name,
                      device_name(t.device()), first_, device_name(device_));
        LINARCH_CHECK(t.dtype() == dtype_, "{}: {} has dtype {} but {} has dtype {} (one dtype per call)", op_, name,
                      dtype_name(t.dtype()), first_, dtype_name(dtype_));
        LINARCH_CHECK(t.is_contiguous(), "{}: {} must be contiguous (shape {}, strides {})", op_, name,
                      shape_string(t.shape()), shape_string(t.strides()));
    }
    // As tensor(), and the shape must be exactly `shape`.
    void tensor(const Tensor& t, const char* name, const Shape& shape) {
        tensor(t, name);
        check_shape(t, shape, fmt::format("{}: {}", op_, name).c_str());
    }
    // As tensor(), and a 2-D tensor (whose sizes then define the op's dimensions).
    void matrix(const Tensor& t, const char* name) {
        tensor(t, name);
        LINARCH_CHECK(t.dim() == 2, "{}: {}: expected a 2-D tensor, got shape {}", op_, name,
                      shape_string(t.shape()));
    }
    // One id per row: the count must match, and each id must index a row of a table of `rows`.
    // With negative_ignored (cross-entropy targets), ids < 0 mark ignored rows instead.
    void ids(std::span<const int32_t> ids, const char* name, int64_t count, int64_t rows, bool negative_ignored) {
        LINARCH_CHECK(int64_t(ids.size()) == count, "{}: {}: expected {} ids, got {}", op_, name, count,
                      ids.size());
        for (size_t n = 0; n < ids.size(); ++n) {
            const int32_t id = ids[n];
            LINARCH_CHECK(id < rows && (id >= 0 || negative_ignored), "{}: {}[{}] = {} is outside [0, {}){}", op_,
                          name, n, id, rows, negative_ignored ? " (negative targets mark ignored rows)" : "");
        }
    }
    DType dtype() const { return dtype_; }
    bool on_cuda() const { return device_ == Device::cuda; }

private:
    const char* op_;
    Cuda cuda_;
    const char* first_ = nullptr;
    DType dtype_ = DType::f32;
    Device device_ = Device::cpu;
};

// Calls fn(T{}) with T the C++ type of `dtype` (checked to be f32 or f64 by OpChecks).
template <typename Fn> decltype(auto) dispatch(DType dtype, Fn&& fn) {
    if (dtype == DType::f32) return fn(float{});
    return fn(double{});
}

template <typename T> T* ptr(Tensor& t) { return t.data<T>(); }
template <typename T> const T* ptr(const Tensor& t) { return t.data<T>(); }
template <typename T> T* ptr_or_null(Tensor* t) { return t ? t->data<T>() : nullptr; }

#if LINARCH_HAS_CUDA
float* f32(Tensor& t) { return static_cast<float*>(t.raw_data()); }
const float* f32(const Tensor& t) { return static_cast<const float*>(t.raw_data()); }
float* f32_or_null(Tensor* t) { return t ? f32(*t) : nullptr; }

// A bf16 copy of an f32 device tensor for one call (mixed precision's GEMM operands).
class Bf16Copy {
public:
    explicit Bf16Copy(const Tensor& t) : buffer_(size_t(t.numel()) * 2) {
        cuda::to_bf16(buffer_.as<uint16_t>(), f32(t), t.numel());
    }
    const void* get() const { return buffer_.as<void>(); }

private:
    cuda::DeviceBuffer buffer_;
};

bool bf16_compute() { return compute_precision() == Precision::bf16; }

// Token ids copied to the GPU for one call (the op checked their range on the host).
class DeviceIds {
public:
    explicit DeviceIds(std::span<const int32_t> ids)
        : bytes_(ids.size_bytes()), ptr_(static_cast<int32_t*>(cuda::allocate(bytes_))) {
        cuda::copy_to_device_async(ptr_, ids.data(), bytes_);
    }
    ~DeviceIds() { cuda::release(ptr_, bytes_); }
    DeviceIds(const DeviceIds&) = delete;
    DeviceIds& operator=(const DeviceIds&) = delete;
    const int32_t* get() const { return ptr_; }

private:
    size_t bytes_;
    int32_t* ptr_;
};
#endif

}  // namespace

// out[M,N] = inp[M,K] · weight[N,K]ᵀ
void matmul_forward(Tensor& out, const Tensor& inp, const Tensor& weight, bool accumulate) {
    OpChecks c("matmul_forward", Cuda::implemented);
    c.matrix(inp, "inp");
    c.matrix(weight, "weight");
    const int64_t M = inp.size(0), K = inp.size(1), N = weight.size(0);
    c.tensor(weight, "weight", {N, K});
    c.tensor(out, "out", {M, N});
#if LINARCH_HAS_CUDA
    if (c.on_cuda() && bf16_compute()) {
        const Bf16Copy a(inp), b(weight);
        return cuda::gemm({.a = a.get(), .b = b.get(), .c = f32(out), .m = M, .n = N, .k = K, .trans_b = true,
                           .beta = accumulate ? 1.f : 0.f, .type = cuda::GemmType::bf16_to_fp32});
    }
    if (c.on_cuda())
        return cuda::gemm({.a = f32(inp), .b = f32(weight), .c = f32(out), .m = M, .n = N, .k = K, .trans_b = true,
                           .beta = accumulate ? 1.f : 0.f});
#endif
    dispatch(c.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::matmul_forward<T>(ptr<T>(out), ptr<T>(inp), ptr<T>(weight), M, K, N, accumulate);
    });
}

// dinp[M,K] += dout[M,N] · weight[N,K];   dweight[N,K] += dout[M,N]ᵀ · inp[M,K]
void matmul_backward(Tensor* dinp, Tensor* dweight, const Tensor& dout, const Tensor& inp, const Tensor& weight) {
    OpChecks c("matmul_backward", Cuda::implemented);
    c.matrix(inp, "inp");
    c.matrix(weight, "weight");
    const int64_t M = inp.size(0), K = inp.size(1), N = weight.size(0);
    c.tensor(weight, "weight", {N, K});
    c.tensor(dout, "dout", {M, N});
    if (dinp) c.tensor(*dinp, "dinp", {M, K});
    if (dweight) c.tensor(*dweight, "dweight", {N, K});
#if LINARCH_HAS_CUDA
    if (c.on_cuda() && bf16_compute()) {
        const Bf16Copy g(dout);
        const auto type = cuda::GemmType::bf16_to_fp32;
        if (dinp) {
            const Bf16Copy w(weight);
            cuda::gemm({.a = g.get(), .b = w.get(), .c = f32(*dinp), .m = M, .n = K, .k = N, .beta = 1.f, .type = type});
        }
        if (dweight) {
            const Bf16Copy x(inp);
            cuda::gemm({.a = g.get(), .b = x.get(), .c = f32(*dweight), .m = N, .n = K, .k = M, .trans_a = true,
                        .beta = 1.f, .type = type});
        }
        return;
    }
    if (c.on_cuda()) {
        // dinp[M,K] += dout[M,N] · weight[N,K];   dweight[N,K] += dout[M,N]ᵀ · inp[M,K]
        if (dinp) cuda::gemm({.a = f32(dout), .b = f32(weight), .c = f32(*dinp), .m = M, .n = K, .k = N, .beta = 1.f});
        if (dweight)
            cuda::gemm({.a = f32(dout), .b = f32(inp), .c = f32(*dweight), .m = N, .n = K, .k = M, .trans_a = true,
                        .beta = 1.f});
        return;
    }
#endif
    dispatch(c.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::matmul_backward<T>(ptr_or_null<T>(dinp), ptr_or_null<T>(dweight), ptr<T>(dout), ptr<T>(inp),
                                ptr<T>(weight), M, K, N);
    });
}

// out[N,D] = table[ids[n], :]
void embedding_forward(Tensor& out, std::span<const int32_t> ids, const Tensor& table) {
    OpChecks c("embedding_forward", Cuda::implemented);
    c.matrix(table, "table");
    const int64_t N = int64_t(ids.size()), V = table.size(0), D = table.size(1);
    c.tensor(out, "out", {N, D});
    c.ids(ids, "ids", N, V, false);
#if LINARCH_HAS_CUDA
    if (c.on_cuda()) return cuda::embedding_forward(f32(out), DeviceIds(ids).get(), f32(table), N, D);
#endif
    dispatch(c.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::embedding_forward<T>(ptr<T>(out), ids.data(), ptr<T>(table), N, D);
    });
}

// dtable[ids[n], :] += dout[n, :]
void embedding_backward(Tensor& dtable, std::span<const int32_t> ids, const Tensor& dout) {
    OpChecks c("embedding_backward", Cuda::implemented);
    c.matrix(dtable, "dtable");
    const int64_t N = int64_t(ids.size()), V = dtable.size(0), D = dtable.size(1);
    c.tensor(dout, "dout", {N, D});
    c.ids(ids, "ids", N, V, false);
#if LINARCH_HAS_CUDA
    if (c.on_cuda()) return cuda::embedding_backward(f32(dtable), DeviceIds(ids).get(), f32(dout), N, D);
#endif
    dispatch(c.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::embedding_backward<T>(ptr<T>(dtable), ids.data(), ptr<T>(dout), N, D);
    });
}

// out[N,D] = x[N,D] · rstd · weight[D];   rstd[N]
void rmsnorm_forward(Tensor& out, Tensor& rstd, const Tensor& x, const Tensor& weight, double eps) {
    OpChecks c("rmsnorm_forward", Cuda::implemented);
    c.matrix(x, "x");
    const int64_t N = x.size(0), D = x.size(1);
    LINARCH_CHECK(D > 0, "rmsnorm_forward: x: rows are empty (shape {})", shape_string(x.shape()));
    LINARCH_CHECK(eps >= 0, "rmsnorm_forward: eps must be ≥ 0, got {}", eps);
    c.tensor(weight, "weight", {D});
    c.tensor(out, "out", {N, D});
    c.tensor(rstd, "rstd", {N});
#if LINARCH_HAS_CUDA
    if (c.on_cuda()) return cuda::rmsnorm_forward(f32(out), f32(rstd), f32(x), f32(weight), N, D, eps);
#endif
    dispatch(c.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::rmsnorm_forward<T>(ptr<T>(out), ptr<T>(rstd), ptr<T>(x), ptr<T>(weight), N, D, eps);
    });
}

// dx[N,D] += ...;   dweight[D] += Σ_n dout · x · rstd
void rmsnorm_backward(Tensor* dx, Tensor* dweight, const Tensor& dout, const Tensor& x, const Tensor& weight,
                      const Tensor& rstd) {
    OpChecks c("rmsnorm_backward", Cuda::implemented);
    c.matrix(x, "x");
    const int64_t N = x.size(0), D = x.size(1);
    c.tensor(weight, "weight", {D});
    c.tensor(rstd, "rstd", {N});
    c.tensor(dout, "dout", {N, D});
    if (dx) c.tensor(*dx, "dx", {N, D});
    if (dweight) c.tensor(*dweight, "dweight", {D});
#if LINARCH_HAS_CUDA
    if (c.on_cuda())
        return cuda::rmsnorm_backward(f32_or_null(dx), f32_or_null(dweight), f32(dout), f32(x), f32(weight),
                                      f32(rstd), N, D);
#endif
    dispatch(c.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::rmsnorm_backward<T>(ptr_or_null<T>(dx), ptr_or_null<T>(dweight), ptr<T>(dout), ptr<T>(x),
                                 ptr<T>(weight), ptr<T>(rstd), N, D);
    });
}

void group_norm_forward(Tensor& out, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& weight,
                        const Tensor& bias, int64_t groups, double eps) {
    OpChecks c("group_norm_forward", Cuda::implemented);
    c.matrix(x, "x");
    const int64_t N = x.size(0), C = x.size(1);
    LINARCH_CHECK(groups > 0 && C > 0 && C % groups == 0,
                  "group_norm_forward: {} groups do not split rows of {} channels evenly", groups, C);
    LINARCH_CHECK(eps >= 0, "group_norm_forward: eps must be ≥ 0, got {}", eps);
    c.tensor(weight, "weight", {C});
    c.tensor(bias, "bias", {C});
    c.tensor(out, "out", {N, C});
    c.tensor(mean, "mean", {N * groups});
    c.tensor(rstd, "rstd", {N * groups});
#if LINARCH_HAS_CUDA
    if (c.on_cuda())
        return cuda::group_norm_forward(f32(out), f32(mean), f32(rstd), f32(x), f32(weight), f32(bias), N * groups,
                                        C / groups, groups, eps);
#endif
    dispatch(c.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::group_norm_forward<T>(ptr<T>(out), ptr<T>(mean), ptr<T>(rstd), ptr<T>(x), ptr<T>(weight), ptr<T>(bias),
                                   N * groups, C / groups, groups, eps);
    });
}

void group_norm_backward(Tensor& dx, Tensor& dweight, Tensor& dbias, const Tensor& dout, const Tensor& x,
                         const Tensor& weight, const Tensor& mean, const Tensor& rstd, int64_t groups) {
    OpChecks c("group_norm_backward", Cuda::implemented);
    c.matrix(x, "x");
    const int64_t N = x.size(0), C = x.size(1);
    LINARCH_CHECK(groups > 0 && C > 0 && C % groups == 0,
                  "group_norm_backward: {} groups do not split rows of {} channels evenly", groups, C);
    c.tensor(weight, "weight", {C});
    c.tensor(mean, "mean", {N * groups});
    c.tensor(rstd, "rstd", {N * groups});
    c.tensor(dout, "dout", {N, C});
    c.tensor(dx, "dx", {N, C});
    c.tensor(dweight, "dweight", {C});
    c.tensor(dbias, "dbias", {C});
#if LINARCH_HAS_CUDA
    if (c.on_cuda())
        return cuda::group_norm_backward(f32(dx), f32(dweight), f32(dbias), f32(dout), f32(x), f32(weight), f32(mean),
                                         f32(rstd), N * groups, C / groups, groups);
#endif
    dispatch(c.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::group_norm_backward<T>(ptr<T>(dx), ptr<T>(dweight), ptr<T>(dbias), ptr<T>(dout), ptr<T>(x),
                                    ptr<T>(weight), ptr<T>(mean), ptr<T>(rstd), N * groups, C / groups, groups);
    });
}

// out[N,F] = silu(gate) · up   (elementwise: any shape, the same for all three)
void swiglu_forward(Tensor& out, const Tensor& gate, const Tensor& up) {
    OpChecks c("swiglu_forward", Cuda::implemented);
    c.tensor(gate, "gate");
    c.tensor(up, "up", gate.shape());
    c.tensor(out, "out", gate.shape());
#if LINARCH_HAS_CUDA
    if (c.on_cuda()) return cuda::swiglu_forward(f32(out), f32(gate), f32(up), gate.numel());
#endif
    dispatch(c.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::swiglu_forward<T>(ptr<T>(out), ptr<T>(gate), ptr<T>(up), gate.numel());
    });
}

// dgate[N,F] += dout · up · silu'(gate);   dup[N,F] += dout · silu(gate)
void swiglu_backward(Tensor& dgate, Tensor& dup, const Tensor& dout, const Tensor& gate, const Tensor& up) {
    OpChecks c("swiglu_backward", Cuda::implemented);
    c.tensor(gate, "gate");
    c.tensor(up, "up", gate.shape());
    c.tensor(dout, "dout", gate.shape());
    c.tensor(dgate, "dgate", gate.shape());
    c.tensor(dup, "dup", gate.shape());
#if LINARCH_HAS_CUDA
    if (c.on_cuda()) return cuda::swiglu_backward(f32(dgate), f32(dup), f32(dout), f32(gate), f32(up), gate.numel());
#endif
    dispatch(c.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::swiglu_backward<T>(ptr<T>(dgate), ptr<T>(dup), ptr<T>(dout), ptr<T>(gate), ptr<T>(up), gate.numel());
    });
}

// out = a + b   (any equal shapes; out may alias a)
void add_forward(Tensor& out, const Tensor& a, const Tensor& b) {
    OpChecks c("add_forward", Cuda::implemented);
    c.tensor(a, "a");
    c.tensor(b, "b", a.shape());
    c.tensor(out, "out", a.shape());
#if LINARCH_HAS_CUDA
    if (c.on_cuda()) return cuda::add(f32(out), f32(a), f32(b), a.numel());
#endif
    dispatch(c.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::add_forward<T>(ptr<T>(out), ptr<T>(a), ptr<T>(b), a.numel());
    });
}

// dst += src
void add_into(Tensor& dst, const Tensor& src) {
    OpChecks c("add_into", Cuda::implemented);
    c.tensor(dst, "dst");
    c.tensor(src, "src", dst.shape());
#if LINARCH_HAS_CUDA
    if (c.on_cuda()) return cuda::add_into(f32(dst), f32(src), dst.numel());
#endif
    dispatch(c.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::add_into<T>(ptr<T>(dst), ptr<T>(src), dst.numel());
    });
}

// losses[N], logsumexp[N] from hidden[N,D], weight[V,D], targets[N]; returns the mean loss over
// rows whose target is ≥ 0 (0 when every row is ignored: such a batch contributes nothing).
double lm_head_cross_entropy_forward(Tensor& losses, Tensor& logsumexp, const Tensor& hidden, const Tensor& weight,
                                     std::span<const int32_t> targets) {
    OpChecks c("lm_head_cross_entropy_forward", Cuda::implemented);
    c.matrix(hidden, "hidden");
    c.matrix(weight, "weight");
    const int64_t N = hidden.size(0), D = hidden.size(1), V = weight.size(0);
    LINARCH_CHECK(V > 0, "lm_head_cross_entropy_forward: weight: the vocabulary is empty (shape {})",
                  shape_string(weight.shape()));
    c.tensor(weight, "weight", {V, D});
    c.tensor(losses, "losses", {N});
    c.tensor(logsumexp, "logsumexp", {N});
    c.ids(targets, "targets", N, V, true);
    int64_t counted = 0;
#if LINARCH_HAS_CUDA
    if (c.on_cuda()) {
        cuda::lm_head_cross_entropy_forward(f32(losses), f32(logsumexp), f32(hidden), f32(weight),
                                            DeviceIds(targets).get(), N, D, V, bf16_compute());
        const std::vector<double> row_losses = losses.to(Device::cpu).to_vector();
        double total = 0;
        for (size_t n = 0; n < row_losses.size(); ++n)
            if (targets[n] >= 0) {
                total += row_losses[n];
                ++counted;
            }
        return counted > 0 ? total / double(counted) : 0.0;
    }
#endif
    const double total = dispatch(c.dtype(), [&](auto tag) {
        using T = decltype(tag);
        return cpu::lm_head_cross_entropy_forward<T>(ptr<T>(losses), ptr<T>(logsumexp), ptr<T>(hidden),
                                                     ptr<T>(weight), targets.data(), N, D, V, &counted);
    });
    return counted > 0 ? total / double(counted) : 0.0;
}

// dhidden[N,D] += ...;  dweight[V,D] += ...  for the loss loss_scale · Σ_n losses[n]
void lm_head_cross_entropy_backward(Tensor* dhidden, Tensor* dweight, const Tensor& hidden, const Tensor& weight,
                                    std::span<const int32_t> targets, const Tensor& logsumexp, double loss_scale) {
    OpChecks c("lm_head_cross_entropy_backward", Cuda::implemented);
    c.matrix(hidden, "hidden");
    c.matrix(weight, "weight");
    const int64_t N = hidden.size(0), D = hidden.size(1), V = weight.size(0);
    LINARCH_CHECK(V > 0, "lm_head_cross_entropy_backward: weight: the vocabulary is empty (shape {})",
                  shape_string(weight.shape()));
    c.tensor(weight, "weight", {V, D});
    c.tensor(logsumexp, "logsumexp", {N});
    if (dhidden) c.tensor(*dhidden, "dhidden", {N, D});
    if (dweight) c.tensor(*dweight, "dweight", {V, D});
    c.ids(targets, "targets", N, V, true);
#if LINARCH_HAS_CUDA
    if (c.on_cuda())
        return cuda::lm_head_cross_entropy_backward(f32_or_null(dhidden), f32_or_null(dweight), f32(hidden),
                                                    f32(weight), DeviceIds(targets).get(), f32(logsumexp),
                                                    loss_scale, N, D, V, bf16_compute());
#endif
    dispatch(c.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::lm_head_cross_entropy_backward<T>(ptr_or_null<T>(dhidden), ptr_or_null<T>(dweight), ptr<T>(hidden),
                                               ptr<T>(weight), targets.data(), ptr<T>(logsumexp), loss_scale, N, D,
                                               V);
    });
}

// logits[N,V] = hidden[N,D] · weight[V,D]ᵀ
void lm_head_logits(Tensor& logits, const Tensor& hidden, const Tensor& weight) {
    OpChecks c("lm_head_logits", Cuda::implemented);
    c.matrix(hidden, "hidden");
    c.matrix(weight, "weight");
    const int64_t N = hidden.size(0), D = hidden.size(1), V = weight.size(0);
    c.tensor(weight, "weight", {V, D});
    c.tensor(logits, "logits", {N, V});
#if LINARCH_HAS_CUDA
    if (c.on_cuda()) return cuda::gemm({.a = f32(hidden), .b = f32(weight), .c = f32(logits), .m = N, .n = V, .k = D,
                                        .trans_b = true});
#endif
    dispatch(c.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::matmul_forward<T>(ptr<T>(logits), ptr<T>(hidden), ptr<T>(weight), N, D, V, false);
    });
}

// Σ x² over all elements, in double
double sum_squares(const Tensor& x) {
    const Tensor* one[1] = {&x};
    return sum_squares(one);
}

double sum_squares(std::span<const Tensor* const> xs) {
    OpChecks c("sum_squares", Cuda::implemented);
    for (const Tensor* x : xs) c.tensor(*x, "x");
    if (xs.empty()) return 0;
#if LINARCH_HAS_CUDA
    if (c.on_cuda()) {
        std::vector<cuda::FloatArray> arrays;
        for (const Tensor* x : xs) arrays.push_back({f32(*x), x->numel()});
        return cuda::sum_squares(arrays);
    }
#endif
    return dispatch(c.dtype(), [&](auto tag) {
        using T = decltype(tag);
        double sum = 0;
        for (const Tensor* x : xs) sum += cpu::sum_squares<T>(ptr<T>(*x), x->numel());
        return sum;
    });
}

// x *= factor
void scale_inplace(Tensor& x, double factor) {
    OpChecks c("scale_inplace", Cuda::implemented);
    c.tensor(x, "x");
#if LINARCH_HAS_CUDA
    if (c.on_cuda()) return cuda::scale(f32(x), x.numel(), factor);
#endif
    dispatch(c.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::scale_inplace<T>(ptr<T>(x), x.numel(), factor);
    });
}

// param, grad, m, v: one shape; updated in place (grad read only)
void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWParams& hp) {
    OpChecks c("adamw_update", Cuda::implemented);
    c.tensor(param, "param");
    c.tensor(grad, "grad", param.shape());
    c.tensor(m, "m", param.shape());
    c.tensor(v, "v", param.shape());
    LINARCH_CHECK(hp.step >= 1, "adamw_update: step is counted from 1, got {}", hp.step);
    LINARCH_CHECK(hp.beta1 >= 0 && hp.beta1 < 1 && hp.beta2 >= 0 && hp.beta2 < 1,
                  "adamw_update: betas must lie in [0, 1), got beta1 = {}, beta2 = {}", hp.beta1, hp.beta2);
#if LINARCH_HAS_CUDA
    if (c.on_cuda())
        return cuda::adamw_update(f32(param), f32(grad), f32(m), f32(v), param.numel(), hp.lr, hp.beta1, hp.beta2,
                                  hp.eps, hp.weight_decay, hp.step);
#endif
    dispatch(c.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::adamw_update<T>(ptr<T>(param), ptr<T>(grad), ptr<T>(m), ptr<T>(v), param.numel(), hp.lr, hp.beta1,
                             hp.beta2, hp.eps, hp.weight_decay, hp.step);
    });
}

}  // namespace linarch::ops
