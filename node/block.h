// One decoder layer, as model.py's Block.forward (and the dense distills' decoder layers):
//   x = x + attn(attn_norm(x))
//   x = x + ffn(ffn_norm(x))       ffn: dense MLP, or MoE = routed experts + shared experts
// The routed experts are a callback: run in place in one process (Stage), exchanged with the
// ranks that own them in the distributed runtime (Worker). Both use this one function.
#pragma once

#include <functional>
#include <vector>

#include "model/layers.h"

namespace shoal {

// Fills routed [n, dim] with each token's routed experts (idx, weight: [n, topk] from the gate)
// summed in the combine tree's order (model/expert_combine.h); rows: each token's adapter id.
using RoutedExperts = std::function<Status(float* routed, const float* h, RowAdapters rows,
                                           const std::vector<int32_t>& idx, const std::vector<float>& weight,
                                           int64_t n)>;

Status block_forward(float* x, const Batch& batch, const LayerWeights& layer, const std::vector<SeqKv>& kv,
                     const LayerContext& lc, const RoutedExperts& routed);

// The routed experts of one process: every selected expert is in `experts`.
RoutedExperts local_experts(const std::vector<std::optional<MlpWeights>>& experts, const LayerContext& lc);

}  // namespace shoal
