// Storage dtypes of checkpoint tensors, their safetensors names and sizes, and scalar
// conversions to and from float. One table: adding a dtype is one row here and one kernel row.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string_view>

namespace shoal {

// The safetensors dtypes, then the ggml block types a GGUF file may hold (docs/gguf.md). A ggml
// type stores `block` weights of a row in `bytes` bytes (ggml's block layouts, gguf-types.md);
// the element types have block 1.
enum class DType : uint8_t {
  kF32, kF16, kBF16, kF8E4M3,
  kQ4_0, kQ4_1, kQ5_0, kQ5_1, kQ8_0, kQ2_K, kQ3_K, kQ4_K, kQ5_K, kQ6_K, kQ8_K,
  kIQ2_XXS, kIQ2_XS, kIQ3_XXS, kIQ1_S, kIQ4_NL, kIQ3_S, kIQ2_S, kIQ4_XS, kIQ1_M,
};

struct DTypeInfo {
  DType dtype;
  std::string_view name;  // as safetensors (or, for ggml types, gguf-py) spells it
  int64_t bytes;          // per block
  int64_t block = 1;      // weights per block
  int ggml_id = -1;       // GGMLQuantizationType id; -1: none
  bool safetensors = false;
};

inline constexpr DTypeInfo kDTypes[] = {
    {DType::kF32, "F32", 4, 1, 0, true},
    {DType::kF16, "F16", 2, 1, 1, true},
    {DType::kBF16, "BF16", 2, 1, 30, true},
    {DType::kF8E4M3, "F8_E4M3", 1, 1, -1, true},
    {DType::kQ4_0, "Q4_0", 18, 32, 2},
    {DType::kQ4_1, "Q4_1", 20, 32, 3},
    {DType::kQ5_0, "Q5_0", 22, 32, 6},
    {DType::kQ5_1, "Q5_1", 24, 32, 7},
    {DType::kQ8_0, "Q8_0", 34, 32, 8},
    {DType::kQ2_K, "Q2_K", 84, 256, 10},
    {DType::kQ3_K, "Q3_K", 110, 256, 11},
    {DType::kQ4_K, "Q4_K", 144, 256, 12},
    {DType::kQ5_K, "Q5_K", 176, 256, 13},
    {DType::kQ6_K, "Q6_K", 210, 256, 14},
    {DType::kQ8_K, "Q8_K", 292, 256, 15},
    {DType::kIQ2_XXS, "IQ2_XXS", 66, 256, 16},
    {DType::kIQ2_XS, "IQ2_XS", 74, 256, 17},
    {DType::kIQ3_XXS, "IQ3_XXS", 98, 256, 18},
    {DType::kIQ1_S, "IQ1_S", 50, 256, 19},
    {DType::kIQ4_NL, "IQ4_NL", 18, 32, 20},
    {DType::kIQ3_S, "IQ3_S", 110, 256, 21},
    {DType::kIQ2_S, "IQ2_S", 82, 256, 22},
    {DType::kIQ4_XS, "IQ4_XS", 136, 256, 23},
    {DType::kIQ1_M, "IQ1_M", 56, 256, 29},
};

constexpr const DTypeInfo& dtype_info(DType d) { return kDTypes[static_cast<int>(d)]; }
inline std::string_view dtype_name(DType d) { return dtype_info(d).name; }
// Bytes per element of an element type (block 1); for a ggml block type, bytes per block.
constexpr int64_t dtype_bytes(DType d) { return dtype_info(d).bytes; }
constexpr int64_t dtype_block(DType d) { return dtype_info(d).block; }
constexpr bool dtype_is_block(DType d) { return dtype_info(d).block > 1; }
// Bytes of a row of `cols` weights (cols a whole number of blocks).
constexpr int64_t dtype_row_bytes(DType d, int64_t cols) { return cols / dtype_info(d).block * dtype_info(d).bytes; }
// safetensors dtype names only.
inline std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& info : kDTypes)
    if (info.safetensors && info.name == name) return info.dtype;
  return std::nullopt;
}
inline std::optional<DType> dtype_from_ggml_id(uint32_t id) {
  for (const auto& info : kDTypes)
    if (info.ggml_id >= 0 && uint32_t(info.ggml_id) == id) return info.dtype;
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
