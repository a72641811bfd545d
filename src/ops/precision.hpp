// Mixed precision, issue 6's bf16 mode: while a ScopedPrecision(Precision::bf16) lives on a thread, the
// ops with bf16 tensor-core paths take them for f32 CUDA tensors: operands rounded to bf16, products
// accumulated and results kept in fp32 (matmul through cuBLASLt; linear attention without decay or with a
// scalar gate, and the (gated) delta rule, through the chunkwise kernels). Every other op, and every tensor
// the model keeps (weights, activations, gradients, optimizer state), stays fp32: PyTorch's autocast,
// switched on by the caller (the trainer, around forward and backward). CPU tensors ignore it.
#pragma once
#include <string_view>

namespace linarch::ops {

enum class Precision { fp32, bf16 };

Precision compute_precision();
const char* precision_name(Precision precision);
Precision precision_from_name(std::string_view name);  // "fp32" | "bf16"

class ScopedPrecision {
public:
    explicit ScopedPrecision(Precision precision);
    ~ScopedPrecision();
    ScopedPrecision(const ScopedPrecision&) = delete;
    ScopedPrecision& operator=(const ScopedPrecision&) = delete;

private:
    Precision previous_;
};

}  // namespace linarch::ops
