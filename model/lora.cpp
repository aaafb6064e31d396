// PEFT LoRA adapters: adapter_config.json and adapter_model.safetensors checked against the base.
// (GGUF adapters: model/lora_gguf.cpp.)
#include "model/lora.h"

#include <bit>
#include <cctype>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <regex>

#include "model/lora_gguf.h"
#include "common/dtype.h"
#include "model/json_file.h"
#include "model/tensor_names.h"

namespace shoal {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr std::string_view kPrefix = "base_model.model.";
constexpr std::string_view kA = ".lora_A.weight", kB = ".lora_B.weight";

// PEFT's target_modules: a list matches a module whose name is an entry or ends in "." + entry;
// a string is a regex the whole module name must match.
struct Targets {
  std::vector<std::string> names;
  std::optional<std::regex> pattern;
  bool matches(const std::string& module) const {
    if (pattern) return std::regex_match(module, *pattern);
    for (const std::string& n : names)
      if (module == n || (module.size() > n.size() && module.ends_with("." + n))) return true;
    return false;
  }
};

// rank_pattern / alpha_pattern: the first key (in the file's order) that matches the module name
// as PEFT's get_pattern_key does, (.*\.)?KEY$.
template <typename T>
std::optional<T> pattern_value(const std::vector<std::pair<std::regex, T>>& pattern, const std::string& module) {
  for (const auto& [re, v] : pattern)
    if (std::regex_match(module, re)) return v;
  return std::nullopt;
}

class ConfigReader {
 public:
  ConfigReader(const json& j, std::string file) : j_(j), file_(std::move(file)) {}
  Status fail(const std::string& key, const std::string& why) const {
    return invalid_argument(file_ + ": '" + key + "' " + why);
  }
  bool present(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }
  const json& at(const char* key) const { return j_[key]; }

 private:
  const json& j_;
  std::string file_;
};

kernels::Matrix view(const SafetensorsFile& f, const TensorInfo& t) {
  kernels::Matrix m;
  m.data = f.data(t);
  m.dtype = t.dtype;
  m.rows = t.shape[0];
  m.cols = t.shape[1];
  return m;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace

std::map<std::string, std::pair<int64_t, int64_t>> lora_adaptable_weights(const ModelConfig& base) {
  ModelConfig c = base;
  c.mla_split_kv_b = false;  // adapters name Hugging Face's modules (kv_b_proj whole)
  std::map<std::string, std::pair<int64_t, int64_t>> out;
  for (const TensorSpec& t : model_tensors(c, /*with_mtp=*/false)) {
    if (t.shape.size() != 2 || t.unit == Unit::kEmbed || t.unit == Unit::kHead) continue;
    if (t.name.ends_with("mlp.gate.weight")) continue;  // the router
    out.emplace(t.name, std::pair{t.shape[0], t.shape[1]});
  }
  return out;
}

Status check_lora_shapes(const std::string& file, const std::string& a_name, const std::vector<int64_t>& a_shape,
                         const std::string& b_name, const std::vector<int64_t>& b_shape, int64_t rank, int64_t out,
                         int64_t in) {
  if (a_shape != std::vector<int64_t>{rank, in})
    return invalid_argument(file + ": tensor '" + a_name + "' is " + shape_text(a_shape) + ", expected " +
                            shape_text({rank, in}) + " (rank " + std::to_string(rank) + ", the base weight's " +
                            std::to_string(in) + " inputs)");
  if (b_shape != std::vector<int64_t>{out, rank})
    return invalid_argument(file + ": tensor '" + b_name + "' is " + shape_text(b_shape) + ", expected " +
                            shape_text({out, rank}) + " (the base weight's " + std::to_string(out) + " outputs, rank " +
                            std::to_string(rank) + ")");
  return {};
}

int64_t LoraAdapter::parameters() const {
  int64_t n = 0;
  for (const auto& [name, m] : modules) n += m.a.rows * m.a.cols + m.b.rows * m.b.cols;
  return n;
}

uint64_t LoraAdapter::bytes() const {
  uint64_t n = 0;
  for (const auto& [name, m] : modules)
    n += uint64_t(m.a.rows * dtype_row_bytes(m.a.dtype, m.a.cols)) + uint64_t(m.b.rows * dtype_row_bytes(m.b.dtype, m.b.cols));
  return n;
}

const LoraModule* LoraAdapter::find(const std::string& weight_name) const {
  const auto it = modules.find(weight_name);
  return it == modules.end() ? nullptr : &it->second;
}

StatusOr<kernels::Matrix> merge_lora(const kernels::Matrix& w, const LoraTerm& t, MergeInto into,
                                     MergedWeight& storage) {
  const int64_t rows = w.rows, cols = w.cols, r = t.a.rows;
  const DType stored = into == MergeInto::kStored ? w.dtype : DType::kF32;
  if (stored != DType::kF32 && stored != DType::kBF16 && stored != DType::kF16 && stored != DType::kF8E4M3)
    return invalid_argument(std::string("merging a LoRA adapter into the stored dtype works on BF16, F16 and FP8 "
                                        "weights, not ") + std::string(dtype_name(stored)) +
                            " (GGUF blocks): merge into float32 (--merge-into f32) or apply it unmerged (--lora)");
  std::vector<float>& merged = storage.f32;
  merged.resize(static_cast<size_t>(rows * cols));
  std::vector<float> a(static_cast<size_t>(r * cols)), b(static_cast<size_t>(r));
  for (int64_t k = 0; k < r; ++k) kernels::dequantize_row(a.data() + k * cols, t.a, k);
  std::vector<double> ba(static_cast<size_t>(cols));
  for (int64_t i = 0; i < rows; ++i) {
    kernels::dequantize_row(b.data(), t.b, i);
    std::fill(ba.begin(), ba.end(), 0.0);
    for (int64_t k = 0; k < r; ++k)
      for (int64_t c = 0; c < cols; ++c) ba[size_t(c)] += double(b[size_t(k)]) * double(a[size_t(k * cols + c)]);
    float* row = merged.data() + i * cols;
    kernels::dequantize_row(row, w, i);
    for (int64_t c = 0; c < cols; ++c) row[c] = float(double(row[c]) + double(t.scale) * ba[size_t(c)]);
  }
  kernels::Matrix m;
  m.dtype = stored;
  m.rows = rows;
  m.cols = cols;
  m.numerics = w.numerics;
  if (stored == DType::kF32) {
    m.data = merged.data();
    return m;
  }
  if (stored == DType::kBF16 || stored == DType::kF16) {
    storage.half.resize(merged.size());
    for (size_t i = 0; i < merged.size(); ++i)
      storage.half[i] = stored == DType::kBF16 ? float_to_bf16(merged[i])
                                               : std::bit_cast<uint16_t>(static_cast<_Float16>(merged[i]));
    m.data = storage.half.data();
  } else {  // FP8 blocks: each block's scale from its merged values, as DeepSeek's quantizer does
    m.block = w.block;
    const int64_t sr = (rows + w.block - 1) / w.block, sc = m.scale_cols();
    storage.fp8.resize(merged.size());
    storage.scale_inv.assign(static_cast<size_t>(sr * sc), 1.0f);
    for (int64_t bi = 0; bi < sr; ++bi)
      for (int64_t bj = 0; bj < sc; ++bj) {
        const int64_t r0 = bi * w.block, r1 = std::min(rows, r0 + w.block), c0 = bj * w.block,
                      c1 = std::min(cols, c0 + w.block);
        float amax = 0;
        for (int64_t i = r0; i < r1; ++i)
          for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(merged[size_t(i * cols + c)]));
        const float s = amax > 0 ? amax / 448.0f : 1.0f;
        storage.scale_inv[size_t(bi * sc + bj)] = s;
        for (int64_t i = r0; i < r1; ++i)
          for (int64_t c = c0; c < c1; ++c) storage.fp8[size_t(i * cols + c)] = float_to_fp8_e4m3(merged[size_t(i * cols + c)] / s);
      }
    m.data = storage.fp8.data();
    m.scale_inv = storage.scale_inv.data();
  }
  std::vector<float>().swap(merged);  // only the stored copy stays
  return m;
}

LoraTerms lora_terms(const LoraAdapters& adapters, const std::string& weight_name) {
  LoraTerms t;
  t.by_id.resize(adapters.size() + 1);
  for (size_t k = 0; k < adapters.size(); ++k) t.by_id[k + 1] = adapters[k]->term(weight_name);
  if (!t.any()) t.by_id.clear();
  return t;
}

LoraTerm LoraAdapter::term(const std::string& weight_name) const {
  const LoraModule* m = find(weight_name);
  if (!m) return {};
  LoraTerm t;
  t.a = m->a;
  t.b = m->b;
  t.scale = m->scale;
  return with_transposed_b(std::move(t));
}

namespace {
bool transposable(const kernels::Matrix& b) {
  return (b.dtype == DType::kF32 || b.dtype == DType::kF16 || b.dtype == DType::kBF16) && b.row0 == 0;
}
}  // namespace

LoraTerm with_transposed_b(LoraTerm t) {
  if (!t.active() || !transposable(t.b)) return t;
  const int64_t rows = t.b.rows, cols = t.b.cols, size = int64_t(dtype_bytes(t.b.dtype));
  auto bytes = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(rows * cols * size));
  const auto* src = static_cast<const uint8_t*>(t.b.data);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      std::memcpy(bytes->data() + (c * rows + r) * size, src + (r * cols + c) * size, static_cast<size_t>(size));
  t.bt.data = bytes->data();
  t.bt.dtype = t.b.dtype;
  t.bt.rows = cols;
  t.bt.cols = rows;
  t.bt_bytes = std::move(bytes);
  return t;
}

uint64_t lora_module_memory_bytes(const kernels::Matrix& a, const kernels::Matrix& b) {
  const uint64_t b_bytes = uint64_t(b.rows * dtype_row_bytes(b.dtype, b.cols));
  return uint64_t(a.rows * dtype_row_bytes(a.dtype, a.cols)) + b_bytes + (transposable(b) ? b_bytes : 0);
}

StatusOr<std::unique_ptr<LoraAdapter>> load_lora(const fs::path& dir, const ModelConfig* base) {
  std::error_code ec;
  if (is_gguf_lora_path(dir)) return load_gguf_lora(dir, base);
  if (!fs::is_directory(dir, ec)) return not_found("LoRA adapter " + dir.string() + ": not a folder");
  const fs::path config_path = dir / "adapter_config.json", weights_path = dir / "adapter_model.safetensors";
  if (!fs::exists(config_path, ec)) return not_found(config_path.string() + " not found (a PEFT adapter folder has it)");
  if (!fs::exists(weights_path, ec)) {
    if (fs::exists(dir / "adapter_model.bin", ec))
      return invalid_argument((dir / "adapter_model.bin").string() +
                              ": a pickle, which shoal never loads (it can run code); save the adapter with "
                              "safe_serialization=True or convert it to adapter_model.safetensors");
    return not_found(weights_path.string() + " not found");
  }
  SHOAL_ASSIGN_OR_RETURN(json j, read_json_object(config_path));
  const ConfigReader cfg(j, config_path.string());
  auto adapter = std::make_unique<LoraAdapter>();
  adapter->dir = dir;

  if (!cfg.present("peft_type") || !cfg.at("peft_type").is_string() || cfg.at("peft_type") != "LORA")
    return cfg.fail("peft_type", "must be \"LORA\"" + (cfg.present("peft_type") ? ", got " + cfg.at("peft_type").dump() : std::string(", missing")));
  if (cfg.present("use_dora") && cfg.at("use_dora") != false)
    return cfg.fail("use_dora", "is true: DoRA adapters (a learned magnitude per output) are not supported");
  if (cfg.present("modules_to_save") && !(cfg.at("modules_to_save").is_array() && cfg.at("modules_to_save").empty()))
    return cfg.fail("modules_to_save", "is set (" + cfg.at("modules_to_save").dump() +
                                           "): full copies of base modules are not supported, only LoRA pairs");
  if (cfg.present("bias") && cfg.at("bias") != "none")
    return cfg.fail("bias", "is " + cfg.at("bias").dump() + ": only \"none\" is supported (trained biases are not)");
  if (cfg.present("fan_in_fan_out") && cfg.at("fan_in_fan_out") != false)
    return cfg.fail("fan_in_fan_out", "is true: that layout is for GPT-2's Conv1D; these models' modules are Linear");
  if (!cfg.present("r") || !cfg.at("r").is_number_integer() || cfg.at("r").get<int64_t>() <= 0)
    return cfg.fail("r", "must be a positive integer" + (cfg.present("r") ? ", got " + cfg.at("r").dump() : std::string()));
  adapter->r = cfg.at("r").get<int64_t>();
  if (!cfg.present("lora_alpha") || !cfg.at("lora_alpha").is_number() || !(cfg.at("lora_alpha").get<double>() > 0))
    return cfg.fail("lora_alpha", "must be a positive number" +
                                      (cfg.present("lora_alpha") ? ", got " + cfg.at("lora_alpha").dump() : std::string()));
  adapter->alpha = cfg.at("lora_alpha").get<double>();
  if (cfg.present("use_rslora")) {
    if (!cfg.at("use_rslora").is_boolean()) return cfg.fail("use_rslora", "must be true or false");
    adapter->rslora = cfg.at("use_rslora").get<bool>();
  }
  Targets targets;
  if (!cfg.present("target_modules")) return cfg.fail("target_modules", "is missing");
  const json& tm = cfg.at("target_modules");
  if (tm.is_string()) {
    adapter->targets = tm.get<std::string>();
    try {
      targets.pattern.emplace(adapter->targets);
    } catch (const std::regex_error&) {
      return cfg.fail("target_modules", "is not a valid regular expression");
    }
  } else if (tm.is_array() && !tm.empty() && std::all_of(tm.begin(), tm.end(), [](const json& v) { return v.is_string(); })) {
    for (const json& v : tm) {
      targets.names.push_back(v.get<std::string>());
      adapter->targets += (adapter->targets.empty() ? "" : ", ") + v.get<std::string>();
    }
  } else {
    return cfg.fail("target_modules", "must be a non-empty list of module names or a regex string");
  }
  std::vector<std::pair<std::regex, int64_t>> rank_pattern;
  std::vector<std::pair<std::regex, double>> alpha_pattern;
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    if (!cfg.present(key)) continue;
    if (!cfg.at(key).is_object()) return cfg.fail(key, "must be an object of pattern: value");
    for (const auto& [k, v] : cfg.at(key).items()) {
      std::regex re;
      try {
        re = std::regex("(.*\\.)?(" + k + ")");
      } catch (const std::regex_error&) {
        return cfg.fail(std::string(key) + "." + k, "is not a valid regular expression");
      }
      const bool rank = std::string_view(key) == "rank_pattern";
      if (rank ? !(v.is_number_integer() && v.get<int64_t>() > 0) : !(v.is_number() && v.get<double>() > 0))
        return cfg.fail(std::string(key) + "." + k, std::string("must be a positive ") + (rank ? "integer" : "number"));
      if (rank) rank_pattern.emplace_back(re, v.get<int64_t>());
      else alpha_pattern.emplace_back(re, v.get<double>());
    }
  }

  SHOAL_ASSIGN_OR_RETURN(adapter->file, SafetensorsFile::open(weights_path));
  const auto base_weights = base ? lora_adaptable_weights(*base) : std::map<std::string, std::pair<int64_t, int64_t>>{};
  const std::string file = weights_path.string();
  std::map<std::string, std::pair<const TensorInfo*, const TensorInfo*>> pairs;  // module -> A, B
  for (const TensorInfo& t : adapter->file->tensors()) {
    const std::string& n = t.name;
    const bool a = n.ends_with(kA), b = n.ends_with(kB);
    if (!n.starts_with(kPrefix) || (!a && !b))
      return invalid_argument(file + ": tensor '" + n + "' is not base_model.model.<module>.lora_A/lora_B.weight");
    const std::string module = n.substr(kPrefix.size(), n.size() - kPrefix.size() - kA.size());
    (a ? pairs[module].first : pairs[module].second) = &t;
  }
  if (pairs.empty()) return invalid_argument(file + ": holds no LoRA tensors");
  for (const auto& [module, ab] : pairs) {
    const std::string who = file + ": module '" + module + "'";
    if (!ab.first || !ab.second)
      return invalid_argument(who + " has " + (ab.first ? "lora_A but no lora_B" : "lora_B but no lora_A"));
    const auto base_it = base_weights.find(module + ".weight");
    if (base && base_it == base_weights.end())
      return invalid_argument(who + " does not exist in the base model as a linear layer LoRA can adapt "
                              "(the router, norms, embedding and head are not adapted)");
    if (!targets.matches(module))
      return invalid_argument(who + " is not in target_modules (" + adapter->targets + ")");
    const TensorInfo &ta = *ab.first, &tb = *ab.second;
    for (const TensorInfo* t : {&ta, &tb})
      if (t->dtype != DType::kF32 && t->dtype != DType::kF16 && t->dtype != DType::kBF16)
        return invalid_argument(file + ": tensor '" + t->name + "' is " + std::string(dtype_name(t->dtype)) +
                                "; LoRA weights must be F32, F16 or BF16");
    // Without a base, the adapter's own B rows and A columns stand for the weight's shape.
    const auto [out, in] = base ? base_it->second
                                : std::pair{tb.shape.empty() ? int64_t(0) : tb.shape[0], ta.shape.size() < 2 ? int64_t(0) : ta.shape[1]};
    const int64_t rank = pattern_value(rank_pattern, module).value_or(adapter->r);
    SHOAL_RETURN_IF_ERROR(check_lora_shapes(file, ta.name, ta.shape, tb.name, tb.shape, rank, out, in));
    LoraModule m;
    m.module = module;
    m.a = view(*adapter->file, ta);
    m.b = view(*adapter->file, tb);
    m.rank = rank;
    m.alpha = pattern_value(alpha_pattern, module).value_or(adapter->alpha);
    m.scale = float(adapter->rslora ? m.alpha / std::sqrt(double(rank)) : m.alpha / double(rank));
    adapter->modules.emplace(module + ".weight", std::move(m));
  }
  return adapter;
}

StatusOr<std::vector<LoraSpec>> parse_lora_specs(const std::vector<std::string>& values) {
  std::vector<LoraSpec> specs;
  for (const std::string& v : values) {
    LoraSpec s;
    const size_t eq = v.find('=');
    const std::string head = eq == std::string::npos ? std::string() : v.substr(0, eq);
    if (!head.empty() && head.find('/') == std::string::npos) {
      s.name = head;
      s.dir = v.substr(eq + 1);
      for (char ch : s.name)
        if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '.' && ch != '_' && ch != '-' && ch != ':')
          return invalid_argument("--lora " + v + ": the name '" + s.name +
                                  "' may hold only letters, digits and . _ - :");
    } else {
      s.dir = v;
    }
    if (s.dir.empty()) return invalid_argument("--lora " + v + ": no adapter folder after the name");
    for (const LoraSpec& o : specs)
      if (o.name == s.name && !s.name.empty())
        return invalid_argument("--lora: the name '" + s.name + "' is given twice (" + o.dir.string() + ", " +
                                s.dir.string() + ")");
    specs.push_back(std::move(s));
  }
  if (specs.size() > 1)
    for (const LoraSpec& s : specs)
      if (s.name.empty())
        return invalid_argument("--lora " + s.dir.string() +
                                ": several adapters need a name each (--lora NAME=DIR), which requests give as "
                                "their model");
  return specs;
}

StatusOr<std::vector<std::unique_ptr<LoraAdapter>>> load_loras(const std::vector<LoraSpec>& specs,
                                                               const ModelConfig& base, bool merge, MergeInto into) {
  if (merge && specs.size() > 1)
    return invalid_argument("--merge-lora folds one adapter into the weights; serve several with --lora NAME=DIR");
  std::vector<std::unique_ptr<LoraAdapter>> out;
  for (const LoraSpec& s : specs) {
    SHOAL_ASSIGN_OR_RETURN(std::unique_ptr<LoraAdapter> a, load_lora(s.dir, &base));
    a->name = s.name;
    a->merge = merge;
    a->merge_into = into;
    out.push_back(std::move(a));
  }
  return out;
}

std::vector<std::string> lora_names(const std::vector<std::unique_ptr<LoraAdapter>>& owned) {
  std::vector<std::string> names;
  for (const auto& a : owned) names.push_back(a->name);
  return names;
}

LoraAdapters lora_views(const std::vector<std::unique_ptr<LoraAdapter>>& owned) {
  LoraAdapters v;
  for (const auto& a : owned) v.push_back(a.get());
  return v;
}

}  // namespace shoal
