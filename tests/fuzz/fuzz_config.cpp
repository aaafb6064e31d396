// libFuzzer target: config.json text through parse_config. Errors must carry a message naming
// a field; what parses must satisfy the invariants the model code relies on.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto parsed = shoal::parse_config(text);
  if (!parsed.ok()) {
    if (parsed.status().message().empty()) std::abort();
    return 0;
  }
  const shoal::ModelConfig& c = *parsed;
  if (!c.uses_mla()) {  // the dense distills (qwen2, llama): grouped-query attention, no experts
    const bool dense_ok = c.vocab_size >= 1 && c.dim >= 1 && c.inter_dim >= 1 && c.n_layers >= 1 && c.n_heads >= 1 &&
                          c.n_kv_heads >= 1 && c.n_heads % c.n_kv_heads == 0 && c.head_dim >= 2 &&
                          c.head_dim % 2 == 0 && c.n_routed_experts == 0 && c.max_position_embeddings >= 1 &&
                          c.rope_dim() == c.head_dim && c.kv_cache_width() == 2 * c.n_kv_heads * c.head_dim &&
                          !c.fp8 && !c.yarn.enabled &&
                          (!c.llama3.enabled || (c.llama3.factor >= 1.0 && c.llama3.low_freq_factor > 0 &&
                                                 c.llama3.high_freq_factor > c.llama3.low_freq_factor &&
                                                 c.llama3.original_max_position_embeddings >= 1));
    if (!dense_ok) std::abort();
    for (int64_t layer = 0; layer < 4; ++layer)
      if (c.is_moe_layer(layer)) std::abort();
    return 0;
  }
  bool ok = c.vocab_size >= 1 && c.dim >= 1 && c.inter_dim >= 1 && c.n_layers >= 1 && c.n_heads >= 1 &&
            c.kv_lora_rank >= 1 && c.qk_nope_head_dim >= 1 && c.qk_rope_head_dim >= 1 && c.v_head_dim >= 1 &&
            c.qk_rope_head_dim % 2 == 0 && c.q_lora_rank >= 0 && c.n_mtp_layers >= 0 && c.moe_layer_freq >= 1 &&
            c.max_position_embeddings >= 1 && c.fp8_block >= 1 && (!c.yarn.enabled || c.yarn.factor >= 1.0);
  if (c.n_routed_experts > 0) {
    ok = ok && c.n_expert_groups >= 1 && c.n_routed_experts % c.n_expert_groups == 0 &&
         c.n_limited_groups >= 1 && c.n_limited_groups <= c.n_expert_groups && c.n_activated_experts >= 1 &&
         c.n_activated_experts <= c.n_routed_experts && c.moe_inter_dim >= 1 && c.n_shared_experts >= 0 &&
         c.n_dense_layers >= 0;
  }
  if (!ok) std::abort();
  for (int64_t layer = 0; layer < 4; ++layer) (void)c.is_moe_layer(layer);
  return 0;
}
