// The parser (parser.cpp: statements, parse_expr.cpp: expressions): recursive descent over the
// tokens, following jinja2/parser.py (3.1).
#pragma once

#include <algorithm>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "text/jinja/ast.h"

namespace shoal::jinja {

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : toks_(std::move(tokens)) {}
  StatusOr<std::shared_ptr<const Node>> run();

 private:
  using T = Token::Type;
  using EK = Expr::Kind;

  const Token& cur() const { return toks_[i_]; }
  const Token& next_tok() const { return toks_[std::min(i_ + 1, toks_.size() - 1)]; }
  void advance() {
    if (i_ + 1 < toks_.size()) ++i_;
  }
  bool is_op(std::string_view op) const { return cur().type == T::kOp && cur().text == op; }
  bool is_name(std::string_view n) const { return cur().type == T::kName && cur().text == n; }
  bool skip_op(std::string_view op);
  bool skip_name(std::string_view n);
  Status unexpected(const std::string& expected) const;  // "expected X, got Y"
  Status expect_op(std::string_view op);
  Status expect_block_end();
  StatusOr<std::string> expect_name();

  // Statements (parser.cpp).
  // Statements until one of `ends` opens a tag (left current, after its "{%").
  StatusOr<Body> subparse(std::vector<std::string_view> ends, const std::string& opener);
  StatusOr<NodePtr> parse_statement(const std::vector<std::string_view>& ends, const std::string& opener);
  Status close_block(std::string_view end);  // the end tag is current
  StatusOr<NodePtr> parse_for();
  Status parse_targets(Node* n, std::string_view end_name);  // "x", "a, b" or "(a, b)"
  StatusOr<NodePtr> parse_if();
  StatusOr<NodePtr> parse_set();
  Status parse_filter_chain(Node* n);  // "| f(args) | g" of {% set x | f %} and {% filter f %}
  StatusOr<NodePtr> parse_macro();
  StatusOr<NodePtr> parse_filter_block();
  StatusOr<NodePtr> parse_with();
  StatusOr<NodePtr> parse_scope(std::string_view end);

  // Expressions (parse_expr.cpp), one function per precedence level as in Jinja.
  bool is_tuple_end(const std::vector<std::string_view>& extra) const;
  StatusOr<ExprPtr> parse_tuple(bool simplified, bool with_condexpr, std::vector<std::string_view> extra,
                                bool explicit_parens);
  StatusOr<ExprPtr> parse_expression(bool with_condexpr);
  template <typename Next>
  StatusOr<ExprPtr> parse_left_assoc(Next next, std::initializer_list<std::string_view> ops, bool names, EK kind);
  StatusOr<ExprPtr> parse_or();
  StatusOr<ExprPtr> parse_and();
  StatusOr<ExprPtr> parse_not();
  StatusOr<ExprPtr> parse_compare();
  StatusOr<ExprPtr> parse_math1();
  StatusOr<ExprPtr> parse_concat();
  StatusOr<ExprPtr> parse_math2();
  StatusOr<ExprPtr> parse_pow();
  StatusOr<ExprPtr> parse_unary_filtered();
  StatusOr<ExprPtr> parse_unary(bool with_filter);
  StatusOr<ExprPtr> parse_primary();
  StatusOr<ExprPtr> parse_list_or_dict();
  StatusOr<ExprPtr> parse_postfix(ExprPtr node);
  StatusOr<ExprPtr> parse_filter_expr(ExprPtr node);
  StatusOr<ExprPtr> parse_subscript(ExprPtr node);
  Status parse_call_args(Expr* call);
  StatusOr<ExprPtr> parse_call(ExprPtr callee);
  StatusOr<ExprPtr> parse_filter_call(ExprPtr subject);  // a filter name (after "|") and its arguments
  StatusOr<ExprPtr> parse_test(ExprPtr subject);

  std::vector<Token> toks_;
  size_t i_ = 0;
  int loop_depth_ = 0;
  int nesting_ = 0;  // open expressions and blocks (kMaxNesting)
  Status enter(int line);  // counts one level in; Nest leaves it
  struct Nest {
    Parser* p;
    ~Nest() { --p->nesting_; }
  };
  // The links of a left-deep chain (a + b + c, x.y.z, v|f|g), each a level until the chain ends.
  struct Chain {
    Parser* p;
    int links = 0;
    Status link(int line) {
      SHOAL_RETURN_IF_ERROR(p->enter(line));
      ++links;
      return {};
    }
    ~Chain() { p->nesting_ -= links; }
  };
};

ExprPtr make_expr(Expr::Kind kind, int line);
NodePtr make_node(Node::Kind kind, int line);
std::string describe(const Token& t);  // a token as an error message names it

}  // namespace shoal::jinja
