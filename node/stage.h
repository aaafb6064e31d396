// A pipeline stage: a contiguous range of decoder layers with their weights and KV cache.
// forward() is model.py's Block.forward over the stage's layers.
#pragma once

#include <memory>
#include <vector>

#include "model/checkpoint.h"
#include "model/layers.h"
#include "node/kv_cache.h"

namespace shoal {

struct StageOptions {
  int64_t first_layer = 0, last_layer = -1;  // [first, last); -1: to the end
  int64_t n_slots = 1;                        // sequences cached at once
  int64_t max_seq_len = 0;                    // positions per slot; 0: max_position_embeddings
  int64_t kv_blocks = 0;                      // paged KV pool of this many blocks; 0: static (node/kv_cache.h)
  DType kv_dtype = DType::kF32;
  AttnImpl attn_impl = AttnImpl::kAuto;
  kernels::Context kernels;
  LoraAdapters lora;                          // the adapters served, by id (they must outlive the stage)
};

class Stage {
 public:
  static StatusOr<std::unique_ptr<Stage>> load(Checkpoint& ck, const StageOptions& opts);
  Stage(const Stage&) = delete;  // lc_ points into this object
  Stage& operator=(const Stage&) = delete;

  // x [n_tokens, dim]: the hidden states of the batch, updated in place. An error (before any
  // layer runs) when the batch's KV blocks do not fit the pool.
  Status forward(float* x, const Batch& batch);

  int64_t max_seq_len() const { return cache_.capacity(); }
  int64_t n_slots() const { return cache_.n_slots(); }
  const KvCache& cache() const { return cache_; }

 private:
  Stage(const ModelConfig& c, const StageOptions& o, int64_t n_layers);

  ModelConfig config_;
  RopeTable rope_;
  LayerContext lc_;
  std::vector<LayerWeights> layers_;
  KvCache cache_;
};

}  // namespace shoal
