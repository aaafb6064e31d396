#include "cluster/quant_recipe.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>

namespace shoal::cluster {
namespace fs = std::filesystem;

// ---- the recipes ------------------------------------------------------------------------------
//
// Unsloth's dynamic ("UD") quants of DeepSeek-R1/V3, from what the Unsloth post
// (unsloth.ai/blog/deepseekr1-dynamic, Jan 2025) states for each mix: routed experts at
// 1.58/1.73/2.22/2.51 bits, their down_proj higher (IQ1_S: 2.06/1.56 bits, IQ1_M: 2.06,
// IQ2_XXS: 2.5/2.06, Q2_K_XL: 3.5/2.5), attention and the three dense layers in 4 or 6 bits,
// shared experts in 6 bits, the embedding in 4 bits and lm_head in 6. Where the post says "a/b"
// for down_proj, the higher type goes to the layers llama.cpp's own low-bit mixes give more bits
// to ffn_down (i < n_layers / 8, llama-quant.cpp); the 4-bit choice for every attention matrix.
// Sizes published (GiB, the sum of the parts on Hugging Face): 131, 158, 183, 212. Then Q8_0,
// llama.cpp's uniform 8-bit file, which applies as well to the dense distills (Qwen2, Llama).
const std::vector<QuantRecipe>& quant_recipes() {
  using D = DType;
  static const std::vector<QuantRecipe> kRecipes = {
      {"UD-IQ1_S", "Unsloth dynamic 1.58-bit: routed experts IQ1_S (down_proj IQ2_XXS in the first eighth of layers)",
       D::kQ4_K, D::kQ6_K, D::kQ4_K, D::kQ4_K, D::kQ4_K, D::kQ6_K, D::kQ6_K, D::kQ6_K,
       D::kIQ1_S, D::kIQ1_S, D::kIQ2_XXS, 131},
      {"UD-IQ1_M", "Unsloth dynamic 1.73-bit: routed experts IQ1_M, down_proj IQ2_XXS",
       D::kQ4_K, D::kQ6_K, D::kQ4_K, D::kQ4_K, D::kQ4_K, D::kQ6_K, D::kQ6_K, D::kQ6_K,
       D::kIQ1_M, D::kIQ2_XXS, D::kIQ2_XXS, 158},
      {"UD-IQ2_XXS", "Unsloth dynamic 2.22-bit: routed experts IQ2_XXS (down_proj Q2_K in the first eighth of layers)",
       D::kQ4_K, D::kQ6_K, D::kQ4_K, D::kQ4_K, D::kQ4_K, D::kQ6_K, D::kQ6_K, D::kQ6_K,
       D::kIQ2_XXS, D::kIQ2_XXS, D::kQ2_K, 183},
      {"UD-Q2_K_XL", "Unsloth dynamic 2.51-bit: routed experts Q2_K (down_proj Q3_K in the first eighth of layers)",
       D::kQ4_K, D::kQ6_K, D::kQ4_K, D::kQ4_K, D::kQ4_K, D::kQ6_K, D::kQ6_K, D::kQ6_K,
       D::kQ2_K, D::kQ2_K, D::kQ3_K, 212},
      // llama-quantize's plain Q8_0 (LLAMA_FTYPE_MOSTLY_Q8_0): every matrix, the embedding and
      // output included, in Q8_0; of any model (DeepSeek's, or the dense R1 distills').
      {"Q8_0", "llama.cpp's Q8_0: every matrix Q8_0 (8.5 bits)",
       D::kQ8_0, D::kQ8_0, D::kQ8_0, D::kQ8_0, D::kQ8_0, D::kQ8_0, D::kQ8_0, D::kQ8_0,
       D::kQ8_0, D::kQ8_0, D::kQ8_0, 0},
  };
  return kRecipes;
}

StatusOr<const QuantRecipe*> find_quant_recipe(const std::string& name) {
  auto lower = [](std::string s) {
    for (char& ch : s) ch = char(std::tolower(static_cast<unsigned char>(ch)));
    return s;
  };
  std::string list;
  for (const QuantRecipe& r : quant_recipes()) {
    if (lower(r.name) == lower(name)) return &r;
    list += (list.empty() ? "" : ", ") + r.name;
  }
  return invalid_argument("--quant '" + name + "' is not a quant recipe (" + list + ") or a .gguf file");
}

namespace {

// llama-quantize's fallback for a row length the type's block does not divide.
DType fallback(DType d, int64_t cols) {
  if (cols % dtype_block(d) == 0) return d;
  DType f = d;
  switch (d) {
    case DType::kIQ1_S: case DType::kIQ1_M: case DType::kIQ2_XXS: case DType::kIQ2_XS: case DType::kIQ2_S:
    case DType::kIQ3_XXS: case DType::kIQ3_S: case DType::kIQ4_XS: f = DType::kIQ4_NL; break;
    case DType::kQ2_K: case DType::kQ3_K: f = DType::kQ4_0; break;
    case DType::kQ4_K: f = DType::kQ5_0; break;
    case DType::kQ5_K: f = DType::kQ5_1; break;
    case DType::kQ6_K: f = DType::kQ8_0; break;
    default: f = DType::kF16; break;
  }
  return cols % dtype_block(f) == 0 ? f : DType::kF16;
}

bool ends_with(const std::string& s, std::string_view tail) { return s.ends_with(tail); }

}  // namespace

DType recipe_type(const QuantRecipe& r, const ModelConfig& c, const TensorSpec& t) {
  if (t.shape.size() != 2 || ends_with(t.name, "mlp.gate.weight")) return DType::kF32;
  DType d;
  if (t.unit == Unit::kEmbed) d = r.embed;
  else if (t.unit == Unit::kHead) d = r.head;
  else if (t.expert >= 0)
    d = !ends_with(t.name, "down_proj.weight") ? r.experts_gate_up
        : t.layer < c.n_layers / 8             ? r.experts_down_first
                                               : r.experts_down;
  else if (t.name.find(".mlp.shared_experts.") != std::string::npos)
    d = ends_with(t.name, "down_proj.weight") ? r.shared_down : r.shared_gate_up;
  else if (t.name.find(".mlp.") != std::string::npos)
    d = ends_with(t.name, "down_proj.weight") ? r.dense_down : r.dense_gate_up;
  else if (ends_with(t.name, "self_attn.o_proj.weight")) d = r.attn_output;
  else d = r.attn;
  return fallback(d, t.shape[1]);
}

int64_t recipe_tensor_bytes(const QuantRecipe& r, const ModelConfig& c, const TensorSpec& t) {
  const DType d = recipe_type(r, c, t);
  const int64_t cols = t.shape.back();
  return dtype_row_bytes(d, cols) * (t.numel() / std::max<int64_t>(cols, 1));
}

GgufPrediction predict_gguf(const ModelConfig& config, const QuantRecipe& r) {
  ModelConfig c = config;
  c.mla_split_kv_b = true;  // llama.cpp's converter writes attn_k_b / attn_v_b
  GgufPrediction p;
  p.units.attn.assign(size_t(c.n_layers), 0);
  p.units.experts.resize(size_t(c.n_layers));
  for (int64_t i = 0; i < c.n_layers; ++i)
    if (c.is_moe_layer(i)) p.units.experts[size_t(i)].assign(size_t(c.n_routed_experts), 0);
  for (const TensorSpec& t : model_tensors(c, /*with_mtp=*/false)) {
    const int64_t n = recipe_tensor_bytes(r, c, t);
    switch (t.unit) {
      case Unit::kEmbed: p.units.embed += n; break;
      case Unit::kHead: p.units.head += n; break;
      case Unit::kAttn: p.units.attn[size_t(t.layer)] += n; break;
      case Unit::kExpert: p.units.experts[size_t(t.layer)][size_t(t.expert)] += n; break;
      case Unit::kMtp: continue;
    }
    auto& [count, bytes] = p.by_type[recipe_type(r, c, t)];
    count += t.expert <= 0 ? 1 : 0;  // routed experts are one stacked GGUF tensor per projection
    bytes += n;
    p.total_bytes += n;
  }
  return p;
}

// ---- GGUF headers without the data -------------------------------------------------------------

namespace {

StatusOr<std::string> read_file(const fs::path& path, uint64_t max_bytes) {
  std::error_code ec;
  const uint64_t size = fs::file_size(path, ec);
  if (ec) return not_found("cannot open " + path.string() + ": " + ec.message());
  if (size > max_bytes) return invalid_argument(path.string() + ": too large to read whole");
  std::ifstream in(path, std::ios::binary);
  std::string bytes(size_t(size), '\0');
  in.read(bytes.data(), std::streamsize(size));
  if (!in) return invalid_argument("cannot read " + path.string());
  return bytes;
}

// The header of a whole file: the file mapped, parse_gguf's checks all applied.
StatusOr<GgufHeader> parse_mapped(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return not_found("cannot open " + path.string() + ": " + std::strerror(errno));
  struct stat st{};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0) {
    ::close(fd);
    return invalid_argument(path.string() + ": not a non-empty regular file");
  }
  void* map = ::mmap(nullptr, size_t(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return internal_error("cannot map " + path.string() + ": " + std::strerror(errno));
  auto h = parse_gguf(static_cast<const std::byte*>(map), uint64_t(st.st_size));
  ::munmap(map, size_t(st.st_size));
  return h;
}

// The header of a file whose tensor data is absent. parse_gguf checks every tensor against the
// data section, so it reads the header from an image as long as the tensors need: the file's
// bytes, then 64 KiB of 0xFF (a header cut short reads lengths and types of all ones there and
// fails at once), then a hole of a memfd that is never written, so it takes no memory. The
// header must end inside the file (its data section may start at or past the file's end).
StatusOr<GgufHeader> parse_without_data(const std::string& bytes, const fs::path& path) {
  constexpr uint64_t kGuard = 64 << 10;
  const int fd = ::memfd_create("shoal-gguf-header", MFD_CLOEXEC);
  if (fd < 0) return internal_error(std::string("memfd_create: ") + std::strerror(errno));
  std::string image = bytes + std::string(kGuard, '\xff');
  bool ok = true;
  for (size_t done = 0; ok && done < image.size();) {
    const ssize_t n = ::pwrite(fd, image.data() + done, image.size() - done, off_t(done));
    ok = n > 0;
    done += n > 0 ? size_t(n) : 0;
  }
  StatusOr<GgufHeader> h = internal_error("cannot map an image for " + path.string());
  // 2^41 bytes (2 TiB) of data is more than any DeepSeek GGUF part holds; smaller if the address
  // space is limited.
  for (int shift = 41; ok && shift >= 32; --shift) {
    const uint64_t size = image.size() + (uint64_t(1) << shift);
    if (::ftruncate(fd, off_t(size)) != 0) continue;
    void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED | MAP_NORESERVE, fd, 0);
    if (map == MAP_FAILED) continue;
    h = parse_gguf(static_cast<const std::byte*>(map), size);
    ::munmap(map, size);
    break;
  }
  ::close(fd);
  if (!h.ok()) return h.status().with_context(path.string());
  // The header and its padding must be in the file (llama.cpp's only_meta writes both), so that
  // no byte of the guard or the hole was read as part of it.
  if (h->data_offset > bytes.size())
    return invalid_argument(path.string() + ": the file ends at byte " + std::to_string(bytes.size()) +
                            ", inside its header (which with its padding takes " + std::to_string(h->data_offset) +
                            " bytes)");
  return h;
}

std::optional<std::pair<std::string, int>> split_prefix(const fs::path& p, int& no) {
  static const std::regex re(R"((.*)-(\d{5})-of-(\d{5})\.gguf)");
  std::smatch m;
  const std::string name = p.filename().string();
  if (!std::regex_match(name, m, re)) return std::nullopt;
  no = std::stoi(m[2].str());
  return std::make_pair(m[1].str(), std::stoi(m[3].str()));
}

}  // namespace

StatusOr<GgufHeaders> read_gguf_headers(const fs::path& path) {
  GgufHeaders out;
  int no = 0;
  if (const auto split = split_prefix(path, no)) {
    const auto& [prefix, count] = *split;
    if (no != 1) return invalid_argument(path.string() + ": pass part 1 of the split model");
    for (int k = 1; k <= count; ++k) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "-%05d-of-%05d.gguf", k, count);
      out.files.push_back(path.parent_path() / (prefix + buf));
    }
  } else {
    out.files.push_back(path);
  }
  for (const fs::path& f : out.files) {
    auto h = parse_mapped(f);
    if (!h.ok()) {
      // Perhaps a metadata-only file: its header alone (at most 1 GiB) without the data checks.
      auto bytes = read_file(f, uint64_t(1) << 30);
      if (!bytes.ok()) return h.status().with_context(f.string());
      auto meta = parse_without_data(*bytes, f);
      if (!meta.ok()) return h.status().with_context(f.string());
      out.data_present = out.data_present && meta->tensors.empty();
      h = std::move(meta);
    }
    out.headers.push_back(std::move(*h));
  }
  return out;
}

StatusOr<GgufUnitBytes> gguf_unit_bytes(const GgufHeaders& h, const ModelConfig& c) {
  GgufUnitBytes out;
  UnitBytes& u = out.units;
  u.attn.assign(size_t(c.n_layers), 0);
  u.experts.resize(size_t(c.n_layers));
  for (int64_t i = 0; i < c.n_layers; ++i)
    if (c.is_moe_layer(i)) u.experts[size_t(i)].assign(size_t(c.n_routed_experts), 0);
  static const std::regex blk(R"(blk\.(\d+)\.(.+))");
  for (size_t part = 0; part < h.headers.size(); ++part)
    for (const GgufTensor& t : h.headers[part].tensors) {
      const std::string where = h.files[part].filename().string() + ": tensor '" + t.name + "'";
      const int64_t bytes = int64_t(t.bytes);
      auto& [count, sum] = out.by_type[t.dtype];
      ++count;
      sum += bytes;
      // llama3 rope scaling of a `llama` GGUF (one F32 vector): read into the config, held by no
      // unit, as Checkpoint's unit_bytes leaves it.
      if (t.name == "rope_freqs.weight") continue;
      if (t.name == "token_embd.weight") { u.embed += bytes; continue; }
      if (t.name == "output.weight" || t.name == "output_norm.weight") { u.head += bytes; continue; }
      std::smatch m;
      if (!std::regex_match(t.name, m, blk)) return invalid_argument(where + " belongs to no unit of the plan");
      const int64_t layer = m[1].str().size() > 6 ? INT64_MAX : std::stoll(m[1].str());
      if (layer >= c.n_layers + c.n_mtp_layers)
        return invalid_argument(where + ": block " + m[1].str() + ", but the config has " +
                                std::to_string(c.n_layers) + " layers and " + std::to_string(c.n_mtp_layers) + " MTP");
      if (layer >= c.n_layers) { out.mtp_bytes += bytes; continue; }
      if (!m[2].str().ends_with("_exps.weight")) { u.attn[size_t(layer)] += bytes; continue; }
      auto& experts = u.experts[size_t(layer)];
      const int64_t E = int64_t(experts.size());
      if (E == 0 || t.ne.size() != 3 || t.ne[2] != E)
        return invalid_argument(where + ": " + std::to_string(t.ne.size() == 3 ? t.ne[2] : 1) +
                                " stacked experts, but layer " + std::to_string(layer) + " has " + std::to_string(E));
      for (int64_t e = 0; e < E; ++e) experts[size_t(e)] += bytes / E;
    }
  auto missing = [&](const std::string& what) {
    return invalid_argument(h.files.front().string() + ": no tensor of " + what +
                            " in the GGUF's tensor infos (is every part there?)");
  };
  if (u.embed == 0) return missing("the embedding (token_embd.weight)");
  if (u.head == 0) return missing("the head (output.weight, output_norm.weight)");
  for (int64_t i = 0; i < c.n_layers; ++i) {
    if (u.attn[size_t(i)] == 0) return missing("layer " + std::to_string(i));
    for (int64_t e : u.experts[size_t(i)])
      if (e == 0) return missing("layer " + std::to_string(i) + "'s routed experts");
  }
  return out;
}

}  // namespace shoal::cluster
