// linear for ggml block types with fast numerics (llama.cpp's scheme), for one instruction-set
// variant (included by kernels/cpu/variants/*.cpp after gemm.h; internal linkage throughout).
//
// Activations are quantized per 16 columns to int8 with one float scale each (d_x = max|x| / 127,
// q = round(x / d_x)); the sums of each 16 quantized activations are kept for the types with mins.
// (llama.cpp quantizes per 32 or 256; per 16 keeps its speed and is closer to float32: on the
// gguf-a fixtures it beats llama.cpp's own run of the files, docs/gguf.md.) Each weight block is
// taken in its integer form (IntBlock: d * sc[s] * q - dmin * mn[s], sub-blocks s of 16), and a
// (row, token) pair is, over the blocks in increasing order, starting from +0:
//   a[s] = float(sc[s] * sum_{i in s} q_i x_i) * d_x[s]      (the integer part exact, int32)
//   m[s] = float(mn[s] * sum_{i in s} x_i) * d_x[s]
//   A, M = the 16-lane tree of a, m (lanes past the block's sub-blocks are +0): [i] += [i + 8],
//          [i] += [i + 4], [i] += [i + 2], [0] += [1]
//   acc  = acc + (d * A - dmin * M)                            (- dmin * M only for types with mins)
// each product and sum rounded once (no fused multiply-add). The integer parts are exact in every
// variant (maddubs never saturates: |q| <= 128 against |x| <= 127),
// and the float parts are the same operations in the same order, so a token's result is bitwise
// the same alone or in a batch, in any variant and thread count.
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

constexpr int64_t kActBlock = 16;

// Activations of n tokens, quantized per kActBlock columns.
struct QuantActs {
  int64_t K = 0, blk = 0;
  std::vector<int8_t> q;     // [n, K]
  std::vector<float> d;      // [n, K / blk]
  std::vector<int16_t> s16;  // [n, K / 16]: sums of q per 16
};

inline void quantize_acts(const float* x, int64_t n, int64_t K, int64_t blk, QuantActs& a) {
  a.K = K;
  a.blk = blk;
  a.q.resize(size_t(n * K));
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
      for (int64_t i = 0; i < blk; ++i) {
        const float v = std::nearbyint(xb[i] * iscale);
        q[i] = int8_t(v > 127.0f ? 127 : v < -127.0f ? -127 : int(v));
      }
      for (int64_t s = 0; s < blk / 16; ++s) {
        int sum = 0;
        for (int i = 0; i < 16; ++i) sum += q[16 * s + i];
        a.s16[size_t(t * (K / 16) + b * (blk / 16) + s)] = int16_t(sum);
      }
    }
}

// Types whose integer weights are never negative: maddubs takes them as they are (|q| <= 31, no
// saturation); the others take |q| against x with q's sign.
constexpr bool nonneg_q(DType t) {
  return t == DType::kQ4_1 || t == DType::kQ5_1 || t == DType::kQ2_K || t == DType::kQ4_K || t == DType::kQ5_K;
}
constexpr bool has_mins(DType t) {
  return t == DType::kQ4_1 || t == DType::kQ5_1 || t == DType::kQ2_K || t == DType::kQ4_K || t == DType::kQ5_K;
}

// One weight block ready for the token loop.
template <DType T>
struct Prepared {
  static constexpr int kW = int(dtype_info(T).block);
  static constexpr int kS = kW / 16;  // sub-blocks
  IntBlock w;
#if defined(__AVX2__)
  __m256i sc16[kW / 32];  // per 32-weight chunk: int16 lanes 0-7 scale of its first 16, 8-15 of the next
  __m256i qv[kW / 32];    // q (sign form: its signs)
  __m256i qabs[kW / 32];  // |q| (nonneg types: q itself)
#endif
  void prepare(const uint8_t* b) {
    ggml::unpack_block<T>(b, w);
#if defined(__AVX2__)
    for (int c = 0; c < kW / 32; ++c) {
      sc16[c] = _mm256_set_m128i(_mm_set1_epi16(w.sc[2 * c + 1]), _mm_set1_epi16(w.sc[2 * c]));
      qv[c] = _mm256_load_si256(reinterpret_cast<const __m256i*>(w.q + 32 * c));
      qabs[c] = nonneg_q(T) ? qv[c] : _mm256_sign_epi8(qv[c], qv[c]);
    }
#endif
  }
};

// The 16-lane tree of the canonical order on a[16]: [i] += [i + 8], [i + 4], [i + 2], then [0] + [1].
inline float tree16(float* a) {
  for (int h = 8; h >= 1; h /= 2)
    for (int i = 0; i < h; ++i) a[i] = a[i] + a[i + h];
  return a[0];
}

#if defined(__AVX2__)
// Sum of the 4 int32 lanes of a 128-bit half.
inline int32_t hsum4(__m128i v) {
  v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0x4E));
  v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0xB1));
  return _mm_cvtsi128_si32(v);
}
// The 8-lane part of the tree on lanes 0..7 of a (after [i] += [i + 8]).
inline float tree8(__m256 t) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));  // [i] + [i + 4]
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));                                         // [i] + [i + 2]
  x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));                                     // [0] + [1]
  return _mm_cvtss_f32(x);
}
#endif

// sc[s] * sum_{i in s} q_i x_i of each sub-block s, through the chunk products (8 int32 lanes per
// 32 weights: lanes 0-3 the first sub-block's scaled partial sums, 4-7 the second's).
template <DType T>
inline float block_a(const Prepared<T>& p, const int8_t* xq, const float* dx) {
  constexpr int kW = Prepared<T>::kW, kS = Prepared<T>::kS;
#if defined(__AVX2__)
  __m256i prod[kW / 32];
  for (int c = 0; c < kW / 32; ++c) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32 * c));
    const __m256i p16 = _mm256_maddubs_epi16(p.qabs[c], nonneg_q(T) ? x : _mm256_sign_epi8(x, p.qv[c]));
    prod[c] = _mm256_madd_epi16(p16, p.sc16[c]);
  }
  if constexpr (kS == 2) {
    const float a0 = float(hsum4(_mm256_castsi256_si128(prod[0]))) * dx[0];
    const float a1 = float(hsum4(_mm256_extracti128_si256(prod[0], 1))) * dx[1];
    return (a0 + 0.0f) + (a1 + 0.0f);  // the tree with its zero lanes
  } else {
    // Two hadd levels leave [s0, s2, s4, s6 | s1, s3, s5, s7] per 4 chunks; put them in order.
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256 half[2];
    for (int h = 0; h < 2; ++h) {
      const __m256i* q = prod + 4 * h;
      const __m256i g = _mm256_hadd_epi32(_mm256_hadd_epi32(q[0], q[1]), _mm256_hadd_epi32(q[2], q[3]));
      half[h] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_permutevar8x32_epi32(g, order)), _mm256_loadu_ps(dx + 8 * h));
    }
    return tree8(_mm256_add_ps(half[0], half[1]));
  }
#else
  float a[16] = {};
  for (int s = 0; s < kS; ++s) {
    int32_t dot = 0;
    for (int i = 0; i < 16; ++i) dot += int32_t(p.w.q[16 * s + i]) * int32_t(xq[16 * s + i]);
    a[s] = float(int32_t(p.w.sc[s]) * dot) * dx[s];
  }
  return tree16(a);
#endif
}

// mn[s] * sum_{i in s} x_i of each sub-block, scaled and summed the same way.
template <DType T>
inline float block_m(const Prepared<T>& p, const int16_t* s16, const float* dx) {
  constexpr int kS = Prepared<T>::kS;
#if defined(__AVX2__)
  if constexpr (kS == 16) {
    __m256 half[2];
    for (int h = 0; h < 2; ++h) {
      const __m256i mn = _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p.w.mn + 8 * h)));
      const __m256i bs = _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s16 + 8 * h)));
      half[h] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_mullo_epi32(mn, bs)), _mm256_loadu_ps(dx + 8 * h));
    }
    return tree8(_mm256_add_ps(half[0], half[1]));
  }
#endif
  float m[16] = {};
  for (int s = 0; s < kS; ++s) m[s] = float(int32_t(p.w.mn[s]) * int32_t(s16[s])) * dx[s];
  return tree16(m);
}

constexpr int kQRows = 8;     // rows whose blocks are prepared together
constexpr int64_t kAhead = 4;  // blocks of software prefetch distance per row

template <DType T>
void qlinear_type(float* out, const float* x, const Matrix& w, int64_t n) {
  constexpr int64_t kW = Prepared<T>::kW;
  const int64_t R = w.rows, K = w.cols, nb = K / kW;
  static_assert(kActBlock == 16, "block_a reads one activation scale per 16 weights");
  const int64_t stride = dtype_row_bytes(T, K), bb = dtype_bytes(T);
  const uint8_t* base = static_cast<const uint8_t*>(w.data) + w.row0 * stride;
  static thread_local QuantActs caller_acts;  // the calling thread's; the row runs read it
  QuantActs& acts = caller_acts;
  quantize_acts(x, n, K, kActBlock, acts);
  const bool parallel = R * K * n >= (int64_t(1) << 18) && omp_get_max_threads() > 1;
  for_row_runs(R, kQRows, parallel, [&](int64_t r0, int64_t r1) {
    static thread_local std::vector<float> acc;
    acc.assign(size_t(n * kQRows), 0.0f);
    std::vector<Prepared<T>> prep(kQRows);
    for (int64_t rg = r0; rg < r1; rg += kQRows) {
      const int g = int(min64(kQRows, r1 - rg));
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t b = 0; b < nb; ++b) {
        // Prefetch kAhead blocks ahead in each row's stream; near a row's end, the same row of
        // the next group (where the run continues).
        const int64_t ahead = b + kAhead < nb ? kAhead * bb : (kQRows * stride) - (nb - kAhead) * bb;
        for (int k = 0; k < g; ++k) {
          const uint8_t* blk = base + (rg + k) * stride + b * bb;
          for (int64_t o = 0; o < bb; o += 64) __builtin_prefetch(blk + ahead + o);
          prep[size_t(k)].prepare(blk);
        }
        for (int64_t t = 0; t < n; ++t) {
          const int64_t xo = t * K + b * kW;
          const float* dx = acts.d.data() + xo / kActBlock;
          for (int k = 0; k < g; ++k) {
            const Prepared<T>& p = prep[size_t(k)];
            float v = p.w.d * block_a<T>(p, acts.q.data() + xo, dx);
            if constexpr (has_mins(T)) v = v - p.w.dmin * block_m<T>(p, acts.s16.data() + xo / 16, dx);
            float& sum = acc[size_t(t * kQRows + k)];
            sum = sum + v;
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
