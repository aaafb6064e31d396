#include "model/default_config.h"

namespace shoal {

std::string_view default_config_json() {
  return R"({
  "architectures": ["DeepseekV3ForCausalLM"],
  "model_type": "deepseek_v3",
  "vocab_size": 32768,
  "hidden_size": 1024,
  "intermediate_size": 2816,
  "moe_intermediate_size": 512,
  "num_hidden_layers": 4,
  "num_nextn_predict_layers": 0,
  "first_k_dense_replace": 1,
  "moe_layer_freq": 1,
  "num_attention_heads": 8,
  "num_key_value_heads": 8,
  "q_lora_rank": 384,
  "kv_lora_rank": 256,
  "qk_nope_head_dim": 64,
  "qk_rope_head_dim": 32,
  "v_head_dim": 64,
  "n_routed_experts": 32,
  "n_shared_experts": 1,
  "num_experts_per_tok": 8,
  "n_group": 8,
  "topk_group": 4,
  "topk_method": "noaux_tc",
  "scoring_func": "sigmoid",
  "norm_topk_prob": true,
  "routed_scaling_factor": 2.5,
  "hidden_act": "silu",
  "rms_norm_eps": 1e-06,
  "rope_theta": 10000,
  "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                   "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
  "max_position_embeddings": 163840,
  "tie_word_embeddings": false,
  "bos_token_id": 0,
  "eos_token_id": 1,
  "torch_dtype": "bfloat16"
}
)";
}

}  // namespace shoal
