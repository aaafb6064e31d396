#include "model/synth.h"

#include "model/default_config.h"
#include "model/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "common/dtype.h"
#include "model/tensor_names.h"

namespace shoal {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// ---- config ---------------------------------------------------------------------------------

StatusOr<json> read_json(const fs::path& path) {
  fs::path file = path;
  std::error_code ec;
  if (fs::is_directory(path, ec)) file = path / "config.json";
  std::ifstream in(file, std::ios::binary);
  if (!in) return not_found("cannot open " + file.string());
  std::stringstream ss;
  ss << in.rdbuf();
  json j = json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return invalid_argument(file.string() + ": not a JSON object");
  return j;
}

// The input config with synth's edits: layer count, MTP layers, the tokenizer's vocab_size and
// BOS/EOS ids, and the quantization_config that says how the weights are stored.
void edit_config(json& j, const SynthOptions& o) {
  if (o.layers > 0) j["num_hidden_layers"] = o.layers;
  if (!o.tokenizer.empty()) {
    j["vocab_size"] = o.vocab_size;
    const std::pair<const char*, int64_t> ids[] = {{"bos_token_id", o.bos_token_id}, {"eos_token_id", o.eos_token_id}};
    for (const auto& [key, id] : ids) {
      if (id >= 0) j[key] = id;
      else j.erase(key);
    }
  }
  if (!o.mtp && j.contains("num_nextn_predict_layers")) j["num_nextn_predict_layers"] = 0;
  if (o.fp8) {
    j["quantization_config"] = {{"activation_scheme", "dynamic"},
                                {"fmt", "e4m3"},
                                {"quant_method", "fp8"},
                                {"weight_block_size", {128, 128}}};
  } else {
    j.erase("quantization_config");
  }
}

// ---- random values --------------------------------------------------------------------------

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

uint64_t mix64(uint64_t z) {  // splitmix64's finaliser
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t name_hash(const std::string& s) {  // FNV-1a
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001B3ull;
  return h;
}

// Uniform in [center - half_width, center + half_width).
struct Init {
  float center = 0, half_width = 0;
};

// One row: splitmix64's sequence from the row's own seed, written so the loop vectorises.
void random_row(float* out, int64_t n, uint64_t row_seed, Init init) {
  const float scale = init.half_width * 0x1p-23f;
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t z = mix64(row_seed + uint64_t(i + 1) * kGolden);
    out[i] = init.center + (float(int32_t(z >> 40)) - 0x1p23f) * scale;
  }
}

// The one vector that is not a norm weight, and the one tensor the release keeps in F32. The
// tensor table has no role field, so the last part of its name tells it apart.
constexpr char kRouterBiasSuffix[] = "e_score_correction_bias";

Init init_for(const TensorSpec& t) {
  if (t.shape.size() == 1) {
    if (t.name.ends_with(kRouterBiasSuffix)) return {0.0f, 0.05f};
    return {1.0f, 0.1f};  // norm weights
  }
  if (t.unit == Unit::kEmbed) return {0.0f, std::sqrt(3.0f)};  // std 1
  return {0.0f, std::sqrt(3.0f / float(t.shape[1]))};         // std 1/sqrt(fan_in)
}

DType dtype_for(const TensorSpec& t, bool fp8) {
  if (fp8 && t.quantized) return DType::kF8E4M3;
  if (t.name.ends_with(kRouterBiasSuffix)) return DType::kF32;
  return DType::kBF16;
}

// ---- layout ---------------------------------------------------------------------------------

struct Entry : TensorSlot {  // offset: of its data in the shard file
  int64_t shard = 0;
};

std::vector<Entry> plan_entries(const std::vector<TensorSpec>& specs, const ModelConfig& c) {
  std::vector<Entry> out;
  for (const TensorSpec& t : specs) {
    const DType d = dtype_for(t, c.fp8);
    out.push_back({{t.name, d, t.shape, uint64_t(t.numel() * dtype_bytes(d))}});
    if (d != DType::kF8E4M3) continue;
    const int64_t b = c.fp8_block;
    std::vector<int64_t> s{(t.shape[0] + b - 1) / b, (t.shape[1] + b - 1) / b};
    out.push_back({{names::scale_inv(t.name), DType::kF32, s, uint64_t(s[0] * s[1] * 4)}});
  }
  return out;
}

// Hugging Face's split_torch_state_dict_into_shards: tensors in order; a new shard starts when
// the next tensor would pass the limit; a tensor over the limit gets a shard of its own, listed
// before the shard being filled. Sets each entry's shard; returns the number of shards.
int64_t assign_shards(std::vector<Entry>& entries, uint64_t limit) {
  std::vector<std::vector<Entry*>> shards;
  std::vector<Entry*> current;
  uint64_t size = 0;
  for (Entry& e : entries) {
    if (e.bytes > limit) {
      shards.push_back({&e});
      continue;
    }
    if (!current.empty() && size + e.bytes > limit) {
      shards.push_back(std::move(current));
      current.clear();
      size = 0;
    }
    current.push_back(&e);
    size += e.bytes;
  }
  if (!current.empty()) shards.push_back(std::move(current));
  for (size_t k = 0; k < shards.size(); ++k)
    for (Entry* e : shards[k]) e->shard = int64_t(k);
  return int64_t(shards.size());
}

std::string shard_name(int64_t k, int64_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05lld-of-%05lld.safetensors", (long long)k + 1, (long long)n);
  return buf;
}

// Lays out one shard as the safetensors writer does (data by dtype width, then name), sets the
// entries' offsets and returns the padded header text.
std::string layout_shard(std::vector<Entry*> entries) {
  std::sort(entries.begin(), entries.end(), [](const Entry* a, const Entry* b) {
    const int64_t wa = dtype_bytes(a->dtype), wb = dtype_bytes(b->dtype);
    return wa != wb ? wa > wb : a->name < b->name;
  });
  return safetensors_header(std::vector<TensorSlot*>(entries.begin(), entries.end()));
}

// ---- files ----------------------------------------------------------------------------------

Status pwrite_all(int fd, const void* data, uint64_t n, uint64_t offset, const fs::path& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, p, n, off_t(offset));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return internal_error("write failed: " + path.string() + ": " + std::strerror(errno));
    p += w, n -= uint64_t(w), offset += uint64_t(w);
  }
  return {};
}

Status write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out) return internal_error("cannot write " + path.string());
  return {};
}

// The tokenizer files synth requires are there (checked before anything is written).
Status check_tokenizer_files(const fs::path& dir) {
  for (size_t k = 0; k < 2; ++k) {
    const fs::path file = dir / kSynthTokenizerFiles[k];
    std::error_code ec;
    if (!fs::is_regular_file(file, ec)) return not_found("tokenizer file not found: " + file.string());
  }
  return {};
}

// Copies the tokenizer's files byte for byte, the optional one only when present.
Status copy_tokenizer_files(const fs::path& dir, const fs::path& out) {
  for (const char* name : kSynthTokenizerFiles) {
    std::error_code ec;
    const fs::path from = dir / name;
    if (!fs::exists(from, ec)) continue;  // check_tokenizer_files has checked the required ones
    if (fs::equivalent(from, out / name, ec)) continue;  // synthesizing into the tokenizer's folder
    if (!fs::copy_file(from, out / name, fs::copy_options::overwrite_existing, ec) || ec)
      return internal_error("cannot copy " + from.string() + " to " + (out / name).string() + ": " + ec.message());
  }
  return {};
}

// The shard files, opened while tensors are being written into them.
class ShardFiles {
 public:
  ShardFiles(fs::path dir, std::vector<std::string> names) : dir_(std::move(dir)), names_(std::move(names)) {}
  ~ShardFiles() {
    for (auto& [k, fd] : fds_) ::close(fd);
  }

  Status create(int64_t k, const std::string& header, uint64_t data_bytes) {
    SHOAL_ASSIGN_OR_RETURN(int fd, fd_of(k, O_CREAT | O_TRUNC));
    const uint64_t len = header.size();
    SHOAL_RETURN_IF_ERROR(pwrite_all(fd, &len, 8, 0, path(k)));
    SHOAL_RETURN_IF_ERROR(pwrite_all(fd, header.data(), len, 8, path(k)));
    if (::ftruncate(fd, off_t(8 + len + data_bytes)) != 0)
      return internal_error("cannot size " + path(k).string() + ": " + std::strerror(errno));
    return close(k);
  }
  Status write(const Entry& e, uint64_t at, const void* data, uint64_t n) {
    SHOAL_ASSIGN_OR_RETURN(int fd, fd_of(e.shard, 0));
    return pwrite_all(fd, data, n, e.offset + at, path(e.shard));
  }
  Status close(int64_t k) {
    auto it = fds_.find(k);
    if (it == fds_.end()) return {};
    const int rc = ::close(it->second);
    fds_.erase(it);
    if (rc != 0) return internal_error("write failed: " + path(k).string() + ": " + std::strerror(errno));
    return {};
  }

 private:
  fs::path path(int64_t k) const { return dir_ / names_[size_t(k)]; }
  StatusOr<int> fd_of(int64_t k, int flags) {
    auto it = fds_.find(k);
    if (it != fds_.end()) return it->second;
    const int fd = ::open(path(k).c_str(), O_WRONLY | O_CLOEXEC | flags, 0644);
    if (fd < 0) return not_found("cannot write " + path(k).string() + ": " + std::strerror(errno));
    fds_.emplace(k, fd);
    return fd;
  }

  fs::path dir_;
  std::vector<std::string> names_;
  std::map<int64_t, int> fds_;
};

// ---- tensors --------------------------------------------------------------------------------

struct TensorJob {
  const TensorSpec* spec;
  const Entry* entry;
  const Entry* scale = nullptr;  // its _scale_inv, fp8 only
  uint64_t seed = 0;             // of this tensor
  int64_t block = 128;
};

void random_rows(float* out, const TensorJob& job, int64_t row0, int64_t rows, int64_t cols) {
  const Init init = init_for(*job.spec);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    random_row(out + r * cols, cols, mix64(job.seed ^ mix64(uint64_t(row0 + r))), init);
}

// Converts rows of float values to the entry's stored bytes and writes them at row row0.
Status store_rows(ShardFiles& files, const TensorJob& job, std::vector<float>& w, int64_t row0, int64_t rows,
                  int64_t cols, std::vector<float>& scales) {
  const int64_t n = rows * cols;
  const uint64_t at = uint64_t(row0 * cols * dtype_bytes(job.entry->dtype));
  if (job.entry->dtype == DType::kF32) return files.write(*job.entry, at, w.data(), uint64_t(n) * 4);
  if (job.entry->dtype == DType::kBF16) {
    std::vector<uint16_t> h(static_cast<size_t>(n));
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) h[size_t(i)] = float_to_bf16(w[size_t(i)]);
    return files.write(*job.entry, at, h.data(), uint64_t(n) * 2);
  }
  std::vector<uint8_t> q(static_cast<size_t>(n));
  const int64_t scale_cols = (cols + job.block - 1) / job.block;
  quantize_fp8_blocks(q.data(), scales.data() + row0 / job.block * scale_cols, w.data(), rows, cols, job.block);
  return files.write(*job.entry, at, q.data(), uint64_t(n));
}

Status write_tensor(ShardFiles& files, const TensorJob& job) {
  const TensorSpec& t = *job.spec;
  const int64_t rows = t.shape.size() == 1 ? 1 : t.shape[0];
  const int64_t cols = t.shape.back();
  // About 4M values per chunk, whole fp8 block rows so each chunk quantizes on its own.
  int64_t chunk = std::max<int64_t>(1, (int64_t(1) << 22) / cols);
  if (job.scale) chunk = (chunk + job.block - 1) / job.block * job.block;
  std::vector<float> scales;
  if (job.scale) scales.resize(size_t(job.scale->shape[0] * job.scale->shape[1]));
  std::vector<float> w;
  for (int64_t r = 0; r < rows; r += chunk) {
    const int64_t m = std::min(chunk, rows - r);
    w.resize(size_t(m * cols));
    random_rows(w.data(), job, r, m, cols);
    SHOAL_RETURN_IF_ERROR(store_rows(files, job, w, r, m, cols, scales));
  }
  if (!job.scale) return {};
  return files.write(*job.scale, 0, scales.data(), uint64_t(scales.size()) * 4);
}

// ---- the checkpoint -------------------------------------------------------------------------

Status check_out_dir(const fs::path& out) {
  std::error_code ec;
  if (!fs::exists(out, ec)) {
    if (!fs::create_directories(out, ec)) return not_found("cannot create " + out.string() + ": " + ec.message());
    return {};
  }
  if (!fs::is_directory(out, ec)) return invalid_argument(out.string() + " exists and is not a folder");
  for (const auto& entry : fs::directory_iterator(out, ec)) {
    const std::string name = entry.path().filename().string();
    if (entry.path().extension() == ".safetensors" || name == "model.safetensors.index.json")
      return invalid_argument(out.string() + " already holds a checkpoint (" + name + "); choose an empty --out");
  }
  return {};
}

std::string index_json(const std::vector<Entry>& entries, const std::vector<std::string>& shard_names,
                       uint64_t total) {
  json map = json::object();
  for (const Entry& e : entries) map[e.name] = shard_names[size_t(e.shard)];
  return json{{"metadata", {{"total_size", total}}}, {"weight_map", map}}.dump(2) + "\n";
}

Status write_shards(const SynthOptions& o, const ModelConfig& c, const std::vector<TensorSpec>& specs,
                    std::vector<Entry>& entries, const std::vector<std::string>& shard_names) {
  ShardFiles files(o.out, shard_names);
  std::vector<std::vector<Entry*>> by_shard(shard_names.size());
  for (Entry& e : entries) by_shard[size_t(e.shard)].push_back(&e);
  for (size_t k = 0; k < by_shard.size(); ++k) {
    uint64_t bytes = 0;
    for (const Entry* e : by_shard[k]) bytes += e->bytes;
    SHOAL_RETURN_IF_ERROR(files.create(int64_t(k), layout_shard(by_shard[k]), bytes));
  }
  size_t next = 0;  // entries are the specs in order, each quantized one followed by its scale
  for (const TensorSpec& t : specs) {
    TensorJob job{&t, &entries[next++], nullptr, mix64(o.seed ^ mix64(name_hash(t.name))), c.fp8_block};
    if (job.entry->dtype == DType::kF8E4M3) job.scale = &entries[next++];
    SHOAL_RETURN_IF_ERROR(write_tensor(files, job));
    // Close a shard's file once its last tensor (in plan order) is written.
    if (next == entries.size() || entries[next].shard != job.entry->shard)
      SHOAL_RETURN_IF_ERROR(files.close(job.entry->shard));
  }
  return {};
}

}  // namespace

void quantize_fp8_blocks(uint8_t* q, float* scale_inv, const float* w, int64_t rows, int64_t cols, int64_t block) {
  const int64_t brows = (rows + block - 1) / block, bcols = (cols + block - 1) / block;
#pragma omp parallel for schedule(static)
  for (int64_t tile = 0; tile < brows * bcols; ++tile) {
    const int64_t r0 = tile / bcols * block, c0 = tile % bcols * block;
    const int64_t r1 = std::min(rows, r0 + block), c1 = std::min(cols, c0 + block);
    float amax = 0;
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t k = c0; k < c1; ++k) amax = std::max(amax, std::fabs(w[r * cols + k]));
    const float s = amax > 0 ? amax / 448.0f : 1.0f;
    scale_inv[tile] = s;
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t k = c0; k < c1; ++k) q[r * cols + k] = float_to_fp8_e4m3(w[r * cols + k] / s);
  }
}

StatusOr<SynthResult> synth_checkpoint(const SynthOptions& o) {
  if (o.shard_bytes == 0) return invalid_argument("shard size must be positive");
  json j = json::parse(default_config_json());
  if (!o.config.empty()) {
    SHOAL_ASSIGN_OR_RETURN(j, read_json(o.config));
  }
  if (!o.tokenizer.empty()) {
    if (o.vocab_size <= 0) return invalid_argument("synth with a tokenizer needs its vocab_size");
    SHOAL_RETURN_IF_ERROR(check_tokenizer_files(o.tokenizer));
  }
  edit_config(j, o);
  const std::string config_text = j.dump(2) + "\n";
  auto parsed = parse_config(config_text);
  if (!parsed.ok()) return parsed.status().with_context(o.config.empty() ? "the default config" : o.config.string());
  SynthResult r;
  r.config = *parsed;
  SHOAL_RETURN_IF_ERROR(check_out_dir(o.out));
  if (!o.tokenizer.empty()) SHOAL_RETURN_IF_ERROR(copy_tokenizer_files(o.tokenizer, o.out));

  const std::vector<TensorSpec> specs = model_tensors(r.config, o.mtp);
  std::vector<Entry> entries = plan_entries(specs, r.config);
  r.n_shards = assign_shards(entries, o.shard_bytes);
  std::vector<std::string> shard_names;
  for (int64_t k = 0; k < r.n_shards; ++k) shard_names.push_back(shard_name(k, r.n_shards));
  SHOAL_RETURN_IF_ERROR(write_shards(o, r.config, specs, entries, shard_names));
  r.n_tensors = int64_t(entries.size());
  for (const Entry& e : entries) r.total_bytes += e.bytes;
  const std::string index = index_json(entries, shard_names, r.total_bytes);
  SHOAL_RETURN_IF_ERROR(write_text(o.out / "model.safetensors.index.json", index));
  SHOAL_RETURN_IF_ERROR(write_text(o.out / "config.json", config_text));
  return r;
}

}  // namespace shoal
