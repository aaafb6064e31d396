// The 32-weight block types: a fp16 scale d (and, for the _1 types, a fp16 offset m) and one
// small integer q per weight. Weight j of the block is q_j * d (the _0 types, q centred on zero)
// or q_j * d + m (the _1 types). Nibbles: byte j of qs holds weight j in its low half and weight
// j + 16 in its high half; the Q5 types keep the fifth bits in a 32-bit word qh (bit j: weight j).
#pragma once

#include "kernels/cpu/formats/ggml/block.h"

namespace shoal::kernels::cpu::ggml {

// Q4_0, 18 bytes: d f16 @0, qs[16] @2; q = nibble - 8.
template <>
inline void dequantize_block<DType::kQ4_0>(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = float(int(qs[j] & 0xF) - 8) * d;
    y[j + 16] = float(int(qs[j] >> 4) - 8) * d;
  }
}

// Q4_1, 20 bytes: d f16 @0, m f16 @2, qs[16] @4; q = nibble.
template <>
inline void dequantize_block<DType::kQ4_1>(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const float m = load_f16(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = float(qs[j] & 0xF) * d + m;
    y[j + 16] = float(qs[j] >> 4) * d + m;
  }
}

// Q5_0, 22 bytes: d f16 @0, qh u32 @2, qs[16] @6; q = (nibble | fifth bit << 4) - 16.
template <>
inline void dequantize_block<DType::kQ5_0>(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const uint32_t qh = load_u32(b + 2);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int q0 = int((qs[j] & 0xF) | (((qh >> j) & 1) << 4)) - 16;
    const int q1 = int((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16;
    y[j] = float(q0) * d;
    y[j + 16] = float(q1) * d;
  }
}

// Q5_1, 24 bytes: d f16 @0, m f16 @2, qh u32 @4, qs[16] @8; q = nibble | fifth bit << 4.
template <>
inline void dequantize_block<DType::kQ5_1>(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const float m = load_f16(b + 2);
  const uint32_t qh = load_u32(b + 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int q0 = int((qs[j] & 0xF) | (((qh >> j) & 1) << 4));
    const int q1 = int((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4));
    y[j] = float(q0) * d + m;
    y[j + 16] = float(q1) * d + m;
  }
}

// Q8_0, 34 bytes: d f16 @0, qs int8[32] @2.
template <>
inline void dequantize_block<DType::kQ8_0>(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 32; ++j) y[j] = float(int8_t(qs[j])) * d;
}

// Integer forms (IntBlock): one scale d, sc = 1; the _1 types' offset as dmin = m, mn = -1.
template <>
inline void unpack_block<DType::kQ4_0>(const uint8_t* b, IntBlock& w) {
  w.d = load_f16(b);
  w.dmin = 0.0f;
  for (int j = 0; j < 16; ++j) {
    w.q[j] = int8_t(int(b[2 + j] & 0xF) - 8);
    w.q[j + 16] = int8_t(int(b[2 + j] >> 4) - 8);
  }
  w.sc[0] = w.sc[1] = 1;
  w.mn[0] = w.mn[1] = 0;
}

template <>
inline void unpack_block<DType::kQ4_1>(const uint8_t* b, IntBlock& w) {
  w.d = load_f16(b);
  w.dmin = load_f16(b + 2);
  for (int j = 0; j < 16; ++j) {
    w.q[j] = int8_t(b[4 + j] & 0xF);
    w.q[j + 16] = int8_t(b[4 + j] >> 4);
  }
  w.sc[0] = w.sc[1] = 1;
  w.mn[0] = w.mn[1] = -1;
}

template <>
inline void unpack_block<DType::kQ5_0>(const uint8_t* b, IntBlock& w) {
  w.d = load_f16(b);
  w.dmin = 0.0f;
  const uint32_t qh = load_u32(b + 2);
  for (int j = 0; j < 16; ++j) {
    w.q[j] = int8_t(int((b[6 + j] & 0xF) | (((qh >> j) & 1) << 4)) - 16);
    w.q[j + 16] = int8_t(int((b[6 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16);
  }
  w.sc[0] = w.sc[1] = 1;
  w.mn[0] = w.mn[1] = 0;
}

template <>
inline void unpack_block<DType::kQ5_1>(const uint8_t* b, IntBlock& w) {
  w.d = load_f16(b);
  w.dmin = load_f16(b + 2);
  const uint32_t qh = load_u32(b + 4);
  for (int j = 0; j < 16; ++j) {
    w.q[j] = int8_t((b[8 + j] & 0xF) | (((qh >> j) & 1) << 4));
    w.q[j + 16] = int8_t((b[8 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4));
  }
  w.sc[0] = w.sc[1] = 1;
  w.mn[0] = w.mn[1] = -1;
}

template <>
inline void unpack_block<DType::kQ8_0>(const uint8_t* b, IntBlock& w) {
  w.d = load_f16(b);
  w.dmin = 0.0f;
  std::memcpy(w.q, b + 2, 32);
  w.sc[0] = w.sc[1] = 1;
  w.mn[0] = w.mn[1] = 0;
}

}  // namespace shoal::kernels::cpu::ggml
