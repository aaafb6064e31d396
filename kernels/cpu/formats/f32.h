// F32 weights (and the float32 panels the prefill path dequantizes other formats into).
// A format names how to read 16 consecutive weights of a row as float32 (load) and one weight
// (one); rows r .. r+R-1 of a segment share whatever the format keeps per block.
#pragma once

#include "kernels/cpu/simd.h"
#include "kernels/kernels.h"

namespace shoal::kernels::cpu {
namespace {

struct F32Rows {
  const float* base;  // row 0 of the view
  int64_t stride;     // floats between rows
  static F32Rows of(const Matrix& w) { return {static_cast<const float*>(w.data) + w.row0 * w.cols, w.cols}; }
  int64_t span(int64_t cols) const { return cols; }  // columns sharing one segment
  template <int R>
  struct Seg {
    const float* p;
    int64_t stride;
    void at(int64_t) {}  // one segment: nothing per block
    static constexpr int64_t kBytes = 4;  // per weight
    void prefetch(int k, int64_t c) const { __builtin_prefetch(p + k * stride + c); }
    F32x16 load(int k, int64_t c) const { return load16(p + k * stride + c); }
    float one(int k, int64_t c) const { return p[k * stride + c]; }
  };
  template <int R>
  Seg<R> start(int64_t r) const { return {base + r * stride, stride}; }
};

}  // namespace
}  // namespace shoal::kernels::cpu
