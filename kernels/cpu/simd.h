// Sixteen float lanes for the CPU kernels, in whatever vector registers the translation unit is
// compiled for: one AVX-512 register, two AVX2 registers, or plain floats with fmaf (the
// portable baseline). Each variant TU (kernels/cpu/variants/) includes this with its own target
// flags, so everything here has internal linkage: nothing compiled for AVX-512 can be picked up
// by the linker for another variant.
//
// The canonical order of a dot product (kernels/cpu/tile.h) is defined on these lanes, and every
// variant computes exactly the same IEEE operations: lane-wise fused multiply-adds and one fixed
// reduction tree. Results are therefore bitwise equal across variants.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace shoal::kernels::cpu {
namespace {

inline float bf16_one(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Shapes of the stored-format micro-kernels that keep their accumulators (rows x tokens of
// F32x16) in registers with room for the activations, the weights and their constants: decode
// takes decode_rows(n) rows per pass for n <= 4 tokens, and 5-64 tokens take tiles of kTileRows
// rows x kTileTokens tokens. The shapes change only the speed, never a result's bits.
#if defined(__AVX512F__)  // 32 registers of 16 lanes
constexpr int decode_rows(int tokens) { return tokens == 1 ? 8 : 4; }
constexpr int kTileRows = 4, kTileTokens = 6;
#elif defined(__AVX2__)  // 16 registers of 8 lanes: an F32x16 takes two
constexpr int decode_rows(int tokens) { return tokens <= 2 ? 4 : 1; }
constexpr int kTileRows = 1, kTileTokens = 4;
#else
constexpr int decode_rows(int tokens) { return tokens == 1 ? 8 : 4; }
constexpr int kTileRows = 4, kTileTokens = 6;
#endif

#if defined(__AVX512F__)
struct F32x16 {
  __m512 v;
};
inline F32x16 zero16() { return {_mm512_setzero_ps()}; }
inline F32x16 load16(const float* p) { return {_mm512_loadu_ps(p)}; }
inline F32x16 splat16(float s) { return {_mm512_set1_ps(s)}; }
inline void store16(float* p, F32x16 a) { _mm512_storeu_ps(p, a.v); }
inline F32x16 fma16(F32x16 a, F32x16 b, F32x16 c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
inline F32x16 mul16(F32x16 a, F32x16 b) { return {_mm512_mul_ps(a.v, b.v)}; }
// 16 bf16 codes -> float (exact: the code is the float's high half).
inline F32x16 bf16x16(const uint16_t* p) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return {_mm512_castsi512_ps(_mm512_slli_epi32(w, 16))};
}
// 16 f16 codes -> float (exact, subnormals included).
inline F32x16 f16x16(const uint16_t* p) {
  return {_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))};
}
// 16 e4m3 codes -> their value times 2^-8, exact: sign to bit 15 and exponent+mantissa to bits
// 13..7 make an f16 whose bias (15) is 8 more than e4m3's (7); subnormals map to subnormals.
// Sign-extended to 16 bits and shifted left by 7, the code's sign lands on bit 15 and again on
// bit 14, which the mask clears.
inline F32x16 e4m3x16_scaled(const uint8_t* p) {
  const __m256i b = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i h = _mm256_and_si256(_mm256_slli_epi16(b, 7), _mm256_set1_epi16(int16_t(0xBFFF)));
  return {_mm512_cvtph_ps(h)};
}
// 16 e4m3 codes -> their value times 2^-120 as float32 bits: sign-extended to 32 bits and shifted
// left by 20, exponent and mantissa land on bits 26..20 and the sign on 31 (bits 30..27, copies
// of the sign, are masked off). Codes with a zero exponent give float32 subnormals (slow to
// multiply on some CPUs, and below 1e-5 of a trained layer's codes).
inline F32x16 e4m3x16_tiny(const uint8_t* p) {
  const __m512i b = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return {_mm512_castsi512_ps(_mm512_and_si512(_mm512_slli_epi32(b, 20), _mm512_set1_epi32(int32_t(0x87F00000u))))};
}
inline void lanes16(float* out, F32x16 a) { _mm512_storeu_ps(out, a.v); }
inline float f16_one(uint16_t h) { return _cvtsh_ss(h); }
inline float fma1(float a, float b, float c) { return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c))); }

#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
struct F32x16 {
  __m256 lo, hi;  // lanes 0..7, 8..15
};
inline F32x16 zero16() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
inline F32x16 load16(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline F32x16 splat16(float s) { return {_mm256_set1_ps(s), _mm256_set1_ps(s)}; }
inline void store16(float* p, F32x16 a) {
  _mm256_storeu_ps(p, a.lo);
  _mm256_storeu_ps(p + 8, a.hi);
}
inline F32x16 fma16(F32x16 a, F32x16 b, F32x16 c) {
  return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
inline F32x16 mul16(F32x16 a, F32x16 b) { return {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
inline __m256 bf16x8(const uint16_t* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
inline F32x16 bf16x16(const uint16_t* p) { return {bf16x8(p), bf16x8(p + 8)}; }
inline F32x16 f16x16(const uint16_t* p) {
  return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
          _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)))};
}
inline F32x16 e4m3x16_scaled(const uint8_t* p) {
  const __m256i b = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i h = _mm256_and_si256(_mm256_slli_epi16(b, 7), _mm256_set1_epi16(int16_t(0xBFFF)));
  return {_mm256_cvtph_ps(_mm256_castsi256_si128(h)), _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1))};
}
inline __m256 e4m3x8_tiny(const uint8_t* p) {
  const __m256i b = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(b, 20), _mm256_set1_epi32(int32_t(0x87F00000u))));
}
inline F32x16 e4m3x16_tiny(const uint8_t* p) { return {e4m3x8_tiny(p), e4m3x8_tiny(p + 8)}; }
inline void lanes16(float* out, F32x16 a) { store16(out, a); }
inline float f16_one(uint16_t h) { return _cvtsh_ss(h); }
inline float fma1(float a, float b, float c) { return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c))); }

#else
struct F32x16 {
  float v[16];
};
inline F32x16 zero16() { return {}; }
inline F32x16 load16(const float* p) {
  F32x16 a;
  std::memcpy(a.v, p, sizeof a.v);
  return a;
}
inline F32x16 splat16(float s) {
  F32x16 a;
  for (float& x : a.v) x = s;
  return a;
}
inline void store16(float* p, F32x16 a) { std::memcpy(p, a.v, sizeof a.v); }
inline F32x16 fma16(F32x16 a, F32x16 b, F32x16 c) {
  for (int i = 0; i < 16; ++i) c.v[i] = std::fmaf(a.v[i], b.v[i], c.v[i]);
  return c;
}
inline F32x16 mul16(F32x16 a, F32x16 b) {
  for (int i = 0; i < 16; ++i) a.v[i] *= b.v[i];
  return a;
}
inline float f16_one(uint16_t h) {
  const uint32_t s = uint32_t(h & 0x8000) << 16, e = (h >> 10) & 0x1F, m = h & 0x3FF;
  float mag;
  if (e == 0) mag = std::ldexp(float(m), -24);
  else if (e == 31) mag = m ? NAN : INFINITY;
  else mag = std::ldexp(float(m | 0x400), int(e) - 25);
  uint32_t u;
  std::memcpy(&u, &mag, 4);
  u |= s;
  std::memcpy(&mag, &u, 4);
  return mag;
}
inline float fma1(float a, float b, float c) { return std::fmaf(a, b, c); }
inline F32x16 bf16x16(const uint16_t* p) {
  F32x16 a;
  for (int i = 0; i < 16; ++i) a.v[i] = bf16_one(p[i]);
  return a;
}
inline F32x16 f16x16(const uint16_t* p) {
  F32x16 a;
  for (int i = 0; i < 16; ++i) a.v[i] = f16_one(p[i]);
  return a;
}
inline F32x16 e4m3x16_scaled(const uint8_t* p) {
  F32x16 a;
  for (int i = 0; i < 16; ++i)
    a.v[i] = f16_one(uint16_t(((p[i] & 0x80u) << 8) | ((p[i] & 0x7Fu) << 7)));
  return a;
}
inline void lanes16(float* out, F32x16 a) { store16(out, a); }
#endif
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
constexpr bool kHaveE4m3Tiny = true;
#else
constexpr bool kHaveE4m3Tiny = false;
inline F32x16 e4m3x16_tiny(const uint8_t*) { return zero16(); }  // never called
#endif

// One e4m3 code as e4m3x16_tiny widens it: its value times 2^-120, as float32 bits.
inline float e4m3_tiny_one(uint8_t b) {
  const uint32_t u = (uint32_t(int32_t(int8_t(b))) << 20) & 0x87F00000u;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// One e4m3 code as e4m3x16_scaled widens it: its value times 2^-8.
inline float e4m3_scaled_one(uint8_t b) { return f16_one(uint16_t(((b & 0x80u) << 8) | ((b & 0x7Fu) << 7))); }

// A thread's scratch floats (panels, score rows), 64-byte aligned, grown on demand, kept for the
// thread's life.
struct AlignedBuffer {
  float* p = nullptr;
  int64_t n = 0;
  ~AlignedBuffer() { std::free(p); }
  float* get(int64_t want) {
    if (want > n) {
      std::free(p);
      n = (want + 15) / 16 * 16;
      p = static_cast<float*>(std::aligned_alloc(64, size_t(n) * sizeof(float)));
    }
    return p;
  }
};

// The fixed reduction tree of the canonical order: a[i] += a[i + 8], then + 4, + 2, + 1. The
// vector variants add the same pairs with shuffles (so the same bits as the loop).
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
inline float reduce8(__m256 s8) {
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));  // i + i+4
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));                                 // i + i+2
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));                        // 0 + 1
}
#endif
#if defined(__AVX512F__)
inline float reduce16(F32x16 acc) {
  return reduce8(_mm256_add_ps(_mm512_castps512_ps256(acc.v),
                               _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc.v), 1))));
}
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
inline float reduce16(F32x16 acc) { return reduce8(_mm256_add_ps(acc.lo, acc.hi)); }
#else
inline float reduce16(F32x16 acc) {
  float a[16];
  lanes16(a, acc);
  for (int s = 8; s > 0; s /= 2)
    for (int i = 0; i < s; ++i) a[i] += a[i + s];
  return a[0];
}
#endif

// Four reductions at once, each the same pairs in the same tree as reduce16 (so the same bits):
// the +8 step per vector, then the +4, +2 and +1 steps of the four packed side by side.
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
inline void reduce16x4(float out[4], F32x16 a, F32x16 b, F32x16 c, F32x16 d) {
#if defined(__AVX512F__)
  auto half = [](F32x16 x) {
    return _mm256_add_ps(_mm512_castps512_ps256(x.v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x.v), 1)));
  };
#else
  auto half = [](F32x16 x) { return _mm256_add_ps(x.lo, x.hi); };
#endif
  const __m256 a8 = half(a), b8 = half(b), c8 = half(c), d8 = half(d);                   // i + i+8
  const __m256 ab = _mm256_add_ps(_mm256_permute2f128_ps(a8, b8, 0x20), _mm256_permute2f128_ps(a8, b8, 0x31));
  const __m256 cd = _mm256_add_ps(_mm256_permute2f128_ps(c8, d8, 0x20), _mm256_permute2f128_ps(c8, d8, 0x31));
  // ab = [a i+i+4 (4) | b (4)], cd likewise                                              // i + i+4
  const __m256 s2 = _mm256_add_ps(_mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));     // i + i+2
  // s2 = [a0 a1 c0 c1 | b0 b1 d0 d1]
  const __m256 s1 = _mm256_add_ps(s2, _mm256_shuffle_ps(s2, s2, _MM_SHUFFLE(2, 3, 0, 1)));  // 0 + 1
  alignas(32) float r[8];
  _mm256_store_ps(r, s1);
  out[0] = r[0];
  out[1] = r[4];
  out[2] = r[2];
  out[3] = r[6];
}
#else
inline void reduce16x4(float out[4], F32x16 a, F32x16 b, F32x16 c, F32x16 d) {
  out[0] = reduce16(a);
  out[1] = reduce16(b);
  out[2] = reduce16(c);
  out[3] = reduce16(d);
}
#endif

}  // namespace
}  // namespace shoal::kernels::cpu
