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

// Fills pair_out [n * topk, dim] with expert idx[p]'s output for token p / topk of h.
using RoutedExperts =
    std::function<Status(float* pair_out, const float* h, const std::vector<int32_t>& idx, int64_t n)>;

Status block_forward(float* x, const Batch& batch, const LayerWeights& layer, const std::vector<SeqKv>& kv,
                     const LayerContext& lc, const RoutedExperts& routed);

// The routed experts of one process: every selected expert is in `experts`.
RoutedExperts local_experts(const std::vector<std::optional<MlpWeights>>& experts, const LayerContext& lc);

}  // namespace shoal
