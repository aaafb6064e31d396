// LoRA adapters as the `peft` library saves them: a folder with adapter_config.json and
// adapter_model.safetensors, whose tensors base_model.model.<module>.lora_A.weight [r, in] and
// .lora_B.weight [out, r] adapt the base weight <module>.weight to W + scale * B A. Loading
// checks the adapter against the base model's tensor table (model/tensor_names.h) before any
// tensor is used: every module must exist in the base with the shape the adapter implies, and be
// one that PEFT's LoRA adapts (a linear layer; not the router, a norm, the embedding or the head).
// What PEFT can save but shoal does not compute is refused by name (docs/lora.md).
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "model/config.h"
#include "model/safetensors.h"

namespace shoal {

struct LoraModule {
  std::string module;  // the Hugging Face module path: model.layers.3.self_attn.q_b_proj
  kernels::Matrix a;   // lora_A [rank, in]
  kernels::Matrix b;   // lora_B [out, rank]
  int64_t rank = 0;
  double alpha = 0;
  float scale = 0;     // alpha / rank, or alpha / sqrt(rank) with rsLoRA
};

// What a layer computes with: y += scale * B (A x) beside a weight (or beside a row slice of it,
// with B sliced alike). Inactive (no adapter on that weight) when a.data is null.
struct LoraTerm {
  kernels::Matrix a, b;
  float scale = 0;
  bool active() const { return a.data != nullptr; }
  LoraTerm slice_rows(int64_t first, int64_t n) const {
    LoraTerm t = *this;
    if (active()) t.b = b.slice_rows(first, n);
    return t;
  }
};

struct LoraAdapter {
  std::filesystem::path dir;
  int64_t r = 0;         // the config's default rank (rank_pattern may override it per module)
  double alpha = 0;      // lora_alpha (alpha_pattern likewise)
  bool rslora = false;
  std::string targets;   // target_modules as given: "a, b, c" or the regex
  std::map<std::string, LoraModule> modules;  // by the base weight's name (<module>.weight)
  bool merge = false;    // --merge-lora: folded into float32 copies of the weights at load
  std::unique_ptr<SafetensorsFile> file;

  int64_t parameters() const;  // A and B elements
  uint64_t bytes() const;      // A and B as stored
  // The adapter of the base weight `name`, or nullptr.
  const LoraModule* find(const std::string& weight_name) const;
  // The term a layer applies for the base weight `name` (inactive when not adapted).
  LoraTerm term(const std::string& weight_name) const;
};

// W + scale * B A as float32 [w.rows, w.cols] into `storage` (B A summed in double, then added to
// the stored weight read as float32, rounded once), and the float32 view of it.
kernels::Matrix merge_lora(const kernels::Matrix& w, const LoraTerm& t, std::vector<float>& storage);

// Reads and checks `dir` against `base` (a DeepSeek-V2/V3 or dense distill config; nullptr: the
// adapter alone, its A and B consistent with each other and the config). Errors name the file and
// the key (or tensor) that is wrong.
StatusOr<std::unique_ptr<LoraAdapter>> load_lora(const std::filesystem::path& dir, const ModelConfig* base);

}  // namespace shoal
