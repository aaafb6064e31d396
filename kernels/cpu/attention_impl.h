// attention for one instruction-set variant (included by kernels/cpu/variants/*.cpp, internal
// linkage throughout). Scores are dot products in linear's canonical order (16 lanes, fused
// multiply-adds, the fixed tree; four keys at a time, each its own chain); the weighted sum of
// values is one fused multiply-add per key and dimension, keys in ascending order. So every
// variant gives the same bits, and a query's result does not depend on the queries beside it.
#pragma once

#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <algorithm>
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

// fp8: the factor of row t's part `part` (its scale times 2^8).
inline float fp8_row_factor(const AttentionParams& p, int64_t t, int part) {
  const int64_t at = p.kv_blocks ? int64_t(p.kv_blocks[t / p.kv_block_tokens]) * p.kv_scale_block_stride +
                                       (t % p.kv_block_tokens) * 2
                                 : t * 2;
  return p.kv_scales[at + part] * 256.0f;
}

// Row t of a key or value operand (with its head offset), contiguous or paged.
template <typename E>
inline const E* kv_row(const void* base, const AttentionParams& p, int64_t t, int64_t token_stride, int64_t head_off) {
  const int64_t at = p.kv_blocks ? int64_t(p.kv_blocks[t / p.kv_block_tokens]) * p.kv_block_stride +
                                       (t % p.kv_block_tokens) * token_stride
                                 : t * token_stride;
  return static_cast<const E*>(base) + at + head_off;
}

// A dot's end: the elements [c, n) past the last 16 into their lanes, then the fixed tree.
template <typename E>
inline float finish_dot(F32x16 acc, const float* q, const E* k, int64_t c, int64_t n) {
  if (c < n) {
    float l[16];
    lanes16(l, acc);
    for (int64_t i = c; i < n; ++i) l[i % 16] = fma1(widen1(k[i]), q[i], l[i % 16]);
    acc = load16(l);
  }
  return reduce16(acc);
}

// Pairs computed together on the same rows: as many as the vector registers hold accumulators
// for (4 x 4 dot chains in 32 registers; 2 x 4 where a 16-lane vector is two registers of 16).
// How many go together changes no bit: every chain is the one it would be alone.
#if defined(__AVX512F__)
constexpr int kTilePairs = 4;
#else
constexpr int kTilePairs = 2;
#endif

// Calls f(std::integral_constant<int, P>, u) for the pairs [u, u + P) of a group of g, in tiles
// of kTilePairs, then 2 and 1.
template <typename F>
inline void in_tiles(int64_t g, F&& f) {
  for (int64_t u = 0; u < g;) {
    if constexpr (kTilePairs >= 4)
      if (g - u >= 4) {
        f(std::integral_constant<int, 4>{}, u);
        u += 4;
        continue;
      }
    if (g - u >= 2) {
      f(std::integral_constant<int, 2>{}, u);
      u += 2;
    } else {
      f(std::integral_constant<int, 1>{}, u);
      u += 1;
    }
  }
}

// Dots of P queries with the same four rows, each in the canonical order (its own chain).
template <int P, typename E>
inline void dot_tile(float (*out)[4], const float* const* q, const E* const k[4], int64_t n) {
  F32x16 acc[P][4];
  for (int u = 0; u < P; ++u)
    for (int j = 0; j < 4; ++j) acc[u][j] = zero16();
  int64_t c = 0;
  for (; c + 16 <= n; c += 16) {
    F32x16 kv[4];
    for (int j = 0; j < 4; ++j) kv[j] = widen16(k[j] + c);
    for (int u = 0; u < P; ++u) {
      const F32x16 qv = load16(q[u] + c);
      for (int j = 0; j < 4; ++j) acc[u][j] = fma16(kv[j], qv, acc[u][j]);
    }
  }
  if (c == n) {  // no elements past the last 16: the four keys' trees side by side
    for (int u = 0; u < P; ++u) reduce16x4(out[u], acc[u][0], acc[u][1], acc[u][2], acc[u][3]);
    return;
  }
  for (int u = 0; u < P; ++u)
    for (int j = 0; j < 4; ++j) out[u][j] = finish_dot(acc[u][j], q[u], k[j], c, n);
}

// o[u][0, 64) += sum over keys t in [t0, t1) of w[u][t] v_t[0, 64), t ascending, for P sums that
// read the same value rows (v_rows[t - b0] + off).
template <int P, typename E>
inline void values_tile(float* const* o, const float* const* w, const E* const* v_rows, int64_t off, int64_t b0,
                        int64_t t0, int64_t t1) {
  F32x16 a[P][4];
  for (int u = 0; u < P; ++u)
    for (int k = 0; k < 4; ++k) a[u][k] = load16(o[u] + 16 * k);
  for (int64_t t = t0; t < t1; ++t) {
    const E* v = v_rows[t - b0] + off;
    const F32x16 v0 = widen16(v), v1 = widen16(v + 16), v2 = widen16(v + 32), v3 = widen16(v + 48);
    for (int u = 0; u < P; ++u) {
      const F32x16 ps = splat16(w[u][t]);
      a[u][0] = fma16(ps, v0, a[u][0]);
      a[u][1] = fma16(ps, v1, a[u][1]);
      a[u][2] = fma16(ps, v2, a[u][2]);
      a[u][3] = fma16(ps, v3, a[u][3]);
    }
  }
  for (int u = 0; u < P; ++u)
    for (int k = 0; k < 4; ++k) store16(o[u] + 16 * k, a[u][k]);
}

// The canonical order of one query's attention (what every schedule below computes, bit for
// bit, whatever the batch, the chunking or the threads):
// - keys in segments of kSegmentKeys (absolute positions [k * 128, (k + 1) * 128)); within a
//   segment, the score of each key (the dot above, times the scale), the segment's largest m,
//   e_t = exp(score - m), l = their sum in ascending order, and o = the sum over ascending keys of
//   fma(e_t / l * row factor, v_t, o): the segment's softmax-weighted values;
// - segments folded in ascending order into chunks of kChunkKeys, and chunks folded in ascending
//   order into the result, each fold of (M, L, O) with (m, l, o) being
//   M' = max(M, m), a = L exp(M - M'), b = l exp(m - M'), L' = a + b, O' = fma(b / L', o, O a / L').
// A context of at most 128 keys is one segment: its softmax is taken whole, as a single pass
// would. Long contexts split over the sequence (decode's queries in parallel over chunks) and
// still give the bits of one thread walking the keys in order.
constexpr int64_t kSegmentKeys = 128, kChunkKeys = 4096, kBlockQueries = 16, kSubKeys = 16, kMaxPairs = 128;

// The softmax state of one (query, head): (m, l) and dv values elsewhere. l == 0: nothing yet.
struct SoftmaxState {
  float m = -INFINITY, l = 0.0f;
};

// Folds (m, l, o) into (M, L, O) by the rule above; into an empty state it copies.
inline void fold(SoftmaxState& into, float* out_o, const SoftmaxState& part, const float* o, int64_t dv) {
  if (part.l == 0.0f) return;
  if (into.l == 0.0f) {
    into = part;
    for (int64_t d = 0; d < dv; ++d) out_o[d] = o[d];
    return;
  }
  const float m = part.m > into.m ? part.m : into.m;
  const float a = into.l * expf(into.m - m), b = part.l * expf(part.m - m), l = a + b;
  const float wa = a / l, wb = b / l;
  const int64_t vec = dv / 16 * 16;
  const F32x16 va = splat16(wa), vb = splat16(wb);
  for (int64_t d = 0; d < vec; d += 16) store16(out_o + d, fma16(vb, load16(o + d), mul16(load16(out_o + d), va)));
  for (int64_t d = vec; d < dv; ++d) out_o[d] = fma1(wb, o[d], out_o[d] * wa);
  into.m = m;
  into.l = l;
}

// One work item's queries [i0, i1) x heads [h0, h1): "pairs" j = (h - h0) * nq + (i - i0).
struct Pairs {
  int64_t i0, i1, h0, h1;
  int64_t nq() const { return i1 - i0; }
  int64_t count() const { return (h1 - h0) * nq(); }
  int64_t head(int64_t j) const { return h0 + j / nq(); }
  int64_t query(int64_t j) const { return i0 + j % nq(); }
};

// Scratch of one item: a segment's scores and partial values, its chunk's state and values.
struct PairScratch {
  float* scores;  // [pairs, kSegmentKeys]
  float* seg_o;   // [pairs, dv]
  float* chunk_o; // [pairs, dv]
  SoftmaxState seg[kMaxPairs], chunk[kMaxPairs];
};

// Segment [s0, s0 + kSegmentKeys) for the item's pairs: scores, softmax, weighted values into
// seg_o / seg (pairs that see no key of it get l = 0).
template <typename E>
inline void attend_segment(const AttentionParams& p, const Pairs& w, const int64_t* visible, int64_t s0,
                           PairScratch& x) {
  const int64_t n = w.count(), dv = p.dv;
  for (int64_t j = 0; j < n; ++j) x.seg[j] = SoftmaxState{};
  const int64_t s1 = s0 + kSegmentKeys;
  // fp8: each key's three row factors, found once per segment for every pair.
  constexpr bool fp8 = std::is_same_v<E, uint8_t>;
  float fa[kSegmentKeys], fb[kSegmentKeys], fv[kSegmentKeys];
  if constexpr (fp8)
    for (int64_t t = s0; t < s1 && t < p.n_kv; ++t) {
      fa[t - s0] = fp8_row_factor(p, t, p.k_a_part);
      fb[t - s0] = fp8_row_factor(p, t, p.k_b_part);
      fv[t - s0] = fp8_row_factor(p, t, p.v_part);
    }
  // Each sub-block's rows (of key head 0; a head adds its offset), found once for every pair.
  const E* ka_rows[kSubKeys];
  const E* kb_rows[kSubKeys];
  const E* v_rows[kSubKeys];
  auto find_rows = [&](int64_t b0, bool keys) {
    for (int64_t t = b0; t < b0 + kSubKeys && t < p.n_kv; ++t) {
      if (keys) {
        ka_rows[t - b0] = kv_row<E>(p.k_a, p, t, p.k_a_token_stride, 0);
        kb_rows[t - b0] = kv_row<E>(p.k_b, p, t, p.k_b_token_stride, 0);
      } else {
        v_rows[t - b0] = kv_row<E>(p.v, p, t, p.v_token_stride, 0);
      }
    }
  };
  // Scores, sub-block by sub-block of keys so that a sub-block's rows serve every pair from L1;
  // pairs that read the same rows go in tiles of up to kTilePairs.
  auto kv_head = [&](int64_t j) { return w.head(j) / p.kv_group; };
  // Pairs read the same rows when their key heads match or every head reads the same rows
  // (MLA's absorbed heads: head strides 0).
  const bool keys_shared = p.k_a_head_stride == 0 && p.k_b_head_stride == 0, values_shared = p.v_head_stride == 0;
  auto vis_of = [&](int64_t j) { return visible[w.query(j) - w.i0]; };
  auto group_at = [&](int64_t j, bool shared) {  // pairs from j on that read j's rows, at most a tile
    int64_t g = 1;
    while (g < kTilePairs && j + g < n && (shared || kv_head(j + g) == kv_head(j))) ++g;
    return g;
  };
  // The next sub-block's rows (of key head 0) are asked for while this one is computed.
  auto prefetch_rows = [&](int64_t b0) {
    for (int64_t t = b0; t < b0 + kSubKeys && t < p.n_kv; ++t) {
      const char* a = reinterpret_cast<const char*>(kv_row<E>(p.k_a, p, t, p.k_a_token_stride, 0));
      const char* b = reinterpret_cast<const char*>(kv_row<E>(p.k_b, p, t, p.k_b_token_stride, 0));
      for (int64_t c = 0; c < p.da * int64_t(sizeof(E)); c += 64) __builtin_prefetch(a + c);
      for (int64_t c = 0; c < p.db * int64_t(sizeof(E)); c += 64) __builtin_prefetch(b + c);
    }
  };
  for (int64_t b0 = s0; b0 < s1; b0 += kSubKeys) {
    find_rows(b0, true);
    prefetch_rows(b0 + kSubKeys);
    for (int64_t j = 0; j < n;) {
      const int64_t g = group_at(j, keys_shared), kvh = kv_head(j);
      int64_t vis = 0;  // rows for the longest; each pair keeps its own
      for (int64_t u = 0; u < g; ++u) vis = vis_of(j + u) > vis ? vis_of(j + u) : vis;
      if (b0 >= vis) {
        j += g;
        continue;
      }
      const int64_t b1 = b0 + kSubKeys < vis ? b0 + kSubKeys : vis;
      const float* qa[kTilePairs];
      const float* qb[kTilePairs];
      for (int64_t u = 0; u < g; ++u) {
        const int64_t i = w.query(j + u), h = w.head(j + u);
        qa[u] = p.q_a + i * p.q_token_stride + h * p.q_head_stride;
        qb[u] = p.q_b + i * p.q_b_token_stride + h * p.q_b_head_stride;
      }
      for (int64_t t0 = b0; t0 < b1; t0 += 4) {
        const E* ka[4];
        const E* kb[4];
        for (int k = 0; k < 4; ++k) {
          const int64_t t = t0 + k < vis ? t0 + k : vis - 1;  // past the end: recompute the last
          ka[k] = ka_rows[t - b0] + kvh * p.k_a_head_stride;
          kb[k] = kb_rows[t - b0] + kvh * p.k_b_head_stride;
        }
        float sa[kTilePairs][4], sb[kTilePairs][4];
        in_tiles(g, [&](auto tile, int64_t u) {
          dot_tile<decltype(tile)::value>(sa + u, qa + u, ka, p.da);
          dot_tile<decltype(tile)::value>(sb + u, qb + u, kb, p.db);
        });
        for (int64_t u = 0; u < g; ++u) {
          const int64_t vis_u = vis_of(j + u);
          float* sc = x.scores + (j + u) * kSegmentKeys - s0;
          float& mx = x.seg[j + u].m;
          for (int k = 0; k < 4 && t0 + k < vis_u; ++k) {
            if constexpr (fp8) {
              sa[u][k] *= fa[t0 + k - s0];
              sb[u][k] *= fb[t0 + k - s0];
            }
            const float sk = (sa[u][k] + sb[u][k]) * p.scale;
            sc[t0 + k] = sk;
            mx = sk > mx ? sk : mx;
          }
        }
      }
      j += g;
    }
  }
  // The softmax of the segment; each score becomes its key's weight.
  for (int64_t j = 0; j < n; ++j) {
    const int64_t vis = vis_of(j), end = s1 < vis ? s1 : vis;
    if (s0 >= end) continue;
    float* sc = x.scores + j * kSegmentKeys - s0;
    const float m = x.seg[j].m;
    float total = 0.0f;
    for (int64_t t = s0; t < end; ++t) total += (sc[t] = expf(sc[t] - m));
    x.seg[j].l = total;
    for (int64_t t = s0; t < end; ++t) sc[t] = sc[t] / total * (fp8 ? fv[t - s0] : 1.0f);
    float* o = x.seg_o + j * dv;
    for (int64_t d = 0; d < dv; ++d) o[d] = 0.0f;
  }
  // Weighted values: per sub-block of keys and 64 dimensions, every pair's sums stay in registers
  // while the sub-block's values stay in L1. Each sum still takes its keys in ascending order.
  const int64_t vec64 = dv / 64 * 64, vec = dv / 16 * 16;
  for (int64_t b0 = s0; b0 < s1; b0 += kSubKeys) {
    if (b0 >= p.n_kv) break;
    find_rows(b0, false);
    for (int64_t d = 0; d < vec64; d += 64)
      for (int64_t j = 0; j < n;) {
        const int64_t g = group_at(j, values_shared), off = kv_head(j) * p.v_head_stride + d;
        float* o[kTilePairs];
        const float* wt[kTilePairs];
        int64_t end[kTilePairs], common = b0 + kSubKeys;
        for (int64_t u = 0; u < g; ++u) {
          o[u] = x.seg_o + (j + u) * dv + d;
          wt[u] = x.scores + (j + u) * kSegmentKeys - s0;
          const int64_t vis = vis_of(j + u);
          end[u] = b0 + kSubKeys < vis ? b0 + kSubKeys : vis;
          common = end[u] < common ? end[u] : common;
        }
        if (common < b0) common = b0;
        // The keys every pair of the group sees, in tiles; then each pair's own last keys.
        in_tiles(g, [&](auto tile, int64_t u) {
          values_tile<decltype(tile)::value>(o + u, wt + u, v_rows, off, b0, b0, common);
        });
        for (int64_t u = 0; u < g; ++u)
          if (end[u] > common) values_tile<1>(o + u, wt + u, v_rows, off, b0, common, end[u]);
        j += g;
      }
    if (vec64 == dv) continue;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t vis = vis_of(j), kvh = kv_head(j);
      if (b0 >= vis) continue;
      const int64_t b1 = b0 + kSubKeys < vis ? b0 + kSubKeys : vis;
      const float* sc = x.scores + j * kSegmentKeys - s0;
      float* o = x.seg_o + j * dv;
      for (int64_t t = b0; t < b1; ++t) {
        const E* v = v_rows[t - b0] + kvh * p.v_head_stride;
        const F32x16 ps = splat16(sc[t]);
        for (int64_t d = vec64; d < vec; d += 16) store16(o + d, fma16(ps, widen16(v + d), load16(o + d)));
        for (int64_t d = vec; d < dv; ++d) o[d] = fma1(sc[t], widen1(v[d]), o[d]);
      }
    }
  }
}

// The item's pairs over chunk [c0, c0 + kChunkKeys): its segments folded in order into
// chunk_o / chunk.
template <typename E>
inline void attend_chunk(const AttentionParams& p, const Pairs& w, const int64_t* visible, int64_t most, int64_t c0,
                         PairScratch& x) {
  const int64_t n = w.count(), dv = p.dv;
  for (int64_t j = 0; j < n; ++j) x.chunk[j] = SoftmaxState{};
  const int64_t c1 = c0 + kChunkKeys < most ? c0 + kChunkKeys : most;
  for (int64_t s0 = c0; s0 < c1; s0 += kSegmentKeys) {
    attend_segment<E>(p, w, visible, s0, x);
    for (int64_t j = 0; j < n; ++j) fold(x.chunk[j], x.chunk_o + j * dv, x.seg[j], x.seg_o + j * dv, dv);
  }
}

// Work items are (block of up to 16 queries, group of heads) and, for decode's few queries over
// a long context, chunks of the keys too (folded after, in order). A group's heads share each
// key's read (MLA's absorbed heads all read the same latent rows).
template <typename E>
inline void attention_typed(const AttentionParams& p) {
  const int64_t H = p.n_heads, dv = p.dv;
  const int64_t blocks = (p.n_q + kBlockQueries - 1) / kBlockQueries;
  const int64_t nq_block = p.n_q < kBlockQueries ? p.n_q : kBlockQueries;
  const int64_t threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const int64_t chunks = (p.n_kv + kChunkKeys - 1) / kChunkKeys;
  // Heads per item: decode's few queries take many heads (each row read once for up to 128 of
  // them); prefill's 16 queries already share each row, and keep their scratch in L2.
  const int64_t pairs_budget = nq_block <= 2 ? kMaxPairs : 32;
  int64_t group = pairs_budget / nq_block < H ? pairs_budget / nq_block : H;
  if (group < 1) group = 1;
  auto groups = [&] { return (H + group - 1) / group; };
  // Too few items for the threads: a long context splits over its chunks, a short one its heads.
  const bool split = chunks > 1 && blocks * groups() < 2 * threads;
  while (!split && group > 1 && blocks * groups() < threads) group = (group + 1) / 2;
  const int64_t items = blocks * groups() * (split ? chunks : 1);
  // split: every (chunk, query, head)'s state and values, folded in order after the items.
  static thread_local AlignedBuffer split_buffer;
  float* split_o = split ? split_buffer.get(chunks * p.n_q * H * (dv + 2)) : nullptr;
  auto split_at = [&](int64_t c, int64_t i, int64_t h) { return split_o + ((c * p.n_q + i) * H + h) * (dv + 2); };
#pragma omp parallel if (items > 1 && !omp_in_parallel())
  {
    static thread_local AlignedBuffer buffer;
    const int64_t pairs = group * nq_block;
    float* base = buffer.get(pairs * (kSegmentKeys + 3 * dv));
    PairScratch x{base, base + pairs * kSegmentKeys, base + pairs * (kSegmentKeys + dv), {}, {}};
    float* total_o = base + pairs * (kSegmentKeys + 2 * dv);
    SoftmaxState total[kMaxPairs];
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t c = split ? it % chunks : 0, rest = split ? it / chunks : it;
      const int64_t g = rest % groups(), b = rest / groups();
      Pairs w{b * kBlockQueries, (b + 1) * kBlockQueries < p.n_q ? (b + 1) * kBlockQueries : p.n_q, g * group,
              (g + 1) * group < H ? (g + 1) * group : H};
      int64_t visible[kBlockQueries], most = 0;
      for (int64_t i = w.i0; i < w.i1; ++i) {
        visible[i - w.i0] = p.n_kv < int64_t(p.q_pos[i]) + 1 ? p.n_kv : int64_t(p.q_pos[i]) + 1;
        most = visible[i - w.i0] > most ? visible[i - w.i0] : most;
      }
      const int64_t n = w.count();
      if (split) {
        if (c * kChunkKeys < most) attend_chunk<E>(p, w, visible, most, c * kChunkKeys, x);
        else for (int64_t j = 0; j < n; ++j) x.chunk[j] = SoftmaxState{};
        for (int64_t j = 0; j < n; ++j) {
          float* at = split_at(c, w.query(j), w.head(j));
          at[0] = x.chunk[j].m;
          at[1] = x.chunk[j].l;
          if (x.chunk[j].l != 0.0f) std::copy_n(x.chunk_o + j * dv, dv, at + 2);
        }
        continue;
      }
      for (int64_t j = 0; j < n; ++j) total[j] = SoftmaxState{};
      for (int64_t c0 = 0; c0 < most; c0 += kChunkKeys) {
        attend_chunk<E>(p, w, visible, most, c0, x);
        for (int64_t j = 0; j < n; ++j) fold(total[j], total_o + j * dv, x.chunk[j], x.chunk_o + j * dv, dv);
      }
      for (int64_t j = 0; j < n; ++j) {
        float* out = p.out + (w.query(j) * H + w.head(j)) * dv;
        if (total[j].l == 0.0f) std::fill_n(out, dv, 0.0f);  // no key visible
        else std::copy_n(total_o + j * dv, dv, out);
      }
    }
    if (split) {
#pragma omp for schedule(static)
      for (int64_t ih = 0; ih < p.n_q * H; ++ih) {
        const int64_t i = ih / H, h = ih % H;
        float* out = p.out + ih * dv;
        SoftmaxState st;
        for (int64_t c = 0; c < chunks; ++c) {
          const float* at = split_at(c, i, h);
          fold(st, out, SoftmaxState{at[0], at[1]}, at + 2, dv);
        }
        if (st.l == 0.0f) std::fill_n(out, dv, 0.0f);
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
