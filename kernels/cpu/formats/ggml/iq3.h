// The 3-bit IQ types: 256 weights in 32-weight groups of four 8-weight runs; each run is two
// entries of a grid of 4 magnitudes (grids.h) plus 8 signs, times a group scale. Weight j of a
// run is (db * grid value) * (sign bit j ? -1 : 1), values 0..3 from the first entry, 4..7 from
// the second.
#pragma once

#include "kernels/cpu/formats/ggml/block.h"
#include "kernels/cpu/formats/ggml/grids.h"

namespace shoal::kernels::cpu::ggml {
namespace {

inline void iq3_run(float db, const uint8_t* grid0, const uint8_t* grid1, uint8_t signs, float* y) {
  for (int j = 0; j < 4; ++j) {
    y[j] = db * float(grid0[j]) * ((signs >> j) & 1 ? -1.f : 1.f);
    y[j + 4] = db * float(grid1[j]) * ((signs >> (j + 4)) & 1 ? -1.f : 1.f);
  }
}

}  // namespace

// IQ3_XXS, 98 bytes: d f16 @0, qs[64] @2 (8 grid indices per group, two per run), then per group
// a u32 @66+4g with run r's 7-bit sign code at bits 7r and the 4-bit scale s in bits 28..31;
// db = (d * (0.5 + s)) * 0.5. Grid: values 4, 12, ..., 52, 62.
template <>
inline void dequantize_block<DType::kIQ3_XXS>(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  for (int g = 0; g < 8; ++g) {
    const uint8_t* qs = b + 2 + 8 * g;
    const uint32_t aux = load_u32(b + 66 + 4 * g);
    const float db = d * (0.5f + float(aux >> 28)) * 0.5f;
    for (int r = 0; r < 4; ++r)
      iq3_run(db, kIq3xxsGrid[qs[2 * r]].data(), kIq3xxsGrid[qs[2 * r + 1]].data(),
              iq_signs((aux >> (7 * r)) & 127), y + 32 * g + 8 * r);
  }
}

// IQ3_S, 110 bytes: d f16 @0, qs[64] @2 (low 8 bits of 8 grid indices per group), qh[8] @66
// (group g: bit k is bit 8 of the group's index k), signs[32] @74 (all 8 sign bits per run),
// scales[4] @106 (groups 2p, 2p+1: low, high nibble s of byte p; db = d * (1 + 2s)). Grid:
// values 1, 3, ..., 15.
template <>
inline void dequantize_block<DType::kIQ3_S>(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  for (int g = 0; g < 8; ++g) {
    const int s = (b[106 + g / 2] >> (4 * (g % 2))) & 0xF;
    const float db = d * float(1 + 2 * s);
    const uint8_t* qs = b + 2 + 8 * g;
    const uint8_t qh = b[66 + g];
    for (int r = 0; r < 4; ++r) {
      const int i0 = qs[2 * r] | (((qh >> (2 * r)) & 1) << 8);
      const int i1 = qs[2 * r + 1] | (((qh >> (2 * r + 1)) & 1) << 8);
      iq3_run(db, kIq3sGrid[i0].data(), kIq3sGrid[i1].data(), b[74 + 4 * g + r], y + 32 * g + 8 * r);
    }
  }
}

// Integer forms (IntBlock): q = signed grid value; IQ3_XXS's db = d * (2s + 1) / 4, IQ3_S's d * (2s + 1).
namespace {
inline void iq3_int_run(const uint8_t* grid0, const uint8_t* grid1, uint8_t signs, int8_t* q) {
  for (int j = 0; j < 4; ++j) {
    q[j] = int8_t((signs >> j) & 1 ? -int(grid0[j]) : int(grid0[j]));
    q[j + 4] = int8_t((signs >> (j + 4)) & 1 ? -int(grid1[j]) : int(grid1[j]));
  }
}
}  // namespace

template <>
inline void unpack_block<DType::kIQ3_XXS>(const uint8_t* b, IntBlock& w) {
  w.d = load_f16(b) * 0.25f;
  w.dmin = 0.0f;
  for (int g = 0; g < 8; ++g) {
    const uint8_t* qs = b + 2 + 8 * g;
    const uint32_t aux = load_u32(b + 66 + 4 * g);
    w.sc[2 * g] = w.sc[2 * g + 1] = int16_t(2 * (aux >> 28) + 1);
    w.mn[2 * g] = w.mn[2 * g + 1] = 0;
    for (int r = 0; r < 4; ++r)
      iq3_int_run(kIq3xxsGrid[qs[2 * r]].data(), kIq3xxsGrid[qs[2 * r + 1]].data(), iq_signs((aux >> (7 * r)) & 127),
                  w.q + 32 * g + 8 * r);
  }
}

template <>
inline void unpack_block<DType::kIQ3_S>(const uint8_t* b, IntBlock& w) {
  w.d = load_f16(b);
  w.dmin = 0.0f;
  for (int g = 0; g < 8; ++g) {
    const int s = (b[106 + g / 2] >> (4 * (g % 2))) & 0xF;
    w.sc[2 * g] = w.sc[2 * g + 1] = int16_t(1 + 2 * s);
    w.mn[2 * g] = w.mn[2 * g + 1] = 0;
    const uint8_t* qs = b + 2 + 8 * g;
    const uint8_t qh = b[66 + g];
    for (int r = 0; r < 4; ++r) {
      const int i0 = qs[2 * r] | (((qh >> (2 * r)) & 1) << 8);
      const int i1 = qs[2 * r + 1] | (((qh >> (2 * r + 1)) & 1) << 8);
      iq3_int_run(kIq3sGrid[i0].data(), kIq3sGrid[i1].data(), b[74 + 4 * g + r], w.q + 32 * g + 8 * r);
    }
  }
}

}  // namespace shoal::kernels::cpu::ggml
