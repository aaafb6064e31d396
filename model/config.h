// ModelConfig: the fields of a config.json that change the computation, under DeepSeek's names:
// DeepSeek-V2/V3 (MLA attention, MoE) and the dense architectures of R1's distills, Qwen2 and
// Llama (grouped-query attention, SwiGLU MLP). Parsed strictly: a missing field, a wrong type, an
// unknown model_type or an unsupported value is an error naming the field.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace shoal {

enum class ModelType { kDeepseekV2, kDeepseekV3, kQwen2, kLlama };
enum class ScoringFunc { kSoftmax, kSigmoid };
// greedy: plain top-k; group_limited_greedy: groups ranked by their best expert (V2);
// noaux_tc: groups ranked by the sum of their top-2 biased scores, bias used for selection only (V3).
enum class TopkMethod { kGreedy, kGroupLimitedGreedy, kNoauxTc };

struct YarnScaling {
  bool enabled = false;          // rope_scaling.type == "yarn"
  double factor = 1.0;
  double beta_fast = 32, beta_slow = 1;
  double mscale = 1.0, mscale_all_dim = 0.0;
  int64_t original_max_position_embeddings = 0;
};

// rope_scaling of type llama3 (Llama 3.1, R1-Distill-Llama): long wavelengths divided by the
// factor, short ones kept, a smooth ramp between (transformers' _compute_llama3_parameters).
struct Llama3Scaling {
  bool enabled = false;
  double factor = 1.0, low_freq_factor = 1.0, high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;
};

struct ModelConfig {
  ModelType model_type = ModelType::kDeepseekV3;
  int64_t vocab_size = 0;
  int64_t dim = 0;                  // hidden_size
  int64_t inter_dim = 0;            // intermediate_size (dense MLP)
  int64_t moe_inter_dim = 0;        // moe_intermediate_size
  int64_t n_layers = 0;             // num_hidden_layers (the MTP layers come after these)
  int64_t n_mtp_layers = 0;         // num_nextn_predict_layers
  int64_t n_dense_layers = 0;       // first_k_dense_replace
  int64_t moe_layer_freq = 1;
  int64_t n_heads = 0;
  int64_t n_routed_experts = 0;     // 0: no MoE layers at all
  int64_t n_shared_experts = 0;
  int64_t n_activated_experts = 0;  // num_experts_per_tok
  int64_t n_expert_groups = 1;      // n_group
  int64_t n_limited_groups = 1;     // topk_group
  ScoringFunc score_func = ScoringFunc::kSigmoid;
  TopkMethod topk_method = TopkMethod::kNoauxTc;
  bool norm_topk_prob = true;
  double route_scale = 1.0;         // routed_scaling_factor
  int64_t q_lora_rank = 0;          // 0: q_lora_rank null, a plain q_proj
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  // Grouped-query attention of the dense architectures (Qwen2, Llama): query head h uses KV head
  // h / (n_heads / n_kv_heads); rotary embedding over the whole head in the rotate-half layout.
  int64_t n_kv_heads = 0;           // num_key_value_heads
  int64_t head_dim = 0;             // head_dim, or hidden_size / num_attention_heads
  bool qkv_bias = false;            // q/k/v_proj biases (Qwen2 always; Llama's attention_bias)
  bool o_bias = false;              // o_proj bias (Llama's attention_bias)
  double rope_theta = 10000.0;
  YarnScaling yarn;
  Llama3Scaling llama3;
  // llama.cpp's `llama` GGUF layout: the converter permuted q/k rows of each head from rotate-half
  // pairs to interleaved ones, so rope rotates neighbours; llama3 scaling comes as rope_freqs, the
  // divisor of each pair's frequency (empty: none).
  bool rope_interleaved = false;
  std::vector<float> rope_freq_factors;
  double rms_norm_eps = 1e-6;
  int64_t max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  int64_t bos_token_id = -1, eos_token_id = -1;
  // quantization_config: fp8 e4m3 with [block, block] weight scales, when present.
  bool fp8 = false;
  int64_t fp8_block = 128;
  // GGUF's MLA layout: kv_b_proj is stored split per head as k_b_proj [n_heads * kv_lora_rank,
  // qk_nope_head_dim] (the key half, transposed) and v_b_proj [n_heads * v_head_dim, kv_lora_rank].
  bool mla_split_kv_b = false;

  bool uses_mla() const { return model_type == ModelType::kDeepseekV2 || model_type == ModelType::kDeepseekV3; }
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // Width of the rotary part of a head: MLA's qk_rope_head_dim, the whole head for GQA.
  int64_t rope_dim() const { return uses_mla() ? qk_rope_head_dim : head_dim; }
  // Floats the KV cache keeps per token and layer: MLA's latent and roped key, or GQA's keys
  // then values (n_kv_heads * head_dim each).
  int64_t kv_cache_width() const { return uses_mla() ? kv_lora_rank + qk_rope_head_dim : 2 * n_kv_heads * head_dim; }
  // HF: a layer is MoE when experts exist, it is past the dense prefix, and the frequency hits.
  bool is_moe_layer(int64_t layer) const {
    return n_routed_experts > 0 && layer >= n_dense_layers && layer % moe_layer_freq == 0;
  }
};

StatusOr<ModelConfig> parse_config(std::string_view json_text);
// The checks parse_config makes across fields (routing groups against experts), for configs
// built from other sources (GGUF metadata); errors name the Hugging Face field.
Status validate_config(const ModelConfig& c);
StatusOr<ModelConfig> load_config(const std::filesystem::path& path);  // a file or a folder

}  // namespace shoal
