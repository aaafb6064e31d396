// A JSON file that must hold one object (adapter_config.json, a config given to synth).
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/status.h"

namespace shoal {

// The object in `path`; not found when it cannot be opened, invalid argument (naming the file)
// when it is not JSON or not an object.
StatusOr<nlohmann::json> read_json_object(const std::filesystem::path& path);

}  // namespace shoal
