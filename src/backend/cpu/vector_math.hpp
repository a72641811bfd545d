// Element-wise math written so that GCC vectorises the loops it sits in (no libm call, no branch):
// the CPU kernels are built with -march=x86-64-v3 but without -ffast-math (NaN checks must keep
// working), so std::exp in a loop stays one scalar libm call per element, while std::fma here is one
// FMA instruction.
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace linarch::cpu {

// exp(x) in float within 2 ulp of the correctly rounded value on [−87.3, 88.7] (Cody–Waite range
// reduction x = n·ln2 + r, |r| ≤ ln2/2, then Cephes' degree-6 minimax polynomial for e^r). Below that
// the result is denormal (scaled in two steps, 2^⌊n/2⌋ · 2^⌈n/2⌉, so both factors stay normal), 0 for
// x ≤ −104 (e^−104 is under half the least denormal) and for −∞; +∞ above 88.73; NaN stays NaN.
// n comes from the float rounding trick (adding 1.5·2²³), not from a float-to-int conversion, which
// would be undefined for NaN.
inline float exp_approx(float x) {
    x = x < -104.0f ? -104.0f : x;  // written as compares so that NaN passes through
    x = x > 88.8f ? 88.8f : x;
    constexpr float kRound = 12582912.0f;  // 1.5·2²³: adding it rounds to an integer in the low bits
    const float shifted = std::fma(x, 1.44269504088896341f, kRound);
    const float n = shifted - kRound;
    const int32_t n_int = int32_t(std::bit_cast<uint32_t>(shifted) & 0x7fffffu) - 0x400000;
    float r = std::fma(n, -0.693359375f, x);  // ln2 split: the high part has 9 bits, n·high is exact
    r = std::fma(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = std::fma(p, r, 1.3981999507e-3f);
    p = std::fma(p, r, 8.3334519073e-3f);
    p = std::fma(p, r, 4.1665795894e-2f);
    p = std::fma(p, r, 1.6666665459e-1f);
    p = std::fma(p, r, 5.0000001201e-1f);
    p = std::fma(p * r, r, r) + 1.0f;
    const int32_t half = n_int >> 1;
    const float scale_lo = std::bit_cast<float>(uint32_t(half + 127) << 23);
    const float scale_hi = std::bit_cast<float>(uint32_t(n_int - half + 127) << 23);
    return p * scale_lo * scale_hi;
}

// exp in the kernels' precision: the vectorisable form for float, libm for double (the f64 paths
// are the tight references, 1e-10, and not the fast path).
template <typename T> inline T exp_of(T x) {
    if constexpr (std::is_same_v<T, float>) return exp_approx(x);
    else return std::exp(x);
}

}  // namespace linarch::cpu
