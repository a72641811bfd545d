// The sampling noise of ops/fused_sampling.hpp, in one place for every backend: the CPU tile loop
// (backend/cpu/fused_sampling.cpp) and the CUDA kernel (backend/cuda/lm_head_sample.cu) include this
// header, so both draw the same noise for the same (stream position, vocabulary index).
//   g_v = −log(−log u_v),  u_v = (r + 1)/(2³² + 1),  r = word v mod 4 of philox4x32(seed, stream, counter + v/4)
// Philox4x32-10 is core/rng.cpp's (Salmon et al., SC'11), restated here so device code can call it.
// The double log and log1p are glibc's on the host and CUDA's on the device (both within 1 ulp), so
// the two may differ in the last bit of g: a draw can flip only if its two best scores are within
// ~1e-15, far inside the logits' own rounding.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define LINARCH_HOST_DEVICE __host__ __device__
#else
#define LINARCH_HOST_DEVICE
#endif

namespace linarch::noise {

// Where a row's noise comes from: an RngStream's position (core/rng.hpp).
struct NoiseKey {
    uint64_t seed, stream, counter;
};

constexpr double kTwo32Plus1 = 4294967297.0;

// The four words of philox4x32(seed, stream, counter), as core/rng.cpp.
LINARCH_HOST_DEVICE inline void philox4x32_words(uint64_t seed, uint64_t stream, uint64_t counter, uint32_t out[4]) {
    constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u, kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
    uint32_t c0 = uint32_t(counter), c1 = uint32_t(counter >> 32), c2 = uint32_t(stream), c3 = uint32_t(stream >> 32);
    uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
    for (int round = 0; round < 10; ++round) {
        const uint64_t p0 = uint64_t(kMul0) * c0, p1 = uint64_t(kMul1) * c2;
        const uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0;
        const uint32_t n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
        c0 = n0, c1 = uint32_t(p1), c2 = n2, c3 = uint32_t(p0);
        k0 += kWeyl0;
        k1 += kWeyl1;
    }
    out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

// g = −log E with E = −log u ~ Exp(1), u = (r + 1)/(2³² + 1). For u ≥ 1/2, E = −log1p(−(1 − u)) with
// 1 − u = (~r + 1)/(2³² + 1) formed exactly: subtracting u from 1 would lose E's leading digits when E is
// tiny, which is where the largest noises come from. −3.1 ≤ g ≤ 22.2.
LINARCH_HOST_DEVICE inline double gumbel_from_word(uint32_t r) {
    const double exponential = r >= 0x80000000u ? -::log1p(-(double(~r) + 1.0) / kTwo32Plus1)
                                                : -::log((double(r) + 1.0) / kTwo32Plus1);
    return -::log(exponential);
}

// g_v under `key` (a pure function of the stream position and v).
LINARCH_HOST_DEVICE inline double gumbel_noise(const NoiseKey& key, int64_t vocab_index) {
    uint32_t words[4];
    philox4x32_words(key.seed, key.stream, key.counter + uint64_t(vocab_index) / 4, words);
    return gumbel_from_word(words[vocab_index % 4]);
}

}  // namespace linarch::noise
