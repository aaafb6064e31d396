// ggml block-quantized weights (Q4_0 ... IQ1_M, GGUF files), exact numerics: each block of a row
// is dequantized to the float32 values ggml's reference gives (formats/ggml/, bit for bit) and
// those enter the canonical order like any other format, so a GGUF matrix gives bitwise the same
// result as the F32 matrix of its dequantized weights. A segment keeps the current block of each
// of its rows as float32 (at(j) fills it).
#pragma once

#include "kernels/cpu/formats/ggml/block.h"
#include "kernels/cpu/simd.h"
#include "kernels/kernels.h"

namespace shoal::kernels::cpu {
namespace {

constexpr int64_t kMaxBlockWeights = 256;

struct GgmlBlockRows {
  const uint8_t* base;  // row 0 of the view
  int64_t stride;       // bytes per row
  int64_t bw, bb;       // weights and bytes per block
  DType dtype;
  static GgmlBlockRows of(const Matrix& w) {
    const int64_t stride = dtype_row_bytes(w.dtype, w.cols);
    return {static_cast<const uint8_t*>(w.data) + w.row0 * stride, stride, dtype_block(w.dtype),
            dtype_bytes(w.dtype), w.dtype};
  }
  int64_t span(int64_t) const { return bw; }  // one block of columns at a time
  template <int R>
  struct Seg {
    const uint8_t* p;
    int64_t stride, bw, bb;
    DType dtype;
    int64_t cb = 0;  // first column of the current block
    alignas(64) float buf[R][kMaxBlockWeights];
    static constexpr int64_t kBytes = 1;  // prefetch in steps of columns; the address scales below
    void at(int64_t j) {
      cb = j * bw;
      for (int k = 0; k < R; ++k) ggml::dequantize_block(dtype, p + k * stride + j * bb, buf[k]);
    }
    void prefetch(int k, int64_t c) const { __builtin_prefetch(p + k * stride + c / bw * bb); }
    F32x16 load(int k, int64_t c) const { return load16(buf[k] + (c - cb)); }
    float one(int k, int64_t c) const { return buf[k][c - cb]; }
  };
  template <int R>
  Seg<R> start(int64_t r) const {
    Seg<R> g;
    g.p = base + r * stride;
    g.stride = stride;
    g.bw = bw;
    g.bb = bb;
    g.dtype = dtype;
    return g;
  }
};

}  // namespace
}  // namespace shoal::kernels::cpu
