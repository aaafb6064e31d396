#include "coordinator/kv_blocks.h"

#include "common/check.h"

namespace shoal {
namespace {

uint64_t mix(uint64_t h, uint64_t v) {  // splitmix64 of the running hash and the next value
  uint64_t z = h ^ (v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

std::vector<BlockKey> block_keys(const std::vector<int32_t>& tokens, int64_t block_tokens, uint64_t salt) {
  std::vector<BlockKey> keys;
  uint64_t parent = 0;
  for (int64_t b = 0; (b + 1) * block_tokens <= int64_t(tokens.size()); ++b) {
    BlockKey k;
    k.parent = parent;
    k.salt = salt;
    k.tokens.assign(tokens.begin() + b * block_tokens, tokens.begin() + (b + 1) * block_tokens);
    uint64_t h = mix(mix(0x5ca1ab1e, parent), salt);
    for (int32_t t : k.tokens) h = mix(h, uint64_t(uint32_t(t)));
    k.hash = h == 0 ? 1 : h;
    parent = k.hash;
    keys.push_back(std::move(k));
  }
  return keys;
}

KvBlockPool::KvBlockPool(int64_t n)
    : refs_(size_t(n), 0), keys_(size_t(n)), lru_pos_(size_t(n)), in_lru_(size_t(n), false) {
  for (int64_t b = n - 1; b >= 0; --b) free_.push_back(int32_t(b));
}

void KvBlockPool::touch_out(int32_t b) {
  if (!in_lru_[size_t(b)]) return;
  lru_.erase(lru_pos_[size_t(b)]);
  in_lru_[size_t(b)] = false;
}

std::optional<int32_t> KvBlockPool::take() {
  int32_t b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else if (!lru_.empty()) {
    b = lru_.front();
    touch_out(b);
    by_hash_.erase(keys_[size_t(b)]->hash);
    keys_[size_t(b)].reset();
    ++counters_.evicted;
  } else {
    return std::nullopt;
  }
  refs_[size_t(b)] = 1;
  ++held_;
  ++counters_.taken;
  return b;
}

void KvBlockPool::retain(int32_t b) {
  SHOAL_CHECK(keys_[size_t(b)].has_value());
  if (refs_[size_t(b)]++ == 0) {
    touch_out(b);
    ++held_;
  }
}

void KvBlockPool::release(int32_t b) {
  SHOAL_CHECK_LT(0, refs_[size_t(b)]);
  ++counters_.released;
  if (--refs_[size_t(b)] > 0) return;
  --held_;
  if (keys_[size_t(b)]) {
    lru_pos_[size_t(b)] = lru_.insert(lru_.end(), b);
    in_lru_[size_t(b)] = true;
  } else {
    free_.push_back(b);
  }
}

std::optional<int32_t> KvBlockPool::find(const BlockKey& key) const {
  auto it = by_hash_.find(key.hash);
  if (it == by_hash_.end() || !(*keys_[size_t(it->second)] == key)) return std::nullopt;
  return it->second;
}

void KvBlockPool::publish(int32_t b, const BlockKey& key) {
  SHOAL_CHECK_LT(0, refs_[size_t(b)]);
  if (keys_[size_t(b)] || by_hash_.count(key.hash)) return;
  keys_[size_t(b)] = key;
  by_hash_[key.hash] = b;
}

Status KvBlockPool::check() const {
  std::vector<int> seen(refs_.size(), 0);
  for (int32_t b : free_) {
    ++seen[size_t(b)];
    if (refs_[size_t(b)] != 0 || keys_[size_t(b)]) return internal_error("free KV block " + std::to_string(b) + " is held or keyed");
  }
  for (int32_t b : lru_) {
    ++seen[size_t(b)];
    if (refs_[size_t(b)] != 0 || !keys_[size_t(b)]) return internal_error("cached KV block " + std::to_string(b) + " is held or has no key");
  }
  int64_t held = 0;
  for (size_t b = 0; b < refs_.size(); ++b) {
    if (refs_[b] < 0) return internal_error("KV block " + std::to_string(b) + " has a negative count");
    if (refs_[b] > 0) ++held, ++seen[b];
    if (seen[b] != 1) return internal_error("KV block " + std::to_string(b) + " is in " + std::to_string(seen[b]) + " states");
  }
  if (held != held_) return internal_error("the held count is " + std::to_string(held_) + ", not " + std::to_string(held));
  for (const auto& [h, b] : by_hash_)
    if (!keys_[size_t(b)] || keys_[size_t(b)]->hash != h) return internal_error("the key index disagrees at block " + std::to_string(b));
  return {};
}

}  // namespace shoal
