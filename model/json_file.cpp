#include "model/json_file.h"

#include <fstream>
#include <sstream>

namespace shoal {

StatusOr<nlohmann::json> read_json_object(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found("cannot open " + path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return invalid_argument(path.string() + " is not a JSON object");
  return j;
}

}  // namespace shoal
