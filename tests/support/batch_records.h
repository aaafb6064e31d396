// Comparing `shoal batch` output records between runs (tests/test_batch.cpp, tests/test_slurm.cpp).
#pragma once

#include <nlohmann/json.hpp>

namespace shoal::test {

// A record without what differs between runs of the same request: ids and timestamps.
inline nlohmann::json comparable(nlohmann::json r) {
  r.erase("id");
  if (r["response"].is_object()) {
    r["response"].erase("request_id");
    r["response"]["body"].erase("id");
    r["response"]["body"].erase("created");
  }
  return r;
}

}  // namespace shoal::test
