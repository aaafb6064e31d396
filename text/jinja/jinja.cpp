#include "text/jinja/jinja.h"

#include "common/json_nesting.h"
#include "text/jinja/ast.h"
#include "text/jinja/eval.h"
#include "text/jinja/limits.h"

namespace shoal::jinja {
namespace {

template <typename Json>
StatusOr<std::string> render_with(const Node* root, const Json& context, RenderLimits limits) {
  if (!root) return internal_error("chat template: render before parse");
  if (!context.is_object()) return invalid_argument("chat template context must be a JSON object");
  if (json_nesting(context, kMaxJsonNesting) > kMaxJsonNesting)
    return invalid_argument("the chat template's variables nest more than " + std::to_string(kMaxJsonNesting) +
                            " levels deep");
  Value vars = Value::from_json(context);
  return Renderer(vars.dict(), limits).render(*root);
}

}  // namespace

StatusOr<Template> Template::parse(const std::string& source) {
  SHOAL_ASSIGN_OR_RETURN(std::shared_ptr<const Node> root, parse_template(source));
  Template t;
  t.root_ = std::move(root);
  return t;
}

StatusOr<std::string> Template::render(const nlohmann::json& context, RenderLimits limits) const {
  return render_with(root_.get(), context, limits);
}

StatusOr<std::string> Template::render(const nlohmann::ordered_json& context, RenderLimits limits) const {
  return render_with(root_.get(), context, limits);
}

}  // namespace shoal::jinja
