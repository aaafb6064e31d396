// The merge loop is tokenizers' Word::merge_all: candidate merges taken lowest (rank, position)
// first, symbols in a linked list, stale candidates (the pair at their position now merges into
// another id) skipped when taken. It is O(n log n) in the piece length, so 1000-byte runs cost
// no more per byte than words do.
#include "text/tokenizer/bpe.h"

#include <algorithm>
#include <cstdio>

#include "text/tokenizer/utf8.h"

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

namespace {

// The heap of candidates is 4-ary: half the depth of a binary heap, and a node's four children
// (16 bytes each) share one cache line. On long pieces the pops are most of the time.
using Candidate = BpeScratch::Candidate;

void sift_down(std::vector<Candidate>& h, size_t i, Candidate item) {
  const size_t n = h.size();
  for (size_t child; (child = 4 * i + 1) < n;) {
    size_t best = child;
    for (size_t c = child + 1; c < std::min(child + 4, n); ++c) best = h[c].key < h[best].key ? c : best;
    if (item.key <= h[best].key) break;
    h[i] = h[best];
    i = best;
  }
  h[i] = item;
}

void push(std::vector<Candidate>& h, Candidate item) {
  size_t i = h.size();
  h.push_back(item);
  while (i > 0 && item.key < h[(i - 1) / 4].key) {
    h[i] = h[(i - 1) / 4];
    i = (i - 1) / 4;
  }
  h[i] = item;
}

Candidate pop(std::vector<Candidate>& h) {
  const Candidate top = h[0], last = h.back();
  h.pop_back();
  if (!h.empty()) sift_down(h, 0, last);
  return top;
}

}  // namespace

void Bpe::merge_all(const MergeMap& merges, BpeScratch& s) {
  auto& sym = s.symbols;
  auto& heap = s.heap;
  auto& initial = s.initial;
  const auto candidate = [&](int32_t left_pos, int32_t right_pos, Candidate& out) {
    const auto* m = merges.find(sym[left_pos].id, sym[right_pos].id);
    if (m != nullptr) out = {uint64_t(uint32_t(m->rank)) << 32 | uint32_t(left_pos), m->id};
    return m != nullptr;
  };
  // The initial pairs' candidates are sorted once (runs of one character come sorted) and read
  // in order; only the candidates that merges make go through the heap. The next candidate is
  // the least of the two; equal keys are the same pair, so either may go first.
  heap.clear();
  initial.clear();
  Candidate c;
  for (size_t i = 0; i + 1 < sym.size(); ++i) {
    if (candidate(int32_t(i), int32_t(i + 1), c)) initial.push_back(c);
  }
  const auto by_key = [](const Candidate& a, const Candidate& b) { return a.key < b.key; };
  if (!std::is_sorted(initial.begin(), initial.end(), by_key)) std::sort(initial.begin(), initial.end(), by_key);
  for (size_t next = 0; next < initial.size() || !heap.empty();) {
    const bool from_initial = next < initial.size() && (heap.empty() || initial[next].key < heap[0].key);
    const Candidate top = from_initial ? initial[next++] : pop(heap);
    const auto pos = int32_t(uint32_t(top.key));
    auto& cur = sym[pos];
    if (!cur.alive || cur.next < 0) continue;
    auto& right = sym[cur.next];
    const auto* m = merges.find(cur.id, right.id);
    if (m == nullptr || m->id != top.id) continue;  // stale: a neighbour changed since
    cur.id = top.id;
    right.alive = false;
    cur.next = right.next;
    if (cur.next >= 0) sym[cur.next].prev = pos;
    if (cur.prev >= 0 && candidate(cur.prev, pos, c)) push(heap, c);
    if (cur.next >= 0 && candidate(pos, cur.next, c)) push(heap, c);
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
