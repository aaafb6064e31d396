// GGUF LoRA adapters (llama.cpp's convert_lora_to_gguf.py layout, applied as src/llama-adapter.cpp
// does) read into the LoraAdapter a PEFT folder gives: the same checks against the base
// (model/lora.cpp), A and B as views into the mapped file.
#include "model/lora_gguf.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "model/gguf_checkpoint.h"

namespace shoal {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kA = ".lora_a", kB = ".lora_b";
constexpr int64_t kMaxExperts = 65536;

// llama.cpp's architecture name of the base (what its adapter loader compares general.architecture with).
std::string gguf_arch(const ModelConfig& c) {
  return c.uses_mla() ? "deepseek2" : c.model_type == ModelType::kQwen2 ? "qwen2" : "llama";
}

// The one file `path` names: itself, or the folder's only *.gguf.
StatusOr<fs::path> adapter_file(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_directory(path, ec)) return path;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(path, ec))
    if (e.path().extension() == ".gguf") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  if (files.size() == 1) return files.front();
  std::string list;
  for (const fs::path& f : files) list += (list.empty() ? "" : ", ") + f.filename().string();
  return invalid_argument("LoRA adapter " + path.string() + ": the folder holds " + std::to_string(files.size()) +
                          " .gguf files (" + list + "); pass the adapter's file");
}

// The adapter's metadata, checked as llama.cpp's loader reads it.
class Meta {
 public:
  Meta(const GgufHeader& h, std::string file) : h_(h), file_(std::move(file)) {}
  Status fail(const std::string& key, const std::string& why) const {
    return invalid_argument(file_ + ": metadata '" + key + "' " + why);
  }
  // The STRING `key`; `why_missing` says why it is needed.
  StatusOr<std::string> string(const std::string& key, const std::string& why_missing) const {
    const GgufValue* v = h_.find(key);
    if (!v) return fail(key, "is missing: " + why_missing);
    if (v->type != GgufType::kString) return fail(key, "must be a STRING, got " + v->describe());
    return v->s;
  }
  const GgufValue* find(const std::string& key) const { return h_.find(key); }

 private:
  const GgufHeader& h_;
  std::string file_;
};

struct Header {
  std::string arch;
  float alpha = 0;  // 0: absent (llama.cpp then applies scale 1)
};

StatusOr<Header> read_header(const Meta& meta, const ModelConfig* base) {
  Header h;
  SHOAL_ASSIGN_OR_RETURN(std::string type, meta.string("general.type", "not a GGUF adapter (llama.cpp's "
                                                                       "convert_lora_to_gguf.py writes \"adapter\")"));
  if (type != "adapter")
    return meta.fail("general.type", "is \"" + type + "\", not \"adapter\"" +
                                         (type == "model" ? ": a model, not an adapter (give it as --model)" : ""));
  SHOAL_ASSIGN_OR_RETURN(std::string adapter, meta.string("adapter.type", "llama.cpp's adapters say \"lora\""));
  if (adapter != "lora")
    return meta.fail("adapter.type", "is \"" + adapter + "\": only \"lora\" adapters are supported");
  SHOAL_ASSIGN_OR_RETURN(h.arch, meta.string("general.architecture", "llama.cpp matches it against the base's"));
  if (base && h.arch != gguf_arch(*base))
    return meta.fail("general.architecture", "is \"" + h.arch + "\" but the base is \"" + gguf_arch(*base) +
                                                 "\": an adapter of another model");
  if (!base && h.arch != "deepseek2" && h.arch != "qwen2" && h.arch != "llama")
    return meta.fail("general.architecture", "is \"" + h.arch + "\" (deepseek2, qwen2 and llama are supported)");
  if (const GgufValue* v = meta.find("adapter.lora.alpha")) {
    // llama.cpp reads it with gguf_get_val_f32, which requires FLOAT32.
    if (v->type != GgufType::kF32) return meta.fail("adapter.lora.alpha", "must be a FLOAT32, got " + v->describe());
    h.alpha = float(v->f);
    if (!std::isfinite(h.alpha) || h.alpha < 0)
      return meta.fail("adapter.lora.alpha", "is " + v->describe() + ": must be a finite number >= 0");
  }
  if (meta.find("adapter.alora.invocation_tokens"))
    return meta.fail("adapter.alora.invocation_tokens", "is set: activated LoRA (applied only after those tokens) "
                                                        "is not supported");
  return h;
}

std::string ne_text(const GgufTensor& t) {
  std::string s = "{";
  for (size_t d = 0; d < t.ne.size(); ++d) s += (d ? ", " : "") + std::to_string(t.ne[d]);
  return s + "}";
}

// Without a base: the linear weights of the models shoal runs (the router, norms, biases, the
// embedding and the head are never adapted).
bool is_linear(const std::string& hf) {
  return (hf.ends_with("_proj.weight") || hf.ends_with("kv_a_proj_with_mqa.weight")) && hf.starts_with("model.layers.");
}

kernels::Matrix view(const std::byte* data, DType dtype, int64_t rows, int64_t cols) {
  kernels::Matrix m;
  m.data = data;
  m.dtype = dtype;
  m.rows = rows;
  m.cols = cols;
  return m;
}

// Checks one lora_a / lora_b pair of base tensor `name` and adds its module(s) to `adapter`.
class PairReader {
 public:
  PairReader(LoraAdapter& adapter, const GgufFile& f, const Header& h, const ModelConfig* base)
      : adapter_(adapter), f_(f), h_(h), base_(base), file_(f.path().string()),
        base_weights_(base ? lora_adaptable_weights(*base) : std::map<std::string, std::pair<int64_t, int64_t>>{}) {}

  Status add(const std::string& name, const GgufTensor& a, const GgufTensor& b) {
    for (const GgufTensor* t : {&a, &b}) {
      if (t->dtype != DType::kF32 && t->dtype != DType::kF16 && t->dtype != DType::kBF16 && t->dtype != DType::kQ8_0)
        return fail(*t, "is " + std::string(dtype_name(t->dtype)) + "; LoRA weights must be F32, F16, BF16 or Q8_0");
      for (int64_t n : t->ne)
        if (n <= 0) return fail(*t, "has ne " + ne_text(*t) + ": an empty dimension");
    }
    if (name.ends_with(".attn_k_b.weight") || name.ends_with(".attn_v_b.weight"))
      return fail(a, "adapts MLA's split attn_k_b / attn_v_b, which shoal does not apply: a LoRA pair on a per-head "
                     "(transposed) slice is not one on kv_b_proj; convert the adapter with kv_b_proj whole "
                     "(attn_kv_b)");
    if (const auto hf = gguf_hf_name(name)) return add_one(name, *hf, a, b);
    if (gguf_hf_name(name, 0)) return add_experts(name, a, b);
    return fail(a, "names base tensor '" + name + "', which is not one of llama.cpp's " + h_.arch +
                       " tensors shoal knows");
  }

 private:
  Status fail(const GgufTensor& t, const std::string& why) const {
    return invalid_argument(file_ + ": tensor '" + t.name + "' " + why);
  }

  // The [out, in] of base weight `hf`, checked to be one LoRA may adapt (without a base: the adapter's own).
  StatusOr<std::pair<int64_t, int64_t>> base_shape(const std::string& hf, const GgufTensor& a, int64_t out, int64_t in) const {
    if (!base_) {
      if (!is_linear(hf))
        return fail(a, "adapts " + hf + ", not a linear layer LoRA can adapt (the router, norms, embedding and head "
                       "are not adapted)");
      return std::pair{out, in};
    }
    const auto it = base_weights_.find(hf);
    if (it == base_weights_.end())
      return fail(a, "adapts " + hf + ", which does not exist in the base model as a linear layer LoRA can adapt "
                     "(the router, norms, embedding and head are not adapted)");
    if (h_.arch == "llama" && !base_->rope_interleaved &&
        (hf.ends_with("self_attn.q_proj.weight") || hf.ends_with("self_attn.k_proj.weight")))
      return fail(a, "adapts " + hf + " with lora_b rows in llama.cpp's permuted (interleaved rope) order, which only "
                     "a GGUF base of the model shares; use the PEFT adapter on this base");
    return it->second;
  }

  Status add_one(const std::string& name, const std::string& hf, const GgufTensor& a, const GgufTensor& b) {
    if (a.ne.size() != 2 || b.ne.size() != 2)
      return fail(a.ne.size() != 2 ? a : b, "has ne " + ne_text(a.ne.size() != 2 ? a : b) + ": a LoRA tensor of '" +
                                                name + "' has 2 dimensions");
    const int64_t rank = a.ne[1];
    SHOAL_ASSIGN_OR_RETURN(const auto shape, base_shape(hf, a, b.ne[1], a.ne[0]));
    SHOAL_RETURN_IF_ERROR(check_lora_shapes(file_, a.name, a.shape(), b.name, b.shape(), rank, shape.first, shape.second));
    return emplace(hf, view(f_.data(a), a.dtype, rank, a.ne[0]), view(f_.data(b), b.dtype, b.ne[1], rank));
  }

  // Stacked routed experts: slice j of lora_a {in, r, E} and lora_b {r, out, E} is expert j's pair.
  Status add_experts(const std::string& name, const GgufTensor& a, const GgufTensor& b) {
    if (a.ne.size() != 3 || b.ne.size() != 3)
      return fail(a.ne.size() != 3 ? a : b, "has ne " + ne_text(a.ne.size() != 3 ? a : b) + ": the LoRA tensors of '" +
                                                name + "' stack the experts on a third dimension");
    const int64_t experts = a.ne[2], rank = a.ne[1];
    SHOAL_RETURN_IF_ERROR(base_shape(*gguf_hf_name(name, 0), a, b.ne[1], a.ne[0]).status());  // a MoE layer of the base
    const int64_t want = base_ ? base_->n_routed_experts : std::min(experts, kMaxExperts);
    if (experts != want || b.ne[2] != want)
      return fail(experts != want ? a : b, "has ne " + ne_text(experts != want ? a : b) + ", expected " +
                                               std::to_string(want) + " experts on its last dimension" +
                                               (base_ ? " (the base's n_routed_experts)" : ""));
    const uint64_t a_bytes = uint64_t(rank * dtype_row_bytes(a.dtype, a.ne[0]));
    const uint64_t b_bytes = uint64_t(b.ne[1] * dtype_row_bytes(b.dtype, b.ne[0]));
    for (int64_t j = 0; j < experts; ++j) {
      const std::string hf = *gguf_hf_name(name, j), at = "[" + std::to_string(j) + "]";
      SHOAL_ASSIGN_OR_RETURN(const auto shape, base_shape(hf, a, b.ne[1], a.ne[0]));
      SHOAL_RETURN_IF_ERROR(check_lora_shapes(file_, a.name + at, {rank, a.ne[0]}, b.name + at, {b.ne[1], b.ne[0]}, rank,
                                              shape.first, shape.second));
      SHOAL_RETURN_IF_ERROR(emplace(hf, view(f_.data(a) + uint64_t(j) * a_bytes, a.dtype, rank, a.ne[0]),
                                    view(f_.data(b) + uint64_t(j) * b_bytes, b.dtype, b.ne[1], rank)));
    }
    return {};
  }

  Status emplace(const std::string& hf, const kernels::Matrix& a, const kernels::Matrix& b) {
    LoraModule m;
    m.module = hf.substr(0, hf.size() - std::string_view(".weight").size());
    m.a = a;
    m.b = b;
    m.rank = a.rows;
    m.alpha = h_.alpha;
    m.scale = h_.alpha != 0 ? h_.alpha / float(m.rank) : 1.0f;  // llama.cpp's get_scale, in float
    if (!adapter_.modules.emplace(hf, std::move(m)).second)
      return invalid_argument(file_ + ": " + hf + " is adapted twice");
    return {};
  }

  LoraAdapter& adapter_;
  const GgufFile& f_;
  const Header& h_;
  const ModelConfig* base_;
  std::string file_;
  std::map<std::string, std::pair<int64_t, int64_t>> base_weights_;
};

}  // namespace

bool is_gguf_lora_path(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_directory(path, ec)) return path.extension() == ".gguf";  // a missing one too: its error names it
  if (fs::exists(path / "adapter_config.json", ec)) return false;
  for (const auto& e : fs::directory_iterator(path, ec))
    if (e.path().extension() == ".gguf") return true;
  return false;
}

StatusOr<std::unique_ptr<LoraAdapter>> load_gguf_lora(const fs::path& path, const ModelConfig* base) {
  SHOAL_ASSIGN_OR_RETURN(const fs::path file, adapter_file(path));
  auto adapter = std::make_unique<LoraAdapter>();
  adapter->dir = path;
  SHOAL_ASSIGN_OR_RETURN(adapter->gguf, GgufFile::open(file));
  const GgufFile& f = *adapter->gguf;
  const std::string name = file.string();
  SHOAL_ASSIGN_OR_RETURN(const Header h, read_header(Meta(f.header(), name), base));

  // Pair lora_a and lora_b by the base tensor they adapt, as llama.cpp's loader does.
  std::map<std::string, std::pair<const GgufTensor*, const GgufTensor*>> pairs;
  for (const GgufTensor& t : f.header().tensors) {
    const bool a = t.name.ends_with(kA), b = t.name.ends_with(kB);
    if (!a && !b)
      return invalid_argument(name + ": tensor '" + t.name + "' is not <base tensor>.lora_a or .lora_b (llama.cpp's "
                              "adapter layout; norms and other extra tensors are not supported)");
    auto& slot = pairs[t.name.substr(0, t.name.size() - kA.size())];
    (a ? slot.first : slot.second) = &t;
  }
  if (pairs.empty()) return invalid_argument(name + ": holds no LoRA tensors");
  PairReader reader(*adapter, f, h, base);
  for (const auto& [base_name, ab] : pairs) {
    if (!ab.first || !ab.second)
      return invalid_argument(name + ": tensor '" + base_name + "' has " +
                              (ab.first ? "lora_a but no lora_b" : "lora_b but no lora_a"));
    SHOAL_RETURN_IF_ERROR(reader.add(base_name, *ab.first, *ab.second));
  }

  // What inspect shows: the alpha, the most common rank, the module kinds adapted.
  adapter->alpha = h.alpha;
  std::map<int64_t, int64_t> ranks;
  std::set<std::string> kinds;
  for (const auto& [weight, m] : adapter->modules) {
    ++ranks[m.rank];
    kinds.insert(m.module.substr(m.module.rfind('.') + 1));
  }
  adapter->r = std::max_element(ranks.begin(), ranks.end(), [](auto& x, auto& y) { return x.second < y.second; })->first;
  for (const std::string& k : kinds) adapter->targets += (adapter->targets.empty() ? "" : ", ") + k;
  return adapter;
}

}  // namespace shoal
