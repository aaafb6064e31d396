// The merge loop is tokenizers' Word::merge_all: a heap of candidate merges (rank, then
// position), symbols in a linked list, stale candidates skipped when popped. It is O(n log n)
// in the piece length, so 1000-byte runs cost no more per byte than words do.
#include "coordinator/tokenizer/bpe.h"

#include <algorithm>
#include <cstdio>

#include "coordinator/tokenizer/utf8.h"

namespace shoal {
namespace {

struct ByteTables {
  std::array<char32_t, 256> to_char{};
  ByteTables() {
    // Printable Latin-1 bytes stand for themselves; the other 68 take U+0100.. in order.
    char32_t next = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      to_char[b] = printable ? static_cast<char32_t>(b) : next++;
    }
  }
};

const ByteTables& tables() {
  static const ByteTables t;
  return t;
}

}  // namespace

char32_t byte_to_char(uint8_t b) { return tables().to_char[b]; }

int byte_from_char(char32_t c) {
  if (c < 0x100) {
    const bool printable = (c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE);
    return printable ? static_cast<int>(c) : -1;
  }
  if (c > 0x143) return -1;
  const auto& t = tables().to_char;
  return static_cast<int>(std::find(t.begin(), t.end(), c) - t.begin());
}

void MergeMap::reserve(size_t n) {
  size_t cap = 16;
  while (cap < 2 * n) cap *= 2;
  if (cap <= slots_.size()) return;
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(cap, Slot{kEmpty, {}});
  mask_ = cap - 1;
  size_ = 0;
  for (const Slot& slot : old) {
    if (slot.key != kEmpty) insert(int32_t(slot.key >> 32), int32_t(uint32_t(slot.key)), slot.merge);
  }
}

void MergeMap::insert(int32_t left, int32_t right, Merge merge) {
  if (2 * (size_ + 1) > slots_.size()) reserve(size_ + 1 + size_ / 2);
  const uint64_t key = pack(left, right);
  size_t i = hash(key) & mask_;
  while (slots_[i].key != kEmpty && slots_[i].key != key) i = (i + 1) & mask_;
  if (slots_[i].key == kEmpty) ++size_;
  slots_[i] = {key, merge};
}

void Bpe::add_unknown(std::string_view symbol, int32_t& pending_unk, BpeScratch& s) const {
  auto push = [&](int32_t id) { s.symbols.push_back({id, 0, 0, true}); };
  if (byte_fallback) {
    const size_t before = s.symbols.size();
    bool all = true;
    for (unsigned char b : symbol) {
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      const auto it = vocab.find(name);
      if (it == vocab.end()) {
        all = false;
        break;
      }
      push(it->second);
    }
    if (all) return;  // as the reference, a pending unknown is not flushed first
    s.symbols.resize(before);
  }
  if (unk_id < 0) return;  // no unk token: the character is dropped, as the reference does
  if (pending_unk >= 0 && !fuse_unk) push(pending_unk);
  pending_unk = unk_id;
}

void Bpe::add_symbols(std::string_view piece, bool byte_level, BpeScratch& s) const {
  s.symbols.clear();
  int32_t pending_unk = -1;
  auto add_known = [&](int32_t id) {
    if (pending_unk >= 0) s.symbols.push_back({pending_unk, 0, 0, true});
    pending_unk = -1;
    s.symbols.push_back({id, 0, 0, true});
  };
  if (byte_level) {
    for (unsigned char b : piece) {
      if (byte_ids[b] >= 0) {
        add_known(byte_ids[b]);
      } else {
        std::string symbol;
        utf8::append(symbol, byte_to_char(b));
        add_unknown(symbol, pending_unk, s);
      }
    }
  } else {
    for (size_t i = 0; i < piece.size();) {
      const size_t start = i;
      utf8::next(piece, i);
      const std::string symbol(piece.substr(start, i - start));
      const auto it = vocab.find(symbol);
      if (it != vocab.end()) {
        add_known(it->second);
      } else {
        add_unknown(symbol, pending_unk, s);
      }
    }
  }
  if (pending_unk >= 0) s.symbols.push_back({pending_unk, 0, 0, true});
  const auto n = static_cast<int32_t>(s.symbols.size());
  for (int32_t i = 0; i < n; ++i) {
    s.symbols[i].prev = i - 1;
    s.symbols[i].next = i + 1 < n ? i + 1 : -1;
  }
}

void Bpe::merge_all(const MergeMap& merges, BpeScratch& s) {
  using Candidate = BpeScratch::Candidate;
  // std heap functions keep the largest on top; "larger" here is lower rank, then lower pos.
  const auto later = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  auto& sym = s.symbols;
  auto& heap = s.heap;
  heap.clear();
  for (size_t i = 0; i + 1 < sym.size(); ++i) {
    if (const auto* m = merges.find(sym[i].id, sym[i + 1].id)) heap.push_back({m->rank, int32_t(i), m->id});
  }
  std::make_heap(heap.begin(), heap.end(), later);
  auto push = [&](int32_t left_pos, int32_t right_pos) {
    if (const auto* m = merges.find(sym[left_pos].id, sym[right_pos].id)) {
      heap.push_back({m->rank, left_pos, m->id});
      std::push_heap(heap.begin(), heap.end(), later);
    }
  };
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Candidate top = heap.back();
    heap.pop_back();
    auto& cur = sym[top.pos];
    if (!cur.alive || cur.next < 0) continue;
    auto& right = sym[cur.next];
    const auto* m = merges.find(cur.id, right.id);
    if (m == nullptr || m->id != top.id) continue;  // stale: a neighbour changed since
    cur.id = top.id;
    right.alive = false;
    cur.next = right.next;
    if (cur.next >= 0) sym[cur.next].prev = top.pos;
    if (cur.prev >= 0) push(cur.prev, top.pos);
    if (cur.next >= 0) push(top.pos, cur.next);
  }
}

void Bpe::encode(std::string_view piece, bool byte_level, std::vector<int32_t>& out, BpeScratch& s) const {
  if (piece.empty()) return;
  if (ignore_merges) {
    std::string_view whole = piece;
    if (byte_level) {
      s.mapped.clear();
      for (unsigned char b : piece) utf8::append(s.mapped, byte_to_char(b));
      whole = s.mapped;
    }
    const auto it = vocab.find(std::string(whole));
    if (it != vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  add_symbols(piece, byte_level, s);
  if (s.symbols.size() > 1) merge_all(merges, s);
  for (const auto& symbol : s.symbols) {
    if (symbol.alive) out.push_back(symbol.id);
  }
}

}  // namespace shoal
