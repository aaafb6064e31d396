// A GGUF model seen as a checkpoint: its `deepseek2` (or the distills' `qwen2` / `llama`) metadata as a ModelConfig, and its tensors
// under the Hugging Face names the rest of shoal uses (model/tensor_names.h), as views into the
// mapped parts. llama.cpp's layout: ggml ne order (ne[0] the row length), routed experts stacked
// on the slowest axis of ffn_*_exps (expert j is a view of slice j), and MLA's kv_b_proj split per
// head into attn_k_b (transposed) and attn_v_b, which shoal keeps as k_b_proj / v_b_proj
// (config.mla_split_kv_b) rather than rebuilding; the legacy unsplit attn_kv_b maps to kv_b_proj.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "model/config.h"
#include "model/gguf.h"
#include "model/safetensors.h"
#include "model/tensor_names.h"

namespace shoal {

// The config a `deepseek2` GGUF describes. A missing key that changes the computation is an
// error naming it; keys llama.cpp itself defaults (gating function, groups) take its defaults.
StatusOr<ModelConfig> gguf_model_config(const GgufModel& m);

struct GgufView {
  TensorInfo info;  // Hugging Face name, dtype, HF shape; begin/end: 0 and the byte size
  const std::byte* data = nullptr;
  std::string source;  // the GGUF tensor ("blk.3.ffn_up_exps.weight[5]" for an expert slice)
};

// Where a Hugging Face tensor lives in llama.cpp's layout: the GGUF tensor's name and, for a
// routed expert, its index on the stacked tensor's slowest axis (-1 otherwise). The one table of
// these names (synth writes GGUF with it too).
struct GgufSource {
  std::string name;
  int64_t expert = -1;
};
GgufSource gguf_source(const TensorSpec& t);
// Its inverse on one name: the Hugging Face tensor llama.cpp's `name` holds (for a stacked
// ffn_{gate,up,down}_exps tensor, expert `expert`'s, which must then be >= 0), or nullopt when the
// table has no such name. LoRA adapters in GGUF name their tensors after these (model/lora_gguf.cpp).
std::optional<std::string> gguf_hf_name(std::string_view name, int64_t expert = -1);

// Every tensor of model_tensors(config), found in the file and checked (type, shape).
StatusOr<std::map<std::string, GgufView>> gguf_hf_tensors(const GgufModel& m, const ModelConfig& c);

}  // namespace shoal
