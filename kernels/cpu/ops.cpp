// Elementwise and per-row ops: RMSNorm, embedding lookup, SwiGLU, rotary embedding.
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu.h"

namespace shoal::kernels::cpu {

void rms_norm(float* out, const float* x, const Matrix& weight, int64_t n, float eps, const Context&) {
  const int64_t d = weight.cols;
  std::vector<float> wv(static_cast<size_t>(d));
  dequantize_span(wv.data(), weight, 0, 0, d);
#pragma omp parallel for schedule(static) if (n > 8)
  for (int64_t t = 0; t < n; ++t) {
    const float* xt = x + t * d;
    double ss = 0.0;
    for (int64_t i = 0; i < d; ++i) ss += double(xt[i]) * xt[i];
    const float inv = float(1.0 / std::sqrt(ss / double(d) + double(eps)));
    float* ot = out + t * d;
    for (int64_t i = 0; i < d; ++i) ot[i] = xt[i] * inv * wv[size_t(i)];
  }
}

void embedding(float* out, const int32_t* ids, const Matrix& w, int64_t n, const Context&) {
  for (int64_t t = 0; t < n; ++t) dequantize_span(out + t * w.cols, w, ids[t], 0, w.cols);
}

void silu_mul(float* out, const float* gate, const float* up, int64_t n, int64_t d, const Context&) {
  const int64_t total = n * d;
#pragma omp parallel for schedule(static) if (total > (1 << 16))
  for (int64_t i = 0; i < total; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void rope(const RopeParams& p, const Context&) {
  const int64_t half = p.rope_dim / 2;
  std::vector<float> cs(static_cast<size_t>(2 * half));
  for (int64_t t = 0; t < p.n; ++t) {
    // As model.py: the angle is a float32 product of position and frequency.
    for (int64_t i = 0; i < half; ++i) {
      const float angle = float(p.positions[t]) * p.inv_freq[i];
      cs[size_t(2 * i)] = float(std::cos(double(angle))) * p.attn_factor;
      cs[size_t(2 * i + 1)] = float(std::sin(double(angle))) * p.attn_factor;
    }
    // Element i of pair j: 2j + i interleaved, j + i * half in halves.
    const int64_t first = p.layout == RopeLayout::kInterleaved ? 2 : 1;
    const int64_t second = p.layout == RopeLayout::kInterleaved ? 1 : half;
    for (int64_t h = 0; h < p.n_heads; ++h) {
      float* v = p.x + t * p.token_stride + h * p.head_stride;
      for (int64_t i = 0; i < half; ++i) {
        const float c = cs[size_t(2 * i)], s = cs[size_t(2 * i + 1)];
        float& x0 = v[first * i];
        float& x1 = v[first * i + second];
        const float a = x0, b = x1;
        x0 = a * c - b * s;
        x1 = a * s + b * c;
      }
    }
  }
}

}  // namespace shoal::kernels::cpu
