// Entry point of the fused LM head + sampler: check tensors, options and streams, then dispatch on
// the dtype to the CPU backend, or for CUDA tensors to the CUDA one (backend/cuda/lm_head_sample.hpp),
// and advance the streams.
#include "ops/fused_sampling.hpp"

#include <limits>
#include <vector>

#include "backend/cpu/fused_sampling.hpp"
#include "ops/operand_checks.hpp"
#if LINARCH_HAS_CUDA
#include "backend/cuda/lm_head_sample.hpp"
#endif

namespace linarch::ops {
namespace {

// Philox blocks one draw reads: four noise words per block.
uint64_t blocks_per_draw(int64_t vocab_size) { return uint64_t(vocab_size + 3) / 4; }

cpu::NoiseKey noise_key(const RngStream& rng) { return {rng.seed(), rng.stream(), rng.counter()}; }

// The option checks both paths share: the plain sampler's ranges; no penalties.
void check_fused_options(const char* op, const SamplingOptions& options) {
    try {
        check_sampling_options(options);  // the plain sampler's ranges, one place for both paths
    } catch (const Error& e) {
        fail("{}: {}", op, e.what());
    }
    LINARCH_CHECK(options.repetition_penalty == 1 && options.presence_penalty == 0 && options.frequency_penalty == 0,
                  "{}: repetition, presence and frequency penalties need the generated tokens, which the fused path "
                  "does not take: apply penalize_logits to lm_head_logits' output and use sample_token",
                  op);
}

#if LINARCH_HAS_CUDA
// A tensor of the CUDA path: on the GPU, contiguous, of the given dtype.
void check_cuda_operand(const char* op, const char* name, const Tensor& t, DType dtype) {
    LINARCH_CHECK(t.defined(), "{}: {}: tensor is not defined", op, name);
    LINARCH_CHECK(t.device() == Device::cuda, "{}: {}: tensor is on {}, expected cuda like hidden", op, name,
                  device_name(t.device()));
    LINARCH_CHECK(t.dtype() == dtype, "{}: {}: expected dtype {} (as hidden), got {}", op, name, dtype_name(dtype),
                  dtype_name(t.dtype()));
    LINARCH_CHECK(t.is_contiguous(), "{}: {}: expected a contiguous tensor", op, name);
}

// hidden [B,D] and weight [V,D] bf16 (or both f32) on the GPU, logprobs [B] f32 on the GPU: every mode of
// the CPU op, the same draws for the same logits; the tiling does not apply (the CUDA path cuts the
// vocabulary its own way).
void lm_head_sample_cuda(std::span<int32_t> tokens, Tensor* logprobs, const Tensor& hidden, const Tensor& weight,
                         const SamplingOptions& options, std::span<RngStream> rngs, const FusedSamplingTiling& tiling) {
    const char* op = "lm_head_sample";
    LINARCH_CHECK(hidden.dtype() == DType::bf16 || hidden.dtype() == DType::f32,
                  "{}: hidden: the CUDA path takes bf16 (or f32) hidden and weight, got {}", op,
                  dtype_name(hidden.dtype()));
    const DType dtype = hidden.dtype();
    check_cuda_operand(op, "hidden", hidden, dtype);
    LINARCH_CHECK(hidden.dim() == 2 && hidden.size(1) > 0,
                  "{}: hidden: expected a [B, D] tensor with D > 0, got shape {}", op, shape_string(hidden.shape()));
    const int64_t B = hidden.size(0), D = hidden.size(1);
    check_cuda_operand(op, "weight", weight, dtype);
    LINARCH_CHECK(weight.dim() == 2 && weight.size(0) > 0 && weight.size(1) == D,
                  "{}: weight: expected shape [V, {}] with V > 0 (D from hidden), got {}", op, D,
                  shape_string(weight.shape()));
    const int64_t V = weight.size(0);
    if (present(logprobs)) {
        check_cuda_operand(op, "logprobs", *logprobs, DType::f32);
        LINARCH_CHECK(logprobs->shape() == Shape{B}, "{}: logprobs: expected shape [{}], got {}", op, B,
                      shape_string(logprobs->shape()));
    }
    LINARCH_CHECK(int64_t(tokens.size()) == B, "{}: tokens: expected {} entries (one per row of hidden), got {}", op, B,
                  tokens.size());
    LINARCH_CHECK(int64_t(rngs.size()) == B, "{}: rngs: expected {} streams (one per row of hidden), got {}", op, B,
                  rngs.size());
    check_fused_options(op, options);
    LINARCH_CHECK(tiling.materialised_rows >= 0, "{}: tiling.materialised_rows must be ≥ 0, got {}", op,
                  tiling.materialised_rows);
    if (B == 0) return;
    std::vector<noise::NoiseKey> keys(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) keys[size_t(b)] = noise_key(rngs[size_t(b)]);
    cuda::lm_head_sample({hidden.raw_data(), weight.raw_data(), dtype == DType::f32, keys.data(), options.temperature,
                          options.top_k, options.top_p, options.min_p, tiling.materialised_rows, tokens.data(),
                          present(logprobs) ? logprobs->data<float>() : nullptr, B, D, V});
    if (options.temperature == 0) return;
    for (RngStream& rng : rngs) advance_past_draw(rng, V);
}
#endif

}  // namespace

void lm_head_sample(std::span<int32_t> tokens, Tensor* logprobs, const Tensor& hidden, const Tensor& weight,
                    const SamplingOptions& options, std::span<RngStream> rngs, const FusedSamplingTiling& tiling) {
    const char* op = "lm_head_sample";
    LINARCH_CHECK(hidden.defined(), "{}: hidden: tensor is not defined", op);
#if LINARCH_HAS_CUDA
    if (hidden.device() == Device::cuda)
        return lm_head_sample_cuda(tokens, logprobs, hidden, weight, options, rngs, tiling);
#endif
    LINARCH_CHECK(hidden.dtype() == DType::f32 || hidden.dtype() == DType::f64,
                  "{}: hidden: expected dtype F32 or F64, got {}", op, dtype_name(hidden.dtype()));
    const DType dtype = hidden.dtype();
    check_operand(op, "hidden", hidden, dtype);
    LINARCH_CHECK(hidden.dim() == 2 && hidden.size(1) > 0,
                  "{}: hidden: expected a [B, D] tensor with D > 0, got shape {}", op, shape_string(hidden.shape()));
    const int64_t B = hidden.size(0), D = hidden.size(1);
    check_operand(op, "weight", weight, dtype);
    LINARCH_CHECK(weight.dim() == 2 && weight.size(0) > 0 && weight.size(1) == D,
                  "{}: weight: expected shape [V, {}] with V > 0 (D from hidden), got {}", op, D,
                  shape_string(weight.shape()));
    const int64_t V = weight.size(0);
    LINARCH_CHECK(V <= std::numeric_limits<int32_t>::max(), "{}: weight: V = {} does not fit the int32 token ids", op,
                  V);
    if (present(logprobs)) check_operand(op, "logprobs", *logprobs, dtype, {B});
    LINARCH_CHECK(int64_t(tokens.size()) == B, "{}: tokens: expected {} entries (one per row of hidden), got {}", op, B,
                  tokens.size());
    LINARCH_CHECK(int64_t(rngs.size()) == B, "{}: rngs: expected {} streams (one per row of hidden), got {}", op, B,
                  rngs.size());
    check_fused_options(op, options);
    LINARCH_CHECK(tiling.vocab_tile > 0, "{}: tiling.vocab_tile must be > 0, got {}", op, tiling.vocab_tile);
    LINARCH_CHECK(tiling.candidates > 0, "{}: tiling.candidates must be > 0, got {}", op, tiling.candidates);
    if (B == 0) return;

    std::vector<cpu::NoiseKey> keys(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) keys[size_t(b)] = noise_key(rngs[size_t(b)]);
    const cpu::FusedSamplingParams params{options.temperature, options.top_k,     options.top_p,
                                          options.min_p,       tiling.vocab_tile, tiling.candidates};
    dispatch(dtype, [&](auto tag) {
        using T = decltype(tag);
        cpu::lm_head_sample<T>(tokens.data(), data_or_null<T>(logprobs), hidden.data<T>(), weight.data<T>(),
                               keys.data(), params, B, D, V);
    });
    if (options.temperature == 0) return;
    for (RngStream& rng : rngs) advance_past_draw(rng, V);
}

void advance_past_draw(RngStream& rng, int64_t vocab_size) {
    rng = RngStream(rng.seed(), rng.stream(), rng.counter() + blocks_per_draw(vocab_size));
}

double sampling_gumbel_noise(const RngStream& rng, int64_t vocab_index) {
    LINARCH_CHECK(vocab_index >= 0, "sampling_gumbel_noise: vocab_index must be ≥ 0, got {}", vocab_index);
    return cpu::gumbel_noise(noise_key(rng), vocab_index);
}

}  // namespace linarch::ops
