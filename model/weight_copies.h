// Copies of weight tensors in this process's own memory: anonymous mappings with transparent
// huge pages, filled once from the memory-mapped file. Used by `--no-mmap` (Checkpoint::
// set_copy_weights): on virtual machines whose hypervisor backs file-mapped guest pages with
// small pages, streaming weights out of the page cache runs at a fraction of the speed of
// anonymous memory (docs/performance.md, "Mapped or copied weights").
#pragma once

#include <cstddef>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/status.h"

namespace shoal {

class WeightCopies {
 public:
  WeightCopies() = default;
  WeightCopies(const WeightCopies&) = delete;
  WeightCopies& operator=(const WeightCopies&) = delete;
  ~WeightCopies();

  // The copy of the `n` bytes at `src` kept under `name`: made on the first call (and the
  // source's whole pages dropped from this process's page tables), returned as is afterwards.
  StatusOr<const std::byte*> get(const std::string& name, const std::byte* src, size_t n);
  // Bytes copied so far.
  size_t bytes() const;

 private:
  struct Chunk {
    std::byte* base = nullptr;
    size_t size = 0, used = 0;
  };
  StatusOr<std::byte*> allocate(size_t n);

  mutable std::mutex mu_;
  std::vector<Chunk> chunks_;
  std::unordered_map<std::string, const std::byte*> by_name_;
  size_t bytes_ = 0;
};

}  // namespace shoal
