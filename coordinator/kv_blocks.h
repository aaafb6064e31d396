// The coordinator's book of a paged KV pool (node/kv_cache.h holds the values on the ranks): which
// blocks are free, which a sequence holds (with a count of holders), and which keep the prefix of
// an earlier prompt for reuse (docs/serving.md, "Prefix reuse").
//
// A full block of a prompt is known by its key: the tokens it holds, the key of the block before
// it, and what else decides its values (the adapter, the attention path). A block whose holders
// have all ended stays cached under its key until the pool needs it back, least recently used
// first. Every block is always in exactly one of three states: free, held, cached (check()).
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <unordered_map>
#include <vector>

#include "common/status.h"

namespace shoal {

struct BlockKey {
  uint64_t hash = 0;              // of everything below
  uint64_t parent = 0;            // the previous block's hash (0 for the first)
  uint64_t salt = 0;              // adapter and attention path
  std::vector<int32_t> tokens;    // the block's token ids
  bool operator==(const BlockKey& o) const { return hash == o.hash && parent == o.parent && salt == o.salt && tokens == o.tokens; }
};
// The keys of the full blocks of `tokens` (block_tokens each), chained from the first.
std::vector<BlockKey> block_keys(const std::vector<int32_t>& tokens, int64_t block_tokens, uint64_t salt);

class KvBlockPool {
 public:
  explicit KvBlockPool(int64_t n_blocks);

  int64_t n_blocks() const { return int64_t(refs_.size()); }
  int64_t available() const { return int64_t(free_.size() + lru_.size()); }  // free or cached unheld
  int64_t held() const { return held_; }
  int64_t cached() const { return int64_t(by_hash_.size()); }  // blocks with a key, held or not

  // A block for a sequence to fill (a free one, else the least recently used cached one, whose key
  // is dropped); none when every block is held.
  std::optional<int32_t> take();
  // One more holder of a cached block (a prefix hit).
  void retain(int32_t block);
  // One holder less; a block nobody holds becomes free, or cached when it has a key.
  void release(int32_t block);
  // The cached block with this key, if any.
  std::optional<int32_t> find(const BlockKey& key) const;
  // A held block now holds what `key` names; ignored when another block already does.
  void publish(int32_t block, const BlockKey& key);

  struct Counters {
    int64_t taken = 0, released = 0, evicted = 0;
  };
  const Counters& counters() const { return counters_; }
  // The invariants: each block free, held or cached (exactly one), counts consistent.
  Status check() const;

 private:
  void touch_out(int32_t block);  // out of the LRU list

  std::vector<int32_t> refs_;                          // holders per block
  std::vector<std::optional<BlockKey>> keys_;          // per block
  std::vector<int32_t> free_;                          // unheld, no key
  std::list<int32_t> lru_;                             // unheld with a key, oldest first
  std::vector<std::list<int32_t>::iterator> lru_pos_;  // per block, valid while in lru_
  std::vector<bool> in_lru_;
  std::unordered_map<uint64_t, int32_t> by_hash_;
  int64_t held_ = 0;
  Counters counters_;
};

}  // namespace shoal
