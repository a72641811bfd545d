#include "core/dtype.hpp"

#include "core/error.hpp"

namespace linarch {

std::string_view dtype_name(DType t) {
    switch (t) {
        case DType::f32: return "F32";
        case DType::f64: return "F64";
        case DType::bf16: return "BF16";
        case DType::f16: return "F16";
    }
    return "?";
}

DType dtype_from_name(std::string_view name, std::string_view where) {
    if (name == "F32") return DType::f32;
    if (name == "F64") return DType::f64;
    if (name == "BF16") return DType::bf16;
    if (name == "F16") return DType::f16;
    fail("{}: unsupported dtype \"{}\" (expected one of F32, F64, BF16, F16)", where, name);
}

uint16_t float_to_f16(float value) {
    uint32_t bits;
    std::memcpy(&bits, &value, 4);
    const uint32_t sign = (bits >> 16) & 0x8000u;
    const uint32_t abs_bits = bits & 0x7fffffffu;
    if (abs_bits > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
    if (abs_bits >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
    if (abs_bits < 0x38800000u) {
        // Subnormal half (or zero): scale into the 10-bit mantissa with round-to-nearest-even.
        if (abs_bits < 0x33000000u) return static_cast<uint16_t>(sign);
        const uint32_t exponent = abs_bits >> 23;
        const uint32_t mantissa = (abs_bits & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126u - exponent;  // 14 .. 24
        uint32_t half_mantissa = mantissa >> shift;
        const uint32_t remainder = mantissa & ((1u << shift) - 1u);
        const uint32_t halfway = 1u << (shift - 1u);
        if (remainder > halfway || (remainder == halfway && (half_mantissa & 1u))) ++half_mantissa;
        return static_cast<uint16_t>(sign | half_mantissa);
    }
    // Normal: rebias exponent 127 -> 15, round the 13 dropped mantissa bits to nearest even.
    uint32_t rebased = abs_bits - (112u << 23);
    rebased += 0xfffu + ((rebased >> 13) & 1u);
    return static_cast<uint16_t>(sign | (rebased >> 13));
}

float f16_to_float(uint16_t value) {
    const uint32_t sign = static_cast<uint32_t>(value & 0x8000u) << 16;
    const uint32_t exponent = (value >> 10) & 0x1fu;
    uint32_t mantissa = value & 0x3ffu;
    uint32_t bits;
    if (exponent == 0x1fu) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        bits = sign;
    } else {
        // Subnormal half: normalise the mantissa.
        uint32_t e = 113;
        while ((mantissa & 0x400u) == 0) {
            mantissa <<= 1;
            --e;
        }
        bits = sign | (e << 23) | ((mantissa & 0x3ffu) << 13);
    }
    float out;
    std::memcpy(&out, &bits, 4);
    return out;
}

}  // namespace linarch
