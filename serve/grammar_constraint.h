// A request's grammar (text/grammar) as the scheduler's TokenConstraint: the matcher's mask
// before each token, the chosen token into it.
#pragma once

#include <memory>
#include <vector>

#include "coordinator/scheduler.h"
#include "text/grammar/matcher.h"

namespace shoal {

class GrammarConstraint : public TokenConstraint {
 public:
  explicit GrammarConstraint(std::shared_ptr<CompiledGrammar> g) : g_(g), m_(std::move(g)) {}
  void allowed(std::vector<uint64_t>& mask, bool& may_end) override {
    m_.allowed(mask);
    may_end = m_.accepting();
  }
  bool accept(int32_t token) override { return m_.accept_token(token); }
  bool finished() const override { return m_.finished(); }
  std::shared_ptr<TokenConstraint> fresh() const override { return std::make_shared<GrammarConstraint>(g_); }

 private:
  std::shared_ptr<CompiledGrammar> g_;
  GrammarMatcher m_;
};

}  // namespace shoal
