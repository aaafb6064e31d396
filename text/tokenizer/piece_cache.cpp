#include "text/tokenizer/piece_cache.h"

#include <cstring>
#include <new>
#include <random>

namespace shoal {
namespace {

uint64_t load(const char* p, size_t n) {  // n <= 8 bytes, little-endian into the low bytes
  uint64_t word = 0;
  std::memcpy(&word, p, n);
  return word;
}

}  // namespace

PieceCache::PieceCache() : seed_(std::random_device{}()), slots_(new std::atomic<const Entry*>[kSlots]) {
  for (size_t i = 0; i < kSlots; ++i) slots_[i].store(nullptr, std::memory_order_relaxed);
}

// Eight bytes at a time (the last word may overlap the one before), each mixed in by a
// multiply. The seed varies per cache, so colliding pieces cannot be prepared in advance.
uint64_t PieceCache::hash(std::string_view piece) const {
  constexpr uint64_t kMul = 0xFF51AFD7ED558CCDull;
  const char* p = piece.data();
  const size_t n = piece.size();
  uint64_t h = seed_ ^ (n * 0x9E3779B97F4A7C15ull);
  const auto mix = [&](uint64_t word) {
    h = (h ^ word) * kMul;
    h ^= h >> 32;
  };
  if (n >= 8) {
    for (size_t i = 0; i + 8 < n; i += 8) mix(load(p + i, 8));
    mix(load(p + n - 8, 8));
  } else if (n >= 4) {
    mix(load(p, 4) | load(p + n - 4, 4) << 32);
  } else if (n > 0) {
    mix(load(p, 1) | load(p + n / 2, 1) << 8 | load(p + n - 1, 1) << 16);
  }
  h *= 0xC4CEB9FE1A85EC53ull;
  return h ^ (h >> 33);
}

bool PieceCache::find(std::string_view piece, uint64_t hash, std::span<const int32_t>& ids) const {
  for (size_t i = hash & (kSlots - 1);; i = (i + 1) & (kSlots - 1)) {
    const Entry* e = slots_[i].load(std::memory_order_acquire);
    if (e == nullptr) return false;
    if (e->hash == hash && e->piece() == piece) {
      ids = {e->ids(), e->n_ids};
      return true;
    }
  }
}

void PieceCache::insert(std::string_view piece, uint64_t hash, std::span<const int32_t> ids) {
  if (full_.load(std::memory_order_relaxed)) return;
  std::lock_guard<std::mutex> lock(insert_mu_);
  if (n_entries_ >= kCapacity) return;
  size_t i = hash & (kSlots - 1);
  for (;; i = (i + 1) & (kSlots - 1)) {
    const Entry* e = slots_[i].load(std::memory_order_relaxed);  // only inserts write slots
    if (e == nullptr) break;
    if (e->hash == hash && e->piece() == piece) return;  // another thread added it meanwhile
  }
  const size_t id_bytes = ids.size() * sizeof(int32_t);
  const size_t bytes = (sizeof(Entry) + id_bytes + piece.size() + 7) / 8 * 8;  // keeps entries 8-aligned
  if (bytes > kBlock) return;  // never so: a piece of kMaxPiece bytes has at most that many ids
  if (block_used_ + bytes > kBlock) {
    if ((blocks_.size() + 1) * kBlock > kMaxBytes) {
      full_.store(true, std::memory_order_relaxed);
      return;
    }
    blocks_.emplace_back(new uint64_t[kBlock / 8]);
    block_used_ = 0;
  }
  char* at = reinterpret_cast<char*>(blocks_.back().get()) + block_used_;
  block_used_ += bytes;
  const Entry* e = new (at) Entry{hash, static_cast<uint32_t>(ids.size()), static_cast<uint32_t>(piece.size())};
  std::memcpy(at + sizeof(Entry), ids.data(), id_bytes);
  std::memcpy(at + sizeof(Entry) + id_bytes, piece.data(), piece.size());
  slots_[i].store(e, std::memory_order_release);
  if (++n_entries_ == kCapacity) full_.store(true, std::memory_order_relaxed);
}

}  // namespace shoal
