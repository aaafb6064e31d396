#include "text/grammar/grammar.h"

#include <functional>

namespace shoal {

using Kind = GrammarElement::Kind;

ByteSet byte_range(uint8_t lo, uint8_t hi) {
  ByteSet s;
  for (int b = lo; b <= hi; ++b) s.set(size_t(b));
  return s;
}

ByteSet byte_of(std::string_view chars) {
  ByteSet s;
  for (char c : chars) s.set(uint8_t(c));
  return s;
}

GrammarBuilder::Seq& GrammarBuilder::Seq::operator+=(const Seq& other) {
  for (GrammarElement e : other.elements) {
    if (e.kind == Kind::kBytes) {
      sets.push_back(other.sets[e.value]);
      e.value = uint32_t(sets.size() - 1);
    }
    elements.push_back(e);
  }
  return *this;
}

GrammarBuilder::GrammarBuilder() { declare("root"); }

GrammarBuilder::Seq GrammarBuilder::lit(std::string_view bytes) {
  Seq s;
  for (char c : bytes) s += GrammarBuilder::bytes(byte_of(std::string_view(&c, 1)));
  return s;
}

GrammarBuilder::Seq GrammarBuilder::bytes(const ByteSet& set) {
  Seq s;
  s.sets.push_back(set);
  s.elements.push_back({Kind::kBytes, 0});
  return s;
}

GrammarBuilder::Seq GrammarBuilder::ref(Rule rule) {
  Seq s;
  s.elements.push_back({Kind::kRule, rule});
  return s;
}

GrammarBuilder::Seq GrammarBuilder::special(int32_t token) {
  Seq s;
  s.elements.push_back({Kind::kSpecial, uint32_t(token)});
  return s;
}

GrammarBuilder::Rule GrammarBuilder::declare(std::string name) {
  g_.rules.emplace_back();
  g_.names.push_back(std::move(name));
  defined_.push_back(false);
  return Rule(g_.rules.size() - 1);
}

void GrammarBuilder::define(Rule rule, std::vector<Seq> alternatives) {
  for (const Seq& alt : alternatives) {
    g_.rules[rule].push_back(uint32_t(g_.elements.size()));
    for (GrammarElement e : alt.elements) {
      if (e.kind == Kind::kBytes) {
        g_.byte_sets.push_back(alt.sets[e.value]);
        e.value = uint32_t(g_.byte_sets.size() - 1);
      }
      g_.elements.push_back(e);
    }
    g_.elements.push_back({Kind::kEnd, rule});
  }
  defined_[rule] = true;
}

GrammarBuilder::Rule GrammarBuilder::rule(std::string name, std::vector<Seq> alternatives) {
  const Rule r = declare(std::move(name));
  define(r, std::move(alternatives));
  return r;
}

GrammarBuilder::Rule GrammarBuilder::star(std::string name, const Seq& item) {
  const Rule r = declare(std::move(name));
  define(r, {item + ref(r), empty()});  // right recursion: the matcher keeps it flat
  return r;
}

GrammarBuilder::Rule GrammarBuilder::plus(std::string name, const Seq& item) {
  const Rule rest = star(name + "-rest", item);
  return rule(std::move(name), {item + ref(rest)});
}

GrammarBuilder::Rule GrammarBuilder::optional(std::string name, const Seq& item) {
  return rule(std::move(name), {item, empty()});
}

// A KMP automaton for `stop`, written as rules: state k (k bytes of stop matched) has one
// alternative per byte value class; reaching k = |stop| ends the rule.
GrammarBuilder::Rule GrammarBuilder::text_until(std::string name, std::string_view stop) {
  const size_t n = stop.size();
  std::vector<size_t> fail(n + 1, 0);  // longest proper border of stop[0, k)
  for (size_t k = 2; k <= n; ++k) {
    size_t j = fail[k - 1];
    while (j > 0 && stop[j] != stop[k - 1]) j = fail[j];
    if (stop[j] == stop[k - 1]) ++j;
    fail[k] = j;
  }
  auto next = [&](size_t k, uint8_t b) {  // state after byte b in state k < n
    while (k > 0 && uint8_t(stop[k]) != b) k = fail[k];
    return uint8_t(stop[k]) == b ? k + 1 : 0;
  };
  std::vector<Rule> state(n);
  for (size_t k = 0; k < n; ++k) state[k] = declare(name + "-" + std::to_string(k));
  for (size_t k = 0; k < n; ++k) {
    std::vector<ByteSet> to(n + 1);
    for (int b = 0; b < 256; ++b) to[next(k, uint8_t(b))].set(size_t(b));
    std::vector<Seq> alts;
    for (size_t t = 0; t <= n; ++t) {
      if (to[t].none()) continue;
      alts.push_back(t == n ? bytes(to[t]) : bytes(to[t]) + ref(state[t]));
    }
    define(state[k], std::move(alts));
  }
  return n == 0 ? rule(std::move(name), {empty()}) : rule(std::move(name), {ref(state[0])});
}

StatusOr<Grammar> GrammarBuilder::build() && {
  const size_t n = g_.rules.size();
  for (size_t r = 0; r < n; ++r)
    if (!defined_[r]) return internal_error("grammar rule '" + g_.names[r] + "' is used but never defined");
  for (const ByteSet& s : g_.byte_sets)
    if (s.none()) return internal_error("grammar has an empty byte set");
  for (const GrammarElement& e : g_.elements)
    if (e.kind == Kind::kRule && e.value >= n) return internal_error("grammar refers to an unknown rule");
  // Nullable rules (can match the empty string), to a fixed point.
  std::vector<bool> nullable(n, false);
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t r = 0; r < n; ++r) {
      if (nullable[r]) continue;
      for (uint32_t start : g_.rules[r]) {
        bool all = true;
        for (uint32_t p = start; g_.elements[p].kind != Kind::kEnd && all; ++p) {
          const GrammarElement& e = g_.elements[p];
          all = e.kind == Kind::kRule && nullable[e.value];
        }
        if (all) {
          nullable[r] = changed = true;
          break;
        }
      }
    }
  }
  // Left corners: rule r may begin with rule q. A cycle is left recursion.
  std::vector<std::vector<uint32_t>> left(n);
  for (size_t r = 0; r < n; ++r)
    for (uint32_t start : g_.rules[r])
      for (uint32_t p = start; g_.elements[p].kind == Kind::kRule; ++p) {
        left[r].push_back(g_.elements[p].value);
        if (!nullable[g_.elements[p].value]) break;
      }
  std::vector<int> mark(n, 0);  // 0 new, 1 on the path, 2 done
  std::function<bool(uint32_t)> cyclic = [&](uint32_t r) {
    if (mark[r] == 1) return true;
    if (mark[r] == 2) return false;
    mark[r] = 1;
    for (uint32_t q : left[r])
      if (cyclic(q)) return true;
    mark[r] = 2;
    return false;
  };
  for (size_t r = 0; r < n; ++r)
    if (cyclic(uint32_t(r))) return internal_error("grammar rule '" + g_.names[r] + "' is left-recursive");
  return std::move(g_);
}

namespace {
std::string set_text(const ByteSet& s) {
  auto esc = [](int b) {
    static const char* hex = "0123456789ABCDEF";
    if (b >= 0x21 && b < 0x7F && b != '\\' && b != ']' && b != '-' && b != '^') return std::string(1, char(b));
    return std::string("\\x") + hex[b >> 4] + hex[b & 15];
  };
  if (s.count() == 1)
    for (int b = 0; b < 256; ++b)
      if (s[size_t(b)]) return "'" + esc(b) + "'";
  std::string out = "[";
  for (int b = 0; b < 256;) {
    if (!s[size_t(b)]) {
      ++b;
      continue;
    }
    int e = b;
    while (e + 1 < 256 && s[size_t(e + 1)]) ++e;
    out += esc(b);
    if (e > b) out += "-" + esc(e);
    b = e + 1;
  }
  return out + "]";
}
}  // namespace

std::string Grammar::dump() const {
  std::string out;
  for (size_t r = 0; r < rules.size(); ++r) {
    out += names[r] + " ::=";
    for (size_t a = 0; a < rules[r].size(); ++a) {
      if (a) out += " |";
      bool any = false;
      for (uint32_t p = rules[r][a]; elements[p].kind != GrammarElement::Kind::kEnd; ++p, any = true) {
        const GrammarElement& e = elements[p];
        out += " ";
        if (e.kind == GrammarElement::Kind::kBytes) out += set_text(byte_sets[e.value]);
        else if (e.kind == GrammarElement::Kind::kRule) out += names[e.value];
        else out += "<special " + std::to_string(e.value) + ">";
      }
      if (!any) out += " \"\"";
    }
    out += "\n";
  }
  return out;
}

}  // namespace shoal
