// DeepSeek's router (model.py Gate.forward): scores, selection with the correction bias and
// group limiting, weights from the unbiased scores, normalisation, routed scaling.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/cpu/cpu.h"

namespace shoal::kernels::cpu {
namespace {

// Indices of the k largest values, largest first; ties keep the lower index.
void top_k(const float* v, int64_t n, int64_t k, int32_t* idx) {
  std::vector<int32_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
  std::copy(order.begin(), order.begin() + k, idx);
}

}  // namespace

void route(const RouteParams& p, const Context&) {
  const int64_t E = p.n_experts, per_group = E / p.n_groups;
  std::vector<float> scores(static_cast<size_t>(E)), select(static_cast<size_t>(E)), group(static_cast<size_t>(p.n_groups));
  std::vector<int32_t> top_groups(static_cast<size_t>(p.topk_groups)), top2(2);
  for (int64_t t = 0; t < p.n; ++t) {
    const float* logits = p.logits + t * E;
    if (p.scoring == Scoring::kSigmoid) {
      for (int64_t e = 0; e < E; ++e) scores[size_t(e)] = 1.0f / (1.0f + std::exp(-logits[e]));
    } else {
      const float m = *std::max_element(logits, logits + E);
      float sum = 0.0f;
      for (int64_t e = 0; e < E; ++e) sum += (scores[size_t(e)] = std::exp(logits[e] - m));
      for (float& s : scores) s /= sum;
    }
    for (int64_t e = 0; e < E; ++e) select[size_t(e)] = scores[size_t(e)] + (p.bias ? p.bias[e] : 0.0f);
    if (p.group_score != GroupScore::kNone && p.n_groups > 1) {
      for (int64_t g = 0; g < p.n_groups; ++g) {
        const float* s = select.data() + g * per_group;
        if (p.group_score == GroupScore::kMax) {
          group[size_t(g)] = *std::max_element(s, s + per_group);
        } else {
          top_k(s, per_group, 2, top2.data());
          group[size_t(g)] = s[top2[0]] + s[top2[1]];
        }
      }
      top_k(group.data(), p.n_groups, p.topk_groups, top_groups.data());
      std::vector<bool> keep(static_cast<size_t>(p.n_groups), false);
      for (int32_t g : top_groups) keep[size_t(g)] = true;
      for (int64_t e = 0; e < E; ++e)
        if (!keep[size_t(e / per_group)]) select[size_t(e)] = -INFINITY;
    }
    int32_t* idx = p.indices + t * p.topk;
    float* w = p.weights + t * p.topk;
    top_k(select.data(), E, p.topk, idx);
    float sum = 0.0f;
    for (int64_t k = 0; k < p.topk; ++k) sum += (w[k] = scores[size_t(idx[k])]);
    for (int64_t k = 0; k < p.topk; ++k) w[k] = (p.normalize ? w[k] / sum : w[k]) * p.scale;
  }
}

}  // namespace shoal::kernels::cpu
