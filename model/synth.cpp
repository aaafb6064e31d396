#include "model/synth.h"

#include "model/json_file.h"
#include "model/gguf_checkpoint.h"

#include "model/default_config.h"
#include "model/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cctype>
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
#include "kernels/cpu/formats/ggml/block.h"
#include "model/gguf_writer.h"
#include "model/rope.h"
#include "model/tensor_names.h"

namespace shoal {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// ---- config ---------------------------------------------------------------------------------

// A config file, or a folder's config.json.
StatusOr<json> read_json(const fs::path& path) {
  std::error_code ec;
  return read_json_object(fs::is_directory(path, ec) ? path / "config.json" : path);
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

// `tied`: the embedding is also lm_head (tie_word_embeddings), so it gets a matrix's std
// 1/sqrt(hidden) to keep the logits O(1); an input embedding alone gets std 1.
Init init_for(const TensorSpec& t, bool tied) {
  if (t.shape.size() == 1) {
    if (t.name.ends_with(kRouterBiasSuffix)) return {0.0f, 0.05f};
    if (t.name.ends_with(".bias")) return {0.0f, 0.1f};  // Qwen2's q/k/v_proj biases, Llama's attention_bias
    return {1.0f, 0.1f};  // norm weights
  }
  if (t.unit == Unit::kEmbed && !tied) return {0.0f, std::sqrt(3.0f)};  // std 1
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
  bool tied = false;             // tie_word_embeddings
};

void random_rows(float* out, const TensorJob& job, int64_t row0, int64_t rows, int64_t cols) {
  const Init init = init_for(*job.spec, job.tied);
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
    TensorJob job{&t, &entries[next++], nullptr, mix64(o.seed ^ mix64(name_hash(t.name))), c.fp8_block,
                  c.tie_word_embeddings};
    if (job.entry->dtype == DType::kF8E4M3) job.scale = &entries[next++];
    SHOAL_RETURN_IF_ERROR(write_tensor(files, job));
    // Close a shard's file once its last tensor (in plan order) is written.
    if (next == entries.size() || entries[next].shard != job.entry->shard)
      SHOAL_RETURN_IF_ERROR(files.close(job.entry->shard));
  }
  return {};
}


// ---- GGUF -----------------------------------------------------------------------------------

namespace gguf_synth {

// float -> IEEE half, round to nearest even (scales are chosen finite and small).
uint16_t f32_to_f16(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000);
  x &= 0x7FFFFFFFu;
  if (x >= 0x7F800000u) return sign | (x > 0x7F800000u ? 0x7E00 : 0x7C00);
  if (x >= 0x477FF000u) return sign | 0x7C00;  // 65520 and up round to infinity
  if (x < 0x38800000u)                          // below 2^-14: a subnormal half (units of 2^-24)
    return sign | uint16_t(std::nearbyint(std::bit_cast<float>(x) * 0x1p24f));
  uint32_t h = (((x >> 23) - 112) << 10) | ((x >> 13) & 0x3FF);
  const uint32_t rest = x & 0x1FFF;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;
  return sign | uint16_t(h);
}

// Where a block keeps its fp16 scales (kernels/cpu/formats/ggml/*.h): the super-scale d and,
// for the asymmetric types, the fp16 min (K-quants: w = d*sc*q - dmin*m) or offset (Q4_1/Q5_1:
// w = d*q + m). IQ1_M spreads d over the top nibbles of its four u16 scales at bytes 48..55.
struct ScaleFields {
  int d = 0, m = -1;
  bool iq1m = false;
};

ScaleFields scale_fields(DType t) {
  switch (t) {
    case DType::kQ4_1: case DType::kQ5_1: case DType::kQ4_K: case DType::kQ5_K: return {0, 2};
    case DType::kQ2_K: return {80, 82};
    case DType::kQ3_K: return {108};
    case DType::kQ6_K: return {208};
    case DType::kIQ1_M: return {-1, -1, true};
    default: return {0};  // Q4_0, Q5_0, Q8_0, IQ2_*, IQ3_*, IQ1_S, IQ4_NL, IQ4_XS: d at byte 0
  }
}

void put_u16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }

void put_scales(uint8_t* b, const ScaleFields& s, float d, float m) {
  const uint16_t hd = f32_to_f16(d);
  if (s.iq1m) {
    for (int k = 0; k < 4; ++k) {
      uint16_t v;
      std::memcpy(&v, b + 48 + 2 * k, 2);
      put_u16(b + 48 + 2 * k, uint16_t((v & 0x0FFF) | (((hd >> (4 * k)) & 0xF) << 12)));
    }
    return;
  }
  put_u16(b + s.d, hd);
  if (s.m >= 0) put_u16(b + s.m, f32_to_f16(m));
}

void random_bytes(uint8_t* out, int64_t n, uint64_t seed) {
  for (int64_t w = 0; w * 8 < n; ++w) {
    const uint64_t z = mix64(seed + uint64_t(w + 1) * kGolden);
    std::memcpy(out + w * 8, &z, size_t(std::min<int64_t>(8, n - w * 8)));
  }
}

// How a type's random blocks dequantize with d = 1: their RMS, and the min (or offset) per unit
// d that centres them at zero. Measured once per type on fixed random blocks, by ggml's own
// dequantization, so no per-type arithmetic is restated here.
struct Calibration {
  ScaleFields fields;
  double unit_rms = 1;
  double m_ratio = 0;
};

Calibration calibrate(DType t) {
  Calibration c;
  c.fields = scale_fields(t);
  constexpr int kBlocks = 64;
  const int64_t nb = dtype_bytes(t), bw = dtype_block(t);
  std::vector<uint8_t> blocks(static_cast<size_t>(kBlocks * nb)), b(static_cast<size_t>(nb));
  random_bytes(blocks.data(), int64_t(blocks.size()), 0x5EED0000ull + uint64_t(t));
  std::vector<float> y(static_cast<size_t>(bw));
  auto stats = [&](float d, float m, double& mean, double& mean_sq) {
    double s = 0, s2 = 0;
    for (int k = 0; k < kBlocks; ++k) {
      std::memcpy(b.data(), blocks.data() + k * nb, size_t(nb));
      put_scales(b.data(), c.fields, d, m);
      kernels::cpu::ggml::dequantize_block(t, b.data(), y.data());
      for (float v : y) s += v, s2 += double(v) * v;
    }
    mean = s / double(kBlocks * bw);
    mean_sq = s2 / double(kBlocks * bw);
  };
  double mean_d = 0, ms = 0;
  stats(1.0f, 0.0f, mean_d, ms);
  if (c.fields.m >= 0) {
    double mean_m = 0, unused = 0;
    stats(0.0f, 1.0f, mean_m, unused);
    if (mean_m != 0) c.m_ratio = -mean_d / mean_m;
    stats(1.0f, float(c.m_ratio), mean_d, ms);
  }
  c.unit_rms = ms > 0 ? std::sqrt(ms) : 1.0;
  return c;
}


// One row of random blocks whose scales give weights of std about d0 * unit_rms, centred.
void random_block_row(uint8_t* row, DType t, int64_t cols, const Calibration& c, double d0, uint64_t rs) {
  const int64_t nb = dtype_bytes(t), blocks = cols / dtype_block(t);
  random_bytes(row, blocks * nb, rs);
  for (int64_t b = 0; b < blocks; ++b) {
    const double u = double(mix64(~rs + uint64_t(b + 1) * kGolden) >> 11) * 0x1p-53;
    const double d = d0 * (0.75 + 0.5 * u);
    put_scales(row + b * nb, c.fields, float(d), float(d * c.m_ratio));
  }
}

StatusOr<std::string> gguf_name(const TensorSpec& t) {
  const GgufSource src = gguf_source(t);
  if (src.name.starts_with("?")) return internal_error("no GGUF name for tensor " + t.name);
  return src.name;
}

// One tensor to write: its GGUF entry, the table tensor it comes from (for experts, expert 0's),
// and the file part it goes in; or, for llama.cpp's own tensors (rope_freqs), its F32 values.
struct Planned {
  GgufTensorOut out;
  const TensorSpec* spec = nullptr;
  std::vector<float> values;
  int64_t part = 0;
  int64_t rows() const {
    int64_t r = 1;
    for (size_t d = 1; d < out.ne.size(); ++d) r *= out.ne[d];
    return r;
  }
};

StatusOr<std::vector<Planned>> plan_gguf(const std::vector<TensorSpec>& specs, const ModelConfig& c, DType quant) {
  std::vector<Planned> out;
  for (const TensorSpec& t : specs) {
    if (t.expert > 0) continue;  // stacked onto expert 0's tensor
    Planned p;
    p.spec = &t;
    SHOAL_ASSIGN_OR_RETURN(p.out.name, gguf_name(t));
    if (t.shape.size() == 1) p.out.ne = {t.shape[0]};
    else p.out.ne = {t.shape[1], t.shape[0]};
    if (t.expert == 0) p.out.ne.push_back(c.n_routed_experts);
    if (t.name.ends_with("k_b_proj.weight")) p.out.ne = {c.qk_nope_head_dim, c.kv_lora_rank, c.n_heads};
    if (t.name.ends_with("v_b_proj.weight")) p.out.ne = {c.kv_lora_rank, c.v_head_dim, c.n_heads};
    // Vectors and the router stay F32, as llama-quantize leaves them; every other matrix
    // (embedding and output included) takes the asked type.
    const bool f32 = t.shape.size() == 1 || t.name.ends_with("mlp.gate.weight");
    p.out.dtype = f32 ? DType::kF32 : gguf_fallback_type(quant, p.out.ne[0]);
    p.out.bytes = uint64_t(dtype_row_bytes(p.out.dtype, p.out.ne[0]) * p.rows());
    out.push_back(std::move(p));
  }
  return out;
}

GgufValue u16_value(uint16_t v) {
  GgufValue x;
  x.type = GgufType::kU16;
  x.u = v;
  x.i = v;
  return x;
}

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the others for
// U+0100 onwards in byte order; as UTF-8.
std::vector<std::string> byte_tokens() {
  std::vector<std::string> out(256);
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    const uint32_t cp = printable ? uint32_t(b) : uint32_t(256 + extra++);
    std::string s;
    if (cp < 0x80) s += char(cp);
    else s += char(0xC0 | (cp >> 6)), s += char(0x80 | (cp & 0x3F));
    out[size_t(b)] = s;
  }
  return out;
}

using Kv = std::vector<std::pair<std::string, GgufValue>>;

// llama.cpp's rope_freqs of a llama3-scaled config: each pair's frequency divisor.
std::vector<float> llama3_rope_freqs(const ModelConfig& c) {
  ModelConfig plain = c;
  plain.llama3.enabled = false;
  const RopeTable scaled = make_rope_table(c), unscaled = make_rope_table(plain);
  std::vector<float> out(scaled.inv_freq.size());
  for (size_t j = 0; j < out.size(); ++j) out[j] = unscaled.inv_freq[j] / scaled.inv_freq[j];
  return out;
}

// What llama.cpp's converter writes: `deepseek2` (MLA, experts, YaRN) or the distills' `qwen2` /
// `llama` (llama3 scaling goes in the rope_freqs tensor, not in metadata); and a byte-level gpt2
// vocabulary as in the gguf-a fixtures.
Kv metadata(const ModelConfig& c, DType quant) {
  Kv kv;
  const std::string arch = c.uses_mla() ? "deepseek2" : c.model_type == ModelType::kQwen2 ? "qwen2" : "llama";
  const std::string a = arch + ".";
  auto u32 = [&](const std::string& k, int64_t v) { kv.emplace_back(a + k, gguf_u32(uint32_t(v))); };
  auto f32 = [&](const std::string& k, double v) { kv.emplace_back(a + k, gguf_f32(float(v))); };
  kv.emplace_back("general.architecture", gguf_str(arch));
  kv.emplace_back("general.name", gguf_str("shoal-synth"));
  u32("block_count", c.n_layers);
  u32("context_length", c.max_position_embeddings);
  u32("embedding_length", c.dim);
  u32("feed_forward_length", c.inter_dim);
  u32("attention.head_count", c.n_heads);
  u32("attention.head_count_kv", c.uses_mla() ? 1 : c.n_kv_heads);
  f32("rope.freq_base", c.rope_theta);
  f32("attention.layer_norm_rms_epsilon", c.rms_norm_eps);
  u32("vocab_size", c.vocab_size);
  if (!c.uses_mla()) {
    if (c.head_dim != c.dim / c.n_heads) {
      u32("attention.key_length", c.head_dim);
      u32("attention.value_length", c.head_dim);
    }
    u32("rope.dimension_count", c.head_dim);
  } else {
    if (c.n_routed_experts > 0) u32("leading_dense_block_count", c.n_dense_layers);
    if (c.q_lora_rank > 0) u32("attention.q_lora_rank", c.q_lora_rank);
    u32("attention.kv_lora_rank", c.kv_lora_rank);
    u32("attention.key_length", c.kv_lora_rank + c.qk_rope_head_dim);
    u32("attention.value_length", c.kv_lora_rank);
    u32("attention.key_length_mla", c.qk_nope_head_dim + c.qk_rope_head_dim);
    u32("attention.value_length_mla", c.v_head_dim);
    u32("rope.dimension_count", c.qk_rope_head_dim);
    if (c.n_routed_experts > 0) {
      u32("expert_feed_forward_length", c.moe_inter_dim);
      u32("expert_shared_count", c.n_shared_experts);
      u32("expert_count", c.n_routed_experts);
      u32("expert_used_count", c.n_activated_experts);
      u32("expert_group_count", c.n_expert_groups);
      u32("expert_group_used_count", c.n_limited_groups);
      f32("expert_weights_scale", c.route_scale);
      kv.emplace_back(a + "expert_weights_norm", gguf_bool(c.norm_topk_prob));
      u32("expert_gating_func", c.score_func == ScoringFunc::kSigmoid ? 2 : 1);
    }
    if (c.yarn.enabled) {
      kv.emplace_back(a + "rope.scaling.type", gguf_str("yarn"));
      f32("rope.scaling.factor", c.yarn.factor);
      u32("rope.scaling.original_context_length", c.yarn.original_max_position_embeddings);
      f32("rope.scaling.yarn_beta_fast", c.yarn.beta_fast);
      f32("rope.scaling.yarn_beta_slow", c.yarn.beta_slow);
      f32("rope.scaling.yarn_log_multiplier", 0.1 * c.yarn.mscale_all_dim);
    }
  }
  // BOS 0, EOS 1, the 256 bytes at 2..257, the one merge's token at 258, placeholders after.
  const int64_t v = c.vocab_size;
  std::vector<std::string> tokens = {"<|bos|>", "<|eos|>"};
  for (std::string& b : byte_tokens()) tokens.push_back(std::move(b));
  tokens.push_back("\u0120\u0120");
  for (int64_t i = int64_t(tokens.size()); i < v; ++i) tokens.push_back("<t" + std::to_string(i) + ">");
  tokens.resize(size_t(v));
  std::vector<int64_t> types(size_t(v), 1);
  for (int64_t i = 0; i < std::min<int64_t>(2, v); ++i) types[size_t(i)] = 3;
  kv.emplace_back("tokenizer.ggml.model", gguf_str("gpt2"));
  kv.emplace_back("tokenizer.ggml.pre", gguf_str("default"));
  kv.emplace_back("tokenizer.ggml.tokens", gguf_strings(std::move(tokens)));
  kv.emplace_back("tokenizer.ggml.token_type", gguf_ints(GgufType::kI32, std::move(types)));
  kv.emplace_back("tokenizer.ggml.merges",
                  gguf_strings(v > 258 ? std::vector<std::string>{"\u0120 \u0120"} : std::vector<std::string>{}));
  kv.emplace_back("tokenizer.ggml.bos_token_id", gguf_u32(0));
  kv.emplace_back("tokenizer.ggml.eos_token_id", gguf_u32(1));
  kv.emplace_back("tokenizer.ggml.add_bos_token", gguf_bool(false));
  kv.emplace_back("general.quantization_version", gguf_u32(2));
  kv.emplace_back("general.file_type", gguf_u32(gguf_file_type(quant)));
  return kv;
}

// llama-gguf-split --split-max-size: a new part starts when the next tensor (padded to 32) would
// take the current part's tensor bytes past the limit (never leaving a part empty).
int64_t assign_parts(std::vector<Planned>& tensors, uint64_t limit) {
  if (limit == 0) return 1;
  int64_t part = 0;
  uint64_t size = 0, n = 0;
  for (Planned& p : tensors) {
    const uint64_t padded = (p.out.bytes + 31) / 32 * 32;
    if (n > 0 && size + padded > limit) ++part, size = 0, n = 0;
    p.part = part;
    size += padded, ++n;
  }
  return part + 1;
}

// The paths to write: `out` a .gguf file (NAME.gguf), or a folder (model.gguf in it).
StatusOr<std::vector<fs::path>> gguf_paths(const fs::path& out, int64_t parts) {
  std::error_code ec;
  fs::path base = out;
  if (out.extension() == ".gguf") {
    base.replace_extension();
    if (!out.parent_path().empty() && !fs::exists(out.parent_path(), ec)) fs::create_directories(out.parent_path(), ec);
  } else {
    if (fs::exists(out, ec) && !fs::is_directory(out, ec))
      return invalid_argument(out.string() + " exists and is not a folder (name a .gguf file or a folder)");
    fs::create_directories(out, ec);
    for (const auto& e : fs::directory_iterator(out, ec))
      if (e.path().extension() == ".gguf")
        return invalid_argument(out.string() + " already holds a GGUF (" + e.path().filename().string() +
                                "); choose an empty --out");
    base = out / "model";
  }
  std::vector<fs::path> paths;
  for (int64_t k = 0; k < parts; ++k) {
    if (parts == 1) {
      paths.push_back(base.string() + ".gguf");
    } else {
      char buf[64];
      std::snprintf(buf, sizeof buf, "-%05lld-of-%05lld.gguf", (long long)k + 1, (long long)parts);
      paths.push_back(base.string() + buf);
    }
    if (fs::exists(paths.back(), ec)) return invalid_argument(paths.back().string() + " exists; choose a new --out");
  }
  return paths;
}

// Writes one tensor's rows a chunk at a time at `at` in fd: random blocks with their scales set
// (block types) or values from the HF synth's initialisation (F32/F16/BF16).
Status write_tensor_data(int fd, uint64_t at, const fs::path& path, const Planned& p, uint64_t seed,
                         const std::map<DType, Calibration>& calib, bool tied) {
  if (!p.spec) return pwrite_all(fd, p.values.data(), p.values.size() * sizeof(float), at, path);
  const DType t = p.out.dtype;
  const int64_t cols = p.out.ne[0], rows = p.rows();
  const int64_t row_bytes = dtype_row_bytes(t, cols);
  const uint64_t tseed = mix64(seed ^ mix64(name_hash(p.out.name)));
  const Init init = init_for(*p.spec, tied);
  const int64_t chunk = std::max<int64_t>(1, (int64_t(16) << 20) / std::max<int64_t>(row_bytes, cols * 4));
  std::vector<uint8_t> buf;
  std::vector<float> w;
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
    const int64_t m = std::min(chunk, rows - r0);
    buf.resize(size_t(m * row_bytes));
    if (dtype_is_block(t)) {
      const Calibration& c = calib.at(t);
      const double d0 = init.half_width / std::sqrt(3.0) / c.unit_rms;  // the uniform init's std
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < m; ++r)
        random_block_row(buf.data() + r * row_bytes, t, cols, c, d0, mix64(tseed ^ mix64(uint64_t(r0 + r))));
    } else {
      w.resize(size_t(m * cols));
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < m; ++r) random_row(w.data() + r * cols, cols, mix64(tseed ^ mix64(uint64_t(r0 + r))), init);
      for (int64_t i = 0; i < m * cols; ++i) {
        const float v = w[size_t(i)];
        if (t == DType::kF32) std::memcpy(buf.data() + i * 4, &v, 4);
        else put_u16(buf.data() + i * 2, t == DType::kF16 ? f32_to_f16(v) : float_to_bf16(v));
      }
    }
    SHOAL_RETURN_IF_ERROR(pwrite_all(fd, buf.data(), buf.size(), at + uint64_t(r0 * row_bytes), path));
  }
  return {};
}

StatusOr<SynthResult> synth_gguf(const SynthOptions& o, SynthResult r) {
  if (o.fp8) return invalid_argument("--dtype fp8 is for Hugging Face checkpoints; a GGUF takes --quant");
  if (o.mtp) return invalid_argument("--mtp: llama.cpp's converter writes no MTP layer; a GGUF synth has none");
  if (!o.tokenizer.empty())
    return invalid_argument("--tokenizer: a GGUF synth carries its own byte-level vocabulary in its metadata");
  if (dtype_info(o.quant).ggml_id < 0 || o.quant == DType::kQ8_K)
    return invalid_argument("--quant " + std::string(dtype_name(o.quant)) + " is not a type llama-quantize writes");
  ModelConfig c = r.config;
  c.mla_split_kv_b = c.uses_mla();
  c.n_mtp_layers = 0;
  const std::vector<TensorSpec> specs = model_tensors(c, /*with_mtp=*/false);
  SHOAL_ASSIGN_OR_RETURN(std::vector<Planned> tensors, plan_gguf(specs, c, o.quant));
  if (c.model_type == ModelType::kLlama) {
    c.rope_interleaved = true;  // as the reader takes a `llama` file: random q/k rows, any order
    if (c.llama3.enabled) {
      Planned freqs;
      freqs.values = llama3_rope_freqs(c);
      freqs.out.name = "rope_freqs.weight";
      freqs.out.dtype = DType::kF32;
      freqs.out.ne = {int64_t(freqs.values.size())};
      freqs.out.bytes = freqs.values.size() * sizeof(float);
      tensors.insert(tensors.begin() + 1, std::move(freqs));  // after token_embd, as the converter
      c.rope_freq_factors = tensors[1].values;
      c.llama3.enabled = false;
    }
  }
  std::map<DType, Calibration> calib;
  for (const Planned& p : tensors)
    if (dtype_is_block(p.out.dtype) && !calib.count(p.out.dtype)) calib.emplace(p.out.dtype, calibrate(p.out.dtype));
  const int64_t n_parts = assign_parts(tensors, o.split_bytes);
  SHOAL_ASSIGN_OR_RETURN(r.files, gguf_paths(o.out, n_parts));
  const Kv meta = metadata(c, o.quant);
  for (int64_t k = 0; k < n_parts; ++k) {
    Kv kv = k == 0 ? meta : Kv{};
    if (n_parts > 1) {
      kv.emplace_back("split.no", u16_value(uint16_t(k)));
      kv.emplace_back("split.count", u16_value(uint16_t(n_parts)));
      kv.emplace_back("split.tensors.count", gguf_i32(int32_t(tensors.size())));
    }
    std::vector<GgufTensorOut> outs;
    std::vector<const Planned*> mine;
    for (const Planned& p : tensors)
      if (p.part == k) outs.push_back(p.out), mine.push_back(&p);
    uint64_t data_bytes = 0;
    const std::string header = gguf_stream_header(kv, outs, &data_bytes);
    const fs::path& path = r.files[size_t(k)];
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return not_found("cannot write " + path.string() + ": " + std::strerror(errno));
    Status s = pwrite_all(fd, header.data(), header.size(), 0, path);
    if (s.ok() && ::ftruncate(fd, off_t(header.size() + data_bytes)) != 0)
      s = internal_error("cannot size " + path.string() + ": " + std::strerror(errno));
    for (size_t i = 0; s.ok() && i < mine.size(); ++i)
      s = write_tensor_data(fd, header.size() + outs[i].offset, path, *mine[i], o.seed, calib, c.tie_word_embeddings);
    if (::close(fd) != 0 && s.ok()) s = internal_error("write failed: " + path.string() + ": " + std::strerror(errno));
    SHOAL_RETURN_IF_ERROR(s);
    for (const GgufTensorOut& t : outs) r.total_bytes += t.bytes;
  }
  r.config = c;
  r.config.bos_token_id = 0;
  r.config.eos_token_id = 1;
  r.n_tensors = int64_t(tensors.size());
  r.n_shards = n_parts;
  return r;
}

}  // namespace gguf_synth

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

std::optional<DType> gguf_quant_type(std::string_view name) {
  std::string up(name);
  for (char& ch : up) ch = char(std::toupper(static_cast<unsigned char>(ch)));
  for (const DTypeInfo& info : kDTypes)
    if (info.ggml_id >= 0 && info.dtype != DType::kQ8_K && info.name == up) return info.dtype;
  return std::nullopt;
}

DType gguf_fallback_type(DType want, int64_t ne0) {
  if (ne0 % dtype_block(want) == 0) return want;
  DType t = DType::kF16;
  switch (want) {
    case DType::kIQ1_S: case DType::kIQ1_M: case DType::kIQ2_XXS: case DType::kIQ2_XS: case DType::kIQ2_S:
    case DType::kIQ3_XXS: case DType::kIQ3_S: case DType::kIQ4_XS: t = DType::kIQ4_NL; break;
    case DType::kQ2_K: case DType::kQ3_K: t = DType::kQ4_0; break;
    case DType::kQ4_K: t = DType::kQ5_0; break;
    case DType::kQ5_K: t = DType::kQ5_1; break;
    case DType::kQ6_K: t = DType::kQ8_0; break;
    default: break;
  }
  return ne0 % dtype_block(t) == 0 ? t : DType::kF16;
}

void random_gguf_rows(uint8_t* out, DType t, int64_t rows, int64_t cols, double std, uint64_t seed) {
  const gguf_synth::Calibration c = gguf_synth::calibrate(t);
  const int64_t row_bytes = dtype_row_bytes(t, cols);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    gguf_synth::random_block_row(out + r * row_bytes, t, cols, c, std / c.unit_rms,
                                 mix64(seed ^ mix64(uint64_t(r))));
}

uint32_t gguf_file_type(DType t) {
  switch (t) {
    case DType::kF32: return 0;
    case DType::kF16: return 1;
    case DType::kQ4_0: return 2;
    case DType::kQ4_1: return 3;
    case DType::kQ8_0: return 7;
    case DType::kQ5_0: return 8;
    case DType::kQ5_1: return 9;
    case DType::kQ2_K: return 10;
    case DType::kQ3_K: return 11;   // MOSTLY_Q3_K_S
    case DType::kQ4_K: return 14;   // MOSTLY_Q4_K_S
    case DType::kQ5_K: return 16;   // MOSTLY_Q5_K_S
    case DType::kQ6_K: return 18;
    case DType::kIQ2_XXS: return 19;
    case DType::kIQ2_XS: return 20;
    case DType::kIQ3_XXS: return 23;
    case DType::kIQ1_S: return 24;
    case DType::kIQ4_NL: return 25;
    case DType::kIQ3_S: return 26;
    case DType::kIQ2_S: return 28;
    case DType::kIQ4_XS: return 30;
    case DType::kIQ1_M: return 31;
    case DType::kBF16: return 32;
    default: return 0;
  }
}

std::string gguf_stream_header(const std::vector<std::pair<std::string, GgufValue>>& kv,
                               std::vector<GgufTensorOut>& tensors, uint64_t* data_bytes, uint64_t alignment) {
  // The metadata as gguf_writer serialises it (alignment 1: no padding after it), then the
  // tensor count patched in and the tensor infos appended.
  std::string out = gguf_image(kv, {}, 1);
  const uint64_t n = tensors.size();
  std::memcpy(out.data() + 8, &n, 8);
  auto put = [&](const void* p, size_t k) { out.append(static_cast<const char*>(p), k); };
  uint64_t offset = 0;
  for (GgufTensorOut& t : tensors) {
    const uint64_t len = t.name.size();
    put(&len, 8);
    out += t.name;
    const uint32_t dims = uint32_t(t.ne.size());
    put(&dims, 4);
    for (int64_t d : t.ne) put(&d, 8);
    const uint32_t type = uint32_t(dtype_info(t.dtype).ggml_id);
    put(&type, 4);
    t.offset = offset;
    put(&offset, 8);
    offset = (offset + t.bytes + alignment - 1) / alignment * alignment;
  }
  out.resize((out.size() + alignment - 1) / alignment * alignment, '\0');
  if (data_bytes) *data_bytes = offset;
  return out;
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
  // The dense distills (Qwen2, Llama) are published in BF16 (and as GGUF by llama.cpp's converter).
  const std::string model_type = j.contains("model_type") && j["model_type"].is_string() ? j["model_type"].get<std::string>() : "";
  if (model_type == "qwen2" || model_type == "llama") {
    if (o.fp8)
      return invalid_argument("--dtype fp8 (128x128 block scales) is DeepSeek's release format; a " + model_type +
                              " model is synthesized in bf16");
  }
  edit_config(j, o);
  const std::string config_text = j.dump(2) + "\n";
  auto parsed = parse_config(config_text);
  if (!parsed.ok()) return parsed.status().with_context(o.config.empty() ? "the default config" : o.config.string());
  SynthResult r;
  r.config = *parsed;
  if (o.gguf) return gguf_synth::synth_gguf(o, std::move(r));
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
