// Causal attention of one sequence with keys split in two parts (see AttentionParams).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu.h"

namespace shoal::kernels::cpu {

void attention(const AttentionParams& p, const Context&) {
  const int64_t work = p.n_q * p.n_heads;
#pragma omp parallel
  {
    std::vector<float> scores(static_cast<size_t>(p.n_kv));
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < work; ++w) {
      const int64_t i = w / p.n_heads, h = w % p.n_heads;
      const int64_t visible = std::min<int64_t>(p.n_kv, int64_t(p.q_pos[i]) + 1);
      const float* qa = p.q_a + i * p.q_token_stride + h * p.q_head_stride;
      const float* qb = p.q_b + i * p.q_b_token_stride + h * p.q_b_head_stride;
      float max_score = -INFINITY;
      for (int64_t t = 0; t < visible; ++t) {
        const float* ka = p.k_a + t * p.k_a_token_stride + h * p.k_a_head_stride;
        const float* kb = p.k_b + t * p.k_b_token_stride + h * p.k_b_head_stride;
        float sa = 0.0f, sb = 0.0f;
#pragma omp simd reduction(+ : sa)
        for (int64_t d = 0; d < p.da; ++d) sa += qa[d] * ka[d];
#pragma omp simd reduction(+ : sb)
        for (int64_t d = 0; d < p.db; ++d) sb += qb[d] * kb[d];
        scores[size_t(t)] = (sa + sb) * p.scale;
        max_score = std::max(max_score, scores[size_t(t)]);
      }
      float sum = 0.0f;
      for (int64_t t = 0; t < visible; ++t) sum += (scores[size_t(t)] = std::exp(scores[size_t(t)] - max_score));
      float* o = p.out + (i * p.n_heads + h) * p.dv;
      std::fill(o, o + p.dv, 0.0f);
      for (int64_t t = 0; t < visible; ++t) {
        const float pt = scores[size_t(t)] / sum;
        const float* v = p.v + t * p.v_token_stride + h * p.v_head_stride;
#pragma omp simd
        for (int64_t d = 0; d < p.dv; ++d) o[d] += pt * v[d];
      }
    }
  }
}

}  // namespace shoal::kernels::cpu
