// Rotary embedding constants: for MLA, YaRN frequencies (always on when config.json has
// rope_scaling yarn, as Hugging Face applies it), the cos/sin factor and the softmax scale; for
// the dense architectures, the whole head in the rotate-half layout, llama3 scaling when asked.
#pragma once

#include <vector>

#include "kernels/kernels.h"
#include "model/config.h"

namespace shoal {

struct RopeTable {
  std::vector<float> inv_freq;  // [rope_dim / 2], one per rotating pair
  kernels::RopeLayout layout = kernels::RopeLayout::kInterleaved;
  float attn_factor = 1.0f;     // cos/sin multiplier: mscale(factor, mscale) / mscale(factor, mscale_all_dim)
  float softmax_scale = 1.0f;   // qk_head_dim^-0.5 * mscale(factor, mscale_all_dim)^2
};

// 0.1 * m * ln(factor) + 1 for factor > 1, else 1 (DeepSeek's yarn_get_mscale).
double yarn_mscale(double factor, double m);

RopeTable make_rope_table(const ModelConfig& c);

}  // namespace shoal
