// Expression evaluation. Errors from values and builtins get the line of the expression that
// raised them; `and`/`or` return an operand, as in Python.
#include "text/jinja/builtins.h"
#include "text/jinja/eval.h"

namespace shoal::jinja {

using EK = Expr::Kind;

// One small frame per level: each kind's locals live in its own function, so that the recursion
// of a template nested kMaxNesting deep stays within a small stack (the fuzz targets run on 256 KiB
// under AddressSanitizer, whose redzones multiply a frame's size).
StatusOr<Value> Renderer::eval(const Expr& e) {
  SHOAL_RETURN_IF_ERROR(step(e.line));
  switch (e.kind) {
    case EK::kConst:
      return e.value;
    case EK::kName:
      if (const Value* v = scope_->find(e.name)) return *v;
      return Value::undefined("'" + e.name + "' is undefined");
    case EK::kList:
    case EK::kTuple:
      return eval_sequence(e);
    case EK::kDict:
      return eval_dict(e);
    case EK::kGetAttr:
    case EK::kGetItem:
    case EK::kSlice:
      return eval_access(e);
    case EK::kCall:
      return eval_call(e);
    case EK::kFilter:
    case EK::kTest:
      return eval_filter_or_test(e);
    case EK::kNeg:
    case EK::kPos:
    case EK::kNot:
      return eval_unary(e);
    case EK::kBinary:
    case EK::kAnd:
    case EK::kOr:
      return eval_binary(e);
    case EK::kCompare:
      return eval_compare(e);
    case EK::kCond:
      return eval_cond(e);
  }
  return error_at(e.line, "unknown expression");
}

StatusOr<Value> Renderer::eval_sequence(const Expr& e) {
  SHOAL_ASSIGN_OR_RETURN(Args items, eval_args(e, 0));
  return Value::list(std::move(items.pos), e.kind == EK::kTuple);
}

StatusOr<Value> Renderer::eval_dict(const Expr& e) {
  Dict d;
  for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
    SHOAL_ASSIGN_OR_RETURN(Value k, eval(*e.args[i]));
    SHOAL_ASSIGN_OR_RETURN(Value v, eval(*e.args[i + 1]));
    if (!k.is_string()) return error_at(e.line, "dict keys other than strings are not supported", Code::kUnimplemented);
    d.set(k.str(), std::move(v));
  }
  return Value::dict(std::move(d));
}

// obj.name, obj[key], obj[start:stop:step]
StatusOr<Value> Renderer::eval_access(const Expr& e) {
  SHOAL_ASSIGN_OR_RETURN(Value obj, eval(*e.args[0]));
  if (e.kind == EK::kGetAttr) return at(e.line, get_attr(obj, e.name));
  if (e.kind == EK::kGetItem) {
    SHOAL_ASSIGN_OR_RETURN(Value key, eval(*e.args[1]));
    return at(e.line, get_item(obj, key));
  }
  Value parts[3];
  for (int i = 0; i < 3; ++i) {
    if (!e.args[i + 1]) continue;
    SHOAL_ASSIGN_OR_RETURN(parts[i], eval(*e.args[i + 1]));
  }
  return at(e.line, get_slice(obj, parts[0], parts[1], parts[2]));
}

StatusOr<Value> Renderer::eval_call(const Expr& e) {
  SHOAL_ASSIGN_OR_RETURN(Value callee, eval(*e.args[0]));
  if (callee.is_undefined()) return located(e.line, callee.undefined_error());
  if (callee.kind() != Value::Kind::kFunction) {
    return error_at(e.line, std::string("'").append(callee.type_name()) + "' object is not callable");
  }
  SHOAL_ASSIGN_OR_RETURN(Args args, eval_args(e, 1));
  return at(e.line, callee.function().call(args));
}

// subject | filter(args), subject is test(args)
StatusOr<Value> Renderer::eval_filter_or_test(const Expr& e) {
  SHOAL_ASSIGN_OR_RETURN(Value subject, eval(*e.args[0]));
  if (e.kind == EK::kFilter) return apply_filter_expr(e, subject);
  SHOAL_ASSIGN_OR_RETURN(Args args, eval_args(e, 1));
  SHOAL_ASSIGN_OR_RETURN(bool result, at(e.line, apply_test(e.name, subject, args)));
  return Value(result);
}

StatusOr<Value> Renderer::eval_unary(const Expr& e) {
  SHOAL_ASSIGN_OR_RETURN(Value v, eval(*e.args[0]));
  if (e.kind == EK::kNot) return Value(!v.truthy());
  return at(e.line, unary_op(e.kind == EK::kNeg ? "-" : "+", v));
}

// a op b; `and`/`or` evaluate b only when a does not decide, and return an operand.
StatusOr<Value> Renderer::eval_binary(const Expr& e) {
  SHOAL_ASSIGN_OR_RETURN(Value a, eval(*e.args[0]));
  if (e.kind != EK::kBinary) {
    if (a.truthy() == (e.kind == EK::kOr)) return a;
    return eval(*e.args[1]);
  }
  SHOAL_ASSIGN_OR_RETURN(Value b, eval(*e.args[1]));
  return at(e.line, binary_op(e.name, a, b));
}

// x if test else y
StatusOr<Value> Renderer::eval_cond(const Expr& e) {
  SHOAL_ASSIGN_OR_RETURN(Value test, eval(*e.args[1]));
  if (test.truthy()) return eval(*e.args[0]);
  if (e.args[2]) return eval(*e.args[2]);
  return Value::undefined("the inline if-expression on line " + std::to_string(e.line) +
                          " evaluated to false and no else section was defined.");
}

// a < b < c is (a < b) and (b < c), each operand evaluated once.
StatusOr<Value> Renderer::eval_compare(const Expr& e) {
  SHOAL_ASSIGN_OR_RETURN(Value left, eval(*e.args[0]));
  for (size_t i = 0; i < e.ops.size(); ++i) {
    SHOAL_ASSIGN_OR_RETURN(Value right, eval(*e.args[i + 1]));
    const std::string& op = e.ops[i];
    bool ok;
    if (op == "==" || op == "!=") {
      ok = equals(left, right) == (op == "==");
    } else if (op == "in" || op == "notin") {
      SHOAL_ASSIGN_OR_RETURN(bool in, at(e.line, contains(right, left)));
      ok = in == (op == "in");
    } else {
      SHOAL_ASSIGN_OR_RETURN(ok, at(e.line, compare(left, right, op)));
    }
    if (!ok) return Value(false);
    left = std::move(right);
  }
  return Value(true);
}

}  // namespace shoal::jinja
