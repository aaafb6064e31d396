// linear_t for one instruction-set variant (included by kernels/cpu/variants/*.cpp after gemm.h,
// whose format readers and with_format it uses): out[n, w.cols] = x[n, w.rows] · w, as MLA's
// absorbed attention needs.
#pragma once

#include "kernels/cpu/gemm.h"

namespace shoal::kernels::cpu {
namespace {

// linear_t's order: out[t][c] = the sum over rows r in ascending order of x[t][r] * w[r][c], one
// fused multiply-add per term, from +0; no lanes (each column is its own sum), so it does not
// depend on the tokens beside it, the chunking of columns or the variant.
template <int T, int V, class Rows>
void linear_t_chunk(float* out, const float* x, const Rows& rows, int64_t R, int64_t C, int64_t c0, int64_t width) {
  const int64_t span = rows.span(C), vecs = width / 16;
  F32x16 acc[T][V];
  float tail[T][16];
  for (int t = 0; t < T; ++t) {
    for (int v = 0; v < V; ++v) acc[t][v] = zero16();
    for (int i = 0; i < 16; ++i) tail[t][i] = 0.0f;
  }
  for (int64_t r = 0; r < R; ++r) {
    auto seg = rows.template start<1>(r);
    seg.at(c0 / span);
    F32x16 xs[T];
    for (int t = 0; t < T; ++t) xs[t] = splat16(x[t * R + r]);
    for (int64_t v = 0; v < vecs; ++v) {
      const F32x16 wv = seg.load(0, c0 + 16 * v);
      for (int t = 0; t < T; ++t) acc[t][v] = fma16(wv, xs[t], acc[t][v]);
    }
    for (int64_t c = c0 + 16 * vecs; c < c0 + width; ++c) {
      const float wc = seg.one(0, c);
      for (int t = 0; t < T; ++t) tail[t][c - c0 - 16 * vecs] = fma1(wc, x[t * R + r], tail[t][c - c0 - 16 * vecs]);
    }
  }
  for (int t = 0; t < T; ++t) {
    for (int64_t v = 0; v < vecs; ++v) store16(out + t * C + c0 + 16 * v, acc[t][v]);
    for (int64_t c = c0 + 16 * vecs; c < c0 + width; ++c) out[t * C + c] = tail[t][c - c0 - 16 * vecs];
  }
}

template <int V, class Rows>
void linear_t_chunks(float* out, const float* x, const Rows& rows, int64_t R, int64_t C, int64_t n) {
  // Column chunks of 16 x V that never straddle a block of the format (of 16, or single columns,
  // when its blocks are narrower or odd).
  const int64_t span = rows.span(C);
  const int64_t cw = span >= C || span % (16 * V) == 0 ? 16 * V : span % 16 == 0 ? 16 : 1;
  const int64_t chunks = (C + cw - 1) / cw;
  auto chunk = [&](int64_t k) {
    const int64_t c0 = k * cw, width = min64(cw, C - c0);
    int64_t t0 = 0;
    for (; t0 + 4 <= n; t0 += 4) linear_t_chunk<4, V>(out + t0 * C, x + t0 * R, rows, R, C, c0, width);
    switch (n - t0) {
      case 1: linear_t_chunk<1, V>(out + t0 * C, x + t0 * R, rows, R, C, c0, width); break;
      case 2: linear_t_chunk<2, V>(out + t0 * C, x + t0 * R, rows, R, C, c0, width); break;
      case 3: linear_t_chunk<3, V>(out + t0 * C, x + t0 * R, rows, R, C, c0, width); break;
      default: break;
    }
  };
  if (R * C * n < (int64_t(1) << 18) || omp_in_parallel()) {  // no region: even one thread's costs
    for (int64_t k = 0; k < chunks; ++k) chunk(k);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < chunks; ++k) chunk(k);
}

// One or two tokens: 128-column chunks (fewer passes over the rows' per-row work); more: 64.
template <class Rows>
void linear_t_format(float* out, const float* x, const Rows& rows, int64_t R, int64_t C, int64_t n) {
  if (n <= 2) linear_t_chunks<8>(out, x, rows, R, C, n);
  else linear_t_chunks<4>(out, x, rows, R, C, n);
}

inline void linear_t_variant(float* out, const float* x, const Matrix& w, int64_t n) {
  with_format(w, [&](const auto& rows) { linear_t_format(out, x, rows, w.rows, w.cols, n); });
}

}  // namespace
}  // namespace shoal::kernels::cpu
