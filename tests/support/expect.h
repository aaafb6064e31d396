// Small checks shared by the library-level tests: a StatusOr that must fail with a message
// naming given parts, and a fixture's config that must load.
#pragma once

#include <catch2/catch.hpp>
#include <filesystem>
#include <string>
#include <vector>

#include "common/status.h"
#include "model/config.h"

namespace shoal::test {

template <class T>
void expect_error(const StatusOr<T>& r, const std::vector<std::string>& parts) {
  REQUIRE_FALSE(r.ok());
  INFO(r.status().message());
  for (const std::string& p : parts) CHECK(r.status().message().find(p) != std::string::npos);
}

inline ModelConfig config_of(const std::filesystem::path& model) {
  auto c = load_config(model);
  REQUIRE(c.ok());
  return *c;
}

}  // namespace shoal::test
