#include "model/inspect.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string_view>

#include "model/checkpoint.h"
#include "model/gguf.h"
#include "model/tensor_names.h"

namespace shoal {
namespace {

namespace fs = std::filesystem;
using nlohmann::ordered_json;

// ---- license --------------------------------------------------------------------------------

struct KnownLicense {
  std::string_view marker;  // text that identifies it near the top of the file
  std::string_view name;
};

constexpr KnownLicense kKnownLicenses[] = {
    {"MIT License", "MIT"},
    {"Permission is hereby granted, free of charge", "MIT"},
    {"Apache License", "Apache-2.0"},
    {"DEEPSEEK LICENSE AGREEMENT", "DeepSeek License Agreement"},
    {"GNU GENERAL PUBLIC LICENSE", "GPL"},
    {"BSD 3-Clause", "BSD-3-Clause"},
};

constexpr const char* kLicenseFiles[] = {"LICENSE", "LICENSE.txt", "LICENSE.md", "LICENSE-MODEL"};

std::string trim(std::string_view s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos) return "";
  const auto e = s.find_last_not_of(" \t\r\n");
  return std::string(s.substr(b, e - b + 1));
}

std::string read_head(const fs::path& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  std::string text(max_bytes, '\0');
  in.read(text.data(), std::streamsize(max_bytes));
  text.resize(size_t(in.gcount()));
  return text;
}

std::string license_from_file(const std::string& text) {
  for (const KnownLicense& k : kKnownLicenses)
    if (text.find(k.marker) != std::string::npos) return std::string(k.name);
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    std::string t = trim(line);
    while (!t.empty() && t[0] == '#') t = trim(t.substr(1));  // a Markdown title
    if (!t.empty()) return t;
  }
  return "";
}

// `license: x` among the YAML front matter of a README (between leading `---` lines).
std::string license_from_front_matter(const std::string& text) {
  std::istringstream in(text);
  std::string line;
  if (!std::getline(in, line) || trim(line) != "---") return "";
  while (std::getline(in, line)) {
    if (trim(line) == "---") break;
    if (!line.starts_with("license:")) continue;
    std::string v = trim(std::string_view(line).substr(8));
    const bool quoted = v.size() >= 2 && (v.front() == '"' || v.front() == '\'') && v.back() == v.front();
    if (quoted) v = v.substr(1, v.size() - 2);
    return v;
  }
  return "";
}

// ---- GGUF -----------------------------------------------------------------------------------

// gguf-py's LlamaFileType (llama.cpp 3f545be), by id; "" where the id is unused.
constexpr std::string_view kFileTypes[] = {
    "ALL_F32", "MOSTLY_F16", "MOSTLY_Q4_0", "MOSTLY_Q4_1", "", "", "", "MOSTLY_Q8_0", "MOSTLY_Q5_0",
    "MOSTLY_Q5_1", "MOSTLY_Q2_K", "MOSTLY_Q3_K_S", "MOSTLY_Q3_K_M", "MOSTLY_Q3_K_L", "MOSTLY_Q4_K_S",
    "MOSTLY_Q4_K_M", "MOSTLY_Q5_K_S", "MOSTLY_Q5_K_M", "MOSTLY_Q6_K", "MOSTLY_IQ2_XXS", "MOSTLY_IQ2_XS",
    "MOSTLY_Q2_K_S", "MOSTLY_IQ3_XS", "MOSTLY_IQ3_XXS", "MOSTLY_IQ1_S", "MOSTLY_IQ4_NL", "MOSTLY_IQ3_S",
    "MOSTLY_IQ3_M", "MOSTLY_IQ2_S", "MOSTLY_IQ2_M", "MOSTLY_IQ4_XS", "MOSTLY_IQ1_M", "MOSTLY_BF16", "", "", "",
    "MOSTLY_TQ1_0", "MOSTLY_TQ2_0", "MOSTLY_MXFP4_MOE", "MOSTLY_NVFP4", "MOSTLY_Q1_0", "MOSTLY_Q2_0",
};

std::string meta_string(const GgufHeader& h, std::string_view key) {
  const GgufValue* v = h.find(key);
  return v && v->type == GgufType::kString ? v->s : "";
}

GgufSummary gguf_summary(const GgufModel& m) {
  GgufSummary g;
  const GgufHeader& meta = m.meta();
  g.version = meta.version;
  g.architecture = meta_string(meta, "general.architecture");
  g.name = meta_string(meta, "general.name");
  if (const GgufValue* ft = meta.find("general.file_type"); ft && ft->is_integer()) g.file_type = ft->i;
  for (const auto& part : m.parts()) {
    g.parts.push_back({part->path().filename().string(), part->size()});
    for (const GgufTensor& t : part->header().tensors) {
      GgufSummary::TypeBytes& b = g.by_type[std::string(dtype_name(t.dtype))];
      ++b.tensors;
      b.bytes += t.bytes;
    }
  }
  return g;
}

// ---- text helpers ---------------------------------------------------------------------------

std::string with_commas(uint64_t v) {
  std::string s = std::to_string(v), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

std::string gigabytes(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GB", double(bytes) / 1e9);
  return buf;
}

std::string billions(int64_t params) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2fB", double(params) / 1e9);
  return buf;
}

// Whole numbers in full (rope_theta 1000000, not 1e+06); others as ostream prints them.
std::string num(double v) {
  if (v == std::floor(v) && std::fabs(v) < 1e15) return std::to_string(int64_t(v));
  std::ostringstream os;
  os << v;
  return os.str();
}

// Config values as config.json spells them.
const char* model_type_name(ModelType t) {
  switch (t) {
    case ModelType::kDeepseekV2: return "deepseek_v2";
    case ModelType::kDeepseekV3: return "deepseek_v3";
    case ModelType::kQwen2: return "qwen2";
    case ModelType::kLlama: return "llama";
  }
  return "?";
}
const char* scoring_func_name(ScoringFunc f) { return f == ScoringFunc::kSigmoid ? "sigmoid" : "softmax"; }
const char* topk_method_name(TopkMethod m) {
  switch (m) {
    case TopkMethod::kGreedy: return "greedy";
    case TopkMethod::kGroupLimitedGreedy: return "group_limited_greedy";
    case TopkMethod::kNoauxTc: return "noaux_tc";
  }
  return "?";
}

uint64_t total_bytes(const ModelSummary& s) {
  uint64_t n = 0;
  for (const auto& [d, b] : s.bytes_by_dtype) n += b;
  return n;
}

std::string attention_text(const ModelConfig& c) {
  if (!c.uses_mla()) {
    std::string t = "GQA, " + std::to_string(c.n_heads) + " heads, " + std::to_string(c.n_kv_heads) + " KV heads, head_dim " +
                    std::to_string(c.head_dim);
    if (c.qkv_bias && c.o_bias) t += ", q/k/v/o bias";
    else if (c.qkv_bias) t += ", q/k/v bias";
    return t;
  }
  const std::string q = c.q_lora_rank > 0 ? std::to_string(c.q_lora_rank) : std::string("none");
  return "MLA, " + std::to_string(c.n_heads) + " heads, q_lora_rank " + q + ", kv_lora_rank " +
         std::to_string(c.kv_lora_rank) + ", qk_nope/rope/v head dims " + std::to_string(c.qk_nope_head_dim) + "/" +
         std::to_string(c.qk_rope_head_dim) + "/" + std::to_string(c.v_head_dim);
}

std::string rope_text(const ModelConfig& c) {
  std::string t = "theta " + num(c.rope_theta) + ", max " + std::to_string(c.max_position_embeddings) + " positions";
  if (c.yarn.enabled)
    t += ", yarn factor " + num(c.yarn.factor) + " from " + std::to_string(c.yarn.original_max_position_embeddings);
  if (c.llama3.enabled)
    t += ", llama3 factor " + num(c.llama3.factor) + " (low/high freq factors " + num(c.llama3.low_freq_factor) + "/" +
         num(c.llama3.high_freq_factor) + ") from " + std::to_string(c.llama3.original_max_position_embeddings);
  if (!c.rope_freq_factors.empty())  // a llama GGUF's llama3 scaling, as stored
    t += ", frequency factors from rope_freqs (" + std::to_string(c.rope_freq_factors.size()) + " pairs)";
  return t;
}

std::string bytes_text(const ModelSummary& s) {
  if (!s.has_weights) return "no safetensors in the folder";
  std::string t;
  if (s.gguf)
    for (const auto& [d, b] : s.gguf->by_type) t += d + " " + std::to_string(b.tensors) + " x " + with_commas(b.bytes) + ", ";
  else
    for (const auto& [d, b] : s.bytes_by_dtype) t += d + " " + with_commas(b) + ", ";
  return t + "total " + gigabytes(total_bytes(s)) + " in " + std::to_string(s.n_tensors) + " tensors";
}

std::string file_type_text(int64_t file_type) {
  return file_type < 0 ? std::string("not given") : std::to_string(file_type) + " " + llama_file_type_name(file_type);
}

ordered_json gguf_json(const GgufSummary& g) {
  ordered_json parts = ordered_json::array();
  for (const auto& p : g.parts) parts.push_back({{"file", p.file}, {"bytes", p.bytes}});
  ordered_json types = ordered_json::object();
  for (const auto& [d, b] : g.by_type) types[d] = {{"tensors", b.tensors}, {"bytes", b.bytes}};
  return {{"version", g.version},
          {"architecture", g.architecture},
          {"name", g.name.empty() ? ordered_json(nullptr) : ordered_json(g.name)},
          {"file_type", g.file_type < 0 ? ordered_json(nullptr) : ordered_json(g.file_type)},
          {"file_type_name", g.file_type < 0 ? ordered_json(nullptr) : ordered_json(llama_file_type_name(g.file_type))},
          {"parts", std::move(parts)},
          {"tensors_by_type", std::move(types)}};
}

ordered_json rope_json(const ModelConfig& c) {
  if (c.llama3.enabled)
    return {{"type", "llama3"},
            {"factor", c.llama3.factor},
            {"low_freq_factor", c.llama3.low_freq_factor},
            {"high_freq_factor", c.llama3.high_freq_factor},
            {"original_max_position_embeddings", c.llama3.original_max_position_embeddings}};
  if (!c.yarn.enabled) return nullptr;
  return {{"type", "yarn"},
          {"factor", c.yarn.factor},
          {"original_max_position_embeddings", c.yarn.original_max_position_embeddings},
          {"beta_fast", c.yarn.beta_fast},
          {"beta_slow", c.yarn.beta_slow},
          {"mscale", c.yarn.mscale},
          {"mscale_all_dim", c.yarn.mscale_all_dim}};
}

// A dense model (Qwen2, Llama): grouped-query attention and a SwiGLU MLP in every layer; no
// MLA, expert or MTP fields.
ordered_json dense_architecture_json(const ModelSummary& s) {
  const ModelConfig& c = s.config;
  return {{"model_type", model_type_name(c.model_type)},
          {"n_layers", c.n_layers},
          {"n_dense_layers", s.n_dense_layers},
          {"n_moe_layers", s.n_moe_layers},
          {"vocab_size", c.vocab_size},
          {"hidden_size", c.dim},
          {"intermediate_size", c.inter_dim},
          {"num_attention_heads", c.n_heads},
          {"num_key_value_heads", c.n_kv_heads},
          {"head_dim", c.head_dim},
          {"qkv_bias", c.qkv_bias},
          {"o_bias", c.o_bias},
          {"tie_word_embeddings", c.tie_word_embeddings},
          {"kv_cache_floats_per_token_and_layer", c.kv_cache_width()},
          {"rope_theta", c.rope_theta},
          {"rope_scaling", rope_json(c)},
          {"max_position_embeddings", c.max_position_embeddings}};
}

ordered_json architecture_json(const ModelSummary& s) {
  const ModelConfig& c = s.config;
  if (!c.uses_mla()) return dense_architecture_json(s);
  return {{"model_type", model_type_name(c.model_type)},
          {"n_layers", c.n_layers},
          {"n_dense_layers", s.n_dense_layers},
          {"n_moe_layers", s.n_moe_layers},
          {"vocab_size", c.vocab_size},
          {"hidden_size", c.dim},
          {"intermediate_size", c.inter_dim},
          {"moe_intermediate_size", c.moe_inter_dim},
          {"num_attention_heads", c.n_heads},
          {"q_lora_rank", c.q_lora_rank > 0 ? ordered_json(c.q_lora_rank) : ordered_json(nullptr)},
          {"kv_lora_rank", c.kv_lora_rank},
          {"qk_nope_head_dim", c.qk_nope_head_dim},
          {"qk_rope_head_dim", c.qk_rope_head_dim},
          {"v_head_dim", c.v_head_dim},
          {"n_routed_experts", c.n_routed_experts},
          {"n_shared_experts", c.n_shared_experts},
          {"num_experts_per_tok", c.n_activated_experts},
          {"n_group", c.n_expert_groups},
          {"topk_group", c.n_limited_groups},
          {"topk_method", topk_method_name(c.topk_method)},
          {"scoring_func", scoring_func_name(c.score_func)},
          {"norm_topk_prob", c.norm_topk_prob},
          {"routed_scaling_factor", c.route_scale},
          {"rope_theta", c.rope_theta},
          {"rope_scaling", rope_json(c)},
          {"max_position_embeddings", c.max_position_embeddings},
          {"fp8_weight_block_size", c.fp8 ? ordered_json(c.fp8_block) : ordered_json(nullptr)}};
}

}  // namespace

ParamCounts count_params(const ModelConfig& c) {
  ParamCounts p;
  int64_t embed = 0, idle_experts = 0;
  for (const TensorSpec& t : model_tensors(c, /*with_mtp=*/false)) {
    p.total += t.numel();
    if (t.unit == Unit::kEmbed) embed += t.numel();
    // Routed experts of a layer are alike: expert 0's tensors stand for each unselected one.
    if (t.unit == Unit::kExpert && t.expert == 0)
      idle_experts += t.numel() * (c.n_routed_experts - c.n_activated_experts);
  }
  // A lookup reads one row of the embedding; a tied embedding is also the head, used in full.
  // A dense model (no routing) counts every parameter as active, as its model card does.
  p.active = c.uses_mla() ? p.total - (c.tie_word_embeddings ? 0 : embed) - idle_experts : p.total;
  for (int64_t k = 0; k < c.n_mtp_layers; ++k)
    for (const TensorSpec& t : mtp_tensors(c, k)) p.mtp += t.numel();
  return p;
}

std::string llama_file_type_name(int64_t file_type) {
  if (file_type >= 0 && file_type < int64_t(std::size(kFileTypes)) && !kFileTypes[file_type].empty())
    return std::string(kFileTypes[file_type]);
  return file_type == 1024 ? "GUESSED" : "UNKNOWN";
}

std::string find_license(const fs::path& dir) {
  std::error_code ec;
  for (const char* name : kLicenseFiles) {
    if (!fs::is_regular_file(dir / name, ec)) continue;
    std::string found = license_from_file(read_head(dir / name, 1 << 16));
    if (!found.empty()) return found;
  }
  if (fs::is_regular_file(dir / "README.md", ec)) {
    std::string found = license_from_front_matter(read_head(dir / "README.md", 1 << 16));
    if (!found.empty()) return found;
  }
  return "unknown";
}

StatusOr<ModelSummary> inspect_model(const fs::path& path) {
  SHOAL_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ck, Checkpoint::open(path));
  ModelSummary s;
  s.config = ck->config();
  s.params = count_params(s.config);
  for (int64_t i = 0; i < s.config.n_layers; ++i)
    ++(s.config.is_moe_layer(i) ? s.n_moe_layers : s.n_dense_layers);
  s.has_weights = ck->has_weights();
  if (s.has_weights) {
    SHOAL_ASSIGN_OR_RETURN(std::vector<TensorInfo> infos, ck->all_tensor_infos());
    std::set<std::string> present;
    for (const TensorInfo& t : infos) {
      s.bytes_by_dtype[std::string(dtype_name(t.dtype))] += t.end - t.begin;
      present.insert(t.name);
    }
    s.n_tensors = int64_t(infos.size());
    s.has_mtp_weights = s.config.n_mtp_layers > 0;
    for (int64_t k = 0; k < s.config.n_mtp_layers; ++k)
      for (const TensorSpec& t : mtp_tensors(s.config, k))
        s.has_mtp_weights = s.has_mtp_weights && present.count(t.name) > 0;
  }
  std::error_code ec;
  const fs::path dir = fs::is_directory(path, ec) ? path : path.parent_path();
  if (const GgufModel* m = ck->gguf()) {
    // The file's own tensors (a stacked expert tensor is one, not n_routed_experts views).
    s.gguf = gguf_summary(*m);
    s.bytes_by_dtype.clear();
    s.n_tensors = 0;
    for (const auto& [d, b] : s.gguf->by_type) {
      s.bytes_by_dtype[d] = b.bytes;
      s.n_tensors += b.tensors;
    }
    s.license = meta_string(m->meta(), "general.license");
    if (s.license.empty()) s.license = find_license(dir);
  } else {
    s.license = find_license(dir);
  }
  return s;
}

std::string summary_json(const ModelSummary& s) {
  ordered_json j = architecture_json(s);
  j["total_params"] = s.params.total;
  j["active_params"] = s.params.active;
  if (s.config.uses_mla()) {
    j["mtp_params"] = s.params.mtp;
    j["num_nextn_predict_layers"] = s.config.n_mtp_layers;
  }
  j["has_weights"] = s.has_weights;
  if (s.config.uses_mla()) j["has_mtp_weights"] = s.has_mtp_weights;
  j["n_tensors"] = s.n_tensors;
  j["bytes_by_dtype"] = ordered_json::object();
  for (const auto& [d, b] : s.bytes_by_dtype) j["bytes_by_dtype"][d] = b;
  j["total_bytes"] = total_bytes(s);
  j["license"] = s.license;
  if (s.gguf) j["gguf"] = gguf_json(*s.gguf);
  return j.dump(2) + "\n";
}

namespace {

// The rows of DeepSeek-V2/V3 (MLA, MoE, MTP) between model_type and bytes.
template <typename Row>
void mla_rows(const ModelSummary& s, Row& row) {
  const ModelConfig& c = s.config;
  row("layers", std::to_string(c.n_layers) + " (" + std::to_string(s.n_dense_layers) + " dense, " +
                    std::to_string(s.n_moe_layers) + " MoE) + " + std::to_string(c.n_mtp_layers) + " MTP");
  row("hidden", "hidden_size " + std::to_string(c.dim) + ", intermediate_size " + std::to_string(c.inter_dim) +
                    ", moe_intermediate_size " + std::to_string(c.moe_inter_dim) + ", vocab " +
                    std::to_string(c.vocab_size));
  row("attention", attention_text(c));
  row("experts", std::to_string(c.n_routed_experts) + " routed, " + std::to_string(c.n_shared_experts) +
                     " shared, " + std::to_string(c.n_activated_experts) + " activated; " +
                     std::to_string(c.n_expert_groups) + " groups, top " + std::to_string(c.n_limited_groups));
  row("routing", std::string(topk_method_name(c.topk_method)) + ", " + scoring_func_name(c.score_func) +
                     (c.norm_topk_prob ? ", normalised top-k" : "") + ", scale " + num(c.route_scale));
  row("rope", rope_text(c));
  row("parameters", with_commas(uint64_t(s.params.total)) + " total (" + billions(s.params.total) + "), " +
                        with_commas(uint64_t(s.params.active)) + " active per token (" +
                        billions(s.params.active) + ")");
  const char* mtp_weights = !s.has_weights ? "not checked (no safetensors)" : s.has_mtp_weights ? "present" : "absent";
  row("mtp", std::to_string(c.n_mtp_layers) + " layer(s) in the config, " + with_commas(uint64_t(s.params.mtp)) +
                 " parameters; weights " + mtp_weights);
}

// The rows of a dense model (Qwen2, Llama) between model_type and bytes.
template <typename Row>
void dense_rows(const ModelSummary& s, Row& row) {
  const ModelConfig& c = s.config;
  row("layers", std::to_string(c.n_layers) + ", all dense (grouped-query attention, SwiGLU MLP)");
  row("hidden", "hidden_size " + std::to_string(c.dim) + ", intermediate_size " + std::to_string(c.inter_dim) +
                    ", vocab " + std::to_string(c.vocab_size) +
                    (c.tie_word_embeddings ? ", lm_head tied to the embedding" : ""));
  row("attention", attention_text(c));
  row("experts", "none (no MoE layers)");
  row("rope", rope_text(c));
  row("parameters", with_commas(uint64_t(s.params.total)) + " total (" + billions(s.params.total) + "), " +
                        with_commas(uint64_t(s.params.active)) + " active per token (" + billions(s.params.active) +
                        ": all)");
}

}  // namespace

std::string summary_text(const ModelSummary& s) {
  const ModelConfig& c = s.config;
  std::ostringstream o;
  auto row = [&](std::string_view label, const std::string& value) {
    o << label << std::string(14 - label.size(), ' ') << value << "\n";
  };
  row("model_type", model_type_name(c.model_type));
  if (c.uses_mla()) mla_rows(s, row);
  else dense_rows(s, row);
  row("bytes", bytes_text(s));
  if (s.gguf) {
    const GgufSummary& g = *s.gguf;
    row("gguf", "version " + std::to_string(g.version) + ", architecture " + g.architecture + ", general.name " +
                    (g.name.empty() ? std::string("(none)") : "\"" + g.name + "\""));
    row("file_type", file_type_text(g.file_type));
    std::string parts;
    uint64_t all = 0;
    for (const auto& p : g.parts) {
      parts += (parts.empty() ? "" : ", ") + p.file + " (" + with_commas(p.bytes) + " bytes)";
      all += p.bytes;
    }
    row("parts", std::to_string(g.parts.size()) + ", " + gigabytes(all) + ": " + parts);
  }
  row("license", s.license);
  return o.str();
}

}  // namespace shoal
