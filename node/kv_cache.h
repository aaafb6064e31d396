// The KV cache of the layers a stage hosts: one pool of blocks of kKvBlockTokens positions
// (model/kv_layout.h) in float32, bf16 or fp8, and a block table per sequence slot saying which blocks
// hold its positions (docs/serving.md, "The KV pool").
//
// Two ways to use it. Static: each slot owns ceil(capacity / kKvBlockTokens) blocks from the
// start, as one contiguous cache per slot would (run, bench, logits: every sequence is known up
// front). Paged: the pool has n_blocks blocks and the coordinator's scheduler gives each slot its
// table (TableEdit, carried by the micro-batches), taking blocks as a sequence grows and giving
// them back when it ends, so short sequences hold only what they use.
#pragma once

#include <vector>

#include "common/status.h"
#include "model/batch.h"
#include "model/config.h"
#include "model/kv_layout.h"

namespace shoal {

class KvCache {
 public:
  // n_blocks 0: static (n_slots * ceil(capacity / kKvBlockTokens) blocks, slot s owning its own).
  KvCache(const ModelConfig& c, int64_t n_layers, int64_t n_slots, int64_t capacity, int64_t n_blocks = 0,
          DType dtype = DType::kF32);

  int64_t n_slots() const { return int64_t(tables_.size()); }
  int64_t capacity() const { return capacity_; }  // positions one sequence may reach
  int64_t n_blocks() const { return n_blocks_; }
  bool paged() const { return paged_; }
  DType dtype() const { return dtype_; }
  int64_t bytes() const { return int64_t(data_.size() * sizeof(uint32_t)); }

  // Checks a micro-batch's table edits, copies and positions against the pool (an error names
  // what does not fit), then applies its table edits.
  Status prepare(const Batch& batch);
  // Cache rows of `slot` in local layer `layer` (0-based within the stage).
  SeqKv view(int64_t layer, int32_t slot);
  // Rows [0, positions) of `from` into `to` in local layer `layer`.
  void copy(int64_t layer, int32_t from, int32_t to, int64_t positions);

 private:
  int64_t n_layers_, capacity_, n_blocks_, kv_width_, pe_width_;
  bool paged_;
  DType dtype_;
  int64_t block_bytes_;  // of one block in one layer
  std::vector<std::vector<int32_t>> tables_;  // per slot
  std::vector<uint32_t> data_;  // [n_layers, n_blocks, block_bytes_]
};

}  // namespace shoal
