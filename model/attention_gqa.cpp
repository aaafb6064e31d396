// Grouped-query attention of the dense architectures (Qwen2, Llama), as transformers'
// Qwen2Attention / LlamaAttention compute it: q, k, v projections (with biases when the config
// has them), rotate-half RoPE over the whole head, causal softmax(q kᵀ / sqrt(head_dim)) v with
// query head h reading KV head h / (n_heads / n_kv_heads), then o_proj.
#include <algorithm>

#include "common/check.h"
#include "model/layers.h"

namespace shoal {
namespace {

// y[t, :] += b for each of the n rows (no-op when the layer has no bias).
void add_bias(float* y, const std::vector<float>& b, int64_t n) {
  if (b.empty()) return;
  const int64_t width = int64_t(b.size());
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < width; ++i) y[t * width + i] += b[size_t(i)];
}

}  // namespace

void gqa_forward(float* out, const float* h, const AttnWeights& w, const Batch& batch,
                 const std::vector<SeqKv>& kv, const LayerContext& lc) {
  const ModelConfig& c = *lc.config;
  const int64_t n = batch.n_tokens(), H = c.n_heads, KV = c.n_kv_heads, hd = c.head_dim;
  const auto& ctx = lc.kernels;
  SHOAL_CHECK_EQ(kv.size(), batch.seqs.size());
  const std::vector<int32_t> rows = batch.row_adapters();

  std::vector<float> q(static_cast<size_t>(n * H * hd)), k(static_cast<size_t>(n * KV * hd)),
      v(static_cast<size_t>(n * KV * hd));
  adapted_linear(q.data(), h, w.wq, w.lora.wq, rows, n, ctx);
  adapted_linear(k.data(), h, w.wk, w.lora.wk, rows, n, ctx);
  adapted_linear(v.data(), h, w.wv, w.lora.wv, rows, n, ctx);
  add_bias(q.data(), w.bq, n);
  add_bias(k.data(), w.bk, n);
  add_bias(v.data(), w.bv, n);
  const int32_t* pos = batch.positions.data();
  const RopeTable& rt = *lc.rope;
  kernels::rope({q.data(), pos, rt.inv_freq.data(), n, H, hd, H * hd, hd, rt.attn_factor, rt.layout}, ctx);
  kernels::rope({k.data(), pos, rt.inv_freq.data(), n, KV, hd, KV * hd, hd, rt.attn_factor, rt.layout}, ctx);

  std::vector<float> o(static_cast<size_t>(n * H * hd));  // [n, H, head_dim]
  for (size_t si = 0; si < batch.seqs.size(); ++si) {
    const SeqRange& s = batch.seqs[si];
    const SeqKv& cache = kv[si];
    for (int64_t t = s.begin; t < s.begin + s.count; ++t)  // keys into kv, values into pe
      cache.store(pos[t], k.data() + t * KV * hd, KV * hd, v.data() + t * KV * hd, KV * hd);
    kernels::AttentionParams p{};
    p.out = o.data() + s.begin * H * hd;
    p.q_a = p.q_b = q.data() + s.begin * H * hd;  // the whole head is one part: db = 0
    p.q_token_stride = p.q_b_token_stride = H * hd;
    p.q_head_stride = p.q_b_head_stride = hd;
    p.k_a = p.k_b = cache.kv;
    p.k_a_token_stride = p.k_b_token_stride = KV * hd;
    p.k_a_head_stride = p.k_b_head_stride = hd;
    p.v = cache.pe; p.v_token_stride = KV * hd; p.v_head_stride = hd;
    cache.describe(p);
    p.k_b_part = 0;  // db = 0: unread
    p.v_part = 1;    // fp8: the values' scales
    p.q_pos = pos + s.begin;
    p.n_q = s.count; p.n_kv = pos[s.begin + s.count - 1] + 1;
    p.n_heads = H; p.da = hd; p.db = 0; p.dv = hd;
    p.kv_group = H / KV;
    p.scale = rt.softmax_scale;
    kernels::attention(p, ctx);
  }
  adapted_linear(out, o.data(), w.wo, w.lora.wo, rows, n, ctx);
  add_bias(out, w.bo, n);
}

void attention_forward(float* out, const float* h, const AttnWeights& w, const Batch& batch,
                       const std::vector<SeqKv>& kv, const LayerContext& lc) {
  if (lc.config->uses_mla()) return mla_forward(out, h, w, batch, kv, lc);
  gqa_forward(out, h, w, batch, kv, lc);
}

}  // namespace shoal
