#include "node/kv_cache.h"

#include <algorithm>

#include "common/check.h"

namespace shoal {

KvCache::KvCache(const ModelConfig& c, int64_t n_layers, int64_t n_slots, int64_t capacity)
    : n_layers_(n_layers), n_slots_(n_slots), capacity_(capacity), kv_width_(c.uses_mla() ? c.kv_lora_rank : c.n_kv_heads * c.head_dim),
      pe_width_(c.kv_cache_width() - kv_width_),
      data_(static_cast<size_t>(n_layers * n_slots * capacity * c.kv_cache_width()), 0.0f) {}

SeqKv KvCache::view(int64_t layer, int32_t slot) {
  SHOAL_CHECK(layer >= 0 && layer < n_layers_);
  SHOAL_CHECK(slot >= 0 && slot < n_slots_);
  float* base = data_.data() + (layer * n_slots_ + slot) * capacity_ * (kv_width_ + pe_width_);
  return {base, base + capacity_ * kv_width_, capacity_};
}

void KvCache::copy(int64_t layer, int32_t from, int32_t to, int64_t positions) {
  SHOAL_CHECK(positions >= 0 && positions <= capacity_);
  const SeqKv a = view(layer, from), b = view(layer, to);
  std::copy_n(a.kv, positions * kv_width_, b.kv);
  std::copy_n(a.pe, positions * pe_width_, b.pe);
}

}  // namespace shoal
