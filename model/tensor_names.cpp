#include "model/tensor_names.h"

namespace shoal {

int64_t TensorSpec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace names {
std::string embed() { return "model.embed_tokens.weight"; }
std::string final_norm() { return "model.norm.weight"; }
std::string lm_head() { return "lm_head.weight"; }
std::string layer(int64_t i, const std::string& suffix) {
  return "model.layers." + std::to_string(i) + "." + suffix;
}
std::string expert(int64_t i, int64_t j, const std::string& proj) {
  return layer(i, "mlp.experts." + std::to_string(j) + "." + proj + ".weight");
}
std::string scale_inv(const std::string& weight) { return weight + "_scale_inv"; }
}  // namespace names

namespace {

struct Builder {
  std::vector<TensorSpec>& out;
  int64_t layer;
  Unit unit;
  int64_t expert = -1;

  void matrix(const std::string& suffix, int64_t rows, int64_t cols, bool quantized = true) {
    out.push_back({names::layer(layer, suffix), {rows, cols}, unit, layer, expert, quantized});
  }
  void vector(const std::string& suffix, int64_t n) {
    out.push_back({names::layer(layer, suffix), {n}, unit, layer, expert, false});
  }
  void mlp(const std::string& prefix, int64_t dim, int64_t inter) {
    matrix(prefix + "gate_proj.weight", inter, dim);
    matrix(prefix + "up_proj.weight", inter, dim);
    matrix(prefix + "down_proj.weight", dim, inter);
  }
};

// Grouped-query attention of Qwen2 and Llama.
void add_gqa(const ModelConfig& c, Builder& b) {
  const int64_t q_out = c.n_heads * c.head_dim, kv_out = c.n_kv_heads * c.head_dim;
  b.matrix("self_attn.q_proj.weight", q_out, c.dim);
  if (c.qkv_bias) b.vector("self_attn.q_proj.bias", q_out);
  b.matrix("self_attn.k_proj.weight", kv_out, c.dim);
  if (c.qkv_bias) b.vector("self_attn.k_proj.bias", kv_out);
  b.matrix("self_attn.v_proj.weight", kv_out, c.dim);
  if (c.qkv_bias) b.vector("self_attn.v_proj.bias", kv_out);
  b.matrix("self_attn.o_proj.weight", c.dim, q_out);
  if (c.o_bias) b.vector("self_attn.o_proj.bias", c.dim);
}

void add_decoder_layer(const ModelConfig& c, int64_t i, Unit attn_unit, std::vector<TensorSpec>& out) {
  Builder b{out, i, attn_unit};
  b.vector("input_layernorm.weight", c.dim);
  if (!c.uses_mla()) {
    add_gqa(c, b);
    b.vector("post_attention_layernorm.weight", c.dim);
    b.mlp("mlp.", c.dim, c.inter_dim);
    return;
  }
  if (c.q_lora_rank > 0) {
    b.matrix("self_attn.q_a_proj.weight", c.q_lora_rank, c.dim);
    b.vector("self_attn.q_a_layernorm.weight", c.q_lora_rank);
    b.matrix("self_attn.q_b_proj.weight", c.n_heads * c.qk_head_dim(), c.q_lora_rank);
  } else {
    b.matrix("self_attn.q_proj.weight", c.n_heads * c.qk_head_dim(), c.dim);
  }
  b.matrix("self_attn.kv_a_proj_with_mqa.weight", c.kv_lora_rank + c.qk_rope_head_dim, c.dim);
  b.vector("self_attn.kv_a_layernorm.weight", c.kv_lora_rank);
  if (c.mla_split_kv_b) {
    b.matrix("self_attn.k_b_proj.weight", c.n_heads * c.kv_lora_rank, c.qk_nope_head_dim);
    b.matrix("self_attn.v_b_proj.weight", c.n_heads * c.v_head_dim, c.kv_lora_rank);
  } else {
    b.matrix("self_attn.kv_b_proj.weight", c.n_heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank);
  }
  b.matrix("self_attn.o_proj.weight", c.dim, c.n_heads * c.v_head_dim);
  b.vector("post_attention_layernorm.weight", c.dim);
  if (!c.is_moe_layer(i)) {
    b.mlp("mlp.", c.dim, c.inter_dim);
    return;
  }
  b.matrix("mlp.gate.weight", c.n_routed_experts, c.dim, /*quantized=*/false);
  if (c.topk_method == TopkMethod::kNoauxTc) b.vector("mlp.gate.e_score_correction_bias", c.n_routed_experts);
  if (c.n_shared_experts > 0) b.mlp("mlp.shared_experts.", c.dim, c.n_shared_experts * c.moe_inter_dim);
  for (int64_t j = 0; j < c.n_routed_experts; ++j) {
    Builder e{out, i, attn_unit == Unit::kMtp ? Unit::kMtp : Unit::kExpert, j};
    e.mlp("mlp.experts." + std::to_string(j) + ".", c.dim, c.moe_inter_dim);
  }
}

}  // namespace

std::vector<TensorSpec> layer_tensors(const ModelConfig& c, int64_t i) {
  std::vector<TensorSpec> out;
  add_decoder_layer(c, i, Unit::kAttn, out);
  return out;
}

std::vector<TensorSpec> mtp_tensors(const ModelConfig& c, int64_t k) {
  const int64_t i = c.n_layers + k;
  std::vector<TensorSpec> out;
  // The MTP decoder layer is always an MoE layer in the release (index >= first_k_dense_replace).
  add_decoder_layer(c, i, Unit::kMtp, out);
  Builder b{out, i, Unit::kMtp};
  b.matrix("embed_tokens.weight", c.vocab_size, c.dim, false);
  b.vector("enorm.weight", c.dim);
  b.vector("hnorm.weight", c.dim);
  b.matrix("eh_proj.weight", c.dim, 2 * c.dim, false);
  b.vector("shared_head.norm.weight", c.dim);
  b.matrix("shared_head.head.weight", c.vocab_size, c.dim, false);
  return out;
}

std::vector<TensorSpec> model_tensors(const ModelConfig& c, bool with_mtp) {
  std::vector<TensorSpec> out;
  out.push_back({names::embed(), {c.vocab_size, c.dim}, Unit::kEmbed});
  for (int64_t i = 0; i < c.n_layers; ++i) add_decoder_layer(c, i, Unit::kAttn, out);
  out.push_back({names::final_norm(), {c.dim}, Unit::kHead});
  if (!c.tie_word_embeddings) out.push_back({names::lm_head(), {c.vocab_size, c.dim}, Unit::kHead});
  if (with_mtp)
    for (int64_t k = 0; k < c.n_mtp_layers; ++k)
      for (auto& t : mtp_tensors(c, k)) out.push_back(std::move(t));
  return out;
}

}  // namespace shoal
