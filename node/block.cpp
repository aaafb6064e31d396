#include "node/block.h"

namespace shoal {
namespace {

void add_into(float* x, const float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

}  // namespace

Status block_forward(float* x, const Batch& batch, const LayerWeights& layer, const std::vector<SeqKv>& kv,
                     const LayerContext& lc, const RoutedExperts& routed) {
  const ModelConfig& c = *lc.config;
  const int64_t n = batch.n_tokens(), dim = c.dim;
  const float eps = float(c.rms_norm_eps);
  std::vector<float> h(static_cast<size_t>(n * dim)), y(static_cast<size_t>(n * dim));
  const std::vector<int32_t> rows = batch.row_adapters();
  // x = x + attn(attn_norm(x))
  kernels::rms_norm(h.data(), x, layer.attn_norm, n, eps, lc.kernels);
  attention_forward(y.data(), h.data(), layer.attn, batch, kv, lc);
  add_into(x, y.data(), n * dim);
  // x = x + ffn(ffn_norm(x))
  kernels::rms_norm(h.data(), x, layer.ffn_norm, n, eps, lc.kernels);
  if (!layer.moe) {
    mlp_forward(y.data(), h.data(), layer.mlp, rows, n, lc.kernels);
  } else {
    std::vector<int32_t> idx;
    std::vector<float> weight;
    gate_forward(idx, weight, h.data(), layer, n, lc);
    std::vector<float> routed_sum(static_cast<size_t>(n * dim));
    SHOAL_RETURN_IF_ERROR(routed(routed_sum.data(), h.data(), rows, idx, weight, n));
    add_shared_experts(y.data(), h.data(), routed_sum.data(), layer, rows, n, lc);
  }
  add_into(x, y.data(), n * dim);
  return {};
}

RoutedExperts local_experts(const std::vector<std::optional<MlpWeights>>& experts, const LayerContext& lc) {
  return [&experts, &lc](float* routed, const float* h, RowAdapters adapters, const std::vector<int32_t>& idx,
                         const std::vector<float>& weight, int64_t n) -> Status {
    const ModelConfig& c = *lc.config;
    const int64_t k = c.n_activated_experts;
    std::vector<int32_t> rows(static_cast<size_t>(n * k));
    for (int64_t p = 0; p < n * k; ++p) rows[size_t(p)] = int32_t(p / k);
    std::vector<float> pair_out(static_cast<size_t>(n * k * c.dim));
    run_expert_pairs(pair_out.data(), h, adapters, rows, idx, experts, lc);
    combine_experts(routed, pair_out.data(), idx.data(), weight.data(), n, k, c.dim, c.n_routed_experts);
    return {};
  };
}

}  // namespace shoal
