// linear for one instruction-set variant: included once per variant TU (kernels/cpu/variants/),
// each compiled with its own target flags; everything here has internal linkage.
//
// The canonical order of out[t][r] = sum_c w[r][c] * x[t][c], shared by every path and variant:
// sixteen lanes, column c in lane c % 16; each lane accumulates its columns in increasing order
// with fused multiply-adds (acc = fma(w, x, acc), starting from +0); then the fixed tree of
// reduce16. w[r][c] is the float32 the format defines (dequantize_row's value). Nothing in the
// order depends on the number of tokens, the tile a token falls in, the thread that computes it
// or the vector width, so a token's result is bitwise the same alone or in any batch, in decode
// (weights read in their stored format) or prefill (weights dequantized into float32 panels).
#pragma once

#include <omp.h>

#include <cstdlib>
#include <type_traits>

#include "kernels/cpu/formats/bf16.h"
#include "kernels/cpu/formats/f16.h"
#include "kernels/cpu/formats/f32.h"
#include "kernels/cpu/formats/fp8_e4m3.h"
#include "kernels/cpu/formats/ggml_blocks.h"
#include "kernels/cpu/simd.h"

namespace shoal::kernels::cpu {
namespace {

// Software prefetch distance of the decode path, measured best on the development machine
// (bench_linear, 1 thread, BF16: 0.92 of the read bandwidth at 512 bytes, 0.91 at 1024, 0.82 without).
constexpr int64_t kPrefetchBytes = 512;

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// Columns [c0, c1) one at a time, each into its lane c % 16 (block edges not on 16 columns).
template <int R, int T, class Seg>
void add_columns_one_by_one(F32x16 (&acc)[R][T], const Seg& seg, const float* x, int64_t xs, int64_t c0,
                            int64_t c1) {
  float a[R][T][16];
  for (int k = 0; k < R; ++k)
    for (int t = 0; t < T; ++t) lanes16(a[k][t], acc[k][t]);
  for (int64_t c = c0; c < c1; ++c)
    for (int k = 0; k < R; ++k) {
      const float w = seg.one(k, c);
      for (int t = 0; t < T; ++t) a[k][t][c % 16] = fma1(w, x[t * xs + c], a[k][t][c % 16]);
    }
  for (int k = 0; k < R; ++k)
    for (int t = 0; t < T; ++t) acc[k][t] = load16(a[k][t]);
}

// The micro-kernel: rows r .. r+R-1 of `rows` against tokens x[0 .. T) (token t at x + t * xs),
// over all K columns, accumulators in registers; writes out[t * os + r + k].
template <int R, int T, class Rows, int64_t kPrefetch = 0>
void tile(const Rows& rows, int64_t r, const float* x, int64_t xs, int64_t K, float* out, int64_t os) {
  F32x16 acc[R][T];
#pragma GCC unroll 16
  for (int k = 0; k < R; ++k)
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) acc[k][t] = zero16();
  const int64_t span = rows.span(K);
  auto seg = rows.template start<R>(r);
  for (int64_t cb = 0, j = 0; cb < K; cb += span, ++j) {
    const int64_t ce = min64(K, cb + span);
    seg.at(j);
    int64_t c = cb;
    const int64_t aligned = min64(ce, (cb + 15) / 16 * 16);
    if (c < aligned) add_columns_one_by_one<R, T>(acc, seg, x, xs, c, aligned);
    c = aligned;
#pragma GCC unroll 4
    for (; c + 16 <= ce; c += 16) {
      F32x16 xv[T];
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) xv[t] = load16(x + t * xs + c);
#pragma GCC unroll 16
      for (int k = 0; k < R; ++k) {
        if constexpr (kPrefetch > 0) {  // one prefetch per cache line, kPrefetch bytes ahead;
          using SegT = std::remove_cv_t<decltype(seg)>;  // near a row's end, the next tile's row
          if ((c * SegT::kBytes) % 64 == 0) {
            const int64_t ahead = c + kPrefetch / SegT::kBytes;
            if (ahead < K) seg.prefetch(k, ahead);
            else seg.prefetch(k + R, ahead - K);
          }
        }
        const F32x16 wv = seg.load(k, c);
#pragma GCC unroll 16
        for (int t = 0; t < T; ++t) acc[k][t] = fma16(wv, xv[t], acc[k][t]);
      }
    }
    if (c < ce) add_columns_one_by_one<R, T>(acc, seg, x, xs, c, ce);
  }
  for (int k = 0; k < R; ++k)
    for (int t = 0; t < T; ++t) out[t * os + r + k] = reduce16(acc[k][t]);
}

// Rows [r0, r1) straight from the stored format, T tokens at once (decode).
template <int G, int T, class Rows>
void stored_rows(const Rows& rows, int64_t r0, int64_t r1, const float* x, int64_t K, float* out, int64_t os) {
  int64_t r = r0;
  for (; r + G <= r1; r += G) tile<G, T, Rows, kPrefetchBytes>(rows, r, x, K, K, out, os);
  for (; r < r1; ++r) tile<1, T>(rows, r, x, K, K, out, os);
}

// Rows [r0, r1) from the stored format against n tokens in tiles of kTileRows x up to kTileTokens
// (simd.h): each group of rows is read from memory once and from L1 by the following token tiles
// (a few tokens: no panel).
template <int T, class Rows>
void stored_rows_upto(const Rows& rows, int64_t r0, int64_t r1, const float* x, int64_t K, int64_t n, float* out,
                      int64_t os) {
  if constexpr (T > 1) {
    if (n < T) return stored_rows_upto<T - 1>(rows, r0, r1, x, K, n, out, os);
  }
  stored_rows<kTileRows, T>(rows, r0, r1, x, K, out, os);
}

template <class Rows>
void stored_rows_tiled(const Rows& rows, int64_t r0, int64_t r1, const float* x, int64_t K, int64_t n, float* out,
                       int64_t os) {
  for (int64_t r = r0; r < r1; r += kTileRows) {
    const int64_t r_end = min64(r1, r + kTileRows);
    for (int64_t t0 = 0; t0 < n; t0 += kTileTokens)
      stored_rows_upto<kTileTokens>(rows, r, r_end, x + t0 * K, K, min64(kTileTokens, n - t0), out + t0 * os, os);
  }
}

constexpr int64_t kPanelRowsMax = 64;  // rows of one float32 panel
constexpr int64_t kChunkCols = 512;    // columns of the panel and the token tile kept in L1 at once

// The packed panel (K a multiple of 16): rows in groups of 4 (the last padded with zeros),
// columns in chunks of kChunkCols; within a chunk, each group's 16-column steps are contiguous
// with its 4 rows side by side, so the micro-kernel streams one sequential run per chunk.
inline int64_t packed_index(int64_t i, int64_t c, int64_t groups, int64_t K) {
  const int64_t j = c / kChunkCols, c0 = j * kChunkCols, width = min64(kChunkCols, K - c0);
  return c0 * 4 * groups + (i / 4) * 4 * width + ((c - c0) / 16) * 64 + (i % 4) * 16 + c % 16;
}

template <class Rows>
void pack_rows(float* panel, const Rows& rows, int64_t rb, int64_t m, int64_t groups, int64_t K) {
  for (int64_t i = 0; i < 4 * groups; ++i) {
    if (i >= m) {
      for (int64_t c = 0; c < K; c += 16) store16(panel + packed_index(i, c, groups, K), zero16());
      continue;
    }
    auto seg = rows.template start<1>(rb + i);
    const int64_t span = rows.span(K);
    for (int64_t cb = 0, j = 0; cb < K; cb += span, ++j) {
      seg.at(j);
      for (int64_t c = cb; c < min64(K, cb + span); c += 16) store16(panel + packed_index(i, c, groups, K), seg.load(0, c));
    }
  }
}

// One group of 4 packed rows over `steps` 16-column steps from column c0, T tokens; accumulators
// carried in carry[4 * T] between chunks.
template <int T>
void packed_chunk(const float* wp, int64_t steps, const float* x, int64_t xs, int64_t c0, F32x16* carry) {
  F32x16 acc[4][T];
#pragma GCC unroll 16
  for (int k = 0; k < 4; ++k)
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) acc[k][t] = carry[k * T + t];
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t c = c0 + 16 * s;
    F32x16 xv[T];
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) xv[t] = load16(x + t * xs + c);
    __builtin_prefetch(wp + s * 64 + 512);
    __builtin_prefetch(wp + s * 64 + 528);
    __builtin_prefetch(wp + s * 64 + 544);
    __builtin_prefetch(wp + s * 64 + 560);
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      const F32x16 wv = load16(wp + s * 64 + k * 16);
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) acc[k][t] = fma16(wv, xv[t], acc[k][t]);
    }
  }
#pragma GCC unroll 16
  for (int k = 0; k < 4; ++k)
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) carry[k * T + t] = acc[k][t];
}

template <int T>
void packed_tokens(const float* panel, int64_t m, int64_t groups, const float* x, int64_t K, float* out, int64_t os) {
  alignas(64) F32x16 carry[kPanelRowsMax * T];
  for (int64_t i = 0; i < 4 * groups * T; ++i) carry[i] = zero16();
  for (int64_t c0 = 0; c0 < K; c0 += kChunkCols) {
    const int64_t width = min64(kChunkCols, K - c0);
    const float* chunk = panel + c0 * 4 * groups;
    for (int64_t g = 0; g < groups; ++g)
      packed_chunk<T>(chunk + g * 4 * width, width / 16, x, K, c0, carry + g * 4 * T);
  }
  for (int64_t i = 0; i < m; ++i)
    for (int t = 0; t < T; ++t) out[t * os + i] = reduce16(carry[i * T + t]);
}


constexpr int64_t kStoredTokens = 4;        // up to this many tokens read the stored format directly
constexpr int64_t kTiledTokens = 64;        // up to this many, token tiles of 6 over stored rows; more: panels
constexpr int64_t kPanelBytes = 1 << 20;    // a thread's float32 panel: stays in L2

// Rows [0, R) in groups of G, handed to the threads in runs as they come free (a thread slowed by
// the memory or the OS takes fewer), 8 runs per thread: fn(first row, end row) per run.
template <class Fn>
void for_row_runs(int64_t R, int64_t G, bool parallel, Fn&& fn) {
  const int64_t groups = (R + G - 1) / G, run = max64(1, groups / (8 * int64_t(omp_get_max_threads())));
  const int64_t runs = (groups + run - 1) / run;
  if (!parallel) {  // no region at all: even a one-thread region costs a microsecond in libgomp
    for (int64_t k = 0; k < runs; ++k) fn(min64(R, k * run * G), min64(R, (k + 1) * run * G));
    return;
  }
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t k = 0; k < runs; ++k) fn(min64(R, k * run * G), min64(R, (k + 1) * run * G));
}

template <class Rows>
void linear_format(float* out, const float* x, const Rows& rows, int64_t R, int64_t K, int64_t n) {
  const bool parallel = R * K * n >= (int64_t(1) << 18) && omp_get_max_threads() > 1 && !omp_in_parallel();  // else fork/join costs more
  if (n <= kStoredTokens) {
    for_row_runs(R, decode_rows(int(n)), parallel, [&](int64_t r0, int64_t r1) {
      switch (n) {
        case 1: stored_rows<decode_rows(1), 1>(rows, r0, r1, x, K, out, R); break;
        case 2: stored_rows<decode_rows(2), 2>(rows, r0, r1, x, K, out, R); break;
        case 3: stored_rows<decode_rows(3), 3>(rows, r0, r1, x, K, out, R); break;
        case 4: stored_rows<decode_rows(4), 4>(rows, r0, r1, x, K, out, R); break;
        default: break;
      }
    });
    return;
  }
  // A few tokens, or rows whose width is not a multiple of 16 (no packed panel for those): tiles
  // over the stored rows, in the same order.
  if (n <= kTiledTokens || K % 16 != 0) {
    for_row_runs(R, kTileRows, parallel, [&](int64_t r0, int64_t r1) { stored_rows_tiled(rows, r0, r1, x, K, n, out, R); });
    return;
  }
  const int64_t mc = max64(4, min64(kPanelRowsMax, kPanelBytes / (K * 4)) / 4 * 4), blocks = (R + mc - 1) / mc;
#pragma omp parallel if (parallel)
  {
    static thread_local AlignedBuffer buffer;
    float* panel = buffer.get((mc + 3) / 4 * 4 * K);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t rb = b * mc, m = min64(mc, R - rb), groups = (m + 3) / 4;
      pack_rows(panel, rows, rb, m, groups, K);
      int64_t t0 = 0;
      for (; t0 + 6 <= n; t0 += 6) packed_tokens<6>(panel, m, groups, x + t0 * K, K, out + t0 * R + rb, R);
      switch (n - t0) {
        case 1: packed_tokens<1>(panel, m, groups, x + t0 * K, K, out + t0 * R + rb, R); break;
        case 2: packed_tokens<2>(panel, m, groups, x + t0 * K, K, out + t0 * R + rb, R); break;
        case 3: packed_tokens<3>(panel, m, groups, x + t0 * K, K, out + t0 * R + rb, R); break;
        case 4: packed_tokens<4>(panel, m, groups, x + t0 * K, K, out + t0 * R + rb, R); break;
        case 5: packed_tokens<5>(panel, m, groups, x + t0 * K, K, out + t0 * R + rb, R); break;
        default: break;
      }
    }
  }
}

// Calls fn with the row reader of w's format: one case per weight format (a new format is one
// header in formats/ and one case here).
template <class Fn>
void with_format(const Matrix& w, Fn&& fn) {
  switch (w.dtype) {
    case DType::kF32: return fn(F32Rows::of(w));
    case DType::kBF16: return fn(Bf16Rows::of(w));
    case DType::kF16: return fn(F16Rows::of(w));
    case DType::kF8E4M3:
      if (Fp8E4m3Rows<true>::fits_tiny(w)) return fn(Fp8E4m3Rows<true>::of(w));
      return fn(Fp8E4m3Rows<false>::of(w));
    default:  // the ggml block types (GGUF)
      return fn(GgmlBlockRows::of(w));
  }
}

// The variant's linear: one case per weight format in with_format.
inline void linear_variant(float* out, const float* x, const Matrix& w, int64_t n) {
  with_format(w, [&](const auto& rows) { linear_format(out, x, rows, w.rows, w.cols, n); });
}

}  // namespace
}  // namespace shoal::kernels::cpu
