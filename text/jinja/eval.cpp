// Walks the parsed tree. Scoping follows Jinja2: a for loop's body gets a fresh scope each
// iteration (a {% set %} inside does not survive the iteration, hence namespace()), if blocks
// share their enclosing scope, macros and {% with %} get their own.
#include "text/jinja/eval.h"

#include <algorithm>
#include <cstdio>

#include "text/jinja/builtins.h"
#include "text/jinja/limits.h"

namespace shoal::jinja {

namespace {

using EK = Expr::Kind;
using NK = Node::Kind;
constexpr int kMaxMacroDepth = 200;

}  // namespace

Renderer::Renderer(Dict context, RenderLimits limits) : scope_(std::make_shared<Scope>()), limits_(limits) {
  scope_->vars = make_globals(&namespaces_);
  for (const auto& [k, v] : context.items()) scope_->vars.set(k, v);
}

Renderer::~Renderer() {
  for (auto& w : macro_scopes_) {
    if (auto s = w.lock()) s->vars = Dict();
  }
  for (auto& w : namespaces_) {
    if (auto o = w.lock()) o->attrs = Dict();
  }
}

StatusOr<std::string> Renderer::render(const Node& root) {
  std::string out;
  SHOAL_ASSIGN_OR_RETURN(Flow flow, exec_body(root.bodies[0], out));
  (void)flow;  // break/continue cannot reach the top level (the parser checks)
  return out;
}

// Runs `body` in `scope` (a new one whose parent is the current), then restores the current.
StatusOr<Renderer::Flow> Renderer::exec_scoped(const Body& body, std::shared_ptr<Scope> scope, std::string& out) {
  std::swap(scope_, scope);
  auto flow = exec_body(body, out);
  std::swap(scope_, scope);
  return flow;
}

StatusOr<Renderer::Flow> Renderer::exec_body(const Body& body, std::string& out) {
  for (const NodePtr& n : body) {
    SHOAL_ASSIGN_OR_RETURN(Flow flow, exec(*n, out));
    if (flow != Flow::kNormal) return flow;
  }
  return Flow::kNormal;
}

Status Renderer::step(int line) {
  if (++steps_ > limits_.max_steps)
    return error_at(line, "the template took more than " + std::to_string(limits_.max_steps) + " steps to render");
  if (steps_ % 1024 == 0 &&
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count() > limits_.max_seconds)
  {
    char seconds[32];
    std::snprintf(seconds, sizeof seconds, "%g", limits_.max_seconds);
    return error_at(line, std::string("the template took more than ") + seconds + " s to render");
  }
  return {};
}

StatusOr<Renderer::Flow> Renderer::exec(const Node& n, std::string& out) {
  SHOAL_RETURN_IF_ERROR(step(n.line));
  if (int64_t(out.size()) > kMaxValueBytes)
    return error_at(n.line, "the template's output passed " + std::to_string(kMaxValueBytes) + " bytes");
  switch (n.kind) {
    case NK::kBody:
      return exec_body(n.bodies[0], out);
    case NK::kScope: {  // transformers' {% generation %} is a call block: its sets stay inside
      auto scope = std::make_shared<Scope>();
      scope->parent = scope_;
      return exec_scoped(n.bodies[0], scope, out);
    }
    case NK::kText:
      out += n.text;
      return Flow::kNormal;
    case NK::kPrint: {
      SHOAL_ASSIGN_OR_RETURN(Value v, eval(*n.exprs[0]));
      out += v.to_str();
      return Flow::kNormal;
    }
    case NK::kIf:
      for (size_t i = 0; i < n.exprs.size(); ++i) {
        SHOAL_ASSIGN_OR_RETURN(Value cond, eval(*n.exprs[i]));
        if (cond.truthy()) return exec_body(n.bodies[i], out);
      }
      if (n.bodies.size() > n.exprs.size()) return exec_body(n.bodies.back(), out);
      return Flow::kNormal;
    case NK::kFor:
      return exec_for(n, out);
    case NK::kSet: {
      SHOAL_ASSIGN_OR_RETURN(Value v, eval(*n.exprs[0]));
      SHOAL_RETURN_IF_ERROR(located(n.line, assign(n.targets, n.unpack, v, scope_->vars)));
      return Flow::kNormal;
    }
    case NK::kSetAttr:
      SHOAL_RETURN_IF_ERROR(set_attr(n));
      return Flow::kNormal;
    case NK::kSetBlock:
    case NK::kFilterBlock: {
      std::string captured;
      SHOAL_RETURN_IF_ERROR(exec_body(n.bodies[0], captured).status());
      Value v(std::move(captured));
      for (const ExprPtr& f : n.exprs) {
        SHOAL_ASSIGN_OR_RETURN(v, apply_filter_expr(*f, v));
      }
      if (n.kind == NK::kFilterBlock) {
        out += v.to_str();
      } else {
        SHOAL_RETURN_IF_ERROR(located(n.line, assign(n.targets, n.unpack, v, scope_->vars)));
      }
      return Flow::kNormal;
    }
    case NK::kMacro:
      scope_->vars.set(n.text, make_macro(n));
      return Flow::kNormal;
    case NK::kWith: {
      auto scope = std::make_shared<Scope>();
      scope->parent = scope_;
      for (size_t i = 0; i < n.targets.size(); ++i) {
        SHOAL_ASSIGN_OR_RETURN(Value v, eval(*n.exprs[i]));
        scope->vars.set(n.targets[i], v);
      }
      return exec_scoped(n.bodies[0], scope, out);
    }
    case NK::kBreak:
      return Flow::kBreak;
    case NK::kContinue:
      return Flow::kContinue;
  }
  return Flow::kNormal;
}

Status Renderer::assign(const std::vector<std::string>& targets, bool unpack, const Value& v, Dict& vars) {
  if (!unpack) {
    vars.set(targets[0], v);
    return Status();
  }
  SHOAL_ASSIGN_OR_RETURN(List items, iterate(v));
  if (items.size() != targets.size()) {
    return invalid_argument(items.size() > targets.size()
                                ? "too many values to unpack (expected " + std::to_string(targets.size()) + ")"
                                : "not enough values to unpack (expected " + std::to_string(targets.size()) +
                                      ", got " + std::to_string(items.size()) + ")");
  }
  for (size_t i = 0; i < targets.size(); ++i) vars.set(targets[i], items[i]);
  return Status();
}

Status Renderer::set_attr(const Node& n) {
  const Value* target = scope_->find(n.targets[0]);
  if (!target || target->kind() != Value::Kind::kObject || !target->object().assignable) {
    return error_at(n.line, "cannot assign attribute on non-namespace object");
  }
  SHOAL_ASSIGN_OR_RETURN(Value v, eval(*n.exprs[0]));
  target->object().attrs.set(n.text, std::move(v));
  return Status();
}

StatusOr<Renderer::Flow> Renderer::exec_for(const Node& n, std::string& out) {
  SHOAL_ASSIGN_OR_RETURN(Value iterable, eval(*n.exprs[0]));
  auto all = iterate(iterable);
  if (!all.ok()) return located(n.line, all.status());
  List items;
  if (n.exprs[1]) {  // {% for x in xs if cond %}: filtered before loop.length is known
    for (const Value& item : *all) {
      auto scope = std::make_shared<Scope>();
      scope->parent = scope_;
      SHOAL_RETURN_IF_ERROR(located(n.line, assign(n.targets, n.unpack, item, scope->vars)));
      std::swap(scope_, scope);
      auto keep = eval(*n.exprs[1]);
      std::swap(scope_, scope);
      if (!keep.ok()) return keep.status();
      if (keep->truthy()) items.push_back(item);
    }
  } else {
    items = std::move(all).value();
  }
  if (items.empty()) {
    if (n.bodies.size() > 1) return exec_body(n.bodies[1], out);
    return Flow::kNormal;
  }
  int64_t len = static_cast<int64_t>(items.size());
  for (int64_t i = 0; i < len; ++i) {
    SHOAL_RETURN_IF_ERROR(step(n.line));  // each iteration, also of an empty body
    auto scope = std::make_shared<Scope>();
    scope->parent = scope_;
    SHOAL_RETURN_IF_ERROR(located(n.line, assign(n.targets, n.unpack, items[i], scope->vars)));
    scope->vars.set("loop", make_loop(items, i));
    SHOAL_ASSIGN_OR_RETURN(Flow flow, exec_scoped(n.bodies[0], scope, out));
    if (flow == Flow::kBreak) break;
  }
  return Flow::kNormal;
}

Value Renderer::make_loop(const List& items, int64_t i) {
  int64_t len = static_cast<int64_t>(items.size());
  auto loop = std::make_shared<Object>();
  loop->type = "LoopContext";
  Dict& a = loop->attrs;
  a.append("index", Value(i + 1));
  a.append("index0", Value(i));
  a.append("revindex", Value(len - i));
  a.append("revindex0", Value(len - i - 1));
  a.append("first", Value(i == 0));
  a.append("last", Value(i == len - 1));
  a.append("length", Value(len));
  a.append("depth", Value(1));
  a.append("depth0", Value(0));
  a.append("previtem", i > 0 ? items[i - 1] : Value::undefined("there is no previous item"));
  a.append("nextitem", i + 1 < len ? items[i + 1] : Value::undefined("there is no next item"));
  a.append("cycle", Value::function("loop.cycle", [i](const Args& args) -> StatusOr<Value> {
             if (args.pos.empty()) return invalid_argument("no items for cycling given");
             return args.pos[static_cast<size_t>(i) % args.pos.size()];
           }));
  return Value::object(std::move(loop));
}

// A macro: a function that renders its body in a scope under the one it was defined in.
Value Renderer::make_macro(const Node& n) {
  std::shared_ptr<Scope> defined_in = scope_;
  macro_scopes_.push_back(defined_in);
  const Node* node = &n;
  return Value::function(n.text, [this, node, defined_in](const Args& args) -> StatusOr<Value> {
    const Node& m = *node;
    if (args.pos.size() > m.targets.size()) {
      return error_at(m.line, "macro '" + m.text + "' takes not more than " + std::to_string(m.targets.size()) +
                                  " argument(s)");
    }
    if (macro_depth_ >= kMaxMacroDepth) return error_at(m.line, "macro recursion too deep");
    auto scope = std::make_shared<Scope>();
    scope->parent = defined_in;
    for (const auto& [k, v] : args.kw) {
      if (std::find(m.targets.begin(), m.targets.end(), k) == m.targets.end()) {
        return error_at(m.line, "macro '" + m.text + "' takes no keyword argument '" + k + "'");
      }
      scope->vars.set(k, v);
    }
    for (size_t i = 0; i < args.pos.size(); ++i) scope->vars.set(m.targets[i], args.pos[i]);
    std::swap(scope_, scope);
    Status st;
    for (size_t i = 0; i < m.targets.size() && st.ok(); ++i) {
      if (scope_->vars.find(m.targets[i])) continue;
      if (!m.exprs[i]) {
        scope_->vars.set(m.targets[i], Value::undefined("'" + m.targets[i] + "' is undefined"));
        continue;
      }
      auto v = eval(*m.exprs[i]);
      if (v.ok()) scope_->vars.set(m.targets[i], *v);
      st = v.status();
    }
    std::string out;
    ++macro_depth_;
    if (st.ok()) st = exec_body(m.bodies[0], out).status();
    --macro_depth_;
    std::swap(scope_, scope);
    if (!st.ok()) return st;
    return Value(std::move(out));
  });
}

StatusOr<Args> Renderer::eval_args(const Expr& e, size_t first) {
  Args args;
  for (size_t i = first; i < e.args.size(); ++i) {
    SHOAL_ASSIGN_OR_RETURN(Value v, eval(*e.args[i]));
    args.pos.push_back(std::move(v));
  }
  for (const auto& [k, x] : e.kwargs) {
    SHOAL_ASSIGN_OR_RETURN(Value v, eval(*x));
    args.kw.emplace_back(k, std::move(v));
  }
  return args;
}

StatusOr<Value> Renderer::apply_filter_expr(const Expr& f, const Value& subject) {
  SHOAL_ASSIGN_OR_RETURN(Args args, eval_args(f, 1));
  return at(f.line, apply_filter(f.name, subject, args));
}

}  // namespace shoal::jinja
