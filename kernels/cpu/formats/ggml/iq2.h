// The 2-bit IQ types: 256 weights in 32-weight groups of four 8-weight runs. Each run is one
// entry of a grid of 8 magnitudes (levels 8, 25, 43; grids.h) plus 8 signs, times a scale
// db = (d * (0.5 + s)) * 0.25 from a 4-bit group (or half-group) scale s. Weight j of a run is
// (db * grid[j]) * (sign bit j ? -1 : 1).
#pragma once

#include "kernels/cpu/formats/ggml/block.h"
#include "kernels/cpu/formats/ggml/grids.h"

namespace shoal::kernels::cpu::ggml {
namespace {

// One 8-weight run: y[j] = (db * grid[j]) * (bit j of signs ? -1 : 1).
inline void iq2_run(float db, const uint8_t* grid, uint8_t signs, float* y) {
  for (int j = 0; j < 8; ++j) y[j] = db * float(grid[j]) * ((signs >> j) & 1 ? -1.f : 1.f);
}

inline float iq2_scale(float d, uint32_t s) { return d * (0.5f + float(s)) * 0.25f; }

}  // namespace

// IQ2_XXS, 66 bytes: d f16 @0, then per group 8 bytes @2+8g: four grid indices (bytes 0..3) and
// a u32 (bytes 4..7) with run r's 7-bit sign code at bits 7r and the group scale in bits 28..31.
template <>
inline void dequantize_block<DType::kIQ2_XXS>(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  for (int g = 0; g < 8; ++g) {
    const uint8_t* q = b + 2 + 8 * g;
    const uint32_t aux = load_u32(q + 4);
    const float db = iq2_scale(d, aux >> 28);
    for (int r = 0; r < 4; ++r)
      iq2_run(db, kIq2xxsGrid[q[r]].data(), iq_signs((aux >> (7 * r)) & 127), y + 32 * g + 8 * r);
  }
}

// IQ2_XS, 74 bytes: d f16 @0, qs u16[32] @2 (per run: grid index in bits 0..8, sign code in bits
// 9..15), scales[8] @66 (group g: low nibble for runs 0-1, high nibble for runs 2-3).
template <>
inline void dequantize_block<DType::kIQ2_XS>(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  for (int g = 0; g < 8; ++g) {
    const uint8_t s = b[66 + g];
    const float db[2] = {iq2_scale(d, s & 0xF), iq2_scale(d, s >> 4)};
    for (int r = 0; r < 4; ++r) {
      const uint16_t q = load_u16(b + 2 + 2 * (4 * g + r));
      iq2_run(db[r / 2], kIq2xsGrid[q & 511].data(), iq_signs(q >> 9), y + 32 * g + 8 * r);
    }
  }
}

// IQ2_S, 82 bytes: d f16 @0, qs[32] @2 (low 8 bits of each run's grid index), signs[32] @34 (all
// 8 sign bits of each run), qh[8] @66 (group g: bits 2r..2r+1 are bits 8..9 of run r's index),
// scales[8] @74 (as IQ2_XS).
template <>
inline void dequantize_block<DType::kIQ2_S>(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  for (int g = 0; g < 8; ++g) {
    const uint8_t s = b[74 + g];
    const float db[2] = {iq2_scale(d, s & 0xF), iq2_scale(d, s >> 4)};
    const uint8_t qh = b[66 + g];
    for (int r = 0; r < 4; ++r) {
      const int idx = b[2 + 4 * g + r] | (((qh >> (2 * r)) & 3) << 8);
      iq2_run(db[r / 2], kIq2sGrid[idx].data(), b[34 + 4 * g + r], y + 32 * g + 8 * r);
    }
  }
}

// Integer forms (IntBlock): db = d * (2s + 1) / 8, so d / 8 with sc = 2s + 1; q = signed grid value.
namespace {
inline void iq2_int_run(const uint8_t* grid, uint8_t signs, int8_t* q) {
  for (int j = 0; j < 8; ++j) q[j] = int8_t((signs >> j) & 1 ? -int(grid[j]) : int(grid[j]));
}
inline void iq2_int_scales(IntBlock& w, int g, uint32_t s_lo, uint32_t s_hi) {
  w.sc[2 * g] = int16_t(2 * s_lo + 1);
  w.sc[2 * g + 1] = int16_t(2 * s_hi + 1);
  w.mn[2 * g] = w.mn[2 * g + 1] = 0;
}
}  // namespace

template <>
inline void unpack_block<DType::kIQ2_XXS>(const uint8_t* b, IntBlock& w) {
  w.d = load_f16(b) * 0.125f;
  w.dmin = 0.0f;
  for (int g = 0; g < 8; ++g) {
    const uint8_t* q = b + 2 + 8 * g;
    const uint32_t aux = load_u32(q + 4);
    iq2_int_scales(w, g, aux >> 28, aux >> 28);
    for (int r = 0; r < 4; ++r) iq2_int_run(kIq2xxsGrid[q[r]].data(), iq_signs((aux >> (7 * r)) & 127), w.q + 32 * g + 8 * r);
  }
}

template <>
inline void unpack_block<DType::kIQ2_XS>(const uint8_t* b, IntBlock& w) {
  w.d = load_f16(b) * 0.125f;
  w.dmin = 0.0f;
  for (int g = 0; g < 8; ++g) {
    const uint8_t s = b[66 + g];
    iq2_int_scales(w, g, s & 0xF, s >> 4);
    for (int r = 0; r < 4; ++r) {
      const uint16_t q = load_u16(b + 2 + 2 * (4 * g + r));
      iq2_int_run(kIq2xsGrid[q & 511].data(), iq_signs(q >> 9), w.q + 32 * g + 8 * r);
    }
  }
}

template <>
inline void unpack_block<DType::kIQ2_S>(const uint8_t* b, IntBlock& w) {
  w.d = load_f16(b) * 0.125f;
  w.dmin = 0.0f;
  for (int g = 0; g < 8; ++g) {
    const uint8_t s = b[74 + g];
    iq2_int_scales(w, g, s & 0xF, s >> 4);
    const uint8_t qh = b[66 + g];
    for (int r = 0; r < 4; ++r) {
      const int idx = b[2 + 4 * g + r] | (((qh >> (2 * r)) & 3) << 8);
      iq2_int_run(kIq2sGrid[idx].data(), b[34 + 4 * g + r], w.q + 32 * g + 8 * r);
    }
  }
}

}  // namespace shoal::kernels::cpu::ggml
