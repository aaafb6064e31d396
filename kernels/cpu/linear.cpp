// Matrix products against weights in their stored dtype. Rows are dequantized into a small
// thread-local buffer and dotted with many activation rows, so each weight byte is read once
// per tile of tokens: decode (one token) streams the weights at memory speed.
#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu.h"

namespace shoal::kernels::cpu {
namespace {

constexpr int64_t kTokenTile = 32;  // activation rows that share one dequantized weight row
constexpr int64_t kFusedTokens = 4; // up to this many rows, dot straight from the stored bytes

inline float dot(const float* a, const float* b, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Row r of w dotted with x[cols], reading the stored dtype directly (decode: one pass over the
// weights, no buffer). FP8 sums each block in e4m3 units and scales the block sum once.
float dot_stored(const Matrix& w, int64_t r, const float* x) {
  const int64_t row = w.row0 + r, cols = w.cols;
  switch (w.dtype) {
    case DType::kF32: return dot(static_cast<const float*>(w.data) + row * cols, x, cols);
    case DType::kBF16: {
      const uint16_t* p = static_cast<const uint16_t*>(w.data) + row * cols;
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int64_t c = 0; c < cols; ++c) s += bf16_to_float(p[c]) * x[c];
      return s;
    }
    case DType::kF16: {
      const uint16_t* p = static_cast<const uint16_t*>(w.data) + row * cols;
      float s = 0.0f;
      for (int64_t c = 0; c < cols; ++c) s += f16_to_float(p[c]) * x[c];
      return s;
    }
    case DType::kF8E4M3: {
      const uint8_t* p = static_cast<const uint8_t*>(w.data) + row * cols;
      const float* scales = w.scale_inv + (row / w.block) * w.scale_cols();
      float s = 0.0f;
      for (int64_t b0 = 0; b0 < cols; b0 += w.block) {
        const int64_t b1 = std::min(cols, b0 + w.block);
        float sb = 0.0f;
#pragma omp simd reduction(+ : sb)
        for (int64_t c = b0; c < b1; ++c) sb += fp8_e4m3_to_float(p[c]) * x[c];
        s += sb * scales[b0 / w.block];
      }
      return s;
    }
  }
  return 0.0f;
}

}  // namespace

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
  }
}

void linear(float* out, const float* x, const Matrix& w, int64_t n, const Context&) {
  const int64_t rows = w.rows, cols = w.cols;
  if (n <= kFusedTokens) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t t = 0; t < n; ++t) out[t * rows + r] = dot_stored(w, r, x + t * cols);
    return;
  }
  for (int64_t t0 = 0; t0 < n; t0 += kTokenTile) {
    const int64_t t1 = std::min(n, t0 + kTokenTile);
#pragma omp parallel
    {
      std::vector<float> buf(static_cast<size_t>(w.dtype == DType::kF32 ? 0 : cols));
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows; ++r) {
        const float* wr;
        if (w.dtype == DType::kF32) {
          wr = static_cast<const float*>(w.data) + (w.row0 + r) * cols;
        } else {
          dequantize_span(buf.data(), w, r, 0, cols);
          wr = buf.data();
        }
        for (int64_t t = t0; t < t1; ++t) out[t * rows + r] = dot(wr, x + t * cols, cols);
      }
    }
  }
}

void linear_t(float* out, const float* x, const Matrix& w, int64_t n, const Context&) {
  const int64_t rows = w.rows, cols = w.cols;
  constexpr int64_t kColTile = 256;
  const int64_t n_tiles = (cols + kColTile - 1) / kColTile;
#pragma omp parallel
  {
    std::vector<float> buf(kColTile);
#pragma omp for schedule(static)
    for (int64_t tile = 0; tile < n_tiles; ++tile) {
      const int64_t c0 = tile * kColTile, c1 = std::min(cols, c0 + kColTile), width = c1 - c0;
      for (int64_t t = 0; t < n; ++t) std::fill(out + t * cols + c0, out + t * cols + c1, 0.0f);
      for (int64_t r = 0; r < rows; ++r) {
        dequantize_span(buf.data(), w, r, c0, c1);
        for (int64_t t = 0; t < n; ++t) {
          const float xr = x[t * rows + r];
          float* o = out + t * cols + c0;
#pragma omp simd
          for (int64_t c = 0; c < width; ++c) o[c] += xr * buf[c];
        }
      }
    }
  }
}

}  // namespace shoal::kernels::cpu
