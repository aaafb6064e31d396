// The KV cache of the layers a stage hosts: per layer and sequence slot, one row per position
// (float32) of MLA's kv_lora_rank latent values and qk_rope_head_dim roped key values, or of
// GQA's keys and values (n_kv_heads * head_dim each).
// Contiguous per slot for now; the paged cache arrives with continuous batching. A slot's rows
// may be copied into another (choices that share a prompt).
#pragma once

#include <vector>

#include "model/batch.h"
#include "model/config.h"

namespace shoal {

class KvCache {
 public:
  KvCache(const ModelConfig& c, int64_t n_layers, int64_t n_slots, int64_t capacity);

  int64_t n_slots() const { return n_slots_; }
  int64_t capacity() const { return capacity_; }
  int64_t bytes() const { return int64_t(data_.size() * sizeof(float)); }
  // Cache rows of `slot` in local layer `layer` (0-based within the stage).
  SeqKv view(int64_t layer, int32_t slot);
  // Rows [0, positions) of `from` into `to` in local layer `layer`.
  void copy(int64_t layer, int32_t from, int32_t to, int64_t positions);

 private:
  int64_t n_layers_, n_slots_, capacity_, kv_width_, pe_width_;
  std::vector<float> data_;  // [n_layers, n_slots, capacity, kv_width + pe_width]
};

}  // namespace shoal
