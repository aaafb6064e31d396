// Realistic random weights for the kernel benches: values of a trained layer (normal, std 0.02),
// stored per dtype (FP8 e4m3 with 128x128 block scales sized as DeepSeek's: block max -> 448).
// Uniform random bytes would be mostly subnormal or tiny floats, which no checkpoint holds and
// which some CPUs handle in microcode, so they would measure the wrong thing.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "model/synth.h"

namespace shoal::bench {

struct BenchWeights {
  std::vector<uint8_t> bytes;
  std::vector<float> scales;  // FP8 only
};

inline BenchWeights make_weights(DType dt, int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> v(static_cast<size_t>(rows * cols));
  for (auto& x : v) x = normal(rng);
  BenchWeights w;
  if (dtype_is_block(dt)) {  // ggml block types: random blocks with realistic scales, as synth writes them
    w.bytes.resize(size_t(rows * dtype_row_bytes(dt, cols)));
    random_gguf_rows(w.bytes.data(), dt, rows, cols, 0.02, seed);
    return w;
  }
  w.bytes.resize(v.size() * size_t(dtype_bytes(dt)));
  switch (dt) {
    case DType::kF32: std::memcpy(w.bytes.data(), v.data(), w.bytes.size()); break;
    case DType::kBF16:
    case DType::kF16: {
      auto* p = reinterpret_cast<uint16_t*>(w.bytes.data());
      for (size_t i = 0; i < v.size(); ++i) {
        if (dt == DType::kBF16) {
          p[i] = float_to_bf16(v[i]);
        } else {
          const _Float16 h = static_cast<_Float16>(v[i]);
          std::memcpy(&p[i], &h, 2);
        }
      }
      break;
    }
    case DType::kF8E4M3: {
      const int64_t sr = (rows + 127) / 128, sc = (cols + 127) / 128;
      w.scales.assign(static_cast<size_t>(sr * sc), 0.0f);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) {
          float& s = w.scales[size_t((r / 128) * sc + c / 128)];
          s = std::max(s, std::fabs(v[size_t(r * cols + c)]) / 448.0f);
        }
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c)
          w.bytes[size_t(r * cols + c)] =
              float_to_fp8_e4m3(v[size_t(r * cols + c)] / w.scales[size_t((r / 128) * sc + c / 128)]);
      break;
    }
  }
  return w;
}

}  // namespace shoal::bench
