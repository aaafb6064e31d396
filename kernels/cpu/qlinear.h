// linear for ggml block types with fast numerics (llama.cpp's scheme), for one instruction-set
// variant (included by kernels/cpu/variants/*.cpp after gemm.h; internal linkage throughout).
//
// Activations are quantized per 16 columns to int8 with one float scale each (d_x = max|x| / 127,
// q = round(x / d_x)); their sums per 16 are kept. (llama.cpp quantizes per 32 or 256; per 16
// costs no memory traffic and is closer to float32: docs/gguf.md.) Weights are taken 256 columns
// at a time (a unit: one block of the 256-weight types, eight of the 32-weight ones) in their
// integer form (IntBlock: d * sc[s] * q - dmin * mn[s], sub-blocks s of 16). For a (row, token)
// pair and each sub-block s of a unit:
//   i[s] = sc[s] * sum_{j in s} q_j x_j                         (exact int32)
//   a[s] = float(i[s]) * d_x[s];  m[s] = float(mn[s] * sum_{j in s} x_j) * d_x[s]
// (float(i[s]) is computed as float(sum q x) * float(sc[s]) and float(mn * sum x) as
// float(mn) * float(sum x): every factor is an integer below 2^24, so each product is the same
// single rounding of the same integer, without integer multiplies.)
//   u[s] = d * a[s] - dmin * m[s]    (d, dmin of the block holding s; "- dmin * m" only with mins)
// The 16 sub-blocks sit in lanes in the order P = 0 2 4 6 1 3 5 7 | 8 10 12 14 9 11 13 15 (what
// two rounds of hadd leave), and a unit's value is, for the 256-weight types, the tree
//   t[k] = u[P(k)] + u[P(k + 8)] (k < 8);  t[k] += t[k + 4] (k < 4);  t[k] += t[k + 2];  t[0] + t[1]
// added to the running sum once; for the 32-weight types, block b's value u[2b] + u[2b + 1]
// added to the running sum block by block. The running sum starts from +0 and takes the units in
// increasing order; every product and sum rounds once (no fused multiply-add). The integer parts
// are exact in every variant (maddubs never saturates: 0 <= q' <= 128 against |x| <= 127), and
// the float parts are the same operations in the same order, so a token's result is bitwise the
// same alone or in a batch, in any variant and thread count. A row whose length is not a whole
// number of units (32-weight types only) ends with a partial unit: its blocks, each u[2b] + u[2b + 1]
// (the unit is padded with zero weights and activations, whose lanes are not added).
#pragma once

#include <omp.h>

#include <array>
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

constexpr int64_t kUnit = 256;
constexpr int kLaneSub[16] = {0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15};  // P: lane -> sub-block
constexpr int kSubLane[16] = {0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15};  // its inverse

// Where sub-block s (column / 16) sits in the per-16 arrays: in its unit's lane order.
inline int64_t sub_slot(int64_t s) { return s / 16 * 16 + kSubLane[s % 16]; }
inline int64_t padded(int64_t K) { return (K + kUnit - 1) / kUnit * kUnit; }

// Activations of n tokens, quantized per 16 columns, each token padded with zeros to whole units
// (Kp = padded(K) columns).
struct QuantActs {
  int64_t K = 0, Kp = 0;
  std::vector<int8_t> q;     // [n, Kp]
  std::vector<float> d;      // [n, Kp / 16], slots as sub_slot
  std::vector<float> sum;    // [n, Kp / 16]: sums of q per 16 (integers, exact), same slots
};

inline void quantize_acts(const float* x, int64_t n, int64_t K, QuantActs& a) {
  a.K = K;
  a.Kp = padded(K);
  const int64_t Kp = a.Kp;
  a.q.resize(size_t(n * Kp));
  a.d.resize(size_t(n * (Kp / 16)));
  a.sum.resize(size_t(n * (Kp / 16)));
  for (int64_t t = 0; t < n; ++t) {  // the padding: zero activations, scale 0, sum 0
    std::memset(a.q.data() + t * Kp + K, 0, size_t(Kp - K));
    for (int64_t s = K / 16; s < Kp / 16; ++s) {
      a.d[size_t(t * (Kp / 16) + sub_slot(s))] = 0.0f;
      a.sum[size_t(t * (Kp / 16) + sub_slot(s))] = 0.0f;
    }
  }
  for (int64_t t = 0; t < n; ++t)
    for (int64_t s = 0; s < K / 16; ++s) {
      const float* xb = x + t * K + 16 * s;
      float amax = 0.0f;
      for (int i = 0; i < 16; ++i) amax = std::max(amax, std::fabs(xb[i]));
      const float iscale = amax > 0.0f ? 127.0f / amax : 0.0f;
      int8_t* q = a.q.data() + t * Kp + 16 * s;
      int sum = 0;
      for (int i = 0; i < 16; ++i) {
        const float v = std::nearbyint(xb[i] * iscale);
        q[i] = int8_t(v > 127.0f ? 127 : v < -127.0f ? -127 : int(v));
        sum += q[i];
      }
      const size_t slot = size_t(t * (Kp / 16) + sub_slot(s));
      a.d[slot] = amax / 127.0f;
      a.sum[slot] = float(sum);
    }
}

// How maddubs, which wants an unsigned operand, takes a type's integer weights q:
//   kNonneg: q >= 0 as is;  kOffset: q + o >= 0, then subtract o * sum(x);  kSign: |q| against
//   x with q's sign. Every form gives the exact sum of q_j x_j.
enum class Form { kNonneg, kOffset, kSign };
constexpr Form form_of(DType t) {
  switch (t) {
    case DType::kQ4_1: case DType::kQ5_1: case DType::kQ2_K: case DType::kQ4_K: case DType::kQ5_K: return Form::kNonneg;
    case DType::kQ8_0: case DType::kQ8_K: case DType::kIQ4_NL: case DType::kIQ4_XS: return Form::kSign;
    default: return Form::kOffset;
  }
}
constexpr int offset_of(DType t) {  // the least o with q + o >= 0 for every q the type can hold
  switch (t) {
    case DType::kQ4_0: return 8;
    case DType::kQ5_0: return 16;
    case DType::kQ3_K: return 4;
    case DType::kQ6_K: return 32;
    case DType::kIQ1_S: case DType::kIQ1_M: return 9;
    case DType::kIQ3_XXS: return 62;
    case DType::kIQ3_S: return 15;
    default: return 43;  // IQ2_XXS, IQ2_XS, IQ2_S: grid values up to 43
  }
}
constexpr bool has_mins(DType t) {
  return t == DType::kQ4_1 || t == DType::kQ5_1 || t == DType::kQ2_K || t == DType::kQ4_K || t == DType::kQ5_K;
}

#if defined(__AVX2__)
#include "kernels/cpu/qlinear_avx2_blocks.h"
#endif

// One unit of one row, ready for the token loop: maddubs' weight operand, the sign source, and
// per lane (order P) the sub-block scale, min and the scales d, dmin of its block.
template <DType T>
struct Unit {
  static constexpr int kW = int(dtype_info(T).block);
  static constexpr int kBlocks = int(kUnit) / kW;
  alignas(64) int8_t qa[256];
  alignas(64) int8_t qs[256];   // kSign: q (its signs)
  alignas(64) float sc[16];  // integers, as floats
  alignas(64) float mn[16];
  alignas(64) float d[16];
  alignas(64) float dmin[16];

  // A partial unit: blocks k .. kBlocks - 1 as zero weights (scale 1, d 0), so their lanes are +0.
  void pad(int k) {
    std::memset(qa + kW * k, 0, size_t(kW * (kBlocks - k)));
    std::memset(qs + kW * k, 0, size_t(kW * (kBlocks - k)));
    for (int s = k * (kW / 16); s < 16; ++s) {
      const int lane = kSubLane[s];
      sc[lane] = 1.0f;
      mn[lane] = 0.0f;
      d[lane] = 0.0f;
      dmin[lane] = 0.0f;
    }
  }

  // Block k (of kBlocks) of the unit from its bytes.
  void take(int k, const uint8_t* b) {
#if defined(__AVX2__)
    if constexpr (kAvx2Unit<T> || kAvx2Block<T>) return take_simd(k, b);
#endif
    IntBlock w;
    ggml::unpack_block<T>(b, w);
    int8_t* a = qa + kW * k;
    for (int j = 0; j < kW; ++j) {
      if constexpr (form_of(T) == Form::kSign) {
        qs[kW * k + j] = w.q[j];
        a[j] = int8_t(w.q[j] < 0 ? -w.q[j] : w.q[j]);  // |-128| wraps to -128: read as u8 128
      } else if constexpr (form_of(T) == Form::kOffset) {
        a[j] = int8_t(w.q[j] + offset_of(T));
      } else {
        a[j] = w.q[j];
      }
    }
    for (int s = 0; s < kW / 16; ++s) {
      const int lane = kSubLane[k * (kW / 16) + s];
      sc[lane] = float(w.sc[s]);
      mn[lane] = float(w.mn[s]);
      d[lane] = w.d;
      dmin[lane] = w.dmin;
    }
  }

#if defined(__AVX2__)
  // The same fields from the AVX2 parts (kernels/cpu/qlinear_avx2_blocks.h).
  static void store(void* p, __m256i v) { _mm256_store_si256(reinterpret_cast<__m256i*>(p), v); }
  void take_simd(int k, const uint8_t* b) {
    if constexpr (kAvx2Unit<T>) {
      Avx2Unit<T>::chunks(b, [&](int c, __m256i v) { store(qa + 32 * c, v); });
      const UnitScalars s = Avx2Unit<T>::scalars(b);
      for (int h = 0; h < 2; ++h) {
        _mm256_store_ps(d + 8 * h, _mm256_set1_ps(s.d));
        _mm256_store_ps(sc + 8 * h, s.sc[h]);
        if constexpr (has_mins(T)) {
          _mm256_store_ps(dmin + 8 * h, _mm256_set1_ps(s.dmin));
          _mm256_store_ps(mn + 8 * h, s.mn[h]);
        }
      }
    } else {
      __m256i q = _mm256_setzero_si256();
      store(qa + 32 * k, Avx2Block<T>::chunk(b, q));
      if constexpr (form_of(T) == Form::kSign) store(qs + 32 * k, q);
      const float dd = Avx2Block<T>::d(b);
      d[kSubLane[2 * k]] = dd;
      d[kSubLane[2 * k + 1]] = dd;
      if (k == 0) {  // sub-block scale 1, no mins: the same for every unit
        _mm256_store_ps(sc, _mm256_set1_ps(1.0f)), _mm256_store_ps(sc + 8, _mm256_set1_ps(1.0f));
      }
    }
  }
#endif
};

#if defined(__AVX2__)
// t[k] = u[k] + u[k + 8] already added; the rest of the tree on 8 lanes.
inline float tree8(__m256 t) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));  // [k] + [k + 4]
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));                                         // [k] + [k + 2]
  x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));                                     // [0] + [1]
  return _mm_cvtss_f32(x);
}
#endif

#if defined(__AVX2__) && !defined(__AVX512BW__)
// 32 columns' products, 4 int32 lanes per sub-block of 16 (exact: see Form).
inline __m256i chunk_dot(__m256i a, __m256i x) { return _mm256_madd_epi16(_mm256_maddubs_epi16(a, x), _mm256_set1_epi16(1)); }

// u of half a unit (8 lanes of order P) from its 4 chunks' products p: the float part.
template <DType T>
inline __m256 half_u(const __m256i* p, __m256 sc, __m256 d, __m256 mn, __m256 dmin, const float* xd, const float* xs) {
  // Each 128-bit lane: [sum of p[0]'s 4 lanes, p[1]'s, p[2]'s, p[3]'s] (as two rounds of hadd
  // leave them; unpacks are single-cycle shuffles where hadd is not).
  const __m256i t1 = _mm256_add_epi32(_mm256_unpacklo_epi32(p[0], p[1]), _mm256_unpackhi_epi32(p[0], p[1]));
  const __m256i t2 = _mm256_add_epi32(_mm256_unpacklo_epi32(p[2], p[3]), _mm256_unpackhi_epi32(p[2], p[3]));
  const __m256i g = _mm256_add_epi32(_mm256_unpacklo_epi64(t1, t2), _mm256_unpackhi_epi64(t1, t2));
  const __m256 sums = _mm256_loadu_ps(xs);
  __m256 gf = _mm256_cvtepi32_ps(g);  // exact, as every integer below
  if constexpr (form_of(T) == Form::kOffset) gf = _mm256_sub_ps(gf, _mm256_mul_ps(sums, _mm256_set1_ps(float(offset_of(T)))));
  const __m256 dx = _mm256_loadu_ps(xd);
  __m256 v = _mm256_mul_ps(d, _mm256_mul_ps(_mm256_mul_ps(gf, sc), dx));
  if constexpr (has_mins(T)) v = _mm256_sub_ps(v, _mm256_mul_ps(dmin, _mm256_mul_ps(_mm256_mul_ps(mn, sums), dx)));
  return v;
}
#endif

#if defined(__AVX2__)
// u of a whole unit for one token (xq: its 256 activations; xd, xs: its 16 slots), as two
// halves: v0 holds lanes 0-7, v1 lanes 8-15.
template <DType T>
inline void unit_halves(const Unit<T>& w, const int8_t* xq, const float* xd, const float* xs, __m256& v0, __m256& v1) {
#if defined(__AVX512BW__)
  // Four 64-weight products; each int32 lane holds 4 weights, 4 lanes a sub-block.
  const __m512i ones = _mm512_set1_epi16(1);
  __m512i p[4];
  for (int z = 0; z < 4; ++z) {
    __m512i x = _mm512_loadu_si512(xq + 64 * z);
    if constexpr (form_of(T) == Form::kSign)
      x = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(_mm512_load_si512(w.qs + 64 * z)), _mm512_setzero_si512(), x);
    p[z] = _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_load_si512(w.qa + 64 * z), x), ones);
  }
  // Sum each sub-block's 4 lanes: lane 4l + z ends up holding sub-block 4z + l; then order P.
  const __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(p[0], p[1]), _mm512_unpackhi_epi32(p[0], p[1]));
  const __m512i t2 = _mm512_add_epi32(_mm512_unpacklo_epi32(p[2], p[3]), _mm512_unpackhi_epi32(p[2], p[3]));
  __m512i g = _mm512_add_epi32(_mm512_unpacklo_epi64(t1, t2), _mm512_unpackhi_epi64(t1, t2));
  g = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 8, 1, 9, 4, 12, 5, 13, 2, 10, 3, 11, 6, 14, 7, 15), g);
  const __m512 sums = _mm512_loadu_ps(xs);
  __m512 gf = _mm512_cvtepi32_ps(g);  // exact, as every integer below
  if constexpr (form_of(T) == Form::kOffset) gf = _mm512_sub_ps(gf, _mm512_mul_ps(sums, _mm512_set1_ps(float(offset_of(T)))));
  const __m512 dx = _mm512_loadu_ps(xd);
  __m512 v = _mm512_mul_ps(_mm512_load_ps(w.d), _mm512_mul_ps(_mm512_mul_ps(gf, _mm512_load_ps(w.sc)), dx));
  if constexpr (has_mins(T)) {
    const __m512 m = _mm512_mul_ps(_mm512_mul_ps(_mm512_load_ps(w.mn), sums), dx);
    v = _mm512_sub_ps(v, _mm512_mul_ps(_mm512_load_ps(w.dmin), m));
  }
  v0 = _mm512_castps512_ps256(v);
  v1 = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
#else
  __m256i p[8];
  for (int c = 0; c < 8; ++c) {
    __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32 * c));
    if constexpr (form_of(T) == Form::kSign)
      x = _mm256_sign_epi8(x, _mm256_load_si256(reinterpret_cast<const __m256i*>(w.qs + 32 * c)));
    p[c] = chunk_dot(_mm256_load_si256(reinterpret_cast<const __m256i*>(w.qa + 32 * c)), x);
  }
  __m256 v[2];
  for (int h = 0; h < 2; ++h)
    v[h] = half_u<T>(p + 4 * h, _mm256_load_ps(w.sc + 8 * h), _mm256_load_ps(w.d + 8 * h),
                     has_mins(T) ? _mm256_load_ps(w.mn + 8 * h) : _mm256_setzero_ps(),
                     has_mins(T) ? _mm256_load_ps(w.dmin + 8 * h) : _mm256_setzero_ps(), xd + 8 * h, xs + 8 * h);
  v0 = v[0];
  v1 = v[1];
#endif
}

#if !defined(__AVX512BW__)
// u of a whole unit for one token straight from its bytes (b; bb: bytes per block), with no Unit
// stored: what take and unit_halves give, for the types with AVX2 parts, in fewer stores.
template <DType T>
inline void unit_halves_from_bytes(const uint8_t* b, int64_t bb, const int8_t* xq, const float* xd, const float* xs,
                                   __m256& v0, __m256& v1) {
  __m256i p[8];
  __m256 d[2], sc[2], mn[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()}, dmin = _mm256_setzero_ps();
  if constexpr (kAvx2Unit<T>) {
    Avx2Unit<T>::chunks(b, [&](int c, __m256i a) { p[c] = chunk_dot(a, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32 * c))); });
    const UnitScalars s = Avx2Unit<T>::scalars(b);
    d[0] = d[1] = _mm256_set1_ps(s.d);
    dmin = _mm256_set1_ps(s.dmin);
    sc[0] = s.sc[0], sc[1] = s.sc[1], mn[0] = s.mn[0], mn[1] = s.mn[1];
  } else {
    alignas(16) float dd[8];
    for (int k = 0; k < 8; ++k) {
      __m256i q = _mm256_setzero_si256();
      const __m256i a = Avx2Block<T>::chunk(b + k * bb, q);
      __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32 * k));
      if constexpr (form_of(T) == Form::kSign) x = _mm256_sign_epi8(x, q);
      p[k] = chunk_dot(a, x);
      dd[k] = Avx2Block<T>::d(b + k * bb);
    }
    for (int h = 0; h < 2; ++h) {  // block 4h + k at lanes k and k + 4 of half h
      const __m128 q4 = _mm_load_ps(dd + 4 * h);
      d[h] = _mm256_set_m128(q4, q4);
    }
    sc[0] = sc[1] = _mm256_set1_ps(1.0f);
  }
  v0 = half_u<T>(p, sc[0], d[0], mn[0], dmin, xd, xs);
  v1 = half_u<T>(p + 4, sc[1], d[1], mn[1], dmin, xd + 8, xs + 8);
}
#endif

// The first level of a unit's sum for one (row, token), in 8 lanes:
//   256-weight types: t[k] = u[k] + u[k + 8] (the tree's first level);
//   32-weight types: block b's value u[8h + k] + u[8h + k + 4] in lane b = 4h + k.
template <DType T>
inline __m256 level1_of(__m256 v0, __m256 v1) {
  if constexpr (Unit<T>::kBlocks == 1) return _mm256_add_ps(v0, v1);
  else return _mm256_add_ps(_mm256_permute2f128_ps(v0, v1, 0x20), _mm256_permute2f128_ps(v0, v1, 0x31));
}
template <DType T>
inline __m256 unit_level1(const Unit<T>& w, const int8_t* xq, const float* xd, const float* xs) {
  __m256 v0, v1;
  unit_halves<T>(w, xq, xd, xs, v0, v1);
  return level1_of<T>(v0, v1);
}

// acc[k] + the rest of row k's tree (t[k] += t[k + 4]; t[k] += t[k + 2]; t[0] + t[1]) for the 8
// rows k of a group at once: the same sums as tree8 row by row, lanes moved instead of rows.
inline __m256 add_trees8(__m256 acc, const __m256* t) {
  __m256 x[4];  // x[p] = [x of row 2p | x of row 2p + 1], x[k] = t[k] + t[k + 4]
  for (int p = 0; p < 4; ++p)
    x[p] = _mm256_add_ps(_mm256_permute2f128_ps(t[2 * p], t[2 * p + 1], 0x20), _mm256_permute2f128_ps(t[2 * p], t[2 * p + 1], 0x31));
  __m256 y[2];  // y[q]: [y0, y1 of row 4q, the same of row 4q + 2 | rows 4q + 1, 4q + 3], y[k] = x[k] + x[k + 2]
  for (int q = 0; q < 2; ++q)
    y[q] = _mm256_add_ps(_mm256_shuffle_ps(x[2 * q], x[2 * q + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm256_shuffle_ps(x[2 * q], x[2 * q + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m256 r = _mm256_add_ps(_mm256_shuffle_ps(y[0], y[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm256_shuffle_ps(y[0], y[1], _MM_SHUFFLE(3, 1, 3, 1)));  // rows 0 2 4 6 | 1 3 5 7
  return _mm256_add_ps(acc, _mm256_permutevar8x32_ps(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}

// acc[k] + block 0 + block 1 + ... + block 7 of row k (c[k] lane b) for the 8 rows at once.
inline __m256 add_blocks8(__m256 acc, const __m256* c) {
  __m256 t[8], s[8];
  for (int p = 0; p < 4; ++p) {
    t[2 * p] = _mm256_unpacklo_ps(c[2 * p], c[2 * p + 1]);
    t[2 * p + 1] = _mm256_unpackhi_ps(c[2 * p], c[2 * p + 1]);
  }
  for (int q = 0; q < 2; ++q)
    for (int h = 0; h < 2; ++h) {
      s[4 * q + 2 * h] = _mm256_shuffle_ps(t[4 * q + h], t[4 * q + h + 2], _MM_SHUFFLE(1, 0, 1, 0));
      s[4 * q + 2 * h + 1] = _mm256_shuffle_ps(t[4 * q + h], t[4 * q + h + 2], _MM_SHUFFLE(3, 2, 3, 2));
    }
  // s[4q + j] holds block j (and j + 4 in the high half) of rows 4q .. 4q + 3.
  for (int b = 0; b < 8; ++b)
    acc = _mm256_add_ps(acc, b < 4 ? _mm256_permute2f128_ps(s[b], s[4 + b], 0x20) : _mm256_permute2f128_ps(s[b - 4], s[b], 0x31));
  return acc;
}

// A group's 8 running sums (acc, one token) plus the 8 rows' unit values, from their first levels.
template <DType T>
inline void add_units8(float* acc, const __m256* level1) {
  const __m256 before = _mm256_loadu_ps(acc);
  _mm256_storeu_ps(acc, Unit<T>::kBlocks == 1 ? add_trees8(before, level1) : add_blocks8(before, level1));
}
#endif

// u[lane] of a whole unit for one token (xq: its 256 activations; xd, xs: its 16 slots).
template <DType T>
inline void unit_u(const Unit<T>& w, const int8_t* xq, const float* xd, const float* xs, float* u) {
#if defined(__AVX2__)
  __m256 v0, v1;
  unit_halves<T>(w, xq, xd, xs, v0, v1);
  _mm256_storeu_ps(u, v0);
  _mm256_storeu_ps(u + 8, v1);
#else
  for (int lane = 0; lane < 16; ++lane) {
    const int s = kLaneSub[lane];
    int32_t dot = 0;
    for (int j = 0; j < 16; ++j) {
      const int xj = xq[16 * s + j];
      if constexpr (form_of(T) == Form::kSign) dot += int32_t(uint8_t(w.qa[16 * s + j])) * (w.qs[16 * s + j] < 0 ? -xj : w.qs[16 * s + j] == 0 ? 0 : xj);
      else dot += int32_t(uint8_t(w.qa[16 * s + j])) * xj;
    }
    if constexpr (form_of(T) == Form::kOffset) dot -= offset_of(T) * int32_t(xs[lane]);
    const float a = float(dot * int32_t(w.sc[lane])) * xd[lane];
    float v = w.d[lane] * a;
    if constexpr (has_mins(T)) v = v - w.dmin[lane] * (float(int32_t(w.mn[lane]) * int32_t(xs[lane])) * xd[lane]);
    u[lane] = v;
  }
#endif
}

// The unit's contribution to the running sum `acc`, in the canonical order.
template <DType T>
inline float unit_add(const float* u, float acc, int blocks) {
  if constexpr (Unit<T>::kBlocks == 1) {
#if defined(__AVX2__)
    return acc + tree8(_mm256_add_ps(_mm256_loadu_ps(u), _mm256_loadu_ps(u + 8)));
#else
    float t[8];
    for (int k = 0; k < 8; ++k) t[k] = u[k] + u[k + 8];
    for (int k = 0; k < 4; ++k) t[k] = t[k] + t[k + 4];
    for (int k = 0; k < 2; ++k) t[k] = t[k] + t[k + 2];
    return acc + (t[0] + t[1]);
#endif
  } else {
    // Block b = 4h + k holds lanes 8h + k and 8h + k + 4 (sub-blocks 2b, 2b + 1).
    if (blocks == 8) {  // whole units: the same sums, unrolled
#pragma GCC unroll 8
      for (int b = 0; b < 8; ++b) acc = acc + (u[8 * (b / 4) + b % 4] + u[8 * (b / 4) + b % 4 + 4]);
      return acc;
    }
    for (int b = 0; b < blocks; ++b) {
      const int h = b / 4, k = b % 4;
      acc = acc + (u[8 * h + k] + u[8 * h + k + 4]);
    }
    return acc;
  }
}

constexpr int kQRows = 8;  // rows whose units are prepared together
// Up to this many tokens the AVX2 types with parts read each unit from its bytes once per token
// rather than storing it once for all: faster for one token, and for two in Q4_K and Q8_0 (docs/performance.md).
constexpr int64_t kFromBytesTokens = 2;

template <DType T>
void qlinear_type(float* out, const float* x, const Matrix& w, int64_t n) {
  using U = Unit<T>;
  constexpr int64_t kW = U::kW;
  const int64_t R = w.rows, K = w.cols, units = padded(K) / kUnit, Kp = padded(K);
  const int last_blocks = int((K - (units - 1) * kUnit) / kW);  // blocks in the last unit
  const int64_t stride = dtype_row_bytes(T, K), bb = dtype_bytes(T), unit_bytes = bb * U::kBlocks;
  const uint8_t* base = static_cast<const uint8_t*>(w.data) + w.row0 * stride;
  static thread_local QuantActs caller_acts;  // the calling thread's; the row runs read it
  QuantActs& acts = caller_acts;
  quantize_acts(x, n, K, acts);
  const bool parallel = R * K * n >= (int64_t(1) << 18) && omp_get_max_threads() > 1 && !omp_in_parallel();
  for_row_runs(R, kQRows, parallel, [&](int64_t r0, int64_t r1) {
    static thread_local std::vector<float> acc;
    static thread_local std::vector<U> prep;
    acc.resize(size_t(n * kQRows));
    prep.resize(kQRows);
    alignas(64) float u[16];
    for (int64_t rg = r0; rg < r1; rg += kQRows) {
      const int g = int(min64(kQRows, r1 - rg));
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t un = 0; un < units; ++un) {
        const int blocks = un + 1 < units ? U::kBlocks : last_blocks;
        // Prefetch two units ahead in each row's stream; near a row's end, the same row of the
        // next group (where the run continues).
        const int64_t ahead = un + 2 < units ? 2 * unit_bytes : kQRows * stride - (units - 2) * unit_bytes;
#if defined(__AVX2__) && !defined(__AVX512BW__)
        if constexpr (kAvx2Unit<T> || kAvx2Block<T>) {
          if (n <= kFromBytesTokens && g == kQRows && blocks == U::kBlocks) {  // few tokens: from the bytes
            for (int k = 0; k < kQRows; ++k) {
              const uint8_t* p = base + (rg + k) * stride + un * unit_bytes;
              for (int64_t o = 0; o < unit_bytes; o += 64) __builtin_prefetch(p + ahead + o);
            }
            for (int64_t t = 0; t < n; ++t) {
              const int8_t* xq = acts.q.data() + t * Kp + un * kUnit;
              const size_t slot = size_t(t * (Kp / 16) + un * 16);
              __m256 level1[kQRows];
              for (int k = 0; k < kQRows; ++k) {
                __m256 v0, v1;
                unit_halves_from_bytes<T>(base + (rg + k) * stride + un * unit_bytes, bb, xq, acts.d.data() + slot,
                                          acts.sum.data() + slot, v0, v1);
                level1[k] = level1_of<T>(v0, v1);
              }
              add_units8<T>(acc.data() + t * kQRows, level1);
            }
            continue;
          }
        }
#endif
        for (int k = 0; k < g; ++k) {
          const uint8_t* p = base + (rg + k) * stride + un * unit_bytes;
          for (int64_t o = 0; o < unit_bytes; o += 64) __builtin_prefetch(p + ahead + o);
          for (int b = 0; b < blocks; ++b) prep[size_t(k)].take(b, p + b * bb);
          if (blocks < U::kBlocks) prep[size_t(k)].pad(blocks);
        }
        for (int64_t t = 0; t < n; ++t) {
          const int8_t* xq = acts.q.data() + t * Kp + un * kUnit;
          const size_t slot = size_t(t * (Kp / 16) + un * 16);
#if defined(__AVX2__)
          if (g == kQRows && blocks == U::kBlocks) {  // a whole group and unit: 8 rows' sums at once
            __m256 level1[kQRows];
            for (int k = 0; k < kQRows; ++k)
              level1[k] = unit_level1<T>(prep[size_t(k)], xq, acts.d.data() + slot, acts.sum.data() + slot);
            add_units8<T>(acc.data() + t * kQRows, level1);
            continue;
          }
#endif
          for (int k = 0; k < g; ++k) {
            unit_u<T>(prep[size_t(k)], xq, acts.d.data() + slot, acts.sum.data() + slot, u);
            float& a = acc[size_t(t * kQRows + k)];
            a = unit_add<T>(u, a, blocks);
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
