// config.json -> ModelConfig. Hugging Face names appear only in this file.
#include "model/config.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace shoal {
namespace {

using nlohmann::json;

// A value for an error message. json::dump recurses, so a hostile config nesting an array a
// million deep would overflow the stack: containers of containers are named by type only.
std::string describe(const json& v) {
  const bool flat =
      !v.is_structured() || std::none_of(v.begin(), v.end(), [](const json& e) { return e.is_structured(); });
  if (!flat) return std::string("a nested JSON ") + v.type_name();
  std::string s = v.dump();
  return s.size() > 80 ? s.substr(0, 77) + "..." : s;
}

// Reads fields of one JSON object; the first problem is kept and names the field.
class Fields {
 public:
  Fields(const json& j, std::string prefix) : j_(j), prefix_(std::move(prefix)) {}

  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }

  int64_t integer(const char* key, std::optional<int64_t> fallback = std::nullopt, int64_t min = 1) {
    if (!has(key)) return missing(key, fallback);
    const json& v = j_[key];
    if (!v.is_number_integer()) return fail(key, "must be an integer, got " + describe(v)), 0;
    const int64_t x = v.get<int64_t>();
    if (x < min) return fail(key, "must be >= " + std::to_string(min) + ", got " + describe(v)), 0;
    return x;
  }
  double number(const char* key, std::optional<double> fallback = std::nullopt) {
    if (!has(key)) return missing(key, fallback);
    const json& v = j_[key];
    if (!v.is_number()) return fail(key, "must be a number, got " + describe(v)), 0;
    return v.get<double>();
  }
  bool boolean(const char* key, std::optional<bool> fallback = std::nullopt) {
    if (!has(key)) return missing(key, fallback);
    const json& v = j_[key];
    if (!v.is_boolean()) return fail(key, "must be true or false, got " + describe(v)), false;
    return v.get<bool>();
  }
  std::string string(const char* key, std::optional<std::string> fallback = std::nullopt) {
    if (!has(key)) return missing(key, fallback);
    const json& v = j_[key];
    if (!v.is_string()) return fail(key, "must be a string, got " + describe(v)), "";
    return v.get<std::string>();
  }
  void require_present(const char* key) {  // present, null allowed (q_lora_rank: null)
    if (!j_.contains(key)) fail(key, "is missing");
  }
  void fail(const std::string& key, const std::string& why) {
    if (status_.ok()) status_ = invalid_argument("config field '" + prefix_ + key + "' " + why);
  }
  const Status& status() const { return status_; }

 private:
  template <typename T>
  T missing(const char* key, std::optional<T> fallback) {
    if (fallback) return *fallback;
    fail(key, j_.contains(key) ? "is null" : "is missing");
    return T{};
  }

  const json& j_;
  std::string prefix_;
  Status status_;
};

Status parse_yarn(const json& j, YarnScaling& y) {
  if (!j.contains("rope_scaling") || j["rope_scaling"].is_null()) return {};
  const json& rs = j["rope_scaling"];
  if (!rs.is_object()) return invalid_argument("config field 'rope_scaling' must be an object or null");
  Fields f(rs, "rope_scaling.");
  const char* type_key = rs.contains("type") ? "type" : "rope_type";
  const std::string type = f.string(type_key);
  if (f.status().ok() && type != "yarn")
    f.fail(type_key, "'" + type + "' is not supported (only yarn, as DeepSeek ships)");
  y.enabled = true;
  y.factor = f.number("factor");
  y.beta_fast = f.number("beta_fast", 32.0);
  y.beta_slow = f.number("beta_slow", 1.0);
  y.mscale = f.number("mscale", 1.0);
  y.mscale_all_dim = f.number("mscale_all_dim", 0.0);
  y.original_max_position_embeddings = f.integer("original_max_position_embeddings");
  if (f.status().ok() && y.factor < 1.0) f.fail("factor", "must be >= 1");
  return f.status();
}

Status parse_quantization(const json& j, ModelConfig& c) {
  if (!j.contains("quantization_config") || j["quantization_config"].is_null()) return {};
  const json& q = j["quantization_config"];
  if (!q.is_object()) return invalid_argument("config field 'quantization_config' must be an object");
  Fields f(q, "quantization_config.");
  const std::string method = f.string("quant_method");
  if (f.status().ok() && method != "fp8") f.fail("quant_method", "'" + method + "' is not supported (only fp8)");
  const std::string fmt = f.string("fmt", "e4m3");
  if (f.status().ok() && fmt != "e4m3") f.fail("fmt", "'" + fmt + "' is not supported (only e4m3)");
  SHOAL_RETURN_IF_ERROR(f.status());
  if (q.contains("weight_block_size")) {
    const json& b = q["weight_block_size"];
    if (!b.is_array() || b.size() != 2 || !b[0].is_number_integer() || b[0] != b[1] || b[0].get<int64_t>() <= 0)
      return invalid_argument("config field 'quantization_config.weight_block_size' must be [n, n], got " + describe(b));
    c.fp8_block = b[0].get<int64_t>();
  }
  c.fp8 = true;
  return {};
}

}  // namespace

Status validate_config(const ModelConfig& c) {
  auto bad = [](const std::string& field, const std::string& why) {
    return invalid_argument("config field '" + field + "' " + why);
  };
  if (c.n_routed_experts == 0) return {};
  if (c.n_activated_experts > c.n_routed_experts)
    return bad("num_experts_per_tok", "exceeds n_routed_experts");
  if (c.n_routed_experts % c.n_expert_groups != 0)
    return bad("n_group", "must divide n_routed_experts (" + std::to_string(c.n_routed_experts) + ")");
  if (c.n_limited_groups > c.n_expert_groups) return bad("topk_group", "exceeds n_group");
  const int64_t per_group = c.n_routed_experts / c.n_expert_groups;
  if (c.topk_method != TopkMethod::kGreedy && c.n_activated_experts > c.n_limited_groups * per_group)
    return bad("num_experts_per_tok", "exceeds the experts in topk_group groups");
  if (c.topk_method == TopkMethod::kNoauxTc && per_group < 2)
    return bad("n_group", "noaux_tc scores a group by its top-2 experts: need >= 2 experts per group");
  return {};
}

namespace {  // the dense architectures

// rope_scaling of a dense model: none ("default" or null) or llama3.
Status parse_llama3_scaling(const json& j, Llama3Scaling& l) {
  if (!j.contains("rope_scaling") || j["rope_scaling"].is_null()) return {};
  const json& rs = j["rope_scaling"];
  if (!rs.is_object()) return invalid_argument("config field 'rope_scaling' must be an object or null");
  Fields f(rs, "rope_scaling.");
  const char* type_key = rs.contains("rope_type") ? "rope_type" : "type";
  const std::string type = f.string(type_key);
  SHOAL_RETURN_IF_ERROR(f.status());
  if (type == "default") return {};
  if (type != "llama3")
    return invalid_argument(std::string("config field 'rope_scaling.") + type_key + "' is '" + type +
                            "': only llama3 (and none) are supported for this model_type");
  l.enabled = true;
  l.factor = f.number("factor");
  l.low_freq_factor = f.number("low_freq_factor");
  l.high_freq_factor = f.number("high_freq_factor");
  l.original_max_position_embeddings = f.integer("original_max_position_embeddings");
  if (f.status().ok() && l.factor < 1.0) f.fail("factor", "must be >= 1");
  if (f.status().ok() && !(l.high_freq_factor > l.low_freq_factor && l.low_freq_factor > 0))
    f.fail("high_freq_factor", "must exceed low_freq_factor, which must be > 0");
  return f.status();
}

// Qwen2 and Llama: grouped-query attention, SwiGLU MLP, no experts. Defaults are transformers'
// (Qwen2Config, LlamaConfig) where a field may be absent.
Status parse_dense(const json& j, Fields& f, ModelConfig& c) {
  const bool qwen2 = c.model_type == ModelType::kQwen2;
  c.n_kv_heads = f.integer("num_key_value_heads", c.n_heads);
  const bool explicit_head_dim = f.has("head_dim");  // newer configs; else hidden / heads
  c.head_dim = explicit_head_dim ? f.integer("head_dim") : c.dim / c.n_heads;
  c.rms_norm_eps = f.number("rms_norm_eps", 1e-6);
  c.rope_theta = f.number("rope_theta", 10000.0);
  c.max_position_embeddings = f.integer("max_position_embeddings", 2048);
  SHOAL_RETURN_IF_ERROR(f.status());
  if (!explicit_head_dim && c.dim % c.n_heads != 0) f.fail("num_attention_heads", "must divide hidden_size");
  if (c.head_dim % 2 != 0) f.fail(explicit_head_dim ? "head_dim" : "num_attention_heads", "gives an odd head_dim");
  if (f.status().ok() && c.n_heads % c.n_kv_heads != 0)
    f.fail("num_key_value_heads", "must divide num_attention_heads (" + std::to_string(c.n_heads) + ")");
  if (qwen2) {
    c.qkv_bias = true;  // Qwen2's attention always has q/k/v biases (not announced in config.json)
    // Sliding-window attention changes the computation only on layers >= max_window_layers and
    // only for sequences longer than the window.
    if (f.boolean("use_sliding_window", false)) {
      const int64_t window = f.integer("sliding_window", 4096);
      const int64_t from = f.integer("max_window_layers", 28, 0);
      if (f.status().ok() && from < c.n_layers && window < c.max_position_embeddings)
        f.fail("use_sliding_window", "is true: sliding-window attention (layers >= max_window_layers " +
                                         std::to_string(from) + ", window " + std::to_string(window) +
                                         ") is not supported");
    }
  } else {
    c.qkv_bias = c.o_bias = f.boolean("attention_bias", false);
    if (f.boolean("mlp_bias", false)) f.fail("mlp_bias", "is true: MLP biases are not supported");
  }
  SHOAL_RETURN_IF_ERROR(f.status());
  if (j.contains("quantization_config") && !j["quantization_config"].is_null())
    return invalid_argument("config field 'quantization_config' is not supported for this model_type");
  return parse_llama3_scaling(j, c.llama3);
}

}  // namespace

StatusOr<ModelConfig> parse_config(std::string_view text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return invalid_argument("config is not valid JSON");
  if (!j.is_object()) return invalid_argument("config must be a JSON object");
  ModelConfig c;
  Fields f(j, "");
  const std::string type = f.string("model_type");
  SHOAL_RETURN_IF_ERROR(f.status());
  if (type == "deepseek_v3") c.model_type = ModelType::kDeepseekV3;
  else if (type == "deepseek_v2") c.model_type = ModelType::kDeepseekV2;
  else if (type == "qwen2") c.model_type = ModelType::kQwen2;
  else if (type == "llama") c.model_type = ModelType::kLlama;
  else return invalid_argument("config field 'model_type' is '" + type +
                               "': only deepseek_v3, deepseek_v2, qwen2 and llama are supported");
  const bool v3 = c.model_type == ModelType::kDeepseekV3;

  if (f.has("hidden_act") && f.string("hidden_act") != "silu") f.fail("hidden_act", "must be silu");
  c.vocab_size = f.integer("vocab_size");
  c.dim = f.integer("hidden_size");
  c.inter_dim = f.integer("intermediate_size");
  c.n_layers = f.integer("num_hidden_layers");
  c.n_heads = f.integer("num_attention_heads");
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  c.bos_token_id = f.integer("bos_token_id", -1, 0);
  // Llama 3.1 configs may list several end tokens: the first is the model's eos.
  if (j.contains("eos_token_id") && j["eos_token_id"].is_array()) {
    const json& e = j["eos_token_id"];
    if (e.empty() || !e[0].is_number_integer() || e[0].get<int64_t>() < 0)
      f.fail("eos_token_id", "must be a token id or a non-empty list of them");
    else c.eos_token_id = e[0].get<int64_t>();
  } else {
    c.eos_token_id = f.integer("eos_token_id", -1, 0);
  }
  SHOAL_RETURN_IF_ERROR(f.status());
  if (!c.uses_mla()) {
    SHOAL_RETURN_IF_ERROR(parse_dense(j, f, c));
    return c;
  }

  c.n_mtp_layers = f.integer("num_nextn_predict_layers", 0, 0);
  f.require_present("q_lora_rank");
  c.q_lora_rank = f.has("q_lora_rank") ? f.integer("q_lora_rank") : 0;
  c.kv_lora_rank = f.integer("kv_lora_rank");
  c.qk_nope_head_dim = f.integer("qk_nope_head_dim");
  c.qk_rope_head_dim = f.integer("qk_rope_head_dim");
  c.v_head_dim = f.integer("v_head_dim");
  c.rms_norm_eps = f.number("rms_norm_eps");
  c.rope_theta = f.number("rope_theta");
  c.max_position_embeddings = f.integer("max_position_embeddings");
  if (f.status().ok() && c.qk_rope_head_dim % 2 != 0) f.fail("qk_rope_head_dim", "must be even");

  f.require_present("n_routed_experts");
  if (f.has("n_routed_experts")) {
    c.n_routed_experts = f.integer("n_routed_experts");
    c.moe_inter_dim = f.integer("moe_intermediate_size");
    c.n_shared_experts = f.integer("n_shared_experts", std::nullopt, 0);
    c.n_activated_experts = f.integer("num_experts_per_tok");
    c.n_dense_layers = f.integer("first_k_dense_replace", std::nullopt, 0);
    c.moe_layer_freq = f.integer("moe_layer_freq", 1);
    c.n_expert_groups = f.integer("n_group", 1);
    c.n_limited_groups = f.integer("topk_group", 1);
    c.route_scale = f.number("routed_scaling_factor");
    c.norm_topk_prob = f.boolean("norm_topk_prob");
    const std::string score = f.string("scoring_func", v3 ? "sigmoid" : "softmax");
    if (score == "sigmoid") c.score_func = ScoringFunc::kSigmoid;
    else if (score == "softmax") c.score_func = ScoringFunc::kSoftmax;
    else f.fail("scoring_func", "'" + score + "' is not supported (sigmoid or softmax)");
    const std::string method = f.string("topk_method", v3 ? "noaux_tc" : "greedy");
    if (method == "noaux_tc") c.topk_method = TopkMethod::kNoauxTc;
    else if (method == "group_limited_greedy") c.topk_method = TopkMethod::kGroupLimitedGreedy;
    else if (method == "greedy") c.topk_method = TopkMethod::kGreedy;
    else f.fail("topk_method", "'" + method + "' is not supported (noaux_tc, group_limited_greedy, greedy)");
  }
  SHOAL_RETURN_IF_ERROR(f.status());
  SHOAL_RETURN_IF_ERROR(parse_yarn(j, c.yarn));
  SHOAL_RETURN_IF_ERROR(parse_quantization(j, c));
  SHOAL_RETURN_IF_ERROR(validate_config(c));
  return c;
}

StatusOr<ModelConfig> load_config(const std::filesystem::path& path) {
  std::filesystem::path file = path;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) file = path / "config.json";
  std::ifstream in(file, std::ios::binary);
  if (!in) return not_found("cannot open " + file.string());
  std::stringstream ss;
  ss << in.rdbuf();
  auto config = parse_config(ss.str());
  if (!config.ok()) return config.status().with_context(file.string());
  return config;
}

}  // namespace shoal
