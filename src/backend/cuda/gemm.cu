#include "backend/cuda/gemm.hpp"

#include <cublasLt.h>

#include <map>
#include <mutex>
#include <tuple>

#include "backend/cuda/check.cuh"
#include "backend/cuda/device.hpp"

namespace linarch::cuda {
namespace {

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

void check_lt(cublasStatus_t status, const char* what) {
    if (status != CUBLAS_STATUS_SUCCESS) fail("cuBLASLt: {} failed: status {}", what, int(status));
}

cublasLtHandle_t lt_handle() {
    static cublasLtHandle_t handle = [] {
        cublasLtHandle_t h;
        check_lt(cublasLtCreate(&h), "cublasLtCreate");
        return h;
    }();
    return handle;
}

// One workspace for every GEMM: they all run on cudaStreamPerThread of the thread that owns the model.
// From the caching pool, as every other buffer (a plain cudaMalloc could fail while the pool holds free
// memory; allocate trims the pool and retries), kept for the process; complete before any stream uses it.
void* workspace() {
    static void* ptr = [] {
        void* p = allocate(kWorkspaceBytes);
        synchronize();
        return p;
    }();
    return ptr;
}

const char* type_name(GemmType type) {
    return type == GemmType::fp32 ? "fp32" : type == GemmType::bf16 ? "bf16" : "bf16 operands, fp32 C";
}

using PlanKey = std::tuple<int64_t, int64_t, int64_t, bool, bool, GemmType>;

// The column-major problem cuBLASLt sees: Cᵀ[N,M] = op(B)ᵀ[N,K] · op(A)ᵀ[K,M].
struct Plan {
    cublasLtMatmulDesc_t op{};
    cublasLtMatrixLayout_t first{}, second{}, out{};
    cublasLtMatmulHeuristicResult_t algo{};

    explicit Plan(const PlanKey& key) {
        const auto [m, n, k, trans_a, trans_b, type] = key;
        const cudaDataType dt = type == GemmType::fp32 ? CUDA_R_32F : CUDA_R_16BF;
        const cudaDataType dt_out = type == GemmType::bf16 ? CUDA_R_16BF : CUDA_R_32F;
        check_lt(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
        // Row-major B[K,N] is column-major [N,K] as stored: used as is (N); B[N,K] stored is [K,N]: transposed.
        const cublasOperation_t op_first = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
        const cublasOperation_t op_second = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
        check_lt(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof op_first),
                 "set TRANSA");
        check_lt(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof op_second),
                 "set TRANSB");
        if (trans_b)
            check_lt(cublasLtMatrixLayoutCreate(&first, dt, uint64_t(k), uint64_t(n), k), "layout of B");
        else
            check_lt(cublasLtMatrixLayoutCreate(&first, dt, uint64_t(n), uint64_t(k), n), "layout of B");
        if (trans_a)
            check_lt(cublasLtMatrixLayoutCreate(&second, dt, uint64_t(m), uint64_t(k), m), "layout of A");
        else
            check_lt(cublasLtMatrixLayoutCreate(&second, dt, uint64_t(k), uint64_t(m), k), "layout of A");
        check_lt(cublasLtMatrixLayoutCreate(&out, dt_out, uint64_t(n), uint64_t(m), n), "layout of C");
        cublasLtMatmulPreference_t pref;
        check_lt(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
        check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &kWorkspaceBytes,
                                                      sizeof kWorkspaceBytes),
                 "set workspace");
        int found = 0;
        check_lt(cublasLtMatmulAlgoGetHeuristic(lt_handle(), op, first, second, out, out, pref, 1, &algo, &found),
                 "cublasLtMatmulAlgoGetHeuristic");
        cublasLtMatmulPreferenceDestroy(pref);
        LINARCH_CHECK(found > 0, "cuBLASLt has no GEMM for M={} N={} K={} (trans_a {}, trans_b {}, {})", m, n, k,
                      trans_a, trans_b, type_name(type));
    }
};

const Plan& plan_for(const PlanKey& key) {
    static std::mutex mutex;
    static std::map<PlanKey, Plan> plans;
    const std::lock_guard<std::mutex> lock(mutex);
    auto it = plans.find(key);
    if (it == plans.end()) it = plans.emplace(key, Plan(key)).first;
    return it->second;
}

}  // namespace

void gemm(const GemmArgs& g) {
    if (g.m == 0 || g.n == 0) return;
    if (g.k == 0) {
        // cuBLASLt rejects K = 0; the product is empty, so C = beta · C.
        LINARCH_CHECK(g.beta == 0.f || g.beta == 1.f, "gemm: K = 0 with beta {} is not supported", g.beta);
        if (g.beta == 0.f)
            check_cuda(cudaMemsetAsync(g.c, 0, size_t(g.m * g.n) * (g.type == GemmType::bf16 ? 2 : 4),
                                       cudaStreamPerThread),
                       "cudaMemsetAsync");
        return;
    }
    const Plan& p = plan_for({g.m, g.n, g.k, g.trans_a, g.trans_b, g.type});
    check_lt(cublasLtMatmul(lt_handle(), p.op, &g.alpha, g.b, p.first, g.a, p.second, &g.beta, g.c, p.out, g.c, p.out,
                            &p.algo.algo, workspace(), kWorkspaceBytes, cudaStreamPerThread),
             "cublasLtMatmul");
}

}  // namespace linarch::cuda
