// The row reader of formats whose weights widen to float32 one by one, with nothing kept per
// block (F32, BF16, F16): the same for all of them but for the widening, which each format's
// header names. A format reader gives, for rows r .. r+R-1 (start), 16 consecutive weights of a
// row as float32 (load) and one weight (one); formats with block data (fp8_e4m3.h) also set the
// column block (at).
#pragma once

#include "kernels/cpu/simd.h"
#include "kernels/kernels.h"

namespace shoal::kernels::cpu {
namespace {

template <class Code, F32x16 (*Load16)(const Code*), float (*Load1)(Code)>
struct WidenedRows {
  const Code* base;  // row 0 of the view
  int64_t stride;    // codes between rows
  static WidenedRows of(const Matrix& w) { return {static_cast<const Code*>(w.data) + w.row0 * w.cols, w.cols}; }
  int64_t span(int64_t cols) const { return cols; }  // columns sharing one segment: all
  template <int R>
  struct Seg {
    const Code* p;
    int64_t stride;
    void at(int64_t) {}  // one segment: nothing per block
    static constexpr int64_t kBytes = sizeof(Code);  // per weight
    void prefetch(int k, int64_t c) const { __builtin_prefetch(p + k * stride + c); }
    F32x16 load(int k, int64_t c) const { return Load16(p + k * stride + c); }
    float one(int k, int64_t c) const { return Load1(p[k * stride + c]); }
  };
  template <int R>
  Seg<R> start(int64_t r) const { return {base + r * stride, stride}; }
};

}  // namespace
}  // namespace shoal::kernels::cpu
