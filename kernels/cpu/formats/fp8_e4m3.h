// F8_E4M3 weights with block scales (DeepSeek-V3's 128x128): the weight is the float32 product
// e4m3(code) * scale_inv[row / block][col / block], rounded once, exactly what dequantize_row
// gives. With AVX2 or AVX-512 the code is widened to e4m3 * 2^-120 by integer shifts (three
// instructions, simd.h) and multiplied by scale * 2^120; where that factor would overflow
// (scales of 256 or more) and in the baseline, it goes through an f16 as e4m3 * 2^-8 times
// scale * 2^8. Every factor is exact, so each way rounds the same real number.
#pragma once

#include "kernels/cpu/simd.h"
#include "kernels/kernels.h"

namespace shoal::kernels::cpu {
namespace {

// kTiny: every scale of the view is below 2^8, so scale * 2^120 is finite (fits_tiny).
template <bool kTiny>
struct Fp8E4m3Rows {
  const uint8_t* base;
  int64_t stride;
  const float* scale_inv;
  int64_t block, scale_cols, row0;
  int shift;  // log2(block) when block is a power of two (DeepSeek's 128), else -1
  static Fp8E4m3Rows of(const Matrix& w) {
    const int shift = (w.block & (w.block - 1)) == 0 ? __builtin_ctzll(uint64_t(w.block)) : -1;
    return {static_cast<const uint8_t*>(w.data) + w.row0 * w.cols, w.cols, w.scale_inv, w.block,
            (w.cols + w.block - 1) / w.block, w.row0, shift};
  }
  int64_t block_of(int64_t row) const { return shift >= 0 ? row >> shift : row / block; }
  int64_t span(int64_t) const { return block; }  // one scale per block of columns
  template <int R>
  struct Seg {
    const uint8_t* p;
    int64_t stride;
    const float* srow[R];  // each row's scales
    float s256v[R];        // this block's scale * 2^8 per row
    float s120v[R];        // this block's scale * 2^120 per row
    F32x16 s256[R];        // scale * 2^8, splatted
    F32x16 s120[R];        // scale * 2^120, splatted
    static constexpr int64_t kBytes = 1;  // per weight
    void at(int64_t j) {  // column block j: only the factors this reader uses
      for (int k = 0; k < R; ++k) {
        const float s = srow[k][j];
        if constexpr (kHaveE4m3Tiny && kTiny) {
          s120v[k] = s * 0x1p120f;
          s120[k] = splat16(s120v[k]);
        } else {
          s256v[k] = s * 256.0f;
          s256[k] = splat16(s256v[k]);
        }
      }
    }
    void prefetch(int k, int64_t c) const { __builtin_prefetch(p + k * stride + c); }
    F32x16 load(int k, int64_t c) const {
      if constexpr (kHaveE4m3Tiny && kTiny) return mul16(e4m3x16_tiny(p + k * stride + c), s120[k]);
      return mul16(e4m3x16_scaled(p + k * stride + c), s256[k]);
    }
    float one(int k, int64_t c) const {
      if constexpr (kHaveE4m3Tiny && kTiny) return e4m3_tiny_one(p[k * stride + c]) * s120v[k];
      return e4m3_scaled_one(p[k * stride + c]) * s256v[k];
    }
  };
  // Rows r .. r+R-1, ready for at(j).
  // Whether every scale the view uses is below 2^8 (then kTiny = true may read it).
  static bool fits_tiny(const Matrix& w) {
    if (w.rows == 0) return true;
    const int64_t sc = (w.cols + w.block - 1) / w.block;
    const float* s = w.scale_inv + (w.row0 / w.block) * sc;
    const float* e = w.scale_inv + ((w.row0 + w.rows - 1) / w.block + 1) * sc;
    for (; s < e; ++s)
      if (!(*s < 256.0f && *s > -256.0f)) return false;
    return true;
  }
  template <int R>
  Seg<R> start(int64_t r) const {
    Seg<R> g;
    g.p = base + r * stride;
    g.stride = stride;
    for (int k = 0; k < R; ++k) g.srow[k] = scale_inv + block_of(row0 + r + k) * scale_cols;
    return g;
  }
};

}  // namespace
}  // namespace shoal::kernels::cpu
