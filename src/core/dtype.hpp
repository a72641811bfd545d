// Element types. f32 is the CPU compute type; f64 is the reference type every fast path is
// checked against; bf16/f16 are storage types (checkpoints, GPU compute).
#pragma once
#include <cstdint>
#include <cstring>
#include <string_view>

namespace linarch {

enum class DType : uint8_t { f32, f64, bf16, f16 };

constexpr size_t dtype_size(DType t) {
    switch (t) {
        case DType::f32: return 4;
        case DType::f64: return 8;
        case DType::bf16: return 2;
        case DType::f16: return 2;
    }
    return 0;
}

// Names as the safetensors format spells them ("F32", "BF16", ...).
std::string_view dtype_name(DType t);
// Parses a safetensors dtype name; throws Error naming `where` for anything else.
DType dtype_from_name(std::string_view name, std::string_view where);

template <typename T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }

// bf16: the top 16 bits of an f32, rounded to nearest even (NaN stays a quiet NaN).
inline uint16_t float_to_bf16(float value) {
    uint32_t bits;
    std::memcpy(&bits, &value, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
    uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
    return static_cast<uint16_t>((bits + rounding) >> 16);
}

inline float bf16_to_float(uint16_t value) {
    uint32_t bits = static_cast<uint32_t>(value) << 16;
    float out;
    std::memcpy(&out, &bits, 4);
    return out;
}

// IEEE binary16, round to nearest even, with subnormals, infinities and NaN.
uint16_t float_to_f16(float value);
float f16_to_float(uint16_t value);

}  // namespace linarch
