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
#include <span>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "model/config.h"
#include "model/gguf.h"
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
  // Bᵀ [rank, out]: B's elements transposed into this process's memory (same dtype, so the same
  // values), when B is F32, F16 or BF16 and whole. B (A x) then streams `rank` rows of Bᵀ
  // (linear_t, one fused multiply-add per term in ascending rank order) instead of taking `out`
  // dot products only `rank` long. Absent in row slices of B, which compute with B itself.
  kernels::Matrix bt{};
  std::shared_ptr<const std::vector<uint8_t>> bt_bytes{};
  bool active() const { return a.data != nullptr; }
  LoraTerm slice_rows(int64_t first, int64_t n) const {
    LoraTerm t = *this;
    if (active()) t.b = b.slice_rows(first, n);
    t.bt = {};
    t.bt_bytes.reset();
    return t;
  }
};

// The term with Bᵀ held beside B (above), where B's dtype allows it.
LoraTerm with_transposed_b(LoraTerm t);
// The bytes a loaded module holds in memory: A and B as stored, and Bᵀ's copy where it is made.
uint64_t lora_module_memory_bytes(const kernels::Matrix& a, const kernels::Matrix& b);

// Where --merge-lora folds an adapter: float32 copies of the adapted weights (within the golden
// tolerance, 4 bytes per element), or the weights' stored dtype (BF16, F16, FP8 blocks: as fast
// and as large as the base, rounded once more; docs/lora.md gives the deviation measured).
enum class MergeInto { kF32, kStored };

// A merged weight's own storage (the view merge_lora returns points into it).
struct MergedWeight {
  std::vector<float> f32;
  std::vector<uint16_t> half;    // BF16 or F16
  std::vector<uint8_t> fp8;      // F8_E4M3, with one scale per block
  std::vector<float> scale_inv;
};

// The terms of every adapter served on one weight, by adapter id: id k >= 1 is the k-th adapter
// loaded (LoraAdapters below); id 0, the base model, never has a term.
struct LoraTerms {
  std::vector<LoraTerm> by_id;  // by_id[0] inactive
  bool any() const {
    for (const LoraTerm& t : by_id)
      if (t.active()) return true;
    return false;
  }
  LoraTerm operator[](int32_t id) const { return id > 0 && size_t(id) < by_id.size() ? by_id[size_t(id)] : LoraTerm{}; }
  LoraTerms slice_rows(int64_t first, int64_t n) const {
    LoraTerms s;
    for (const LoraTerm& t : by_id) s.by_id.push_back(t.slice_rows(first, n));
    return s;
  }
};

// The adapter id of each row of a product (0: the base model); empty: every row the base.
using RowAdapters = std::span<const int32_t>;

struct LoraAdapter {
  std::filesystem::path dir;
  std::string name;      // the name requests use (--lora NAME=DIR); empty: every sequence's adapter
  int64_t r = 0;         // the config's default rank (rank_pattern may override it per module)
  double alpha = 0;      // lora_alpha (alpha_pattern likewise)
  bool rslora = false;
  std::string targets;   // target_modules as given: "a, b, c" or the regex
  std::map<std::string, LoraModule> modules;  // by the base weight's name (<module>.weight)
  bool merge = false;    // --merge-lora: folded into the weights at load
  MergeInto merge_into = MergeInto::kF32;  // into float32 copies, or into the weights' own dtype
  std::unique_ptr<SafetensorsFile> file;  // a PEFT folder's adapter_model.safetensors
  std::unique_ptr<GgufFile> gguf;         // or a GGUF adapter (model/lora_gguf.h)

  int64_t parameters() const;  // A and B elements
  uint64_t bytes() const;      // A and B as stored
  // The adapter of the base weight `name`, or nullptr.
  const LoraModule* find(const std::string& weight_name) const;
  // The term a layer applies for the base weight `name` (inactive when not adapted).
  LoraTerm term(const std::string& weight_name) const;
};

// The adapters one process serves, in id order: adapters[k - 1] is adapter id k.
using LoraAdapters = std::vector<const LoraAdapter*>;
// The terms of `adapters` on the base weight `name` (by_id[k] inactive where adapter k does not
// adapt it).
LoraTerms lora_terms(const LoraAdapters& adapters, const std::string& weight_name);

// W + scale * B A [w.rows, w.cols] into `storage` (B A summed in double, then added to the stored
// weight read as float32, rounded once to float32), and the view of it: float32, or, with
// kStored, rounded to the weight's dtype (BF16/F16 to nearest even; FP8 blocks requantized with
// each block's new absolute maximum / 448 as its scale). kStored on other dtypes (GGUF blocks) is
// an error naming the dtype.
StatusOr<kernels::Matrix> merge_lora(const kernels::Matrix& w, const LoraTerm& t, MergeInto into,
                                     MergedWeight& storage);

// Reads and checks `dir` against `base` (a DeepSeek-V2/V3 or dense distill config; nullptr: the
// adapter alone, its A and B consistent with each other and the config). Errors name the file and
// the key (or tensor) that is wrong. `dir` is a PEFT folder, or a GGUF adapter (model/lora_gguf.h).
StatusOr<std::unique_ptr<LoraAdapter>> load_lora(const std::filesystem::path& dir, const ModelConfig* base);

// One adapter to serve: `--lora NAME=DIR` (requests name it as their model) or `--lora DIR` (no
// name: it applies to every sequence).
struct LoraSpec {
  std::string name;
  std::filesystem::path dir;
};
// The --lora values: each NAME=DIR (names unique, of letters, digits and ._:-), or a single DIR.
StatusOr<std::vector<LoraSpec>> parse_lora_specs(const std::vector<std::string>& values);
// Loads and checks each spec against base, in order (adapter id k is specs[k - 1]); merge: the
// one adapter is folded into the weights at load (--merge-lora), `into` float32 or their dtype.
StatusOr<std::vector<std::unique_ptr<LoraAdapter>>> load_loras(const std::vector<LoraSpec>& specs,
                                                               const ModelConfig& base, bool merge,
                                                               MergeInto into = MergeInto::kF32);
LoraAdapters lora_views(const std::vector<std::unique_ptr<LoraAdapter>>& owned);
// Their names by id (Executor::adapter_names).
std::vector<std::string> lora_names(const std::vector<std::unique_ptr<LoraAdapter>>& owned);

}  // namespace shoal
