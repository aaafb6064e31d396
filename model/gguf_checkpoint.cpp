#include "model/gguf_checkpoint.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "model/tensor_names.h"

namespace shoal {
namespace {

// Reads deepseek2.* keys; the first problem is kept and names the key.
class Keys {
 public:
  Keys(const GgufHeader& h, std::string file) : h_(h), file_(std::move(file)) {}
  const GgufValue* find(const std::string& key) const { return h_.find(key); }
  bool has(const std::string& key) const { return find(key) != nullptr; }

  int64_t integer(const std::string& key, std::optional<int64_t> fallback = std::nullopt, int64_t min = 1) {
    const GgufValue* v = find(key);
    if (!v) return missing(key, fallback);
    if (!v->is_integer() || v->i < min)
      return fail(key, "must be an integer >= " + std::to_string(min) + ", got " + v->describe()), 0;
    return v->i;
  }
  double number(const std::string& key, std::optional<double> fallback = std::nullopt) {
    const GgufValue* v = find(key);
    if (!v) return missing(key, fallback);
    if (!v->is_float() && !v->is_integer()) return fail(key, "must be a number, got " + v->describe()), 0;
    return v->is_float() ? v->f : double(v->i);
  }
  bool boolean(const std::string& key, bool fallback) {
    const GgufValue* v = find(key);
    if (!v) return fallback;
    if (v->type != GgufType::kBool) return fail(key, "must be a BOOL, got " + v->describe()), false;
    return v->b;
  }
  std::string string(const std::string& key, std::optional<std::string> fallback = std::nullopt) {
    const GgufValue* v = find(key);
    if (!v) return missing(key, fallback);
    if (v->type != GgufType::kString) return fail(key, "must be a STRING, got " + v->describe()), "";
    return v->s;
  }
  void fail(const std::string& key, const std::string& why) {
    if (status_.ok()) status_ = invalid_argument(file_ + ": metadata '" + key + "' " + why);
  }
  const Status& status() const { return status_; }

 private:
  template <class T>
  T missing(const std::string& key, std::optional<T> fallback) {
    if (fallback) return *fallback;
    fail(key, "is missing (it changes the computation)");
    return T{};
  }
  const GgufHeader& h_;
  std::string file_;
  Status status_;
};

// Hugging Face name suffix of a decoder layer tensor -> llama.cpp's blk.N suffix.
constexpr std::pair<std::string_view, std::string_view> kLayerNames[] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"self_attn.q_a_proj.weight", "attn_q_a.weight"},
    {"self_attn.q_a_layernorm.weight", "attn_q_a_norm.weight"},
    {"self_attn.q_b_proj.weight", "attn_q_b.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.kv_a_proj_with_mqa.weight", "attn_kv_a_mqa.weight"},
    {"self_attn.kv_a_layernorm.weight", "attn_kv_a_norm.weight"},
    {"self_attn.kv_b_proj.weight", "attn_kv_b.weight"},
    {"self_attn.k_b_proj.weight", "attn_k_b.weight"},
    {"self_attn.v_b_proj.weight", "attn_v_b.weight"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.q_proj.bias", "attn_q.bias"},
    {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.bias", "attn_v.bias"},
    {"self_attn.o_proj.bias", "attn_output.bias"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
    {"mlp.gate.weight", "ffn_gate_inp.weight"},
    {"mlp.gate.e_score_correction_bias", "exp_probs_b.bias"},
    {"mlp.shared_experts.gate_proj.weight", "ffn_gate_shexp.weight"},
    {"mlp.shared_experts.up_proj.weight", "ffn_up_shexp.weight"},
    {"mlp.shared_experts.down_proj.weight", "ffn_down_shexp.weight"},
};

}  // namespace

GgufSource gguf_source(const TensorSpec& t) {
  if (t.name == names::embed()) return {"token_embd.weight"};
  if (t.name == names::final_norm()) return {"output_norm.weight"};
  if (t.name == names::lm_head()) return {"output.weight"};
  const std::string blk = "blk." + std::to_string(t.layer) + ".";
  if (t.expert >= 0) {
    const std::string proj = t.name.substr(t.name.rfind('.', t.name.size() - 8) + 1);  // gate_proj.weight
    return {blk + "ffn_" + proj.substr(0, proj.find('_')) + "_exps.weight", t.expert};
  }
  const std::string prefix = names::layer(t.layer, "");
  const std::string_view suffix = std::string_view(t.name).substr(prefix.size());
  for (const auto& [hf, gg] : kLayerNames)
    if (hf == suffix) return {blk + std::string(gg)};
  return {"?" + t.name};
}

std::optional<std::string> gguf_hf_name(std::string_view name, int64_t expert) {
  if (expert < 0) {
    if (name == "token_embd.weight") return names::embed();
    if (name == "output_norm.weight") return names::final_norm();
    if (name == "output.weight") return names::lm_head();
  }
  if (!name.starts_with("blk.")) return std::nullopt;
  name.remove_prefix(4);
  const size_t dot = name.find('.');
  const std::string_view digits = name.substr(0, dot);
  if (dot == std::string_view::npos || digits.empty() || digits.size() > 9 || (digits.size() > 1 && digits[0] == '0') ||
      !std::all_of(digits.begin(), digits.end(), [](char ch) { return ch >= '0' && ch <= '9'; }))
    return std::nullopt;
  const int64_t layer = std::stoll(std::string(digits));
  const std::string_view suffix = name.substr(dot + 1);
  for (const char* proj : {"gate", "up", "down"})
    if (suffix == "ffn_" + std::string(proj) + "_exps.weight")
      return expert >= 0 ? std::optional(names::expert(layer, expert, std::string(proj) + "_proj")) : std::nullopt;
  if (expert >= 0) return std::nullopt;
  for (const auto& [hf, gg] : kLayerNames)
    if (gg == suffix) return names::layer(layer, std::string(hf));
  return std::nullopt;
}

namespace {

// A per-rank shard written by `shoal shard` (docs/gguf.md, "Synth and shard") holds only some of
// the model's tensors: `shoal.shard.source_tensors` lists every tensor of the whole model (what
// the config is read from), and `shoal.shard.experts.<stacked tensor>` the expert index of each
// slice its stacked ffn_*_exps tensor keeps.
constexpr char kShardSourceTensors[] = "shoal.shard.source_tensors";
constexpr char kShardExpertsPrefix[] = "shoal.shard.experts.";

// Whether the whole model has the tensor: the file's own, or a shard's source list.
bool model_has(const GgufModel& m, const std::string& name) {
  if (m.find(name)) return true;
  const GgufValue* v = m.meta().find(kShardSourceTensors);
  return v && v->type == GgufType::kArray &&
         std::find(v->strings.begin(), v->strings.end(), name) != v->strings.end();
}

std::string ne_string(const GgufTensor& t) {
  std::string s = "{";
  for (size_t d = 0; d < t.ne.size(); ++d) s += (d ? ", " : "") + std::to_string(t.ne[d]);
  return s + "}";
}

// The vocabulary size: {arch}.vocab_size, else the tokenizer's token count.
int64_t vocab_size(const GgufHeader& h, Keys& k, const std::string& a) {
  if (k.has(a + "vocab_size")) return k.integer(a + "vocab_size");
  if (const GgufValue* tokens = h.find("tokenizer.ggml.tokens"); tokens && tokens->type == GgufType::kArray)
    return int64_t(tokens->count);
  k.fail(a + "vocab_size", "is missing (and so is tokenizer.ggml.tokens)");
  return 0;
}

// Counts that size the tensor table are bounded by the tensors the file holds (a header that
// claims millions of layers or experts is refused before anything is built for them).
Status check_counts(const GgufModel& m, const ModelConfig& c) {
  size_t tensors = 0;
  for (const auto& part : m.parts()) tensors += part->header().tensors.size();
  if (const GgufValue* v = m.meta().find(kShardSourceTensors); v && v->type == GgufType::kArray)
    tensors = std::max<size_t>(tensors, v->strings.size());
  if (c.n_layers > int64_t(tensors))
    return invalid_argument(m.first_path().string() + ": block_count " + std::to_string(c.n_layers) +
                            " exceeds the " + std::to_string(tensors) + " tensors in the file");
  if (c.n_routed_experts > 65536 || c.n_heads > 65536)
    return invalid_argument(m.first_path().string() + ": expert_count or head_count is implausibly large");
  return {};
}

// llama.cpp's `qwen2` and `llama` (R1's dense distills): GQA over the whole head. The `llama`
// converter permuted q/k to interleaved rope pairs and stores llama3 scaling as rope_freqs.
StatusOr<ModelConfig> dense_gguf_config(const GgufModel& m, Keys& k, const std::string& arch) {
  const std::string a = arch + ".";
  ModelConfig c;
  c.model_type = arch == "qwen2" ? ModelType::kQwen2 : ModelType::kLlama;
  c.dim = k.integer(a + "embedding_length");
  c.n_layers = k.integer(a + "block_count");
  c.inter_dim = k.integer(a + "feed_forward_length");
  c.n_heads = k.integer(a + "attention.head_count");
  c.n_kv_heads = k.integer(a + "attention.head_count_kv", c.n_heads);
  SHOAL_RETURN_IF_ERROR(k.status());
  c.head_dim = k.integer(a + "attention.key_length", c.dim / c.n_heads);
  if (k.integer(a + "attention.value_length", c.head_dim) != c.head_dim)
    k.fail(a + "attention.value_length", "differs from key_length (not supported)");
  if (k.integer(a + "rope.dimension_count", c.head_dim) != c.head_dim)
    k.fail(a + "rope.dimension_count", "is not the whole head (partial rope is not supported)");
  c.rms_norm_eps = k.number(a + "attention.layer_norm_rms_epsilon");
  c.rope_theta = k.number(a + "rope.freq_base", 10000.0);
  c.max_position_embeddings = k.integer(a + "context_length");
  c.vocab_size = vocab_size(m.meta(), k, a);
  c.bos_token_id = k.integer("tokenizer.ggml.bos_token_id", -1, 0);
  c.eos_token_id = k.integer("tokenizer.ggml.eos_token_id", -1, 0);
  if (k.has(a + "rope.scaling.type") && k.string(a + "rope.scaling.type") != "none")
    k.fail(a + "rope.scaling.type", "is '" + k.string(a + "rope.scaling.type") + "' (none, or llama3 as rope_freqs, are supported)");
  SHOAL_RETURN_IF_ERROR(k.status());
  if (c.head_dim % 2 != 0) k.fail(a + "attention.key_length", "gives an odd head_dim");
  if (c.n_kv_heads <= 0 || c.n_heads % c.n_kv_heads != 0) k.fail(a + "attention.head_count_kv", "must divide head_count");
  SHOAL_RETURN_IF_ERROR(k.status());
  SHOAL_RETURN_IF_ERROR(check_counts(m, c));
  c.qkv_bias = model_has(m, "blk.0.attn_q.bias");
  c.o_bias = model_has(m, "blk.0.attn_output.bias");
  c.tie_word_embeddings = !model_has(m, "output.weight");
  c.rope_interleaved = arch == "llama";
  if (const auto freqs = m.find("rope_freqs.weight")) {
    const GgufTensor& t = *freqs->tensor;
    if (t.dtype != DType::kF32 || t.ne.size() != 1 || t.ne[0] != c.head_dim / 2)
      return invalid_argument(m.first_path().string() + ": tensor 'rope_freqs.weight' must be F32 {" +
                              std::to_string(c.head_dim / 2) + "}, got " + std::string(dtype_name(t.dtype)) + " " +
                              ne_string(t));
    c.rope_freq_factors.resize(size_t(c.head_dim / 2));
    std::memcpy(c.rope_freq_factors.data(), freqs->data, c.rope_freq_factors.size() * sizeof(float));
    for (float f : c.rope_freq_factors)
      if (!(f > 0.0f) || !std::isfinite(f))
        return invalid_argument(m.first_path().string() + ": tensor 'rope_freqs.weight' holds a factor that is not positive");
  }
  return c;
}

}  // namespace

StatusOr<ModelConfig> gguf_model_config(const GgufModel& m) {
  const GgufHeader& h = m.meta();
  Keys k(h, m.first_path().string());
  const std::string arch = k.string("general.architecture");
  SHOAL_RETURN_IF_ERROR(k.status());
  if (arch == "qwen2" || arch == "llama") return dense_gguf_config(m, k, arch);
  if (arch != "deepseek2")
    return unimplemented(m.first_path().string() + ": architecture '" + arch +
                         "' is not supported (deepseek2: DeepSeek-V2/V3/R1; qwen2 and llama: R1's distills)");
  const std::string a = arch + ".";
  ModelConfig c;
  c.dim = k.integer(a + "embedding_length");
  c.n_layers = k.integer(a + "block_count");
  c.inter_dim = k.integer(a + "feed_forward_length");
  c.n_heads = k.integer(a + "attention.head_count");
  c.q_lora_rank = k.integer(a + "attention.q_lora_rank", 0, 0);
  c.kv_lora_rank = k.integer(a + "attention.kv_lora_rank");
  c.qk_rope_head_dim = k.integer(a + "rope.dimension_count");
  // MLA files (attn_k_b / attn_v_b) give the per-head sizes in *_mla keys; legacy files in the
  // plain ones (there key_length = nope + rope per head).
  if (k.has(a + "attention.key_length_mla")) {
    c.qk_nope_head_dim = k.integer(a + "attention.key_length_mla") - c.qk_rope_head_dim;
    c.v_head_dim = k.integer(a + "attention.value_length_mla");
  } else {
    c.qk_nope_head_dim = k.integer(a + "attention.key_length") - c.qk_rope_head_dim;
    c.v_head_dim = k.integer(a + "attention.value_length");
  }
  c.rms_norm_eps = k.number(a + "attention.layer_norm_rms_epsilon");
  c.rope_theta = k.number(a + "rope.freq_base");
  c.max_position_embeddings = k.integer(a + "context_length");
  c.vocab_size = vocab_size(h, k, a);
  c.bos_token_id = k.integer("tokenizer.ggml.bos_token_id", -1, 0);
  c.eos_token_id = k.integer("tokenizer.ggml.eos_token_id", -1, 0);
  SHOAL_RETURN_IF_ERROR(k.status());
  if (c.qk_nope_head_dim <= 0) k.fail(a + "attention.key_length_mla", "must exceed rope.dimension_count");
  if (c.qk_rope_head_dim % 2 != 0) k.fail(a + "rope.dimension_count", "must be even");

  c.n_routed_experts = k.integer(a + "expert_count", 0, 0);
  if (c.n_routed_experts > 0) {
    c.moe_inter_dim = k.integer(a + "expert_feed_forward_length");
    c.n_shared_experts = k.integer(a + "expert_shared_count", 0, 0);
    c.n_activated_experts = k.integer(a + "expert_used_count");
    c.n_dense_layers = k.integer(a + "leading_dense_block_count", 0, 0);
    c.n_expert_groups = k.integer(a + "expert_group_count", 1);
    c.n_limited_groups = k.integer(a + "expert_group_used_count", 1);
    c.route_scale = k.number(a + "expert_weights_scale", 1.0);
    c.norm_topk_prob = k.boolean(a + "expert_weights_norm", false);
    // llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE: 1 softmax, 2 sigmoid; absent in V2 files: softmax.
    const int64_t gating = k.integer(a + "expert_gating_func", 1, 0);
    if (gating == 1) c.score_func = ScoringFunc::kSoftmax;
    else if (gating == 2) c.score_func = ScoringFunc::kSigmoid;
    else k.fail(a + "expert_gating_func", "is " + std::to_string(gating) + " (1 softmax and 2 sigmoid are supported)");
    // V3's selection bias marks noaux_tc; without it, groups (V2) rank by their best expert.
    const bool bias = model_has(m, "blk." + std::to_string(c.n_layers - 1) + ".exp_probs_b.bias") ||
                      model_has(m, "blk." + std::to_string(c.n_dense_layers) + ".exp_probs_b.bias");
    c.topk_method = bias ? TopkMethod::kNoauxTc
                         : c.n_expert_groups > 1 ? TopkMethod::kGroupLimitedGreedy : TopkMethod::kGreedy;
    c.model_type = bias ? ModelType::kDeepseekV3 : ModelType::kDeepseekV2;
  }
  if (k.has(a + "rope.scaling.type")) {
    const std::string type = k.string(a + "rope.scaling.type");
    if (type == "yarn") {
      YarnScaling& y = c.yarn;
      y.enabled = true;
      y.factor = k.number(a + "rope.scaling.factor");
      y.original_max_position_embeddings = k.integer(a + "rope.scaling.original_context_length");
      y.beta_fast = k.number(a + "rope.scaling.yarn_beta_fast", 32.0);
      y.beta_slow = k.number(a + "rope.scaling.yarn_beta_slow", 1.0);
      // yarn_log_multiplier = 0.1 * mscale_all_dim (the converter's factor); HF's mscale, which
      // only scales cos/sin relative to mscale_all_dim, is not in the file: DeepSeek ships them equal.
      const float mult = float(k.number(a + "rope.scaling.yarn_log_multiplier", 0.0));
      y.mscale_all_dim = double(mult / 0.1f);
      y.mscale = y.mscale_all_dim;
      if (y.factor < 1.0) k.fail(a + "rope.scaling.factor", "must be >= 1");
    } else if (type != "none") {
      k.fail(a + "rope.scaling.type", "is '" + type + "' (yarn and none are supported)");
    }
  }
  SHOAL_RETURN_IF_ERROR(k.status());
  // The MTP block, when the converter kept it, comes after the decoder layers; shoal skips it.
  const int64_t nextn = k.integer(a + "nextn_predict_layers", 0, 0);
  if (nextn > 0 && nextn < c.n_layers && model_has(m, "blk." + std::to_string(c.n_layers - 1) + ".nextn.eh_proj.weight"))
    c.n_layers -= nextn;
  SHOAL_RETURN_IF_ERROR(check_counts(m, c));
  c.tie_word_embeddings = !model_has(m, "output.weight");
  c.mla_split_kv_b = model_has(m, "blk.0.attn_k_b.weight");
  auto valid = validate_config(c);
  if (!valid.ok()) return valid.with_context(m.first_path().string());
  return c;
}

StatusOr<std::map<std::string, GgufView>> gguf_hf_tensors(const GgufModel& m, const ModelConfig& c) {
  std::map<std::string, GgufView> out;
  const bool shard = m.meta().find(kShardSourceTensors) != nullptr;
  for (const TensorSpec& spec : model_tensors(c, /*with_mtp=*/false)) {
    const GgufSource src = gguf_source(spec);
    const auto found = m.find(src.name);
    if (!found && shard) continue;  // another rank's
    // A shard's stacked experts: slice p is expert slices[p].
    int64_t slice = src.expert, n_slices = c.n_routed_experts;
    if (shard && src.expert >= 0) {
      const GgufValue* ids = m.meta().find(kShardExpertsPrefix + src.name);
      if (!ids || ids->type != GgufType::kArray || ids->elem == GgufType::kBool || ids->ints.size() != ids->count)
        return invalid_argument(m.first_path().string() + ": shard tensor '" + src.name + "' has no integer array '" +
                                kShardExpertsPrefix + src.name + "' naming its experts");
      const auto at = std::find(ids->ints.begin(), ids->ints.end(), src.expert);
      if (at == ids->ints.end()) continue;  // another rank's expert
      slice = at - ids->ints.begin();
      n_slices = int64_t(ids->ints.size());
    }
    if (!found) {
      if (spec.name.find("kv_b_proj") != std::string::npos && m.find("blk." + std::to_string(spec.layer) + ".attn_k_b.weight"))
        return invalid_argument(m.first_path().string() + ": layer " + std::to_string(spec.layer) +
                                " has attn_k_b but layer 0 does not: mixed MLA layouts");
      return not_found(m.first_path().string() + ": tensor '" + src.name + "' (" + spec.name + ") is missing");
    }
    const GgufTensor& t = *found->tensor;
    const std::string label = m.first_path().string() + ": tensor '" + t.name + "'";
    GgufView v;
    v.info.name = spec.name;
    v.info.dtype = t.dtype;
    v.info.shape = spec.shape;
    v.data = found->data;
    v.source = t.name;
    const bool vec = spec.shape.size() == 1;
    const int64_t rows = vec ? 1 : spec.shape[0], cols = vec ? spec.shape[0] : spec.shape[1];
    const int64_t want_rows = src.expert >= 0 ? rows * n_slices : rows;
    bool ok = t.ne[0] == cols && t.rows() == want_rows;
    if (vec) ok = ok && t.ne.size() == 1;
    if (src.expert >= 0) ok = ok && t.ne.size() == 3 && t.ne[1] == rows;
    if (!ok) {
      std::string want = "{" + std::to_string(cols) + (vec ? "" : ", " + std::to_string(rows));
      if (src.expert >= 0) want += ", " + std::to_string(n_slices);
      return invalid_argument(label + " has ne " + ne_string(t) + ", expected " + want + "} for " + spec.name);
    }
    if ((vec || spec.name.ends_with("mlp.gate.weight")) && t.dtype != DType::kF32 && t.dtype != DType::kF16 &&
        t.dtype != DType::kBF16)
      return invalid_argument(label + " is " + std::string(dtype_name(t.dtype)) + "; norms, biases and the router "
                              "must be F32, F16 or BF16");
    const uint64_t bytes = uint64_t(dtype_row_bytes(t.dtype, cols)) * uint64_t(rows);
    if (src.expert >= 0) {
      v.data += uint64_t(slice) * bytes;
      v.source += "[" + std::to_string(src.expert) + "]";
    }
    v.info.begin = 0;
    v.info.end = bytes;
    out.emplace(spec.name, std::move(v));
  }
  return out;
}

}  // namespace shoal
