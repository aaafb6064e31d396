// A context-free grammar over bytes and special tokens: what constrained decoding (tool_choice
// required, response_format) lets the model write. Rules are alternatives of sequences of
// elements; an element is a set of bytes (one byte of output), a reference to a rule, or one
// special token (a tool-call marker). Built with GrammarBuilder; matched by GrammarMatcher
// (matcher.h). docs/structured-output.md describes the whole path.
#pragma once

#include <bitset>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace shoal {

using ByteSet = std::bitset<256>;

struct GrammarElement {
  enum class Kind : uint8_t { kEnd, kBytes, kRule, kSpecial };
  Kind kind = Kind::kEnd;
  uint32_t value = 0;  // kBytes: index into Grammar::byte_sets; kRule: rule id; kSpecial: token id
};

// Rule r's alternatives start at elements[alternatives[i]] for i in rules[r] and run to a kEnd.
// Rule 0 is the root: the whole output must be one of its strings.
struct Grammar {
  std::vector<GrammarElement> elements;
  std::vector<ByteSet> byte_sets;
  std::vector<std::vector<uint32_t>> rules;  // per rule: the element index of each alternative
  std::vector<std::string> names;            // per rule, for errors and dump()

  // A readable form (GBNF-like), one rule per line.
  std::string dump() const;
};

class GrammarBuilder {
 public:
  using Rule = uint32_t;
  // A sequence of elements, concatenated with +.
  struct Seq {
    std::vector<GrammarElement> elements;
    std::vector<ByteSet> sets;  // byte sets of this sequence, by kBytes value
    Seq& operator+=(const Seq& other);
    friend Seq operator+(Seq a, const Seq& b) { return a += b; }
  };

  GrammarBuilder();  // declares rule 0, "root"
  static Rule root() { return 0; }

  static Seq empty() { return {}; }
  static Seq lit(std::string_view bytes);  // exactly these bytes
  static Seq bytes(const ByteSet& set);    // one byte from the set
  static Seq ref(Rule rule);
  static Seq special(int32_t token);       // one special token, by id

  Rule declare(std::string name);          // a rule defined later (for recursion)
  void define(Rule rule, std::vector<Seq> alternatives);
  Rule rule(std::string name, std::vector<Seq> alternatives);  // declare + define

  // Shorthands, each a new rule: one of; zero or more; one or more; zero or one.
  Rule any_of(std::string name, std::vector<Seq> alternatives) { return rule(std::move(name), std::move(alternatives)); }
  Rule star(std::string name, const Seq& item);
  Rule plus(std::string name, const Seq& item);
  Rule optional(std::string name, const Seq& item);
  // Any text that does not contain `stop`, followed by `stop` (a reasoning block up to </think>).
  Rule text_until(std::string name, std::string_view stop);

  // The grammar, checked: every rule defined, no left recursion (a rule that can reach itself
  // without writing a byte first), a non-empty byte set everywhere.
  StatusOr<Grammar> build() &&;

 private:
  Grammar g_;
  std::vector<bool> defined_;
};

// Byte sets used by grammars.
ByteSet byte_range(uint8_t lo, uint8_t hi);
ByteSet byte_of(std::string_view chars);

}  // namespace shoal
