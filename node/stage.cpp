#include "node/stage.h"

#include <algorithm>

#include "common/check.h"
#include "node/block.h"

namespace shoal {
Stage::Stage(const ModelConfig& c, const StageOptions& o, int64_t n_layers)
    : config_(c), rope_(make_rope_table(c)),
      cache_(c, n_layers, o.n_slots, o.max_seq_len > 0 ? o.max_seq_len : c.max_position_embeddings, o.kv_blocks,
             o.kv_dtype) {
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
    SHOAL_ASSIGN_OR_RETURN(LayerWeights l, load_layer(ck, i, ExpertFilter{}, o.lora));
    s->layers_.push_back(std::move(l));
  }
  return s;
}

Status Stage::forward(float* x, const Batch& batch) {
  SHOAL_RETURN_IF_ERROR(cache_.prepare(batch));
  for (size_t i = 0; i < layers_.size(); ++i) {
    const LayerWeights& layer = layers_[i];
    for (const SlotCopy& c : batch.copies) cache_.copy(int64_t(i), c.from, c.to, c.positions);
    std::vector<SeqKv> kv;
    for (const SeqRange& s : batch.seqs) kv.push_back(cache_.view(int64_t(i), s.slot));
    SHOAL_RETURN_IF_ERROR(block_forward(x, batch, layer, kv, lc_, local_experts(layer.experts, lc_)));
  }
  return {};
}

}  // namespace shoal
