// BF16 weights: the float's high half, widened exactly.
#pragma once

#include "kernels/cpu/simd.h"
#include "kernels/kernels.h"

namespace shoal::kernels::cpu {
namespace {

struct Bf16Rows {
  const uint16_t* base;
  int64_t stride;
  static Bf16Rows of(const Matrix& w) { return {static_cast<const uint16_t*>(w.data) + w.row0 * w.cols, w.cols}; }
  int64_t span(int64_t cols) const { return cols; }
  template <int R>
  struct Seg {
    const uint16_t* p;
    int64_t stride;
    void at(int64_t) {}  // one segment: nothing per block
    static constexpr int64_t kBytes = 2;  // per weight
    void prefetch(int k, int64_t c) const { __builtin_prefetch(p + k * stride + c); }
    F32x16 load(int k, int64_t c) const { return bf16x16(p + k * stride + c); }
    float one(int k, int64_t c) const { return bf16_one(p[k * stride + c]); }
  };
  template <int R>
  Seg<R> start(int64_t r) const { return {base + r * stride, stride}; }
};

}  // namespace
}  // namespace shoal::kernels::cpu
