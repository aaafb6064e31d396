// libFuzzer target: GGUF images (model/gguf.h).
// Each input is used twice:
//   1. as a file image in memory, parsed by parse_gguf;
//   2. as a file on a memfd, opened with GgufFile::open (every tensor's first and last byte
//      read) and GgufModel::open, then, when it is a deepseek2 model, gguf_model_config and
//      gguf_hf_tensors (model/gguf_checkpoint.h) for configs whose tensor table is not huge.
// Whatever parses must keep the reader's promises: 1 <= n_dims <= 4, ne[0] a whole number of
// the type's blocks, bytes == ne[0] / block x block bytes x rows, offsets at the alignment (a
// power of two), every tensor inside the data section, no two non-empty tensors overlapping,
// names unique. Errors must say something. A violation aborts (a finding).
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "model/gguf.h"
#include "model/gguf_checkpoint.h"

namespace {

using shoal::GgufHeader;
using shoal::GgufTensor;

void expect(bool ok, const char* what, const GgufTensor* t = nullptr) {
  if (ok) return;
  if (t)
    std::fprintf(stderr, "invariant broken: %s (tensor '%s', %zu dims, offset %llu, %llu bytes)\n", what,
                 t->name.c_str(), t->ne.size(), (unsigned long long)t->offset, (unsigned long long)t->bytes);
  else
    std::fprintf(stderr, "invariant broken: %s\n", what);
  std::abort();
}

void check_header(const GgufHeader& h, uint64_t size) {
  expect(h.version == 2 || h.version == 3, "version 2 or 3");
  expect(h.alignment > 0 && (h.alignment & (h.alignment - 1)) == 0, "alignment a power of two");
  expect(h.data_offset % h.alignment == 0, "data section at the alignment");
  expect(h.tensors.empty() || h.data_offset <= size, "data section inside the file");
  const uint64_t data_size = size > h.data_offset ? size - h.data_offset : 0;
  std::set<std::string> names;
  std::vector<const GgufTensor*> nonempty;
  for (const GgufTensor& t : h.tensors) {
    expect(!t.ne.empty() && t.ne.size() <= 4, "1 <= n_dims <= 4", &t);
    expect(names.insert(t.name).second, "unique names", &t);
    const int64_t block = shoal::dtype_block(t.dtype);
    expect(t.ne[0] >= 0 && t.ne[0] % block == 0, "ne[0] a multiple of the block", &t);
    uint64_t rows = 1;
    for (size_t d = 0; d < t.ne.size(); ++d) {
      expect(t.ne[d] >= 0, "non-negative ne", &t);
      if (d > 0) rows *= uint64_t(t.ne[d]);  // bounded by the reader's 2^48 guard; UBSan reports an overflow
    }
    expect(t.rows() == int64_t(rows), "rows() == product of ne[1..]", &t);
    expect(t.bytes == uint64_t(t.ne[0] / block) * uint64_t(shoal::dtype_bytes(t.dtype)) * rows, "bytes == blocks x rows", &t);
    expect(t.offset % h.alignment == 0, "offset at the alignment", &t);
    expect(t.offset <= data_size && t.bytes <= data_size - t.offset, "tensor inside the data", &t);
    expect(t.shape().size() == t.ne.size(), "shape() has n_dims axes", &t);
    if (t.bytes > 0) nonempty.push_back(&t);
  }
  std::sort(nonempty.begin(), nonempty.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < nonempty.size(); ++i)
    expect(nonempty[i - 1]->offset + nonempty[i - 1]->bytes <= nonempty[i]->offset, "no overlap", nonempty[i]);
  std::set<std::string> keys;
  for (const auto& [k, v] : h.kv) {
    expect(keys.insert(k).second, "unique keys");
    expect(h.find(k) == &v, "find() returns the first value of a key");
    expect(!v.describe().empty(), "describe() says something");
  }
}

// One memfd for the whole run, rewritten per input; opened by path through /proc/self/fd.
struct Backing {
  int fd = -1;
  std::string path;
  Backing() {
    fd = memfd_create("fuzz.gguf", MFD_CLOEXEC);
    if (fd >= 0) {
      path = "/proc/self/fd/" + std::to_string(fd);
      if (access(path.c_str(), R_OK) == 0) return;
      close(fd);
    }
    char tmpl[] = "/tmp/fuzz-gguf-XXXXXX";
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
  // 1. The bytes as a file image.
  auto parsed = shoal::parse_gguf(reinterpret_cast<const std::byte*>(data), size);
  if (parsed.ok()) check_header(*parsed, size);
  else if (parsed.status().message().empty()) std::abort();  // every error says something

  // 2. The bytes as a file (only when the image parses: the file adds the mapping and the model).
  if (!parsed.ok() || size == 0) return 0;
  static Backing backing;
  backing.write(data, size);
  auto file = shoal::GgufFile::open(backing.path);
  expect(file.ok(), "a file whose image parses opens");
  check_header((*file)->header(), (*file)->size());
  unsigned sum = 0;
  for (const GgufTensor& t : (*file)->header().tensors) {
    if (t.bytes == 0) continue;
    const auto* p = reinterpret_cast<const volatile uint8_t*>((*file)->data(t));
    sum += p[0] + p[t.bytes - 1];
  }
  (void)sum;
  auto model = shoal::GgufModel::open(backing.path);
  if (!model.ok()) {
    if (model.status().message().empty()) std::abort();
    return 0;
  }
  for (const GgufTensor& t : (*model)->meta().tensors) {
    const auto loc = (*model)->find(t.name);
    expect(loc.has_value() && loc->tensor == &t, "find() gives each tensor", &t);
  }
  auto config = shoal::gguf_model_config(**model);
  if (!config.ok()) {
    if (config.status().message().empty()) std::abort();
    return 0;
  }
  // gguf_hf_tensors lists the config's whole tensor table first (model/tensor_names.h), so a
  // metadata of a few hundred bytes naming 2^31 experts or blocks runs out of memory before the
  // first missing tensor is reported (found by this target; not a memory error). Tables here stay
  // within DeepSeek-V3's size (61 x (3 x 256 + 32) = 48,800 entries).
  const int64_t table = config->n_layers * (3 * config->n_routed_experts + 32);
  if (config->n_layers > 4096 || config->n_routed_experts > 4096 || table > (int64_t(1) << 16)) return 0;
  auto views = shoal::gguf_hf_tensors(**model, *config);
  if (!views.ok()) {
    if (views.status().message().empty()) std::abort();
    return 0;
  }
  for (const auto& [name, v] : *views) {
    expect(v.info.begin <= v.info.end, "view begin <= end");
    const uint64_t n = v.info.end - v.info.begin;
    if (n == 0) continue;
    const auto* p = reinterpret_cast<const volatile uint8_t*>(v.data);
    sum += p[0] + p[n - 1];  // ASan reports a view outside the mapping
  }
  return 0;
}
