// Poison: the first error of a transport. Once set, every call of that transport returns it
// at once (transport.h, "Poisoning"). Shared by every implementation.
#pragma once

#include <mutex>
#include <utility>

#include "common/status.h"

namespace shoal::comm {

class Poison {
 public:
  // Ok until poisoned, then the first error.
  Status get() const {
    std::lock_guard<std::mutex> lock(mu_);
    return first_;
  }
  // Records `error` unless an earlier one is recorded; returns the one that counts.
  Status set(Status error) {
    std::lock_guard<std::mutex> lock(mu_);
    if (first_.ok()) first_ = std::move(error);
    return first_;
  }

 private:
  mutable std::mutex mu_;
  Status first_;
};

}  // namespace shoal::comm
