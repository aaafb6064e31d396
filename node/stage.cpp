#include "node/stage.h"

#include <algorithm>

namespace shoal {
namespace {

void add_into(float* x, const float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

}  // namespace

Stage::Stage(const ModelConfig& c, const StageOptions& o, int64_t n_layers)
    : config_(c), rope_(make_rope_table(c)),
      cache_(c, n_layers, o.n_slots, o.max_seq_len > 0 ? o.max_seq_len : c.max_position_embeddings) {
  lc_ = {&config_, &rope_, o.attn_impl, o.kernels};
}

StatusOr<std::unique_ptr<Stage>> Stage::load(Checkpoint& ck, const StageOptions& o) {
  const ModelConfig& c = ck.config();
  const int64_t last = o.last_layer < 0 ? c.n_layers : o.last_layer;
  if (o.first_layer < 0 || o.first_layer > last || last > c.n_layers)
    return invalid_argument("stage layers [" + std::to_string(o.first_layer) + ", " + std::to_string(last) +
                            ") are outside the model's " + std::to_string(c.n_layers) + " layers");
  std::unique_ptr<Stage> s(new Stage(c, o, last - o.first_layer));
  for (int64_t i = o.first_layer; i < last; ++i) {
    SHOAL_ASSIGN_OR_RETURN(LayerWeights l, load_layer(ck, i, ExpertFilter{}));
    s->layers_.push_back(std::move(l));
  }
  return s;
}

void Stage::attn(float* out, const float* h, const LayerWeights& layer, int64_t local, const Batch& batch) {
  std::vector<SeqKv> kv;
  for (const SeqRange& s : batch.seqs) kv.push_back(cache_.view(local, s.slot));
  mla_forward(out, h, layer.attn, batch, kv, lc_);
}

void Stage::ffn(float* out, const float* h, const LayerWeights& layer, int64_t n) {
  if (layer.moe) moe_forward(out, h, layer, n, lc_);
  else mlp_forward(out, h, layer.mlp, n, lc_.kernels);
}

void Stage::forward(float* x, const Batch& batch) {
  const int64_t n = batch.n_tokens(), dim = config_.dim;
  const float eps = float(config_.rms_norm_eps);
  std::vector<float> h(static_cast<size_t>(n * dim)), y(static_cast<size_t>(n * dim));
  for (size_t i = 0; i < layers_.size(); ++i) {
    const LayerWeights& layer = layers_[i];
    // x = x + attn(attn_norm(x))
    kernels::rms_norm(h.data(), x, layer.attn_norm, n, eps, lc_.kernels);
    attn(y.data(), h.data(), layer, int64_t(i), batch);
    add_into(x, y.data(), n * dim);
    // x = x + ffn(ffn_norm(x))
    kernels::rms_norm(h.data(), x, layer.ffn_norm, n, eps, lc_.kernels);
    ffn(y.data(), h.data(), layer, n);
    add_into(x, y.data(), n * dim);
  }
}

}  // namespace shoal
