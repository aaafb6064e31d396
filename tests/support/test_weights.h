// Test weights in every element dtype with their exact values, the reference decoders written
// from the format definitions, and double-precision references of linear and linear_t (shared by
// tests/test_kernels.cpp and the CUDA kernels' tests).
#pragma once

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "kernels/kernels.h"

namespace shoal::test {

using kernels::Matrix;

// ---- reference decoders, written from the format definitions --------------------------------

// e4m3fn: sign, 4 exponent bits (bias 7), 3 mantissa bits; e == 0 is subnormal m * 2^-9.
inline double ref_e4m3(uint8_t code) {
  const int s = code >> 7, e = (code >> 3) & 0xF, m = code & 7;
  const double mag = e == 0 ? m * std::ldexp(1.0, -9) : (1.0 + m / 8.0) * std::ldexp(1.0, e - 7);
  return s ? -mag : mag;
}
inline bool e4m3_is_nan(uint8_t code) { return (code & 0x7F) == 0x7F; }

// IEEE binary16: 5 exponent bits (bias 15), 10 mantissa bits.
inline double ref_f16(uint16_t h) {
  const int s = h >> 15, e = (h >> 10) & 0x1F, m = h & 0x3FF;
  double mag;
  if (e == 0x1F) mag = m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else if (e == 0) mag = m * std::ldexp(1.0, -24);
  else mag = (1.0 + m / 1024.0) * std::ldexp(1.0, e - 15);
  return s ? -mag : mag;
}

// bfloat16: 8 exponent bits (bias 127), 7 mantissa bits.
inline double ref_bf16(uint16_t h) {
  const int s = h >> 15, e = (h >> 7) & 0xFF, m = h & 0x7F;
  double mag;
  if (e == 0xFF) mag = m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else if (e == 0) mag = m * std::ldexp(1.0, -133);
  else mag = (1.0 + m / 128.0) * std::ldexp(1.0, e - 127);
  return s ? -mag : mag;
}

// ---- test tensors ----------------------------------------------------------------------------

// A weight tensor [R, C] in one dtype, with its exact value as a double matrix.
struct TestWeight {
  DType dtype;
  int64_t R, C, block = 128;
  std::vector<uint8_t> bytes;
  std::vector<float> scale;   // F8: [ceil(R/block), ceil(C/block)]
  std::vector<double> value;  // [R, C], what the stored tensor means

  Matrix matrix() const {
    Matrix m;
    m.data = bytes.data();
    m.dtype = dtype;
    m.rows = R;
    m.cols = C;
    m.scale_inv = dtype == DType::kF8E4M3 ? scale.data() : nullptr;
    m.block = block;
    return m;
  }
  int64_t scale_cols() const { return (C + block - 1) / block; }
};

// Block scales that differ by orders of magnitude and are all distinct: block k = br * gc + bc
// (k < 9) gets 2^(3 * (5k mod 9) - 12), so a transposed or shifted index reads a scale 8x or
// more off.
inline float block_scale(int64_t br, int64_t bc, int64_t grid_cols) {
  const int64_t k = br * grid_cols + bc;
  REQUIRE(k < 9);
  return std::ldexp(1.0f, int(3 * (5 * k % 9) - 12));
}

inline TestWeight make_weight(DType dtype, int64_t R, int64_t C, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  TestWeight w;
  w.dtype = dtype;
  w.R = R;
  w.C = C;
  w.value.resize(size_t(R * C));
  w.bytes.resize(size_t(R * C * dtype_bytes(dtype)));
  if (dtype == DType::kF8E4M3) {
    const int64_t gr = (R + w.block - 1) / w.block, gc = w.scale_cols();
    w.scale.resize(size_t(gr * gc));
    for (int64_t br = 0; br < gr; ++br)
      for (int64_t bc = 0; bc < gc; ++bc) w.scale[size_t(br * gc + bc)] = block_scale(br, bc, gc);
  }
  for (int64_t i = 0; i < R * C; ++i) {
    const int64_t r = i / C, c = i % C;
    switch (dtype) {
      case DType::kF32: {
        const float f = uni(rng);
        std::memcpy(&w.bytes[size_t(4 * i)], &f, 4);
        w.value[size_t(i)] = f;
        break;
      }
      case DType::kF16: {
        // Any finite code with a moderate exponent, subnormals included.
        uint16_t h;
        do h = uint16_t(rng()); while (((h >> 10) & 0x1F) == 0x1F || ((h >> 10) & 0x1F) > 17);
        std::memcpy(&w.bytes[size_t(2 * i)], &h, 2);
        w.value[size_t(i)] = ref_f16(h);
        break;
      }
      case DType::kBF16: {
        uint16_t h;
        do h = uint16_t(rng()); while (((h >> 7) & 0xFF) < 100 || ((h >> 7) & 0xFF) > 130);
        std::memcpy(&w.bytes[size_t(2 * i)], &h, 2);
        w.value[size_t(i)] = ref_bf16(h);
        break;
      }
      case DType::kF8E4M3: {
        uint8_t q;
        do q = uint8_t(rng()); while (e4m3_is_nan(q));
        w.bytes[size_t(i)] = q;
        // The stored meaning: a float32 product of the e4m3 value and its block's scale.
        const float s = w.scale[size_t((r / w.block) * w.scale_cols() + c / w.block)];
        w.value[size_t(i)] = double(float(ref_e4m3(q)) * s);
        break;
      }
      default:  // ggml block types: tests/test_ggml_blocks.cpp
        FAIL("random_weights covers the element types only");
    }
  }
  return w;
}

inline std::vector<float> random_vec(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uni(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = uni(rng);
  return v;
}

// Reference out[t, r] = Σ_c x[t, c] W[row0 + r, c] in double, and the scale Σ |x||W| that bounds
// float32 rounding of the same sum.
inline void ref_linear(std::vector<double>& out, std::vector<double>& mag, const std::vector<float>& x,
                const TestWeight& w, int64_t row0, int64_t rows, int64_t n) {
  out.assign(size_t(n * rows), 0.0);
  mag.assign(size_t(n * rows), 0.0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < w.C; ++c) {
        const double p = double(x[size_t(t * w.C + c)]) * w.value[size_t((row0 + r) * w.C + c)];
        out[size_t(t * rows + r)] += p;
        mag[size_t(t * rows + r)] += std::fabs(p);
      }
}

// Reference out[t, c] = Σ_r x[t, r] W[row0 + r, c].
inline void ref_linear_t(std::vector<double>& out, std::vector<double>& mag, const std::vector<float>& x,
                  const TestWeight& w, int64_t row0, int64_t rows, int64_t n) {
  out.assign(size_t(n * w.C), 0.0);
  mag.assign(size_t(n * w.C), 0.0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < w.C; ++c) {
        const double p = double(x[size_t(t * rows + r)]) * w.value[size_t((row0 + r) * w.C + c)];
        out[size_t(t * w.C + c)] += p;
        mag[size_t(t * w.C + c)] += std::fabs(p);
      }
}

// Worst |got - want| / (rel * mag + abs_floor); <= 1 passes.
inline double worst_ratio(const std::vector<float>& got, const std::vector<double>& want, const std::vector<double>& mag,
                   double rel) {
  REQUIRE(got.size() == want.size());
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(double(got[i]) - want[i]);
    if (!(err == err) || std::isnan(got[i])) return std::numeric_limits<double>::infinity();
    worst = std::max(worst, err / (rel * mag[i] + 1e-30));
  }
  return worst;
}

}  // namespace shoal::test
