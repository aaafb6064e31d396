#include "node/units.h"

#include <openssl/evp.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>

#include "model/tensor_names.h"

namespace shoal {
namespace {

bool hosts(const cluster::Plan& plan, const TensorSpec& t, int rank) {
  switch (t.unit) {
    case Unit::kEmbed: return plan.embed == rank;
    case Unit::kHead: return plan.head == rank;
    case Unit::kAttn: return plan.attn[size_t(t.layer)] == rank;
    case Unit::kExpert: return plan.experts[size_t(t.layer)][size_t(t.expert)] == rank;
    case Unit::kMtp: return false;
  }
  return false;
}

// SHA-256 over what `feed` adds, as hex.
StatusOr<std::string> sha256_hex(const std::function<void(const std::function<void(const void*, size_t)>&)>& feed) {
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> md(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!md || EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr) != 1) return internal_error("SHA-256 is unavailable");
  feed([&](const void* p, size_t n) { EVP_DigestUpdate(md.get(), p, n); });
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(md.get(), digest, &len);
  std::string hex;
  char buf[3];
  for (unsigned int i = 0; i < len; ++i) {
    std::snprintf(buf, sizeof buf, "%02x", digest[i]);
    hex += buf;
  }
  return hex;
}

}  // namespace

std::vector<std::string> hosted_tensors(Checkpoint& ck, const cluster::Plan& plan, int rank) {
  const ModelConfig& c = ck.config();
  std::vector<std::string> out;
  for (const TensorSpec& t : model_tensors(c, /*with_mtp=*/false)) {
    if (!hosts(plan, t, rank)) continue;
    out.push_back(t.name);
    if (ck.has(names::scale_inv(t.name))) out.push_back(names::scale_inv(t.name));
  }
  // A tied lm_head is the embedding: the head rank reads it too.
  if (c.tie_word_embeddings && plan.head == rank && plan.embed != rank) out.push_back(names::embed());
  return out;
}

StatusOr<std::string> weights_fingerprint(Checkpoint& ck, const std::vector<std::string>& names) {
  constexpr uint64_t kSample = 4096;
  std::vector<TensorRef> refs;
  for (const std::string& name : names) {
    SHOAL_ASSIGN_OR_RETURN(TensorRef t, ck.mapped_tensor(name));  // a sample: never a copy
    refs.push_back(t);
  }
  return sha256_hex([&](const auto& add) {
    for (size_t i = 0; i < refs.size(); ++i) {
      const TensorRef& t = refs[i];
      const uint64_t bytes = t.info->end - t.info->begin;
      std::ostringstream meta;
      meta << names[i] << '|' << dtype_name(t.info->dtype) << '|' << t.info->shape_string() << '|' << bytes << '\n';
      const std::string m = meta.str();
      add(m.data(), m.size());
      add(t.data, size_t(std::min(bytes, kSample)));
      if (bytes > kSample) add(t.data + (bytes - kSample), size_t(kSample));
    }
  });
}

StatusOr<std::string> lora_fingerprint(const LoraAdapter& lora, const std::vector<std::string>& names) {
  return sha256_hex([&](const auto& add) {
    const std::string mode = !lora.merge ? "unmerged\n" : lora.merge_into == MergeInto::kF32 ? "merged\n" : "merged-stored\n";
    add(mode.data(), mode.size());
    for (const std::string& name : names) {
      const LoraModule* m = lora.find(name);
      if (!m) continue;
      std::ostringstream meta;
      meta << name << '|' << m->rank << '|' << m->scale << '|' << dtype_name(m->a.dtype) << '|' << dtype_name(m->b.dtype) << '\n';
      const std::string s = meta.str();
      add(s.data(), s.size());
      add(m->a.data, size_t(m->a.rows * dtype_row_bytes(m->a.dtype, m->a.cols)));
      add(m->b.data, size_t(m->b.rows * dtype_row_bytes(m->b.dtype, m->b.cols)));
    }
  });
}

int64_t resident_bytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return 0;
}

int64_t resident_checkpoint_bytes() {
  std::ifstream in("/proc/self/smaps");
  std::string line;
  bool checkpoint = false;
  int64_t total = 0;
  const std::string suffix = ".safetensors";
  while (std::getline(in, line)) {
    if (!line.empty() && std::isxdigit(static_cast<unsigned char>(line[0])) && line.find('-') != std::string::npos &&
        line.find(':') > line.find(' ')) {  // a mapping's header line: "start-end perms offset dev inode path"
      checkpoint = line.size() >= suffix.size() && line.compare(line.size() - suffix.size(), suffix.size(), suffix) == 0;
    } else if (checkpoint && line.rfind("Rss:", 0) == 0) {
      total += std::stoll(line.substr(4)) * 1024;
    }
  }
  return total;
}

// A limit file's value in bytes; -1 when absent, unreadable or "max".
static int64_t limit_in(const std::string& path) {
  std::ifstream in(path);
  std::string word;
  if (!(in >> word) || word == "max") return -1;
  char* end = nullptr;
  const long long v = std::strtoll(word.c_str(), &end, 10);
  return end != word.c_str() && *end == '\0' && v > 0 ? int64_t(v) : -1;
}

int64_t memory_capacity_bytes() {
  if (const char* test = std::getenv("SHOAL_TEST_MEMORY_BYTES"); test && *test) return std::atoll(test);
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  int64_t cap = pages > 0 && page > 0 ? int64_t(pages) * int64_t(page) : 0;
  auto lower = [&](int64_t limit) {
    if (limit > 0 && (cap == 0 || limit < cap)) cap = limit;
  };
  std::ifstream groups("/proc/self/cgroup");
  std::string line;
  while (std::getline(groups, line)) {
    if (line.rfind("0::", 0) == 0) {  // cgroup v2: this group's memory.max and each parent's
      for (std::string dir = line.substr(3); !dir.empty(); dir = dir.substr(0, dir.rfind('/'))) {
        lower(limit_in("/sys/fs/cgroup" + dir + "/memory.max"));
        if (dir == "/") break;
      }
    }
  }
  lower(limit_in("/sys/fs/cgroup/memory/memory.limit_in_bytes"));  // cgroup v1 (unlimited: a huge number)
  return cap;
}

}  // namespace shoal
