// Row-major GEMM on the GPU through cuBLASLt, for every op that multiplies matrices:
//     C[M,N] = alpha · op(A) · op(B) + beta · C
// op(A) is A[M,K] (or A[K,M]ᵀ with trans_a), op(B) is B[K,N] (or B[N,K]ᵀ with trans_b), all contiguous
// row-major device arrays: fp32, bf16, or bf16 operands with an fp32 C (mixed precision's GEMMs), always
// accumulated in fp32 (CUBLAS_COMPUTE_32F: no TF32, so an fp32 product is the CPU's up to summation order). cuBLAS is column-major; a row-major matrix is the
// transpose of the column-major one in the same memory, so C = op(A)·op(B) runs as Cᵀ = op(B)ᵀ·op(A)ᵀ.
// Plans (layouts and the heuristic's algorithm) are made once per shape and reused.
#pragma once
#include <cstdint>

namespace linarch::cuda {

// The operands' and C's types: fp32/fp32, bf16/bf16, bf16/fp32.
enum class GemmType { fp32, bf16, bf16_to_fp32 };

struct GemmArgs {
    const void* a;
    const void* b;
    void* c;
    int64_t m, n, k;
    bool trans_a = false, trans_b = false;
    float alpha = 1.f, beta = 0.f;
    GemmType type = GemmType::fp32;
};

// Enqueues on cudaStreamPerThread. Throws Error naming the shape when cuBLASLt has no algorithm for it.
void gemm(const GemmArgs& args);

}  // namespace linarch::cuda
