// The 1-bit IQ types: 256 weights in 32-weight groups of four 8-weight runs. Each run is one
// entry of a grid of 2048 ternary patterns (values -1, 0, 1; grids.h) shifted by a per-run
// delta of +-1/8, times a scale dl = d * (2s + 1) from a 3-bit scale s. Weight j of a run is
// dl * (grid[j] + delta).
#pragma once

#include "kernels/cpu/formats/ggml/block.h"
#include "kernels/cpu/formats/ggml/grids.h"

namespace shoal::kernels::cpu::ggml {
namespace {

constexpr float kIq1Delta = 0.125f;

inline void iq1_run(float dl, const int8_t* grid, float delta, float* y) {
  for (int j = 0; j < 8; ++j) y[j] = dl * (float(grid[j]) + delta);
}

}  // namespace

// IQ1_S, 50 bytes: d f16 @0, qs[32] @2 (low 8 bits of each run's 11-bit grid index), qh u16[8]
// @34, one per group: bits 3r..3r+2 are index bits 8..10 of run r, bits 12..14 the scale s, bit
// 15 the sign of the group's delta (set: negative).
template <>
inline void dequantize_block<DType::kIQ1_S>(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  for (int g = 0; g < 8; ++g) {
    const uint16_t qh = load_u16(b + 34 + 2 * g);
    const float dl = d * float(2 * ((qh >> 12) & 7) + 1);
    const float delta = qh & 0x8000 ? -kIq1Delta : kIq1Delta;
    for (int r = 0; r < 4; ++r) {
      const int idx = b[2 + 4 * g + r] | (((qh >> (3 * r)) & 7) << 8);
      iq1_run(dl, kIq1sGrid[idx].data(), delta, y + 32 * g + 8 * r);
    }
  }
}

// IQ1_M, 56 bytes: qs[32] @0 (low 8 bits of each run's grid index), qh[16] @32 (two per group,
// each covering two runs: low nibble for the first, high for the second; bits 0..2 of a nibble
// are index bits 8..10, bit 3 the sign of the run's delta), scales u16[4] @48. Group g takes
// two 3-bit scales from scales[g/2] at bits 6*(g%2) (runs 0-1) and 6*(g%2)+3 (runs 2-3); the
// top nibbles of the four u16, first to last, are the bits 0..15 of the fp16 super-scale d.
template <>
inline void dequantize_block<DType::kIQ1_M>(const uint8_t* b, float* y) {
  uint16_t sc[4];
  for (int i = 0; i < 4; ++i) sc[i] = load_u16(b + 48 + 2 * i);
  const float d = f16_to_float(uint16_t((sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) |
                                        (sc[3] & 0xF000)));
  for (int g = 0; g < 8; ++g) {
    const int shift = 6 * (g % 2);
    const float dl[2] = {d * float(2 * ((sc[g / 2] >> shift) & 7) + 1),
                         d * float(2 * ((sc[g / 2] >> (shift + 3)) & 7) + 1)};
    for (int r = 0; r < 4; ++r) {
      const int h = b[32 + 2 * g + r / 2] >> (4 * (r % 2));  // this run's nibble
      const int idx = b[4 * g + r] | ((h & 7) << 8);
      const float delta = h & 8 ? -kIq1Delta : kIq1Delta;
      iq1_run(dl[r / 2], kIq1sGrid[idx].data(), delta, y + 32 * g + 8 * r);
    }
  }
}

// Integer forms (IntBlock): grid + delta = (8 grid +- 1) / 8, so q = 8 grid +- 1, d / 8, sc = 2s + 1.
template <>
inline void unpack_block<DType::kIQ1_S>(const uint8_t* b, IntBlock& w) {
  w.d = load_f16(b) * 0.125f;
  w.dmin = 0.0f;
  for (int g = 0; g < 8; ++g) {
    const uint16_t qh = load_u16(b + 34 + 2 * g);
    w.sc[2 * g] = w.sc[2 * g + 1] = int16_t(2 * ((qh >> 12) & 7) + 1);
    w.mn[2 * g] = w.mn[2 * g + 1] = 0;
    const int delta = qh & 0x8000 ? -1 : 1;
    for (int r = 0; r < 4; ++r) {
      const int8_t* grid = kIq1sGrid[b[2 + 4 * g + r] | (((qh >> (3 * r)) & 7) << 8)].data();
      for (int j = 0; j < 8; ++j) w.q[32 * g + 8 * r + j] = int8_t(8 * grid[j] + delta);
    }
  }
}

template <>
inline void unpack_block<DType::kIQ1_M>(const uint8_t* b, IntBlock& w) {
  uint16_t sc[4];
  for (int i = 0; i < 4; ++i) sc[i] = load_u16(b + 48 + 2 * i);
  w.d = f16_to_float(uint16_t((sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) | (sc[3] & 0xF000))) *
        0.125f;
  w.dmin = 0.0f;
  for (int g = 0; g < 8; ++g) {
    const int shift = 6 * (g % 2);
    w.sc[2 * g] = int16_t(2 * ((sc[g / 2] >> shift) & 7) + 1);
    w.sc[2 * g + 1] = int16_t(2 * ((sc[g / 2] >> (shift + 3)) & 7) + 1);
    w.mn[2 * g] = w.mn[2 * g + 1] = 0;
    for (int r = 0; r < 4; ++r) {
      const int h = b[32 + 2 * g + r / 2] >> (4 * (r % 2));
      const int8_t* grid = kIq1sGrid[b[4 * g + r] | ((h & 7) << 8)].data();
      const int delta = h & 8 ? -1 : 1;
      for (int j = 0; j < 8; ++j) w.q[32 * g + 8 * r + j] = int8_t(8 * grid[j] + delta);
    }
  }
}

}  // namespace shoal::kernels::cpu::ggml
