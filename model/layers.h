// The layer functions of DeepSeek-V2/V3 and of the dense distills (Qwen2, Llama), written
// against the kernel interface. Each takes the
// normalised input h [n_tokens, dim] of a batch and writes its output [n_tokens, dim]; the
// residual additions are the caller's (node/stage.cpp), as in model.py's Block.forward.
#pragma once

#include <span>
#include <vector>

#include "kernels/kernels.h"
#include "model/batch.h"
#include "model/config.h"
#include "model/rope.h"
#include "model/weights.h"

namespace shoal {

struct LayerContext {
  const ModelConfig* config;
  const RopeTable* rope;
  AttnImpl attn_impl = AttnImpl::kAuto;
  kernels::Context kernels;
};

// out[n, w.rows] = x · Wᵀ, the weight's product; then each row r whose adapter (rows[r]; none when
// rows is empty) has a term on W gets scale * B (A x_r) added in float32 (unmerged:
// y = W x + scale * B (A x)). The rows of one adapter are gathered and multiplied together, and
// every row's result is the same whatever the other rows and their adapters (linear is
// batch-invariant), so requests for different adapters share one step.
void adapted_linear(float* out, const float* x, const kernels::Matrix& w, const LoraTerms& l, RowAdapters rows,
                    int64_t n, const kernels::Context& ctx);
// out[n, w.cols] = x · W (MLA's absorbed W_UK), plus scale * ((x_r · B) · A) per adapted row.
void adapted_linear_t(float* out, const float* x, const kernels::Matrix& w, const LoraTerms& l, RowAdapters rows,
                      int64_t n, const kernels::Context& ctx);
// The adapter parts alone: out[n, width] += scale * B (A x_r), or scale * ((x_r · B) · A) (_t),
// for the rows whose adapter has a term in l (where the base weight is stored in another layout).
void add_lora(float* out, const float* x, const LoraTerms& l, RowAdapters rows, int64_t n, const kernels::Context& ctx);
void add_lora_t(float* out, const float* x, const LoraTerms& l, RowAdapters rows, int64_t n,
                const kernels::Context& ctx);

// Multi-head latent attention. Writes this batch's latents into the cache rows of each sequence
// (kv[s] is sequence s's cache for this layer) and attends over positions [0, pos].
// Whether MLA expands the cache for `new_tokens` tokens of a sequence under `impl` (kAuto: by
// cost). A sequence's SeqRange::attn, when set, decides under kAuto.
bool use_naive(const ModelConfig& c, int64_t new_tokens, AttnImpl impl);

void mla_forward(float* out, const float* h, const AttnWeights& w, const Batch& batch,
                 const std::vector<SeqKv>& kv, const LayerContext& lc);

// Grouped-query attention (Qwen2, Llama; model/attention_gqa.cpp); the cache keeps keys in kv and
// values in pe.
void gqa_forward(float* out, const float* h, const AttnWeights& w, const Batch& batch,
                 const std::vector<SeqKv>& kv, const LayerContext& lc);

// The model's attention: MLA or GQA, as its config says.
void attention_forward(float* out, const float* h, const AttnWeights& w, const Batch& batch,
                       const std::vector<SeqKv>& kv, const LayerContext& lc);

// SwiGLU MLP: out[n, dim] = down(silu(gate h) * up h), each row with its adapter's terms.
void mlp_forward(float* out, const float* h, const MlpWeights& w, RowAdapters rows, int64_t n,
                 const kernels::Context& ctx);

// Router: expert indices and weights [n, n_activated_experts] for each token.
void gate_forward(std::vector<int32_t>& indices, std::vector<float>& weights, const float* h,
                  const LayerWeights& w, int64_t n, const LayerContext& lc);

// MoE: the routed experts' weighted sum plus the shared experts. Every selected expert must be
// loaded in w.experts. It is gate_forward, run_expert_pairs, combine_experts and
// add_shared_experts; the distributed runtime runs the same four with the pairs spread over ranks.
void moe_forward(float* out, const float* h, const LayerWeights& w, RowAdapters rows, int64_t n,
                 const LayerContext& lc);

// y[p] = expert pair_expert[p] applied to row pair_row[p] of x, for every pair p. Each expert
// runs once on all its rows, in pair order (so results do not depend on how pairs are split).
// x_adapters: the adapter id of each row of x (empty: all the base model).
void run_expert_pairs(float* y, const float* x, RowAdapters x_adapters, std::span<const int32_t> pair_row,
                      std::span<const int32_t> pair_expert, const std::vector<std::optional<MlpWeights>>& experts,
                      const LayerContext& lc);

// y[t] = the sum over the token's k experts of weight * pair_out[t * k + j], in the combine tree's
// order (model/expert_combine.h) over n_experts leaves: the order every placement follows.
void combine_experts(float* y, const float* pair_out, const int32_t* idx, const float* weight, int64_t n,
                     int64_t k, int64_t dim, int64_t n_experts);


// out = shared_experts(h) + y (out = y when the model has none).
void add_shared_experts(float* out, const float* h, const float* y, const LayerWeights& w, RowAdapters rows,
                        int64_t n, const LayerContext& lc);

}  // namespace shoal
