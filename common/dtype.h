// Storage dtypes of checkpoint tensors, their safetensors names and sizes, and scalar
// conversions to and from float. One table: adding a dtype is one row here and one kernel row.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string_view>

namespace shoal {

enum class DType : uint8_t { kF32, kF16, kBF16, kF8E4M3 };

struct DTypeInfo {
  DType dtype;
  std::string_view name;  // as safetensors spells it
  int64_t bytes;          // per element
};

inline constexpr DTypeInfo kDTypes[] = {
    {DType::kF32, "F32", 4},
    {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2},
    {DType::kF8E4M3, "F8_E4M3", 1},
};

inline const DTypeInfo& dtype_info(DType d) { return kDTypes[static_cast<int>(d)]; }
inline std::string_view dtype_name(DType d) { return dtype_info(d).name; }
inline int64_t dtype_bytes(DType d) { return dtype_info(d).bytes; }
inline std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& info : kDTypes)
    if (info.name == name) return info.dtype;
  return std::nullopt;
}

// ---- scalar conversions -------------------------------------------------------------------

inline float bf16_to_float(uint16_t h) { return std::bit_cast<float>(uint32_t(h) << 16); }

// Round to nearest even, as torch does; NaN stays NaN.
inline uint16_t float_to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if (std::isnan(f)) return 0x7FC0;
  u += 0x7FFF + ((u >> 16) & 1);
  return uint16_t(u >> 16);
}

inline float f16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F;
  const uint32_t man = h & 0x3FF;
  if (exp == 0x1F) return std::bit_cast<float>(sign | 0x7F800000u | (man << 13));
  // Normal and subnormal alike: place the 5-bit exponent and mantissa in a float, scale by
  // 2^112 to move the bias from 15 to 127 (subnormal halves become normal floats exactly).
  const float mag = std::bit_cast<float>((exp << 23 | man << 13)) * 0x1p112f;
  return sign ? -mag : mag;
}

// e4m3fn: 1 sign, 4 exponent bits (bias 7), 3 mantissa bits, no infinities, max 448.
// The bits placed into a float's exponent/mantissa fields give 2^(e-127)(1+m/8) for e > 0 and
// m * 2^-129 for e == 0 (a float subnormal); times 2^120 that is exactly the e4m3 value.
// Written branch-free so that loops over a row vectorise.
inline float fp8_e4m3_to_float(uint8_t x) {
  const float mag = std::bit_cast<float>(uint32_t(x & 0x7F) << 20) * 0x1p120f;
  return std::bit_cast<float>(std::bit_cast<uint32_t>(mag) | (uint32_t(x & 0x80) << 24));
}

// Nearest e4m3fn value, ties to even, saturating at +-448 (the quantizer's clamp).
uint8_t float_to_fp8_e4m3(float f);

}  // namespace shoal
