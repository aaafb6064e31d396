// The probes' inner loops for one instruction-set variant (included by kernels/cpu/variants/*.cpp;
// kernels/cpu/membw.cpp runs them): the read bandwidth and the FMA peak every bench fraction is
// measured against, in the same registers as the kernels.
#pragma once

#include "kernels/cpu/gemm.h"

namespace shoal::kernels::cpu {
namespace {

// Read kernels for the bandwidth probe (kernels/cpu/membw.cpp), in the same vector registers as
// linear: kernel 0 sums one stream with eight accumulators; kernel 1 reads four streams at
// once; kernel 2 reads eight streams with linear's software prefetch (as decode reads eight
// weight rows). Returns the sum so the reads cannot be elided.
inline float read_pass_variant(const float* p, int64_t n, int kernel) {
  const F32x16 one = splat16(1.0f);
  F32x16 a[8];
  for (auto& v : a) v = zero16();
  if (kernel == 2) {  // blocks of 8 rows of 16 KB read side by side, as decode reads weight rows
    constexpr int64_t kRow = 4096;
    for (int64_t b = 0; b + 8 * kRow <= n; b += 8 * kRow)
      for (int64_t i = 0; i < kRow; i += 16)
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) {
          __builtin_prefetch(p + b + j * kRow + i + kPrefetchBytes / 4);
          a[j] = fma16(load16(p + b + j * kRow + i), one, a[j]);
        }
  } else if (kernel == 0) {
    int64_t i = 0;
    for (; i + 128 <= n; i += 128)
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) a[j] = fma16(load16(p + i + 16 * j), one, a[j]);
  } else {
    const int64_t q = n / 4 / 32 * 32;
    for (int64_t i = 0; i < q; i += 32)
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        a[2 * j] = fma16(load16(p + j * q + i), one, a[2 * j]);
        a[2 * j + 1] = fma16(load16(p + j * q + i + 16), one, a[2 * j + 1]);
      }
  }
  float s = 0.0f;
  for (auto& v : a) s += reduce16(v);
  return s;
}

}  // namespace
}  // namespace shoal::kernels::cpu

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace shoal::kernels::cpu {
namespace {

// Twelve independent chains of the fast numerics' int8 dot product (maddubs then madd into
// int32, kernels/cpu/qlinear.h) per thread: iters x 12 x kInt8PassMacs multiply-adds. The peak
// fast prefill is measured against. Returns a sum so the work cannot be elided.
#if defined(__AVX512BW__)
constexpr int64_t kInt8PassMacs = 64;
inline float int8_pass_variant(int64_t iters) {
  __m512i acc[12];
  const __m512i a = _mm512_set1_epi8(3), ones = _mm512_set1_epi16(1);
  for (int j = 0; j < 12; ++j) acc[j] = _mm512_set1_epi8(int8_t(j));
  for (int64_t i = 0; i < iters; ++i)
#pragma GCC unroll 12
    for (int j = 0; j < 12; ++j) acc[j] = _mm512_madd_epi16(_mm512_maddubs_epi16(a, acc[j]), ones);
  int32_t s = 0;
  for (auto& v : acc) s += _mm512_reduce_add_epi32(v);
  return float(s);
}
#elif defined(__AVX2__)
constexpr int64_t kInt8PassMacs = 32;
inline float int8_pass_variant(int64_t iters) {
  __m256i acc[12];
  const __m256i a = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
  for (int j = 0; j < 12; ++j) acc[j] = _mm256_set1_epi8(int8_t(j));
  for (int64_t i = 0; i < iters; ++i)
#pragma GCC unroll 12
    for (int j = 0; j < 12; ++j) acc[j] = _mm256_madd_epi16(_mm256_maddubs_epi16(a, acc[j]), ones);
  int32_t s = 0;
  for (auto& v : acc) s += _mm256_extract_epi32(v, 0) + _mm256_extract_epi32(v, 7);
  return float(s);
}
#else
constexpr int64_t kInt8PassMacs = 1;
inline float int8_pass_variant(int64_t iters) {
  int32_t acc[12];
  for (int j = 0; j < 12; ++j) acc[j] = j;
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < 12; ++j) acc[j] = acc[j] * 3 + int8_t(acc[j]);
  int32_t s = 0;
  for (int v : acc) s += v;
  return float(s);
}
#endif
inline int64_t int8_pass_macs_variant() { return kInt8PassMacs; }

// Twelve independent fused multiply-add chains per thread: the float32 FMA peak the prefill
// GEMM is measured against. Returns the sum so the work cannot be elided.
inline float fma_pass_variant(int64_t iters) {
  F32x16 a[12];
  for (int j = 0; j < 12; ++j) a[j] = splat16(float(j));
  const F32x16 m = splat16(0.999999f), c = splat16(1e-7f);
  for (int64_t i = 0; i < iters; ++i)
#pragma GCC unroll 12
    for (int j = 0; j < 12; ++j) a[j] = fma16(a[j], m, c);
  float s = 0.0f;
  for (auto& v : a) s += reduce16(v);
  return s;
}

}  // namespace
}  // namespace shoal::kernels::cpu
