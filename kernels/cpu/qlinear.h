// linear for ggml block types with fast numerics (llama.cpp's scheme), for one instruction-set
// variant (included by kernels/cpu/variants/*.cpp after gemm.h; internal linkage throughout).
//
// Activations are quantized per block of the weight's block size (32 or 256) to int8 with one
// float scale (d_x = max|x| / 127, q = round(x / d_x)), their sums per 16 kept for the types with
// mins. Each weight block is taken in its integer form (IntBlock: d * sc[s] * q - dmin * mn[s]),
// and a (row, token) pair is, over the blocks b in increasing order, starting from +0:
//   isum = sum_s sc[s] * sum_{i in s} q_i x_i          (exact, int32)
//   imin = sum_s mn[s] * sum_{i in s} x_i              (exact, int32)
//   acc  = acc + ((d * d_x) * float(isum) - (dmin * d_x) * float(imin))
// each product and sum rounded once (no fused multiply-add). The integer parts are exact in every
// variant (AVX-512BW and AVX2 maddubs never saturate: |q| <= 128 against |x| <= 127, or |q| <= 64
// against x + 128), and the float part is the same few scalar operations in the same order, so a
// token's result is bitwise the same alone or in a batch, in any variant and thread count.
#pragma once

#include <omp.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/formats/ggml/block.h"
#include "kernels/cpu/gemm.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace shoal::kernels::cpu {
namespace {

using ggml::IntBlock;

// Activations of n tokens, quantized per block of `blk` columns.
struct QuantActs {
  int64_t K = 0, blk = 0;
  std::vector<int8_t> q;     // [n, K]
  std::vector<uint8_t> qu;   // [n, K]: q + 128 (the offset form)
  std::vector<float> d;      // [n, K / blk]
  std::vector<int16_t> s16;  // [n, K / 16]: sums of q per 16
};

inline void quantize_acts(const float* x, int64_t n, int64_t K, int64_t blk, QuantActs& a) {
  a.K = K;
  a.blk = blk;
  a.q.resize(size_t(n * K));
  a.qu.resize(size_t(n * K));
  a.d.resize(size_t(n * (K / blk)));
  a.s16.resize(size_t(n * (K / 16)));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t b = 0; b < K / blk; ++b) {
      const float* xb = x + t * K + b * blk;
      float amax = 0.0f;
      for (int64_t i = 0; i < blk; ++i) amax = std::max(amax, std::fabs(xb[i]));
      const float iscale = amax > 0.0f ? 127.0f / amax : 0.0f;
      a.d[size_t(t * (K / blk) + b)] = amax / 127.0f;
      int8_t* q = a.q.data() + t * K + b * blk;
      uint8_t* qu = a.qu.data() + t * K + b * blk;
      for (int64_t i = 0; i < blk; ++i) {
        const float v = std::nearbyint(xb[i] * iscale);
        q[i] = int8_t(v > 127.0f ? 127 : v < -127.0f ? -127 : int(v));
        qu[i] = uint8_t(q[i] + 128);
      }
      for (int64_t s = 0; s < blk / 16; ++s) {
        int sum = 0;
        for (int i = 0; i < 16; ++i) sum += q[16 * s + i];
        a.s16[size_t(t * (K / 16) + b * (blk / 16) + s)] = int16_t(sum);
      }
    }
}

// Whether a type's integer weights satisfy |q| <= 64 (then the offset form x + 128 is exact in
// maddubs); the others (Q8_0, Q8_K, the IQ4 levels) take the sign form.
constexpr bool small_q(DType t) {
  return t != DType::kQ8_0 && t != DType::kQ8_K && t != DType::kIQ4_NL && t != DType::kIQ4_XS;
}
constexpr bool has_mins(DType t) {
  return t == DType::kQ4_1 || t == DType::kQ5_1 || t == DType::kQ2_K || t == DType::kQ4_K || t == DType::kQ5_K;
}

// One weight block ready for the token loop.
template <DType T>
struct Prepared {
  static constexpr int kW = int(dtype_info(T).block);
  IntBlock w;
  int32_t corr = 0;  // offset form: 128 * sum_s sc[s] * sum_{i in s} q_i
#if defined(__AVX2__)
  __m256i sc16[kW / 32];  // per 32-weight chunk: int16 lanes 0-7 scale of its first 16, 8-15 of the next
  __m256i qv[kW / 32];
  __m256i qabs[kW / 32];
#endif
  void prepare(const uint8_t* b) {
    ggml::unpack_block<T>(b, w);
    if constexpr (small_q(T)) {
      int32_t c = 0;
      for (int s = 0; s < kW / 16; ++s) {
        int sum = 0;
        for (int i = 0; i < 16; ++i) sum += w.q[16 * s + i];
        c += int32_t(w.sc[s]) * sum;
      }
      corr = 128 * c;
    }
#if defined(__AVX2__)
    for (int c = 0; c < kW / 32; ++c) {
      sc16[c] = _mm256_set_m128i(_mm_set1_epi16(w.sc[2 * c + 1]), _mm_set1_epi16(w.sc[2 * c]));
      qv[c] = _mm256_load_si256(reinterpret_cast<const __m256i*>(w.q + 32 * c));
      if constexpr (!small_q(T)) qabs[c] = _mm256_sign_epi8(qv[c], qv[c]);
    }
#endif
  }
};

#if defined(__AVX2__)
inline int32_t hsum8(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}
#endif

// isum of one prepared block against the token's block (xq signed, xu offset form).
template <DType T>
inline int32_t block_isum(const Prepared<T>& p, const int8_t* xq, const uint8_t* xu) {
  constexpr int kW = Prepared<T>::kW;
#if defined(__AVX2__)
  __m256i acc = _mm256_setzero_si256();
  for (int c = 0; c < kW / 32; ++c) {
    __m256i prod;
    if constexpr (small_q(T)) {
      prod = _mm256_maddubs_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xu + 32 * c)), p.qv[c]);
    } else {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32 * c));
      prod = _mm256_maddubs_epi16(p.qabs[c], _mm256_sign_epi8(x, p.qv[c]));
    }
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(prod, p.sc16[c]));
  }
  return hsum8(acc) - p.corr;
#else
  (void)xu;
  int32_t isum = 0;
  for (int s = 0; s < kW / 16; ++s) {
    int32_t d = 0;
    for (int i = 0; i < 16; ++i) d += int32_t(p.w.q[16 * s + i]) * int32_t(xq[16 * s + i]);
    isum += int32_t(p.w.sc[s]) * d;
  }
  return isum;
#endif
}

template <DType T>
inline int32_t block_imin(const Prepared<T>& p, const int16_t* s16) {
  constexpr int kW = Prepared<T>::kW;
  int32_t imin = 0;
  for (int s = 0; s < kW / 16; ++s) imin += int32_t(p.w.mn[s]) * int32_t(s16[s]);
  return imin;
}

constexpr int kQRows = 8;  // rows whose blocks are prepared together

template <DType T>
void qlinear_type(float* out, const float* x, const Matrix& w, int64_t n) {
  constexpr int64_t kW = Prepared<T>::kW;
  const int64_t R = w.rows, K = w.cols, nb = K / kW;
  const int64_t stride = dtype_row_bytes(T, K), bb = dtype_bytes(T);
  const uint8_t* base = static_cast<const uint8_t*>(w.data) + w.row0 * stride;
  static thread_local QuantActs caller_acts;  // the calling thread's; the row runs read it
  QuantActs& acts = caller_acts;
  quantize_acts(x, n, K, kW, acts);
  const bool parallel = R * K * n >= (int64_t(1) << 18) && omp_get_max_threads() > 1;
  for_row_runs(R, kQRows, parallel, [&](int64_t r0, int64_t r1) {
    static thread_local std::vector<float> acc;
    acc.assign(size_t(n * kQRows), 0.0f);
    std::vector<Prepared<T>> prep(kQRows);
    for (int64_t rg = r0; rg < r1; rg += kQRows) {
      const int g = int(min64(kQRows, r1 - rg));
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t b = 0; b < nb; ++b) {
        for (int k = 0; k < g; ++k) {
          const uint8_t* blk = base + (rg + k) * stride + b * bb;
          __builtin_prefetch(blk + 8 * bb);
          prep[size_t(k)].prepare(blk);
        }
        for (int64_t t = 0; t < n; ++t) {
          const int64_t xo = t * K + b * kW;
          const float dx = acts.d[size_t(t * nb + b)];
          for (int k = 0; k < g; ++k) {
            const Prepared<T>& p = prep[size_t(k)];
            const int32_t isum = block_isum<T>(p, acts.q.data() + xo, acts.qu.data() + xo);
            float v = (p.w.d * dx) * float(isum);
            if constexpr (has_mins(T)) {
              const int32_t imin = block_imin<T>(p, acts.s16.data() + xo / 16);
              v = v - (p.w.dmin * dx) * float(imin);
            }
            float& a = acc[size_t(t * kQRows + k)];
            a = a + v;
          }
        }
      }
      for (int64_t t = 0; t < n; ++t)
        for (int k = 0; k < g; ++k) out[t * R + rg + k] = acc[size_t(t * kQRows + k)];
    }
  });
}

// The fast linear of a ggml block type: one instantiation per type.
inline void qlinear_variant(float* out, const float* x, const Matrix& w, int64_t n) {
  switch (w.dtype) {
#define SHOAL_QCASE(T) \
  case DType::T: return qlinear_type<DType::T>(out, x, w, n);
    SHOAL_QCASE(kQ4_0) SHOAL_QCASE(kQ4_1) SHOAL_QCASE(kQ5_0) SHOAL_QCASE(kQ5_1) SHOAL_QCASE(kQ8_0)
    SHOAL_QCASE(kQ2_K) SHOAL_QCASE(kQ3_K) SHOAL_QCASE(kQ4_K) SHOAL_QCASE(kQ5_K) SHOAL_QCASE(kQ6_K)
    SHOAL_QCASE(kQ8_K) SHOAL_QCASE(kIQ2_XXS) SHOAL_QCASE(kIQ2_XS) SHOAL_QCASE(kIQ2_S) SHOAL_QCASE(kIQ3_XXS)
    SHOAL_QCASE(kIQ3_S) SHOAL_QCASE(kIQ1_S) SHOAL_QCASE(kIQ1_M) SHOAL_QCASE(kIQ4_NL) SHOAL_QCASE(kIQ4_XS)
#undef SHOAL_QCASE
    default: return linear_variant(out, x, w, n);
  }
}

// linear as the variant table exports it: fast numerics for block types that ask for it.
inline void linear_any_variant(float* out, const float* x, const Matrix& w, int64_t n) {
  if (w.numerics == Numerics::kFast && dtype_is_block(w.dtype)) return qlinear_variant(out, x, w, n);
  linear_variant(out, x, w, n);
}

}  // namespace
}  // namespace shoal::kernels::cpu
