#include "coordinator/jinja/jinja.h"

#include "coordinator/jinja/ast.h"
#include "coordinator/jinja/eval.h"

namespace shoal::jinja {

StatusOr<Template> Template::parse(const std::string& source) {
  SHOAL_ASSIGN_OR_RETURN(std::shared_ptr<const Node> root, parse_template(source));
  Template t;
  t.root_ = std::move(root);
  return t;
}

StatusOr<std::string> Template::render(const nlohmann::json& context) const {
  if (!context.is_object()) return invalid_argument("chat template context must be a JSON object");
  Value vars = Value::from_json(context);
  return Renderer(vars.dict()).render(*root_);
}

StatusOr<std::string> Template::render(const nlohmann::ordered_json& context) const {
  if (!context.is_object()) return invalid_argument("chat template context must be a JSON object");
  Value vars = Value::from_json(context);
  return Renderer(vars.dict()).render(*root_);
}

}  // namespace shoal::jinja
