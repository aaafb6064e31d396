// The renderer: executes the parsed tree (eval.cpp) and evaluates expressions (expr.cpp).
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "text/jinja/ast.h"
#include "text/jinja/limits.h"

namespace shoal::jinja {

// Variables of one level (the template, a loop iteration, a macro call), over its parent.
struct Scope {
  std::shared_ptr<Scope> parent;
  Dict vars;

  const Value* find(const std::string& name) const {
    for (const Scope* s = this; s; s = s->parent.get()) {
      if (const Value* v = s->vars.find(name)) return v;
    }
    return nullptr;
  }
};

class Renderer {
 public:
  // `context`: the template's variables; Jinja's globals sit underneath them.
  explicit Renderer(Dict context, RenderLimits limits = {});
  ~Renderer();
  StatusOr<std::string> render(const Node& root);

 private:
  enum class Flow { kNormal, kBreak, kContinue };

  StatusOr<Flow> exec_body(const Body& body, std::string& out);
  StatusOr<Flow> exec_scoped(const Body& body, std::shared_ptr<Scope> scope, std::string& out);
  StatusOr<Flow> exec(const Node& n, std::string& out);
  StatusOr<Flow> exec_for(const Node& n, std::string& out);
  Status assign(const std::vector<std::string>& targets, bool unpack, const Value& v, Dict& vars);
  Status set_attr(const Node& n);
  Value make_loop(const List& items, int64_t i);
  Value make_macro(const Node& n);

  StatusOr<Value> eval(const Expr& e);
  StatusOr<Args> eval_args(const Expr& e, size_t first);
  StatusOr<Value> apply_filter_expr(const Expr& f, const Value& subject);
  // One per kind of expression, never inlined into eval: a level of nesting costs a small frame.
  [[gnu::noinline]] StatusOr<Value> eval_sequence(const Expr& e);
  [[gnu::noinline]] StatusOr<Value> eval_dict(const Expr& e);
  [[gnu::noinline]] StatusOr<Value> eval_access(const Expr& e);
  [[gnu::noinline]] StatusOr<Value> eval_call(const Expr& e);
  [[gnu::noinline]] StatusOr<Value> eval_filter_or_test(const Expr& e);
  [[gnu::noinline]] StatusOr<Value> eval_unary(const Expr& e);
  [[gnu::noinline]] StatusOr<Value> eval_binary(const Expr& e);
  [[gnu::noinline]] StatusOr<Value> eval_compare(const Expr& e);
  [[gnu::noinline]] StatusOr<Value> eval_cond(const Expr& e);

  std::shared_ptr<Scope> scope_;
  int macro_depth_ = 0;
  RenderLimits limits_;
  int64_t steps_ = 0;  // statements and expressions so far
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  Status step(int line);
  // Macros hold their scope, which holds them; a namespace may hold itself. The destructor
  // clears these to break such cycles.
  std::vector<std::weak_ptr<Scope>> macro_scopes_;
  std::vector<std::weak_ptr<Object>> namespaces_;
};

}  // namespace shoal::jinja
