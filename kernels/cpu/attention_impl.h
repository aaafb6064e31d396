// attention for one instruction-set variant (included by kernels/cpu/variants/*.cpp, internal
// linkage throughout). Scores are dot products in linear's canonical order (16 lanes, fused
// multiply-adds, the fixed tree; four keys at a time, each its own chain); the weighted sum of
// values is one fused multiply-add per key and dimension, keys in ascending order. So every
// variant gives the same bits, and a query's result does not depend on the queries beside it.
#pragma once

#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <type_traits>

#include "kernels/cpu/simd.h"
#include "kernels/kernels.h"

namespace shoal::kernels::cpu {
namespace {

// A cache element widened to float: float as it is, bf16 exactly (its code is the float's high half).
// fp8 codes widen to their value times 2^-8 (the row's scale times 2^8 is applied to the dot).
inline F32x16 widen16(const float* p) { return load16(p); }
inline F32x16 widen16(const uint16_t* p) { return bf16x16(p); }
inline F32x16 widen16(const uint8_t* p) { return e4m3x16_scaled(p); }
inline float widen1(float x) { return x; }
inline float widen1(uint16_t x) { return bf16_one(x); }
inline float widen1(uint8_t x) { return e4m3_scaled_one(x); }

// fp8: the factor of row t's part `part` (its scale times 2^8); 1 for float and bf16.
template <typename E>
inline float row_factor(const AttentionParams& p, int64_t t, int part) {
  if constexpr (!std::is_same_v<E, uint8_t>) {
    return 1.0f;
  } else {
    const int64_t at = p.kv_blocks ? int64_t(p.kv_blocks[t / p.kv_block_tokens]) * p.kv_scale_block_stride +
                                         (t % p.kv_block_tokens) * 2
                                   : t * 2;
    return p.kv_scales[at + part] * 256.0f;
  }
}

// Row t of a key or value operand (with its head offset), contiguous or paged.
template <typename E>
inline const E* kv_row(const void* base, const AttentionParams& p, int64_t t, int64_t token_stride, int64_t head_off) {
  const int64_t at = p.kv_blocks ? int64_t(p.kv_blocks[t / p.kv_block_tokens]) * p.kv_block_stride +
                                       (t % p.kv_block_tokens) * token_stride
                                 : t * token_stride;
  return static_cast<const E*>(base) + at + head_off;
}

// Dots of q[n] with k0..k3[n], each in the canonical order.
template <typename E>
inline void dot4(float* out, const float* q, const E* const k[4], int64_t n) {
  F32x16 acc[4] = {zero16(), zero16(), zero16(), zero16()};
  int64_t c = 0;
  for (; c + 16 <= n; c += 16) {
    const F32x16 qv = load16(q + c);
    for (int j = 0; j < 4; ++j) acc[j] = fma16(widen16(k[j] + c), qv, acc[j]);
  }
  for (int j = 0; j < 4; ++j) {
    if (c < n) {
      float l[16];
      lanes16(l, acc[j]);
      for (int64_t i = c; i < n; ++i) l[i % 16] = fma1(widen1(k[j][i]), q[i], l[i % 16]);
      acc[j] = load16(l);
    }
    out[j] = reduce16(acc[j]);
  }
}


// Work items are (head, block of up to 16 queries); keys and values are visited in blocks of 64
// for all the block's queries, so each key is read from memory once per block, not per query.
// Each query's operations are the same, in the same order, as when it is alone, and the same
// whatever the keys' storage (E: float or bf16 codes; contiguous or paged).
template <typename E>
inline void attention_typed(const AttentionParams& p) {
  constexpr int64_t kQueries = 16, kKeys = 64;
  const int64_t blocks = (p.n_q + kQueries - 1) / kQueries, work = blocks * p.n_heads;
#pragma omp parallel if (work > 1 && !omp_in_parallel())
  {
    static thread_local AlignedBuffer buffer;
    const int64_t row = p.n_kv + 4;
    float* scores = buffer.get(kQueries * row);
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < work; ++w) {
      const int64_t h = w % p.n_heads, i0 = (w / p.n_heads) * kQueries, kvh = h / p.kv_group;
      const int64_t i1 = p.n_q < i0 + kQueries ? p.n_q : i0 + kQueries;
      int64_t visible[kQueries], most = 0;
      float max_score[kQueries], sum[kQueries];
      for (int64_t i = i0; i < i1; ++i) {
        visible[i - i0] = p.n_kv < int64_t(p.q_pos[i]) + 1 ? p.n_kv : int64_t(p.q_pos[i]) + 1;
        most = visible[i - i0] > most ? visible[i - i0] : most;
        max_score[i - i0] = -INFINITY;
      }
      for (int64_t b0 = 0; b0 < most; b0 += kKeys) {
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t vis = visible[i - i0], b1 = b0 + kKeys < vis ? b0 + kKeys : vis;
          const float* qa = p.q_a + i * p.q_token_stride + h * p.q_head_stride;
          const float* qb = p.q_b + i * p.q_b_token_stride + h * p.q_b_head_stride;
          float* sc = scores + (i - i0) * row;
          for (int64_t t0 = b0; t0 < b1; t0 += 4) {
            const E* ka[4];
            const E* kb[4];
            for (int j = 0; j < 4; ++j) {
              const int64_t t = t0 + j < vis ? t0 + j : vis - 1;  // past the end: recompute the last
              ka[j] = kv_row<E>(p.k_a, p, t, p.k_a_token_stride, kvh * p.k_a_head_stride);
              kb[j] = kv_row<E>(p.k_b, p, t, p.k_b_token_stride, kvh * p.k_b_head_stride);
            }
            float sa[4], sb[4];
            dot4(sa, qa, ka, p.da);
            dot4(sb, qb, kb, p.db);
            if constexpr (std::is_same_v<E, uint8_t>)
              for (int j = 0; j < 4 && t0 + j < vis; ++j) {
                sa[j] *= row_factor<E>(p, t0 + j, p.k_a_part);
                sb[j] *= row_factor<E>(p, t0 + j, p.k_b_part);
              }
            for (int j = 0; j < 4 && t0 + j < vis; ++j) {
              const float s = (sa[j] + sb[j]) * p.scale;
              sc[t0 + j] = s;
              max_score[i - i0] = s > max_score[i - i0] ? s : max_score[i - i0];
            }
          }
        }
      }
      const int64_t vec = p.dv / 16 * 16;
      for (int64_t i = i0; i < i1; ++i) {
        float* sc = scores + (i - i0) * row;
        float total = 0.0f;
        for (int64_t t = 0; t < visible[i - i0]; ++t) total += (sc[t] = expf(sc[t] - max_score[i - i0]));
        sum[i - i0] = total;
        float* o = p.out + (i * p.n_heads + h) * p.dv;
        for (int64_t d = 0; d < p.dv; ++d) o[d] = 0.0f;
      }
      for (int64_t b0 = 0; b0 < most; b0 += kKeys) {
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t vis = visible[i - i0], b1 = b0 + kKeys < vis ? b0 + kKeys : vis;
          const float* sc = scores + (i - i0) * row;
          float* o = p.out + (i * p.n_heads + h) * p.dv;
          for (int64_t t = b0; t < b1; ++t) {
            const float pt = sc[t] / sum[i - i0] * row_factor<E>(p, t, p.v_part);
            const E* v = kv_row<E>(p.v, p, t, p.v_token_stride, kvh * p.v_head_stride);
            const F32x16 ps = splat16(pt);
            for (int64_t d = 0; d < vec; d += 16) store16(o + d, fma16(ps, widen16(v + d), load16(o + d)));
            for (int64_t d = vec; d < p.dv; ++d) o[d] = fma1(pt, widen1(v[d]), o[d]);
          }
        }
      }
    }
  }
}

inline void attention_variant(const AttentionParams& p) {
  if (p.kv_dtype == DType::kBF16) return attention_typed<uint16_t>(p);
  if (p.kv_dtype == DType::kF8E4M3) return attention_typed<uint8_t>(p);
  attention_typed<float>(p);
}

}  // namespace
}  // namespace shoal::kernels::cpu
