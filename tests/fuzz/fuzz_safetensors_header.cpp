// libFuzzer target: safetensors headers and whole files.
// Each input is used twice:
//   1. as the JSON header text, parsed by parse_safetensors_header against a 1 MiB data section;
//   2. as a complete file (u64 length, header, data), written to a memfd and opened with
//      SafetensorsFile::open, after which every tensor's first and last byte is read.
// Whatever parses must satisfy the header's promises: ranges inside the data, byte counts equal
// to dtype x shape, no two non-empty ranges overlapping. A violation aborts (a finding).
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "model/safetensors.h"

namespace {

using shoal::TensorInfo;

void expect(bool ok, const char* what, const TensorInfo& t) {
  if (ok) return;
  std::fprintf(stderr, "invariant broken: %s (tensor '%s' %s [%llu, %llu))\n", what, t.name.c_str(),
               t.shape_string().c_str(), (unsigned long long)t.begin, (unsigned long long)t.end);
  std::abort();
}

void check_tensors(const std::vector<TensorInfo>& tensors, uint64_t data_size) {
  std::vector<const TensorInfo*> nonempty;
  for (const TensorInfo& t : tensors) {
    expect(t.begin <= t.end, "begin <= end", t);
    expect(t.end <= data_size, "range inside the data", t);
    int64_t numel = 1;
    for (int64_t d : t.shape) {
      expect(d >= 0, "non-negative dims", t);
      numel *= d;  // bounded by the parser's 2^48 guard; UBSan reports an overflow here
    }
    expect(t.end - t.begin == uint64_t(numel) * uint64_t(shoal::dtype_bytes(t.dtype)), "bytes == dtype x shape", t);
    if (t.begin != t.end) nonempty.push_back(&t);
  }
  std::sort(nonempty.begin(), nonempty.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < nonempty.size(); ++i) expect(nonempty[i - 1]->end <= nonempty[i]->begin, "no overlap", *nonempty[i]);
}

// One memfd for the whole run, rewritten per input; opened by path through /proc/self/fd.
// Falls back to a temp file where memfd_create or /proc is unavailable.
struct Backing {
  int fd = -1;
  std::string path;
  Backing() {
    fd = memfd_create("fuzz.safetensors", MFD_CLOEXEC);
    if (fd >= 0) {
      path = "/proc/self/fd/" + std::to_string(fd);
      if (access(path.c_str(), R_OK) == 0) return;
      close(fd);
    }
    char tmpl[] = "/tmp/fuzz-safetensors-XXXXXX";
    fd = mkstemp(tmpl);
    if (fd < 0) { std::perror("mkstemp"); std::abort(); }
    path = tmpl;
  }
  ~Backing() {
    if (path.rfind("/proc/", 0) != 0) unlink(path.c_str());
    close(fd);
  }
  void write(const uint8_t* data, size_t size) {
    if (ftruncate(fd, 0) != 0) { std::perror("ftruncate"); std::abort(); }
    size_t done = 0;
    while (done < size) {
      const ssize_t n = pwrite(fd, data + done, size - done, off_t(done));
      if (n <= 0) { std::perror("pwrite"); std::abort(); }
      done += size_t(n);
    }
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // 1. The bytes as header text.
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  constexpr uint64_t kData = 1u << 20;
  auto parsed = shoal::parse_safetensors_header(text, kData);
  if (parsed.ok()) check_tensors(*parsed, kData);
  else if (parsed.status().message().empty()) std::abort();  // every error says something

  // 2. The bytes as a whole file.
  static Backing backing;
  backing.write(data, size);
  auto file = shoal::SafetensorsFile::open(backing.path);
  if (!file.ok()) {
    if (file.status().message().find(backing.path) == std::string::npos) std::abort();  // names the file
    return 0;
  }
  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= uint64_t(data[i]) << (8 * i);
  const uint64_t data_size = size - 8 - header_len;
  check_tensors((*file)->tensors(), data_size);
  unsigned sum = 0;
  for (const TensorInfo& t : (*file)->tensors()) {
    if (t.begin == t.end) continue;
    const auto* p = reinterpret_cast<const volatile uint8_t*>((*file)->data(t));
    sum += p[0] + p[t.end - t.begin - 1];
    if ((*file)->find(t.name) != &t) std::abort();
  }
  (void)sum;
  return 0;
}
