// Weights of the units a process hosts, as views into the memory-mapped checkpoint, in their
// stored dtype. Loading checks every name, dtype and shape against the config.
#pragma once

#include <optional>
#include <vector>

#include "kernels/kernels.h"
#include "model/checkpoint.h"
#include "model/lora.h"

namespace shoal {

using kernels::Matrix;

struct MlpWeights {  // w2(silu(w1 x) * w3 x)
  Matrix gate;       // w1 [inter, dim]
  Matrix up;         // w3 [inter, dim]
  Matrix down;       // w2 [dim, inter]
  struct {
    LoraTerms gate, up, down;
  } lora;            // the LoRA adapters' terms on these weights (model/lora.h), by adapter id
  std::vector<std::shared_ptr<MergedWeight>> merged;  // weights an adapter was merged into (--merge-lora)
};

struct AttnWeights {
  // MLA (DeepSeek):
  Matrix wq;          // [n_heads * qk_head_dim, dim]            when q_lora_rank is null
                      //   (GQA: [n_heads * head_dim, dim])
  Matrix wq_a;        // [q_lora_rank, dim]
  Matrix q_norm;      // [1, q_lora_rank]
  Matrix wq_b;        // [n_heads * qk_head_dim, q_lora_rank]
  Matrix wkv_a;       // [kv_lora_rank + qk_rope_head_dim, dim]
  Matrix kv_norm;     // [1, kv_lora_rank]
  Matrix wkv_b;       // [n_heads * (qk_nope_head_dim + v_head_dim), kv_lora_rank]; or, when
                      // config.mla_split_kv_b (GGUF), per head:
  Matrix wk_b;        //   [n_heads * kv_lora_rank, qk_nope_head_dim] (W_uk transposed)
  Matrix wv_b;        //   [n_heads * v_head_dim, kv_lora_rank]       (W_uv)
  Matrix wo;          // [dim, n_heads * v_head_dim]  (GQA: [dim, n_heads * head_dim])
  // Grouped-query attention (Qwen2, Llama): wq above, then
  Matrix wk, wv;      // [n_kv_heads * head_dim, dim]
  std::vector<float> bq, bk, bv, bo;  // biases when the config has them, else empty
  struct {
    LoraTerms wq, wq_a, wq_b, wkv_a, wkv_b, wo, wk, wv;
  } lora;             // the LoRA adapters' terms on these weights (model/lora.h), by adapter id
  std::vector<std::shared_ptr<MergedWeight>> merged;  // weights an adapter was merged into (--merge-lora)
};

struct LayerWeights {
  int64_t index = 0;
  bool moe = false;
  Matrix attn_norm;                  // input_layernorm [1, dim]
  Matrix ffn_norm;                   // post_attention_layernorm [1, dim]
  AttnWeights attn;
  MlpWeights mlp;                    // dense layers
  Matrix gate;                       // router [n_routed_experts, dim]
  std::vector<float> gate_bias;      // e_score_correction_bias [n_routed_experts], empty if none
  std::optional<MlpWeights> shared;  // n_shared_experts * moe_inter_dim wide
  std::vector<std::optional<MlpWeights>> experts;  // [n_routed_experts]; only hosted ones are set
};

// Which routed experts of a layer to load (all of them in a single process).
using ExpertFilter = std::vector<bool>;

// Layer i: norms, attention, and the dense MLP or router, shared expert and the routed experts
// the filter selects (empty filter: all).
// Each weight gets the terms of the `loras` that adapt it (or, for one adapter loaded with merge,
// the adapter folded into a float32 copy of the weight).
StatusOr<LayerWeights> load_layer(Checkpoint& ck, int64_t i, const ExpertFilter& experts,
                                  const LoraAdapters& loras = {});
// Only the routed experts of layer i that the filter selects; out has n_routed_experts entries.
Status load_routed_experts(Checkpoint& ck, int64_t i, const ExpertFilter& experts,
                           std::vector<std::optional<MlpWeights>>& out, const LoraAdapters& loras = {});
StatusOr<Matrix> load_embedding(Checkpoint& ck);
struct HeadWeights {
  Matrix norm;     // [1, dim]
  Matrix lm_head;  // [vocab, dim] (the embedding when tie_word_embeddings)
};
StatusOr<HeadWeights> load_head(Checkpoint& ck);

}  // namespace shoal
