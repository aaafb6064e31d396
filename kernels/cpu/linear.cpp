// dequantize_span: rows of any format as float32, for the ops that want whole rows (norms,
// embedding). linear and linear_t are per instruction-set variant: kernels/cpu/gemm.h, chosen
// in kernels/cpu/variant.cpp.
#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/formats/ggml/block.h"

namespace shoal::kernels::cpu {
void dequantize_span(float* out, const Matrix& w, int64_t r, int64_t c0, int64_t c1) {
  const int64_t row = w.row0 + r;
  const int64_t base = row * w.cols;
  switch (w.dtype) {
    case DType::kF32:
      std::memcpy(out, static_cast<const float*>(w.data) + base + c0, sizeof(float) * size_t(c1 - c0));
      return;
    case DType::kBF16: {
      const uint16_t* p = static_cast<const uint16_t*>(w.data) + base;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) out[c - c0] = bf16_to_float(p[c]);
      return;
    }
    case DType::kF16: {
      const uint16_t* p = static_cast<const uint16_t*>(w.data) + base;
      for (int64_t c = c0; c < c1; ++c) out[c - c0] = f16_to_float(p[c]);
      return;
    }
    case DType::kF8E4M3: {
      const uint8_t* p = static_cast<const uint8_t*>(w.data) + base;
      const float* scales = w.scale_inv + (row / w.block) * w.scale_cols();
      for (int64_t b0 = c0; b0 < c1;) {
        const int64_t b1 = std::min(c1, (b0 / w.block + 1) * w.block);
        const float s = scales[b0 / w.block];
#pragma omp simd
        for (int64_t c = b0; c < b1; ++c) out[c - c0] = fp8_e4m3_to_float(p[c]) * s;
        b0 = b1;
      }
      return;
    }
    default: {  // ggml block types: whole blocks, then the columns asked for
      const int64_t bw = dtype_block(w.dtype), bb = dtype_bytes(w.dtype);
      const uint8_t* p = static_cast<const uint8_t*>(w.data) + row * dtype_row_bytes(w.dtype, w.cols);
      float block[256];
      for (int64_t b = c0 / bw; b * bw < c1; ++b) {
        ggml::dequantize_block(w.dtype, p + b * bb, block);
        const int64_t lo = std::max(c0, b * bw), hi = std::min(c1, (b + 1) * bw);
        std::copy(block + (lo - b * bw), block + (hi - b * bw), out + (lo - c0));
      }
      return;
    }
  }
}

}  // namespace shoal::kernels::cpu
