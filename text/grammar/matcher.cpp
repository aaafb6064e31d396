#include "text/grammar/matcher.h"

#include <algorithm>

#include "text/tokenizer/tokenizer.h"

namespace shoal {

using Kind = GrammarElement::Kind;

namespace {
constexpr size_t kMaxRememberedMasks = 2048;  // 2048 x 16 KB at DeepSeek's vocabulary
}

// --- the vocabulary ---

std::shared_ptr<const TokenVocabulary> TokenVocabulary::from_bytes(std::vector<std::string> bytes,
                                                                   std::vector<bool> specials) {
  auto v = std::make_shared<TokenVocabulary>();
  specials.resize(bytes.size(), false);
  v->bytes_ = std::move(bytes);
  v->special_ = std::move(specials);
  v->build_trie();
  return v;
}

std::shared_ptr<const TokenVocabulary> TokenVocabulary::from_tokenizer(const Tokenizer& tok) {
  const int64_t n = tok.vocab_limit();
  std::vector<std::string> bytes(static_cast<size_t>(n));
  std::vector<bool> specials(static_cast<size_t>(n), false);
  for (int64_t id = 0; id < n; ++id) {
    auto raw = tok.token_bytes(int32_t(id), /*skip_special_tokens=*/false);
    auto plain = tok.token_bytes(int32_t(id), /*skip_special_tokens=*/true);
    if (!raw.ok() || raw->empty()) continue;
    bytes[size_t(id)] = *raw;
    specials[size_t(id)] = plain.ok() && plain->empty();  // skipped as special: matched by id only
  }
  return from_bytes(std::move(bytes), std::move(specials));
}

void TokenVocabulary::build_trie() {
  // Ordinary tokens sorted by bytes: each trie level is then a run of contiguous children.
  std::vector<int32_t> order;
  for (size_t id = 0; id < bytes_.size(); ++id) {
    if (special_[id]) special_ids_.push_back(int32_t(id));
    else if (!bytes_[id].empty()) order.push_back(int32_t(id));
  }
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return bytes_[size_t(a)] != bytes_[size_t(b)] ? bytes_[size_t(a)] < bytes_[size_t(b)] : a < b;
  });
  // Breadth-first: node (prefix) -> the range of `order` with that prefix.
  struct Pending {
    uint32_t node;
    size_t lo, hi, depth;
  };
  nodes_.assign(1, Node{});
  std::vector<Pending> level{{0, 0, order.size(), 0}};
  while (!level.empty()) {
    std::vector<Pending> next;
    for (const Pending& p : level) {
      size_t i = p.lo;
      Node& node = nodes_[p.node];
      node.first_token = uint32_t(node_tokens_.size());
      while (i < p.hi && bytes_[size_t(order[i])].size() == p.depth) node_tokens_.push_back(order[i++]);
      nodes_[p.node].n_tokens = uint32_t(node_tokens_.size()) - nodes_[p.node].first_token;
      nodes_[p.node].first_child = uint32_t(nodes_.size() + next.size());
      uint32_t children = 0;
      while (i < p.hi) {
        const uint8_t b = uint8_t(bytes_[size_t(order[i])][p.depth]);
        size_t j = i;
        while (j < p.hi && uint8_t(bytes_[size_t(order[j])][p.depth]) == b) ++j;
        next.push_back({uint32_t(nodes_.size() + next.size()), i, j, p.depth + 1});
        ++children;
        i = j;
      }
      nodes_[p.node].n_children = children;
    }
    for (const Pending& p : next) {
      Node child;
      child.byte = uint8_t(bytes_[size_t(order[p.lo])][p.depth - 1]);
      nodes_.push_back(child);
      (void)p;
    }
    level = std::move(next);
  }
}

// --- the compiled grammar ---

CompiledGrammar::CompiledGrammar(std::shared_ptr<const Grammar> grammar, std::shared_ptr<const TokenVocabulary> vocab)
    : g_(std::move(grammar)), vocab_(std::move(vocab)) {}

int32_t CompiledGrammar::cell(uint32_t pos, int32_t below) {
  const uint64_t key = (uint64_t(pos) << 32) | uint32_t(below + 1);
  auto [it, fresh] = cell_ids_.try_emplace(key, int32_t(cells_.size()));
  if (fresh) cells_.push_back({pos, below, below < 0 ? 1 : cells_[size_t(below)].height + 1});
  return it->second;
}

// The stacks reached from position `pos` over `below` without consuming anything: down into rules
// until a terminal (byte set or special) is on top; at the end of an alternative, back to the
// return position below. A stack with the root's end on top is the accepting one.
void CompiledGrammar::expand(uint32_t pos, int32_t below, Stacks& out) {
  const GrammarElement& e = g_->elements[pos];
  switch (e.kind) {
    case Kind::kBytes:
    case Kind::kSpecial:
      out.push_back(cell(pos, below));
      return;
    case Kind::kEnd:
      if (below < 0) out.push_back(cell(pos, -1));
      else expand(cells_[size_t(below)].pos, cells_[size_t(below)].below, out);
      return;
    case Kind::kRule: {
      // The return position, unless the rule is the alternative's last element (then the
      // callee returns straight to our caller: repetitions written as right recursion stay flat).
      int32_t ret = below;
      if (g_->elements[pos + 1].kind != Kind::kEnd) {
        if (below >= 0 && cells_[size_t(below)].height >= kMaxGrammarDepth) return;  // too deep: refused
        ret = cell(pos + 1, below);
      }
      for (uint32_t start : g_->rules[e.value]) expand(start, ret, out);
      return;
    }
  }
}

int32_t CompiledGrammar::intern(Stacks stacks) {
  std::sort(stacks.begin(), stacks.end());
  stacks.erase(std::unique(stacks.begin(), stacks.end()), stacks.end());
  if (stacks.empty()) return kDead;
  auto [it, fresh] = state_ids_.try_emplace(stacks, int32_t(states_.size()));
  if (fresh) {
    states_.push_back(std::move(stacks));
    transitions_.emplace_back();
  }
  return it->second;
}

int32_t CompiledGrammar::start() {
  std::lock_guard lock(mutex_);
  Stacks s;
  for (uint32_t a : g_->rules[0]) expand(a, -1, s);
  return intern(std::move(s));
}

int32_t CompiledGrammar::next_byte(int32_t state, uint8_t b) {
  auto& table = transitions_[size_t(state)];
  if (!table) {
    table = std::make_unique<std::array<int32_t, 256>>();
    table->fill(kUnknown);
  }
  int32_t& t = (*table)[b];
  if (t != kUnknown) return t;
  Stacks out;
  for (int32_t c : states_[size_t(state)]) {
    const Cell cl = cells_[size_t(c)];
    const GrammarElement& e = g_->elements[cl.pos];
    if (e.kind == Kind::kBytes && g_->byte_sets[e.value][b]) expand(cl.pos + 1, cl.below, out);
  }
  const int32_t next = intern(std::move(out));
  (*transitions_[size_t(state)])[b] = next;  // the table itself does not move
  return next;
}

int32_t CompiledGrammar::next_special(int32_t state, int32_t id) {
  auto [it, fresh] = special_transitions_.try_emplace({state, id}, kDead);
  if (!fresh) return it->second;
  Stacks out;
  for (int32_t c : states_[size_t(state)]) {
    const Cell cl = cells_[size_t(c)];
    const GrammarElement& e = g_->elements[cl.pos];
    if (e.kind == Kind::kSpecial && int32_t(e.value) == id) expand(cl.pos + 1, cl.below, out);
  }
  const int32_t next = intern(std::move(out));
  special_transitions_[{state, id}] = next;
  return next;
}

int32_t CompiledGrammar::next_token(int32_t state, int32_t id) {
  std::lock_guard lock(mutex_);
  if (id < 0 || id >= vocab_->size() || state < 0) return kDead;
  if (vocab_->special(id)) return next_special(state, id);
  const std::string& bytes = vocab_->bytes(id);
  if (bytes.empty()) return kDead;
  for (char c : bytes) {
    state = next_byte(state, uint8_t(c));
    if (state == kDead) return kDead;
  }
  return state;
}

bool CompiledGrammar::accepting(int32_t state) const {
  if (state < 0) return false;
  for (int32_t c : states_[size_t(state)])
    if (g_->elements[cells_[size_t(c)].pos].kind == Kind::kEnd) return true;
  return false;
}

bool CompiledGrammar::finished(int32_t state) const {
  if (state < 0) return true;
  for (int32_t c : states_[size_t(state)])
    if (g_->elements[cells_[size_t(c)].pos].kind != Kind::kEnd) return false;
  return true;
}

ByteSet CompiledGrammar::next_bytes(int32_t state) const {
  ByteSet out;
  if (state < 0) return out;
  for (int32_t c : states_[size_t(state)]) {
    const GrammarElement& e = g_->elements[cells_[size_t(c)].pos];
    if (e.kind == Kind::kBytes) out |= g_->byte_sets[e.value];
  }
  return out;
}

void CompiledGrammar::mask(int32_t state, TokenMask& out) {
  std::lock_guard lock(mutex_);
  const size_t words = size_t((vocab_->size() + 63) / 64);
  if (auto it = masks_.find(state); it != masks_.end()) {
    out = it->second;
    return;
  }
  out.assign(words, 0);
  if (state >= 0) {
    for (int32_t c : states_[size_t(state)]) {  // special tokens, by id
      const GrammarElement& e = g_->elements[cells_[size_t(c)].pos];
      if (e.kind == Kind::kSpecial && int64_t(e.value) < vocab_->size() && vocab_->special(int32_t(e.value)))
        mask_set(out, int32_t(e.value));
    }
    // The trie, depth first: (node, state at that node).
    const auto& nodes = vocab_->nodes();
    const auto& tokens = vocab_->node_tokens();
    std::vector<std::pair<uint32_t, int32_t>> todo{{0u, state}};
    while (!todo.empty()) {
      const auto [n, s] = todo.back();
      todo.pop_back();
      const TokenVocabulary::Node& node = nodes[n];
      if (n != 0)
        for (uint32_t t = node.first_token; t < node.first_token + node.n_tokens; ++t) mask_set(out, tokens[t]);
      for (uint32_t ch = node.first_child; ch < node.first_child + node.n_children; ++ch) {
        const int32_t next = next_byte(s, nodes[ch].byte);
        if (next != kDead) todo.push_back({ch, next});
      }
    }
  }
  if (masks_.size() >= kMaxRememberedMasks) masks_.clear();
  masks_.emplace(state, out);
}

// --- the matcher ---

GrammarMatcher::GrammarMatcher(std::shared_ptr<CompiledGrammar> compiled) : c_(std::move(compiled)) {
  state_ = c_->start();
}

bool GrammarMatcher::accept_bytes(std::string_view bytes) {
  std::lock_guard lock(c_->mutex_);
  int32_t s = state_;
  for (char ch : bytes) {
    if (s == CompiledGrammar::kDead) break;
    s = c_->next_byte(s, uint8_t(ch));
  }
  if (s == CompiledGrammar::kDead) return false;
  state_ = s;
  return true;
}

bool GrammarMatcher::accept_token(int32_t id) {
  const int32_t s = c_->next_token(state_, id);
  if (s == CompiledGrammar::kDead) return false;
  state_ = s;
  return true;
}

bool GrammarMatcher::accepting() const {
  std::lock_guard lock(c_->mutex_);
  return c_->accepting(state_);
}

bool GrammarMatcher::finished() const {
  std::lock_guard lock(c_->mutex_);
  return c_->finished(state_);
}

ByteSet GrammarMatcher::next_bytes() const {
  std::lock_guard lock(c_->mutex_);
  return c_->next_bytes(state_);
}

const TokenMask& GrammarMatcher::allowed() {
  c_->mask(state_, mask_);
  return mask_;
}

void GrammarMatcher::allowed(TokenMask& out) { c_->mask(state_, out); }

}  // namespace shoal
