// LoRA adapters in llama.cpp's GGUF format (convert_lora_to_gguf.py; docs/lora.md, "GGUF
// adapters"): one file with `general.type` "adapter", `adapter.type` "lora", an optional FLOAT32
// `adapter.lora.alpha`, and for each adapted base tensor T of llama.cpp's layout the pair
// T.lora_a (ggml ne {in, r}: PEFT's A [r, in]) and T.lora_b (ne {r, out}: B [out, r]). Routed
// experts come stacked, ffn_{gate,up,down}_exps.weight.lora_a {in, r, E} and .lora_b {r, out, E}:
// one module per expert, each a view of its slice. The scale is llama.cpp's: alpha / rank (rank:
// lora_b's ne[0]), 1 when alpha is 0 or absent. Modules are keyed by Hugging Face weight names
// (model/gguf_checkpoint.h's table), so a GGUF adapter is a LoraAdapter like a PEFT folder's and
// everything downstream (layers, merge, ranks, inspect, plan) is unchanged.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/lora.h"

namespace shoal {

// Whether `path` names a GGUF adapter: a *.gguf path that is not a folder, or a folder without
// adapter_config.json that holds *.gguf files (exactly one is allowed; load_gguf_lora says so).
bool is_gguf_lora_path(const std::filesystem::path& path);

// Reads and checks the GGUF adapter at `path` against `base` (nullptr: the adapter alone), as
// load_lora does for a PEFT folder; the adapter keeps the file mapped (LoraAdapter::gguf).
StatusOr<std::unique_ptr<LoraAdapter>> load_gguf_lora(const std::filesystem::path& path, const ModelConfig* base);

// What both formats check (model/lora.cpp):
// The base's weights a LoRA may adapt, by Hugging Face name, with their [out, in] shapes: every
// linear weight of model_tensors(base) (kv_b_proj whole), not the router, norms, embedding or head.
std::map<std::string, std::pair<int64_t, int64_t>> lora_adaptable_weights(const ModelConfig& base);
// A [rank, in] and B [out, rank] for a base weight [out, in]; the error names `file`, the tensor
// and the shape expected.
Status check_lora_shapes(const std::string& file, const std::string& a_name, const std::vector<int64_t>& a_shape,
                         const std::string& b_name, const std::vector<int64_t>& b_shape, int64_t rank, int64_t out,
                         int64_t in);

}  // namespace shoal
