// What a rank hosts under a plan, in checkpoint terms: the tensor names of its units, their
// fingerprint (for the hello), and the process's memory as the kernel counts it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cluster/plan.h"
#include "model/checkpoint.h"
#include "model/lora.h"

namespace shoal {

// Names of every tensor (block scales included) of the units `rank` hosts, in table order.
std::vector<std::string> hosted_tensors(Checkpoint& ck, const cluster::Plan& plan, int rank);

// SHA-256 (hex) over each tensor's name, dtype, shape and byte size and its first and last
// 4 KiB: two checkpoints that differ in any of these, or in seeded random data, differ here.
StatusOr<std::string> weights_fingerprint(Checkpoint& ck, const std::vector<std::string>& names);

// SHA-256 (hex) of the adapter's terms on the weights `names` (module, scale, A and B whole) and
// whether it is merged: two ranks with another adapter, or another copy of it, differ here.
StatusOr<std::string> lora_fingerprint(const LoraAdapter& lora, const std::vector<std::string>& names);

// Resident memory of this process (VmRSS), and the part of it that maps files whose name ends
// in ".safetensors" (summed Rss of those mappings in /proc/self/smaps). 0 when unreadable.
int64_t resident_bytes();
int64_t resident_checkpoint_bytes();

// The memory this process may use: MemTotal, or the limit of its cgroup (v2 memory.max up the
// hierarchy, v1 memory.limit_in_bytes) when lower; what --kv-memory's fractions are of. The
// environment variable SHOAL_TEST_MEMORY_BYTES replaces it (tests of the sizing).
int64_t memory_capacity_bytes();

}  // namespace shoal
