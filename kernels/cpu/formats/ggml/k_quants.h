// The k-quant super-blocks: 256 weights in sub-blocks of 16 or 32, each sub-block with a small
// integer scale (and, for Q2_K/Q4_K/Q5_K, a min) relative to the fp16 super-block scale d (dmin).
// Weight = (d * scale) * q - (dmin * min), or (d * scale) * q for the symmetric types, rounded in
// exactly that order. Q8_K is the float32-scaled 8-bit type ggml uses for activations.
//
// Layout of the quants: the 2-bit types (Q2_K low bits, Q3_K low bits, Q6_K high bits) pack four
// 32-weight runs into 32 bytes, run r in bits 2r..2r+1; the 4-bit types pack two runs into 32
// bytes, the first in the low nibbles. Each half (128 weights) of a super-block uses its own
// 32-byte (2-bit) or 64-byte (4-bit, Q6_K) span.
#pragma once

#include "kernels/cpu/formats/ggml/block.h"

namespace shoal::kernels::cpu::ggml {
namespace {

// Q4_K/Q5_K: eight 6-bit (scale, min) pairs in 12 bytes. Pairs 0..3: the low 6 bits of bytes
// 0..3 (scale) and 4..7 (min). Pairs 4..7: the low (scale) and high (min) nibble of bytes 8..11,
// with the top two bits of bytes 0..3 (scale) and 4..7 (min) above them.
inline void k_scale_min(int j, const uint8_t* s, int& scale, int& min) {
  if (j < 4) {
    scale = s[j] & 63;
    min = s[j + 4] & 63;
  } else {
    scale = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    min = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

}  // namespace

// Q2_K, 84 bytes: scales[16] @0 (low nibble: scale, high nibble: min, one per 16 weights),
// qs[64] @16 (2-bit q), d f16 @80, dmin f16 @82. Within a half, run r (32 weights) sits in bits
// 2r of qs; its first 16 weights use scale 2r, the next 16 scale 2r+1 (counting per half).
template <>
inline void dequantize_block<DType::kQ2_K>(const uint8_t* b, float* y) {
  const uint8_t* scales = b;
  const float d = load_f16(b + 80);
  const float dmin = load_f16(b + 82);
  for (int half = 0; half < 2; ++half) {
    const uint8_t* q = b + 16 + 32 * half;
    for (int r = 0; r < 4; ++r) {
      for (int k = 0; k < 2; ++k) {  // 16 weights per scale
        const uint8_t sc = scales[8 * half + 2 * r + k];
        const float dl = d * float(sc & 0xF);
        const float ml = dmin * float(sc >> 4);
        float* out = y + 128 * half + 32 * r + 16 * k;
        for (int l = 0; l < 16; ++l) out[l] = dl * float((q[16 * k + l] >> (2 * r)) & 3) - ml;
      }
    }
  }
}

// Q3_K, 110 bytes: hmask[32] @0 (third bit, set meaning +4 relative to the cleared case: q = low
// two bits - (bit ? 0 : 4)), qs[64] @32 (low two bits), scales[12] @96 (sixteen 6-bit scales,
// biased by 32), d f16 @108. Scale i: low nibble from byte i (i < 8, low half) or byte i-8 (high
// half), top two bits from byte 8 + i%4, bits 2*(i/4). Run r of half h takes hmask bit 4h + r.
template <>
inline void dequantize_block<DType::kQ3_K>(const uint8_t* b, float* y) {
  const uint8_t* hmask = b;
  const uint8_t* s = b + 96;
  const float d = load_f16(b + 108);
  int scale[16];
  for (int i = 0; i < 16; ++i) {
    const int lo = i < 8 ? (s[i] & 0xF) : (s[i - 8] >> 4);
    const int hi = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
    scale[i] = (lo | hi << 4) - 32;
  }
  for (int half = 0; half < 2; ++half) {
    const uint8_t* q = b + 32 + 32 * half;
    for (int r = 0; r < 4; ++r) {
      const int hbit = 4 * half + r;
      for (int k = 0; k < 2; ++k) {
        const float dl = d * float(scale[8 * half + 2 * r + k]);
        float* out = y + 128 * half + 32 * r + 16 * k;
        for (int l = 0; l < 16; ++l) {
          const int lo = (q[16 * k + l] >> (2 * r)) & 3;
          const int neg = ((hmask[16 * k + l] >> hbit) & 1) ? 0 : 4;
          out[l] = dl * float(lo - neg);
        }
      }
    }
  }
}

// Q4_K, 144 bytes: d f16 @0, dmin f16 @2, scales[12] @4 (k_scale_min), qs[128] @16. Sub-block
// 2p (32 weights) is the low nibbles, 2p+1 the high nibbles, of bytes 32p..32p+31.
template <>
inline void dequantize_block<DType::kQ4_K>(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const float dmin = load_f16(b + 2);
  const uint8_t* scales = b + 4;
  for (int p = 0; p < 4; ++p) {
    const uint8_t* q = b + 16 + 32 * p;
    int sc, m;
    k_scale_min(2 * p, scales, sc, m);
    const float d1 = d * float(sc), m1 = dmin * float(m);
    k_scale_min(2 * p + 1, scales, sc, m);
    const float d2 = d * float(sc), m2 = dmin * float(m);
    for (int l = 0; l < 32; ++l) y[64 * p + l] = d1 * float(q[l] & 0xF) - m1;
    for (int l = 0; l < 32; ++l) y[64 * p + 32 + l] = d2 * float(q[l] >> 4) - m2;
  }
}

// Q5_K, 176 bytes: d f16 @0, dmin f16 @2, scales[12] @4 (k_scale_min), qh[32] @16 (fifth bits:
// sub-block s in bit s of byte l), qs[128] @48 (low nibbles, as Q4_K).
template <>
inline void dequantize_block<DType::kQ5_K>(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const float dmin = load_f16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  for (int p = 0; p < 4; ++p) {
    const uint8_t* q = b + 48 + 32 * p;
    int sc, m;
    k_scale_min(2 * p, scales, sc, m);
    const float d1 = d * float(sc), m1 = dmin * float(m);
    k_scale_min(2 * p + 1, scales, sc, m);
    const float d2 = d * float(sc), m2 = dmin * float(m);
    for (int l = 0; l < 32; ++l)
      y[64 * p + l] = d1 * float((q[l] & 0xF) + (((qh[l] >> (2 * p)) & 1) << 4)) - m1;
    for (int l = 0; l < 32; ++l)
      y[64 * p + 32 + l] = d2 * float((q[l] >> 4) + (((qh[l] >> (2 * p + 1)) & 1) << 4)) - m2;
  }
}

// Q6_K, 210 bytes: ql[128] @0 (low nibbles), qh[64] @128 (high two bits), scales int8[16] @192
// (one per 16 weights), d f16 @208; q = 6 bits - 32. Half h: runs 0..3 (32 weights each) are the
// low nibbles of ql[64h..+32], of ql[64h+32..+32], then their high nibbles; run r's high bits are
// bits 2r of qh[32h..+32]. Weight = (d * scale) * q.
template <>
inline void dequantize_block<DType::kQ6_K>(const uint8_t* b, float* y) {
  const float d = load_f16(b + 208);
  for (int half = 0; half < 2; ++half) {
    const uint8_t* ql = b + 64 * half;
    const uint8_t* qh = b + 128 + 32 * half;
    const uint8_t* sc = b + 192 + 8 * half;
    for (int r = 0; r < 4; ++r) {
      const uint8_t* lo = ql + 32 * (r & 1);
      const int shift = 4 * (r >> 1);
      for (int l = 0; l < 32; ++l) {
        const int q = int(((lo[l] >> shift) & 0xF) | (((qh[l] >> (2 * r)) & 3) << 4)) - 32;
        y[128 * half + 32 * r + l] = d * float(int8_t(sc[2 * r + l / 16])) * float(q);
      }
    }
  }
}

// Q8_K, 292 bytes: d f32 @0, qs int8[256] @4, bsums int16[16] @260 (sums of 16 quants; not
// needed to dequantize).
template <>
inline void dequantize_block<DType::kQ8_K>(const uint8_t* b, float* y) {
  const float d = load_f32(b);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 256; ++j) y[j] = d * float(int8_t(qs[j]));
}

// Integer forms (IntBlock): the sub-block scales and mins as they are stored.
template <>
inline void unpack_block<DType::kQ2_K>(const uint8_t* b, IntBlock& w) {
  w.d = load_f16(b + 80);
  w.dmin = load_f16(b + 82);
  for (int i = 0; i < 16; ++i) {
    w.sc[i] = int16_t(b[i] & 0xF);
    w.mn[i] = int16_t(b[i] >> 4);
  }
  for (int half = 0; half < 2; ++half) {
    const uint8_t* q = b + 16 + 32 * half;
    for (int r = 0; r < 4; ++r)
      for (int l = 0; l < 32; ++l) w.q[128 * half + 32 * r + l] = int8_t((q[l] >> (2 * r)) & 3);
  }
}

template <>
inline void unpack_block<DType::kQ3_K>(const uint8_t* b, IntBlock& w) {
  const uint8_t* hmask = b;
  const uint8_t* s = b + 96;
  w.d = load_f16(b + 108);
  w.dmin = 0.0f;
  for (int i = 0; i < 16; ++i) {
    const int lo = i < 8 ? (s[i] & 0xF) : (s[i - 8] >> 4);
    const int hi = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
    w.sc[i] = int16_t((lo | hi << 4) - 32);
    w.mn[i] = 0;
  }
  for (int half = 0; half < 2; ++half) {
    const uint8_t* q = b + 32 + 32 * half;
    for (int r = 0; r < 4; ++r) {
      const int hbit = 4 * half + r;
      for (int l = 0; l < 32; ++l)
        w.q[128 * half + 32 * r + l] = int8_t(((q[l] >> (2 * r)) & 3) - (((hmask[l] >> hbit) & 1) ? 0 : 4));
    }
  }
}

namespace {
// Q4_K/Q5_K's shared head: d, dmin and the eight (scale, min) pairs, each for two sub-blocks of 16.
inline void k_int_header(const uint8_t* b, IntBlock& w) {
  w.d = load_f16(b);
  w.dmin = load_f16(b + 2);
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    k_scale_min(j, b + 4, sc, m);
    w.sc[2 * j] = w.sc[2 * j + 1] = int16_t(sc);
    w.mn[2 * j] = w.mn[2 * j + 1] = int16_t(m);
  }
}
}  // namespace

template <>
inline void unpack_block<DType::kQ4_K>(const uint8_t* b, IntBlock& w) {
  k_int_header(b, w);
  for (int p = 0; p < 4; ++p) {
    const uint8_t* q = b + 16 + 32 * p;
    for (int l = 0; l < 32; ++l) {
      w.q[64 * p + l] = int8_t(q[l] & 0xF);
      w.q[64 * p + 32 + l] = int8_t(q[l] >> 4);
    }
  }
}

template <>
inline void unpack_block<DType::kQ5_K>(const uint8_t* b, IntBlock& w) {
  k_int_header(b, w);
  const uint8_t* qh = b + 16;
  for (int p = 0; p < 4; ++p) {
    const uint8_t* q = b + 48 + 32 * p;
    for (int l = 0; l < 32; ++l) {
      w.q[64 * p + l] = int8_t((q[l] & 0xF) + (((qh[l] >> (2 * p)) & 1) << 4));
      w.q[64 * p + 32 + l] = int8_t((q[l] >> 4) + (((qh[l] >> (2 * p + 1)) & 1) << 4));
    }
  }
}

template <>
inline void unpack_block<DType::kQ6_K>(const uint8_t* b, IntBlock& w) {
  w.d = load_f16(b + 208);
  w.dmin = 0.0f;
  for (int i = 0; i < 16; ++i) {
    w.sc[i] = int16_t(int8_t(b[192 + i]));
    w.mn[i] = 0;
  }
  for (int half = 0; half < 2; ++half) {
    const uint8_t* ql = b + 64 * half;
    const uint8_t* qh = b + 128 + 32 * half;
    for (int r = 0; r < 4; ++r) {
      const uint8_t* lo = ql + 32 * (r & 1);
      const int shift = 4 * (r >> 1);
      for (int l = 0; l < 32; ++l)
        w.q[128 * half + 32 * r + l] = int8_t(int(((lo[l] >> shift) & 0xF) | (((qh[l] >> (2 * r)) & 3) << 4)) - 32);
    }
  }
}

template <>
inline void unpack_block<DType::kQ8_K>(const uint8_t* b, IntBlock& w) {
  w.d = load_f32(b);
  w.dmin = 0.0f;
  std::memcpy(w.q, b + 4, 256);
  for (int i = 0; i < 16; ++i) w.sc[i] = 1, w.mn[i] = 0;
}

}  // namespace shoal::kernels::cpu::ggml
