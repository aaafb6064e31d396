// Byte-pair encoding of one pre-tokenized piece (tokenizers' models::bpe): start from one
// symbol per character (per byte, for byte-level tokenizers), then repeatedly merge the
// adjacent pair of lowest rank, leftmost first, until no adjacent pair has a merge.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace shoal {

// Open-addressing map (left id, right id) -> (rank, merged id): the inner loop's only lookup.
class MergeMap {
 public:
  struct Merge {
    int32_t rank;
    int32_t id;
  };
  void reserve(size_t n);
  void insert(int32_t left, int32_t right, Merge merge);  // a later insert of a pair wins
  const Merge* find(int32_t left, int32_t right) const {
    const uint64_t key = pack(left, right);
    for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.key == key) return &slot.merge;
      if (slot.key == kEmpty) return nullptr;
    }
  }
  size_t size() const { return size_; }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  static uint64_t pack(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  static size_t hash(uint64_t k) { return static_cast<size_t>((k * 0x9E3779B97F4A7C15ull) >> 29); }
  void grow();
  struct Slot {  // key and value together: one cache line per probe
    uint64_t key;
    Merge merge;
  };
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

struct BpeScratch {
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  struct Candidate {
    uint64_t key;  // rank << 32 | position of the left symbol: the least is next
    int32_t id;    // the merged id
  };
  std::vector<Symbol> symbols;
  std::vector<Candidate> initial;  // sorted by key
  std::vector<Candidate> heap;     // a 4-ary min-heap on key (bpe.cpp)
  std::string mapped;
};

struct Bpe {
  std::unordered_map<std::string, int32_t> vocab;
  MergeMap merges;
  // Byte-level tokenizers: the id of each byte's symbol (-1 when the vocabulary lacks it).
  std::array<int32_t, 256> byte_ids{};
  int32_t unk_id = -1;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;

  // Appends the ids of `piece` (raw bytes when byte_level, else UTF-8 text) to `out`.
  void encode(std::string_view piece, bool byte_level, std::vector<int32_t>& out, BpeScratch& scratch) const;

 private:
  void add_symbols(std::string_view piece, bool byte_level, BpeScratch& s) const;
  void add_unknown(std::string_view symbol, int32_t& pending_unk, BpeScratch& s) const;
  static void merge_all(const MergeMap& merges, BpeScratch& s);
};

// GPT-2's bytes_to_unicode: the character each byte stands for in a byte-level vocabulary.
char32_t byte_to_char(uint8_t b);
// The inverse; -1 for characters outside the table.
int byte_from_char(char32_t c);

}  // namespace shoal
