#include "node/kv_cache.h"

#include <algorithm>
#include <cstring>

#include "common/check.h"

namespace shoal {

KvCache::KvCache(const ModelConfig& c, int64_t n_layers, int64_t n_slots, int64_t capacity, int64_t n_blocks,
                 DType dtype)
    : n_layers_(n_layers), capacity_(capacity), n_blocks_(n_blocks > 0 ? n_blocks : n_slots * kv_blocks_for(capacity)),
      kv_width_(c.uses_mla() ? c.kv_lora_rank : c.n_kv_heads * c.head_dim), pe_width_(c.kv_cache_width() - kv_width_),
      paged_(n_blocks > 0), dtype_(dtype), block_bytes_(kv_block_bytes(c, 1, dtype)),
      tables_(static_cast<size_t>(n_slots)) {
  SHOAL_CHECK(dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF8E4M3);
  const int64_t bytes = n_layers_ * n_blocks_ * block_bytes_;
  data_.assign(static_cast<size_t>((bytes + 3) / 4), 0u);
  if (!paged_) {
    const int64_t per = kv_blocks_for(capacity_);
    for (int64_t s = 0; s < n_slots; ++s)
      for (int64_t b = 0; b < per; ++b) tables_[size_t(s)].push_back(int32_t(s * per + b));
  }
}

Status KvCache::prepare(const Batch& batch) {
  const int64_t most = kv_blocks_for(capacity_);
  for (const TableEdit& e : batch.tables) {
    if (!paged_) return invalid_argument("a KV block table edit for slot " + std::to_string(e.slot) + " but this cache is not paged");
    if (e.slot < 0 || e.slot >= n_slots())
      return invalid_argument("a KV block table edit for slot " + std::to_string(e.slot) + " of " +
                              std::to_string(n_slots()));
    const auto& t = tables_[size_t(e.slot)];
    if (e.keep < 0 || e.keep > int64_t(t.size()) || e.keep + int64_t(e.blocks.size()) > most)
      return invalid_argument("the KV block table of slot " + std::to_string(e.slot) + " would keep " +
                              std::to_string(e.keep) + " of its " + std::to_string(t.size()) + " blocks and add " +
                              std::to_string(e.blocks.size()) + " (at most " + std::to_string(most) + ")");
    for (int32_t b : e.blocks)
      if (b < 0 || b >= n_blocks_)
        return invalid_argument("KV block " + std::to_string(b) + " for slot " + std::to_string(e.slot) +
                                " is outside the pool of " + std::to_string(n_blocks_));
  }
  for (const TableEdit& e : batch.tables) {
    auto& t = tables_[size_t(e.slot)];
    t.resize(size_t(e.keep));
    t.insert(t.end(), e.blocks.begin(), e.blocks.end());
  }
  auto held = [&](int32_t slot) { return int64_t(tables_[size_t(slot)].size()) * kKvBlockTokens; };
  for (const SlotCopy& c : batch.copies)
    if (c.positions > held(c.from) || c.positions > held(c.to))
      return invalid_argument("a KV copy of " + std::to_string(c.positions) + " positions from slot " +
                              std::to_string(c.from) + " to slot " + std::to_string(c.to) +
                              " is beyond their KV blocks");
  for (const SeqRange& s : batch.seqs)
    if (s.count > 0 && int64_t(s.start_pos) + s.count > held(s.slot))
      return Status(Code::kResourceExhausted,
                    "slot " + std::to_string(s.slot) + " reaches position " + std::to_string(s.start_pos + s.count - 1) +
                        " but its KV blocks hold " + std::to_string(held(s.slot)) + " positions");
  return {};
}

SeqKv KvCache::view(int64_t layer, int32_t slot) {
  SHOAL_CHECK(layer >= 0 && layer < n_layers_);
  SHOAL_CHECK(slot >= 0 && slot < n_slots());
  const auto& t = tables_[size_t(slot)];
  const int64_t value = kv_value_bytes(dtype_);
  char* base = reinterpret_cast<char*>(data_.data()) + layer * n_blocks_ * block_bytes_;
  SeqKv v;
  v.kv = base;
  v.pe = base + kKvBlockTokens * kv_width_ * value;
  v.capacity = int64_t(t.size()) * kKvBlockTokens;
  v.dtype = dtype_;
  v.blocks = t.data();
  v.block_tokens = kKvBlockTokens;
  v.block_stride = block_bytes_ / value;
  if (dtype_ == DType::kF8E4M3) {  // the rows' scales after the block's codes
    v.scales = reinterpret_cast<float*>(base + kKvBlockTokens * (kv_width_ + pe_width_) * value);
    v.scale_block_stride = block_bytes_ / int64_t(sizeof(float));
  }
  return v;
}

void KvCache::copy(int64_t layer, int32_t from, int32_t to, int64_t positions) {
  const SeqKv a = view(layer, from), b = view(layer, to);
  SHOAL_CHECK(positions >= 0 && positions <= a.capacity && positions <= b.capacity);
  const int64_t value = kv_value_bytes(dtype_);
  for (int64_t p = 0; p < positions; ++p) {
    std::memcpy(static_cast<char*>(b.kv) + b.row_offset(p, kv_width_) * value,
                static_cast<const char*>(a.kv) + a.row_offset(p, kv_width_) * value, size_t(kv_width_ * value));
    std::memcpy(static_cast<char*>(b.pe) + b.row_offset(p, pe_width_) * value,
                static_cast<const char*>(a.pe) + a.row_offset(p, pe_width_) * value, size_t(pe_width_ * value));
    if (a.scales) std::copy_n(a.row_scales(p), 2, b.row_scales(p));
  }
}

}  // namespace shoal
