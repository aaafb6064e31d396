#include "model/weights.h"

#include "model/tensor_names.h"

namespace shoal {
namespace {

// With --merge-lora (one adapter, loaded with merge), an adapted weight becomes a copy with the
// adapter folded in (float32 or the stored dtype, owned by `merged`) and has no term left;
// otherwise the terms stay, applied unmerged.
bool merging(const LoraAdapters& loras) { return loras.size() == 1 && loras[0]->merge; }

Status fold(Matrix& w, LoraTerms& terms, const LoraAdapters& loras, std::vector<std::shared_ptr<MergedWeight>>& merged) {
  if (!merging(loras) || !terms.any()) return {};
  merged.push_back(std::make_shared<MergedWeight>());
  auto m = merge_lora(w, terms[1], loras[0]->merge_into, *merged.back());
  if (!m.ok()) return m.status().with_context(loras[0]->dir.string());
  w = *m;
  terms = {};
  return {};
}

StatusOr<MlpWeights> load_mlp(Checkpoint& ck, const std::string& prefix, int64_t dim, int64_t inter,
                              const LoraAdapters& loras) {
  MlpWeights m;
  SHOAL_ASSIGN_OR_RETURN(m.gate, ck.matrix(prefix + "gate_proj.weight", inter, dim));
  SHOAL_ASSIGN_OR_RETURN(m.up, ck.matrix(prefix + "up_proj.weight", inter, dim));
  SHOAL_ASSIGN_OR_RETURN(m.down, ck.matrix(prefix + "down_proj.weight", dim, inter));
  m.lora.gate = lora_terms(loras, prefix + "gate_proj.weight");
  m.lora.up = lora_terms(loras, prefix + "up_proj.weight");
  m.lora.down = lora_terms(loras, prefix + "down_proj.weight");
  SHOAL_RETURN_IF_ERROR(fold(m.gate, m.lora.gate, loras, m.merged));
  SHOAL_RETURN_IF_ERROR(fold(m.up, m.lora.up, loras, m.merged));
  SHOAL_RETURN_IF_ERROR(fold(m.down, m.lora.down, loras, m.merged));
  return m;
}

// The adapters' terms on layer i's attention weights. On MLA's kv_b_proj kept split (GGUF) the
// kv_b_proj term still applies per head (model/layers.cpp); merging into it is refused by name.
Status attach_attn_lora(AttnWeights& a, const ModelConfig& c, int64_t i, const LoraAdapters& loras) {
  auto t = [&](const char* s) { return lora_terms(loras, names::layer(i, s)); };
  a.lora.wq = t("self_attn.q_proj.weight");
  a.lora.wq_a = t("self_attn.q_a_proj.weight");
  a.lora.wq_b = t("self_attn.q_b_proj.weight");
  a.lora.wkv_a = t("self_attn.kv_a_proj_with_mqa.weight");
  a.lora.wkv_b = t("self_attn.kv_b_proj.weight");
  a.lora.wo = t("self_attn.o_proj.weight");
  a.lora.wk = t("self_attn.k_proj.weight");
  a.lora.wv = t("self_attn.v_proj.weight");
  for (size_t k = 0; k < loras.size(); ++k)
    if (c.rope_interleaved && !loras[k]->gguf && (a.lora.wq[int32_t(k + 1)].active() || a.lora.wk[int32_t(k + 1)].active()))
      return unimplemented(loras[k]->dir.string() + ": adapts " + names::layer(i, "self_attn.q_proj/k_proj") +
                           " in Hugging Face's row order, but this GGUF llama base stores them permuted for "
                           "interleaved rope (llama.cpp's converter): use the adapter in GGUF form or the Hugging "
                           "Face base");
  if (c.mla_split_kv_b && a.lora.wkv_b.any() && merging(loras))
    return unimplemented(loras[0]->dir.string() + ": adapts " + names::layer(i, "self_attn.kv_b_proj") +
                         ", which this GGUF base keeps split as attn_k_b/attn_v_b: merging into it is not "
                         "supported (apply it unmerged with --lora)");
  SHOAL_RETURN_IF_ERROR(fold(a.wq, a.lora.wq, loras, a.merged));
  SHOAL_RETURN_IF_ERROR(fold(a.wq_a, a.lora.wq_a, loras, a.merged));
  SHOAL_RETURN_IF_ERROR(fold(a.wq_b, a.lora.wq_b, loras, a.merged));
  SHOAL_RETURN_IF_ERROR(fold(a.wkv_a, a.lora.wkv_a, loras, a.merged));
  SHOAL_RETURN_IF_ERROR(fold(a.wkv_b, a.lora.wkv_b, loras, a.merged));
  SHOAL_RETURN_IF_ERROR(fold(a.wo, a.lora.wo, loras, a.merged));
  SHOAL_RETURN_IF_ERROR(fold(a.wk, a.lora.wk, loras, a.merged));
  SHOAL_RETURN_IF_ERROR(fold(a.wv, a.lora.wv, loras, a.merged));
  return {};
}

StatusOr<std::vector<float>> load_floats(Checkpoint& ck, const std::string& name, int64_t n) {
  SHOAL_ASSIGN_OR_RETURN(Matrix v, ck.vector(name, n));
  std::vector<float> out(static_cast<size_t>(n));
  kernels::dequantize_row(out.data(), v, 0);
  return out;
}

StatusOr<AttnWeights> load_gqa(Checkpoint& ck, int64_t i) {
  const ModelConfig& c = ck.config();
  auto name = [&](const char* s) { return names::layer(i, s); };
  const int64_t q_out = c.n_heads * c.head_dim, kv_out = c.n_kv_heads * c.head_dim;
  AttnWeights a;
  SHOAL_ASSIGN_OR_RETURN(a.wq, ck.matrix(name("self_attn.q_proj.weight"), q_out, c.dim));
  SHOAL_ASSIGN_OR_RETURN(a.wk, ck.matrix(name("self_attn.k_proj.weight"), kv_out, c.dim));
  SHOAL_ASSIGN_OR_RETURN(a.wv, ck.matrix(name("self_attn.v_proj.weight"), kv_out, c.dim));
  SHOAL_ASSIGN_OR_RETURN(a.wo, ck.matrix(name("self_attn.o_proj.weight"), c.dim, q_out));
  if (c.qkv_bias) {
    SHOAL_ASSIGN_OR_RETURN(a.bq, load_floats(ck, name("self_attn.q_proj.bias"), q_out));
    SHOAL_ASSIGN_OR_RETURN(a.bk, load_floats(ck, name("self_attn.k_proj.bias"), kv_out));
    SHOAL_ASSIGN_OR_RETURN(a.bv, load_floats(ck, name("self_attn.v_proj.bias"), kv_out));
  }
  if (c.o_bias) {
    SHOAL_ASSIGN_OR_RETURN(a.bo, load_floats(ck, name("self_attn.o_proj.bias"), c.dim));
  }
  return a;
}

StatusOr<AttnWeights> load_attn(Checkpoint& ck, int64_t i) {
  const ModelConfig& c = ck.config();
  if (!c.uses_mla()) return load_gqa(ck, i);
  auto name = [&](const char* s) { return names::layer(i, s); };
  const int64_t q_out = c.n_heads * c.qk_head_dim();
  AttnWeights a;
  if (c.q_lora_rank > 0) {
    SHOAL_ASSIGN_OR_RETURN(a.wq_a, ck.matrix(name("self_attn.q_a_proj.weight"), c.q_lora_rank, c.dim));
    SHOAL_ASSIGN_OR_RETURN(a.q_norm, ck.vector(name("self_attn.q_a_layernorm.weight"), c.q_lora_rank));
    SHOAL_ASSIGN_OR_RETURN(a.wq_b, ck.matrix(name("self_attn.q_b_proj.weight"), q_out, c.q_lora_rank));
  } else {
    SHOAL_ASSIGN_OR_RETURN(a.wq, ck.matrix(name("self_attn.q_proj.weight"), q_out, c.dim));
  }
  SHOAL_ASSIGN_OR_RETURN(a.wkv_a, ck.matrix(name("self_attn.kv_a_proj_with_mqa.weight"),
                                            c.kv_lora_rank + c.qk_rope_head_dim, c.dim));
  SHOAL_ASSIGN_OR_RETURN(a.kv_norm, ck.vector(name("self_attn.kv_a_layernorm.weight"), c.kv_lora_rank));
  if (c.mla_split_kv_b) {
    SHOAL_ASSIGN_OR_RETURN(a.wk_b, ck.matrix(name("self_attn.k_b_proj.weight"), c.n_heads * c.kv_lora_rank,
                                             c.qk_nope_head_dim));
    SHOAL_ASSIGN_OR_RETURN(a.wv_b, ck.matrix(name("self_attn.v_b_proj.weight"), c.n_heads * c.v_head_dim,
                                             c.kv_lora_rank));
  } else {
    SHOAL_ASSIGN_OR_RETURN(a.wkv_b, ck.matrix(name("self_attn.kv_b_proj.weight"),
                                              c.n_heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank));
  }
  SHOAL_ASSIGN_OR_RETURN(a.wo, ck.matrix(name("self_attn.o_proj.weight"), c.dim, c.n_heads * c.v_head_dim));
  return a;
}

}  // namespace

StatusOr<LayerWeights> load_layer(Checkpoint& ck, int64_t i, const ExpertFilter& experts, const LoraAdapters& lora) {
  const ModelConfig& c = ck.config();
  auto name = [&](const char* s) { return names::layer(i, s); };
  LayerWeights l;
  l.index = i;
  l.moe = c.is_moe_layer(i);
  SHOAL_ASSIGN_OR_RETURN(l.attn_norm, ck.vector(name("input_layernorm.weight"), c.dim));
  SHOAL_ASSIGN_OR_RETURN(l.ffn_norm, ck.vector(name("post_attention_layernorm.weight"), c.dim));
  SHOAL_ASSIGN_OR_RETURN(l.attn, load_attn(ck, i));
  SHOAL_RETURN_IF_ERROR(attach_attn_lora(l.attn, c, i, lora));
  if (!l.moe) {
    SHOAL_ASSIGN_OR_RETURN(l.mlp, load_mlp(ck, names::layer(i, "mlp."), c.dim, c.inter_dim, lora));
    return l;
  }
  SHOAL_ASSIGN_OR_RETURN(l.gate, ck.matrix(name("mlp.gate.weight"), c.n_routed_experts, c.dim));
  if (c.topk_method == TopkMethod::kNoauxTc) {
    SHOAL_ASSIGN_OR_RETURN(l.gate_bias, load_floats(ck, name("mlp.gate.e_score_correction_bias"), c.n_routed_experts));
  }
  if (c.n_shared_experts > 0) {
    SHOAL_ASSIGN_OR_RETURN(l.shared, load_mlp(ck, names::layer(i, "mlp.shared_experts."), c.dim,
                                              c.n_shared_experts * c.moe_inter_dim, lora));
  }
  SHOAL_RETURN_IF_ERROR(load_routed_experts(ck, i, experts, l.experts, lora));
  return l;
}

Status load_routed_experts(Checkpoint& ck, int64_t i, const ExpertFilter& experts,
                           std::vector<std::optional<MlpWeights>>& out, const LoraAdapters& lora) {
  const ModelConfig& c = ck.config();
  out.assign(static_cast<size_t>(c.n_routed_experts), std::nullopt);
  for (int64_t j = 0; j < c.n_routed_experts; ++j) {
    if (!experts.empty() && !experts[size_t(j)]) continue;
    const std::string prefix = names::layer(i, "mlp.experts." + std::to_string(j) + ".");
    SHOAL_ASSIGN_OR_RETURN(out[size_t(j)], load_mlp(ck, prefix, c.dim, c.moe_inter_dim, lora));
  }
  return {};
}

StatusOr<Matrix> load_embedding(Checkpoint& ck) {
  const ModelConfig& c = ck.config();
  return ck.matrix(names::embed(), c.vocab_size, c.dim);
}

StatusOr<HeadWeights> load_head(Checkpoint& ck) {
  const ModelConfig& c = ck.config();
  HeadWeights h;
  SHOAL_ASSIGN_OR_RETURN(h.norm, ck.vector(names::final_norm(), c.dim));
  const std::string head = c.tie_word_embeddings ? names::embed() : names::lm_head();
  SHOAL_ASSIGN_OR_RETURN(h.lm_head, ck.matrix(head, c.vocab_size, c.dim));
  return h;
}

}  // namespace shoal
