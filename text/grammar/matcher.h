// Matching a Grammar as the model writes, and the tokens it may write next. The state is a set
// of stacks (the grammar's positions still possible, as in an Earley/GLR parser without
// reductions); a byte keeps the stacks whose top accepts it. States are interned and their byte
// transitions tabled, so the allowed tokens of a state are found by walking the vocabulary's byte
// trie from it (pruned at the first byte no stack accepts) mostly by table lookups, and each
// state's mask is remembered (states recur: inside a string, after each character).
#pragma once

#include <cstdint>
#include <array>
#include <map>
#include <mutex>
#include <unordered_map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "text/grammar/grammar.h"

namespace shoal {

class Tokenizer;

// The vocabulary as bytes: each token's bytes (special tokens apart, matched by id), in a trie.
class TokenVocabulary {
 public:
  // Every id in [0, tok.vocab_limit()): its bytes, or none (ids without a token are never allowed).
  static std::shared_ptr<const TokenVocabulary> from_tokenizer(const Tokenizer& tok);
  // From explicit byte strings (tests): specials[i] marks a special token.
  static std::shared_ptr<const TokenVocabulary> from_bytes(std::vector<std::string> bytes, std::vector<bool> specials);

  int64_t size() const { return int64_t(bytes_.size()); }
  const std::string& bytes(int32_t id) const { return bytes_[size_t(id)]; }
  bool special(int32_t id) const { return special_[size_t(id)]; }

  // Trie nodes: children sorted by byte; tokens ending at a node.
  struct Node {
    uint32_t first_child = 0, n_children = 0;
    uint32_t first_token = 0, n_tokens = 0;
    uint8_t byte = 0;
  };
  const std::vector<Node>& nodes() const { return nodes_; }
  const std::vector<int32_t>& node_tokens() const { return node_tokens_; }
  const std::vector<int32_t>& special_ids() const { return special_ids_; }

 private:
  void build_trie();
  std::vector<std::string> bytes_;
  std::vector<bool> special_;
  std::vector<Node> nodes_;           // node 0: the root (empty prefix)
  std::vector<int32_t> node_tokens_;
  std::vector<int32_t> special_ids_;
};

// The tokens allowed next, as bits over the vocabulary (bit i of word i / 64).
using TokenMask = std::vector<uint64_t>;
inline bool mask_has(const TokenMask& m, int32_t id) { return (m[size_t(id) >> 6] >> (id & 63)) & 1; }
inline void mask_set(TokenMask& m, int32_t id) { m[size_t(id) >> 6] |= uint64_t(1) << (id & 63); }

// A grammar over one vocabulary, with what matching it has learnt so far: the states met (each a
// set of stacks, interned), their byte transitions and their token masks. Shared by every request
// that uses the same grammar (a batch job's schema), so each state's mask is computed once.
// Thread-safe.
class CompiledGrammar {
 public:
  CompiledGrammar(std::shared_ptr<const Grammar> grammar, std::shared_ptr<const TokenVocabulary> vocab);
  const Grammar& grammar() const { return *g_; }
  const TokenVocabulary& vocab() const { return *vocab_; }

 private:
  friend class GrammarMatcher;
  struct Cell {          // a stack cell: a position in Grammar::elements and the cell below
    uint32_t pos;
    int32_t below;       // -1: the bottom
    int32_t height;
  };
  using Stacks = std::vector<int32_t>;  // top cells, sorted, unique
  static constexpr int32_t kDead = -1;
  static constexpr int32_t kUnknown = -2;

  int32_t cell(uint32_t pos, int32_t below);
  void expand(uint32_t pos, int32_t below, Stacks& out);
  int32_t intern(Stacks stacks);
  int32_t start();
  int32_t next_byte(int32_t state, uint8_t b);      // kDead when no stack accepts b
  int32_t next_special(int32_t state, int32_t id);
  int32_t next_token(int32_t state, int32_t id);
  bool accepting(int32_t state) const;
  bool finished(int32_t state) const;
  void mask(int32_t state, TokenMask& out);
  ByteSet next_bytes(int32_t state) const;

  std::shared_ptr<const Grammar> g_;
  std::shared_ptr<const TokenVocabulary> vocab_;
  std::mutex mutex_;
  std::vector<Cell> cells_;
  std::unordered_map<uint64_t, int32_t> cell_ids_;
  std::vector<Stacks> states_;
  std::map<Stacks, int32_t> state_ids_;
  std::vector<std::unique_ptr<std::array<int32_t, 256>>> transitions_;  // per state, lazily
  std::map<std::pair<int32_t, int32_t>, int32_t> special_transitions_;
  std::unordered_map<int32_t, TokenMask> masks_;  // per state; cleared when too many
};

class GrammarMatcher {
 public:
  explicit GrammarMatcher(std::shared_ptr<CompiledGrammar> compiled);
  GrammarMatcher(std::shared_ptr<const Grammar> grammar, std::shared_ptr<const TokenVocabulary> vocab)
      : GrammarMatcher(std::make_shared<CompiledGrammar>(std::move(grammar), std::move(vocab))) {}

  // Consumes bytes (tests, and forced text); false, with the state unchanged, if the grammar
  // cannot continue with them.
  bool accept_bytes(std::string_view bytes);
  // Consumes one token; false, with the state unchanged, if it is not allowed here.
  bool accept_token(int32_t id);
  // The output so far is a whole string of the grammar (it may also continue).
  bool accepting() const;
  // Nothing can follow: the output is complete.
  bool finished() const;
  // The tokens that may come next (stop tokens are the caller's: allow them when accepting()).
  const TokenMask& allowed();
  void allowed(TokenMask& out);  // the same, into the caller's vector
  // The bytes that may come next (tests).
  ByteSet next_bytes() const;

 private:
  std::shared_ptr<CompiledGrammar> c_;
  int32_t state_;
  TokenMask mask_;
};

// The deepest nesting a grammar's stacks may reach (deeper input is refused).
inline constexpr int kMaxGrammarDepth = 512;

}  // namespace shoal
