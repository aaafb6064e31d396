#include "model/weight_copies.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>

namespace shoal {
namespace {

constexpr size_t kChunk = size_t(1) << 30;  // reserved at a time; only the pages written are resident
constexpr size_t kAlign = 64;               // a cache line: the kernels' vector loads never split one
constexpr size_t kHugePage = size_t(2) << 20;

}  // namespace

WeightCopies::~WeightCopies() {
  for (const Chunk& c : chunks_) ::munmap(c.base, c.size);
}

size_t WeightCopies::bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_;
}

StatusOr<std::byte*> WeightCopies::allocate(size_t n) {
  const size_t need = (n + kAlign - 1) / kAlign * kAlign;
  if (chunks_.empty() || chunks_.back().size - chunks_.back().used < need) {
    const size_t size = std::max(kChunk, (need + kHugePage - 1) / kHugePage * kHugePage);
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
      return Status(Code::kResourceExhausted,
                    "cannot reserve " + std::to_string(size) + " bytes for weights: " + std::strerror(errno));
    ::madvise(p, size, MADV_HUGEPAGE);  // best effort: small pages still work
    chunks_.push_back({static_cast<std::byte*>(p), size, 0});
  }
  Chunk& c = chunks_.back();
  std::byte* out = c.base + c.used;
  c.used += need;
  return out;
}

StatusOr<const std::byte*> WeightCopies::get(const std::string& name, const std::byte* src, size_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = by_name_.find(name); it != by_name_.end()) return it->second;
  SHOAL_ASSIGN_OR_RETURN(std::byte* dst, allocate(std::max<size_t>(n, 1)));
  std::memcpy(dst, src, n);
  // The file's pages wholly inside the tensor leave this process (the page cache keeps them).
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (uintptr_t(src) + page - 1) & ~(page - 1);
  const uintptr_t end = (uintptr_t(src) + n) & ~(page - 1);
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
  by_name_.emplace(name, dst);
  bytes_ += n;
  return dst;
}

}  // namespace shoal
