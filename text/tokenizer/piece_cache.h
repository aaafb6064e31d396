// Piece -> ids, shared by every encode call and thread. Bounded like the reference's cache:
// once full (kCapacity pieces or kMaxBytes of entries), nothing is added. Entries are never
// changed or removed, so a lookup takes no lock: it probes an open-addressing table whose slots
// are set once, each with a release store after its entry is complete. Inserts are serialised
// by a mutex.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string_view>
#include <vector>

namespace shoal {

// The fuzz build makes the cache small (tests/fuzz/CMakeLists.txt): a table of 1 MB set up for
// every tokenizer loaded would take most of each input's time, and a small cache fills, so the
// full cache's path runs too. A power of two.
#ifndef SHOAL_PIECE_CACHE_CAPACITY
#define SHOAL_PIECE_CACHE_CAPACITY (1 << 16)
#endif

class PieceCache {
 public:
  static constexpr size_t kCapacity = SHOAL_PIECE_CACHE_CAPACITY;  // entries
  static_assert(kCapacity > 0 && (kCapacity & (kCapacity - 1)) == 0, "a power of two");
  static constexpr size_t kMaxPiece = 255;      // longer pieces are not cached (as the reference)
  static constexpr size_t kMaxBytes = 16 << 20;  // entries' memory; the slots take 1 MB more

  PieceCache();
  PieceCache(const PieceCache&) = delete;
  PieceCache& operator=(const PieceCache&) = delete;

  static bool cacheable(std::string_view piece) { return piece.size() >= 2 && piece.size() <= kMaxPiece; }
  uint64_t hash(std::string_view piece) const;
  // The ids of `piece`, or false. The span stays valid as long as the cache.
  bool find(std::string_view piece, uint64_t hash, std::span<const int32_t>& ids) const;
  void insert(std::string_view piece, uint64_t hash, std::span<const int32_t> ids);

 private:
  // One block of memory: this header, n_ids ids, then the piece's bytes.
  struct Entry {
    uint64_t hash;
    uint32_t n_ids;
    uint32_t size;
    const int32_t* ids() const { return reinterpret_cast<const int32_t*>(this + 1); }
    std::string_view piece() const { return {reinterpret_cast<const char*>(ids() + n_ids), size}; }
  };
  static constexpr size_t kSlots = 2 * kCapacity;  // at most half full: probes stay short
  static constexpr size_t kBlock = 1 << 16;  // entries are carved from blocks this big
  uint64_t seed_;
  std::unique_ptr<std::atomic<const Entry*>[]> slots_;
  std::atomic<bool> full_{false};  // set once full: inserts stop before taking the mutex
  std::mutex insert_mu_;            // guards what follows
  size_t n_entries_ = 0;
  std::vector<std::unique_ptr<uint64_t[]>> blocks_;  // own the entries; never moved or freed early
  size_t block_used_ = kBlock;                        // bytes used of blocks_.back()
};

}  // namespace shoal
