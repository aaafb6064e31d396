// The non-linear 4-bit types: each 4-bit code selects one of 16 fixed integer levels (spaced more
// finely near zero), times a scale. Nibbles as in Q4_0: byte j of a 32-weight group holds weight j
// in its low half and weight j + 16 in its high half.
#pragma once

#include "kernels/cpu/formats/ggml/block.h"

namespace shoal::kernels::cpu::ggml {
namespace {

// The IQ4_NL levels (ggml's kvalues_iq4nl).
inline constexpr int8_t kIq4Levels[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                          1,    13,   25,  38,  53,  69,  89,  113};

}  // namespace

// IQ4_NL, 18 bytes: d f16 @0, qs[16] @2. Weight = d * level.
template <>
inline void dequantize_block<DType::kIQ4_NL>(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * float(kIq4Levels[qs[j] & 0xF]);
    y[j + 16] = d * float(kIq4Levels[qs[j] >> 4]);
  }
}

// IQ4_XS, 136 bytes: d f16 @0, scales_h u16 @2, scales_l[4] @4, qs[128] @8. Eight 32-weight
// groups with 6-bit scales biased by 32: group g takes nibble g%2 of scales_l[g/2] as its low
// four bits and bits 2g..2g+1 of scales_h above them. Weight = (d * (scale - 32)) * level.
template <>
inline void dequantize_block<DType::kIQ4_XS>(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const uint16_t scales_h = load_u16(b + 2);
  const uint8_t* scales_l = b + 4;
  for (int g = 0; g < 8; ++g) {
    const int ls = ((scales_l[g / 2] >> (4 * (g % 2))) & 0xF) | (((scales_h >> (2 * g)) & 3) << 4);
    const float dl = d * float(ls - 32);
    const uint8_t* qs = b + 8 + 16 * g;
    for (int j = 0; j < 16; ++j) {
      y[32 * g + j] = dl * float(kIq4Levels[qs[j] & 0xF]);
      y[32 * g + j + 16] = dl * float(kIq4Levels[qs[j] >> 4]);
    }
  }
}

// Integer forms (IntBlock): q = the level itself.
template <>
inline void unpack_block<DType::kIQ4_NL>(const uint8_t* b, IntBlock& w) {
  w.d = load_f16(b);
  w.dmin = 0.0f;
  for (int j = 0; j < 16; ++j) {
    w.q[j] = kIq4Levels[b[2 + j] & 0xF];
    w.q[j + 16] = kIq4Levels[b[2 + j] >> 4];
  }
  w.sc[0] = w.sc[1] = 1;
  w.mn[0] = w.mn[1] = 0;
}

template <>
inline void unpack_block<DType::kIQ4_XS>(const uint8_t* b, IntBlock& w) {
  w.d = load_f16(b);
  w.dmin = 0.0f;
  const uint16_t scales_h = load_u16(b + 2);
  for (int g = 0; g < 8; ++g) {
    const int ls = ((b[4 + g / 2] >> (4 * (g % 2))) & 0xF) | (((scales_h >> (2 * g)) & 3) << 4);
    w.sc[2 * g] = w.sc[2 * g + 1] = int16_t(ls - 32);
    w.mn[2 * g] = w.mn[2 * g + 1] = 0;
    const uint8_t* qs = b + 8 + 16 * g;
    for (int j = 0; j < 16; ++j) {
      w.q[32 * g + j] = kIq4Levels[qs[j] & 0xF];
      w.q[32 * g + j + 16] = kIq4Levels[qs[j] >> 4];
    }
  }
}

}  // namespace shoal::kernels::cpu::ggml
