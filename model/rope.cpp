#include "model/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace shoal {

double yarn_mscale(double factor, double m) {
  return factor <= 1.0 ? 1.0 : 0.1 * m * std::log(factor) + 1.0;
}

namespace {

// The rotary dimension at which a wavelength makes `rotations` turns over the original context.
double correction_dim(double rotations, double dim, double base, double max_pos) {
  return dim * std::log(max_pos / (rotations * 2.0 * std::numbers::pi)) / (2.0 * std::log(base));
}

// Qwen2 and Llama as transformers computes them, in float32: inv_freq = 1 / theta^(2j / dim),
// then llama3's scaling (_compute_llama3_parameters) when the config asks for it.
RopeTable dense_rope_table(const ModelConfig& c) {
  RopeTable t;
  t.layout = c.rope_interleaved ? kernels::RopeLayout::kInterleaved : kernels::RopeLayout::kHalves;
  const int64_t dim = c.head_dim, half = dim / 2;
  t.inv_freq.resize(static_cast<size_t>(half));
  const Llama3Scaling& l = c.llama3;
  const float orig = float(l.original_max_position_embeddings), factor = float(l.factor);
  const float low_wavelen = orig / float(l.low_freq_factor), high_wavelen = orig / float(l.high_freq_factor);
  for (int64_t j = 0; j < half; ++j) {
    const float exponent = float(2 * j) / float(dim);
    float f = 1.0f / float(std::pow(double(float(c.rope_theta)), double(exponent)));
    if (l.enabled) {
      const float wavelen = float(2.0 * std::numbers::pi) / f;
      const float scaled = wavelen > low_wavelen ? f / factor : f;
      if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {  // between: a smooth ramp
        const float s = (orig / wavelen - float(l.low_freq_factor)) / float(l.high_freq_factor - l.low_freq_factor);
        f = (1.0f - s) * scaled / factor + s * scaled;
      } else {
        f = scaled;
      }
    }
    if (!c.rope_freq_factors.empty()) f /= c.rope_freq_factors[size_t(j)];
    t.inv_freq[size_t(j)] = f;
  }
  t.softmax_scale = float(1.0 / std::sqrt(double(dim)));
  return t;
}

}  // namespace

RopeTable make_rope_table(const ModelConfig& c) {
  if (!c.uses_mla()) return dense_rope_table(c);
  RopeTable t;
  const int64_t dim = c.qk_rope_head_dim, half = dim / 2;
  const double base = c.rope_theta;
  t.inv_freq.resize(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) t.inv_freq[size_t(i)] = float(1.0 / std::pow(base, double(2 * i) / double(dim)));
  t.softmax_scale = float(1.0 / std::sqrt(double(c.qk_head_dim())));
  const YarnScaling& y = c.yarn;
  if (!y.enabled) return t;

  // Pairs rotating fast over the original context keep their frequency (extrapolation), slow
  // ones are divided by the factor (interpolation), with a linear ramp between low and high.
  const double orig = double(y.original_max_position_embeddings);
  double low = std::floor(correction_dim(y.beta_fast, double(dim), base, orig));
  double high = std::ceil(correction_dim(y.beta_slow, double(dim), base, orig));
  low = std::max(low, 0.0);
  high = std::min(high, double(dim - 1));
  if (low == high) high += 0.001;
  for (int64_t i = 0; i < half; ++i) {
    const double ramp = std::clamp((double(i) - low) / (high - low), 0.0, 1.0);
    const double extra = 1.0 - ramp;  // weight of the original frequency
    const double f = 1.0 / std::pow(base, double(2 * i) / double(dim));
    t.inv_freq[size_t(i)] = float(f / y.factor * (1.0 - extra) + f * extra);
  }
  if (y.mscale_all_dim != 0.0) {
    const double m = yarn_mscale(y.factor, y.mscale_all_dim);
    t.softmax_scale = float(double(t.softmax_scale) * m * m);
  }
  t.attn_factor = float(yarn_mscale(y.factor, y.mscale) / yarn_mscale(y.factor, y.mscale_all_dim));
  return t;
}

}  // namespace shoal
