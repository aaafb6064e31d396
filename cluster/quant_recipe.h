// GGUF sizes for `shoal plan` without the weights (docs/plan.md, "GGUF plans"): a quant recipe
// (the ggml type each class of tensor gets in a named mix, e.g. Unsloth's UD-IQ1_S for
// DeepSeek-V3/R1) applied to a config's tensor table, or the tensor infos of a GGUF whose data is
// absent (a metadata-only file: llama.cpp's gguf_write_to_file(..., only_meta), or the head of a
// download). Either gives the UnitBytes the planner places, the real per-tensor types included.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "cluster/plan.h"
#include "common/dtype.h"
#include "model/config.h"
#include "model/gguf.h"
#include "model/tensor_names.h"

namespace shoal::cluster {

// The ggml type of each class of tensor. Vectors (norms, the router bias) and the router
// (`mlp.gate`, ffn_gate_inp) are F32 in every GGUF, as llama-quantize leaves them.
struct QuantRecipe {
  std::string name;         // as given to --quant, e.g. "UD-IQ1_S"
  std::string description;  // one line: where the types come from, the published size
  DType embed, head;        // token_embd, output
  DType attn;               // MLA projections: q_a, q_b (or q), kv_a_mqa, kv_b (or k_b and v_b)
  DType attn_output;        // o_proj (attn_output)
  DType dense_gate_up, dense_down;    // the MLP of the dense layers
  DType shared_gate_up, shared_down;  // the shared experts of MoE layers
  DType experts_gate_up;              // routed experts' gate and up (ffn_{gate,up}_exps)
  DType experts_down;                 // routed experts' down (ffn_down_exps) ...
  DType experts_down_first;           // ... except in layers below n_layers / 8 (llama.cpp's rule)
  double published_gib = 0;           // the mix's published size for DeepSeek-V3/R1 (GiB), 0: none
};

// Every recipe, in one table (cluster/quant_recipe.cpp).
const std::vector<QuantRecipe>& quant_recipes();
// A recipe by name (case-insensitive); the error lists the names.
StatusOr<const QuantRecipe*> find_quant_recipe(const std::string& name);

// The type a recipe gives a tensor of the table, after llama-quantize's fallback for rows that
// are not a whole number of the type's blocks (IQ* -> IQ4_NL, Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0,
// Q5_K -> Q5_1, Q6_K -> Q8_0; then F16).
DType recipe_type(const QuantRecipe& r, const ModelConfig& c, const TensorSpec& t);
// Bytes of a tensor of the table in that type.
int64_t recipe_tensor_bytes(const QuantRecipe& r, const ModelConfig& c, const TensorSpec& t);

// The GGUF a recipe predicts for a config, with llama.cpp's current layout (MLA's kv_b_proj
// split into k_b / v_b per head; no MTP layer, which llama.cpp's converter leaves out).
struct GgufPrediction {
  UnitBytes units;
  std::map<DType, std::pair<int64_t, int64_t>> by_type;  // type -> (tensors, bytes), GGUF tensors
  int64_t total_bytes = 0;
};
GgufPrediction predict_gguf(const ModelConfig& c, const QuantRecipe& r);

// Tensor headers of a GGUF model whose data may be absent: `path` is a file or part 1 of a split
// one (the other parts are found by llama-gguf-split's names). Every part must hold its whole
// header (llama.cpp's only_meta output is padded to the alignment); tensors are checked for their
// types, shapes, alignment and overlap as parse_gguf does, but not against the file's length.
struct GgufHeaders {
  std::vector<std::filesystem::path> files;
  std::vector<GgufHeader> headers;  // one per part, in order
  bool data_present = true;         // every tensor's data is in its file
};
StatusOr<GgufHeaders> read_gguf_headers(const std::filesystem::path& path);

// The unit bytes of a GGUF model from its tensor infos (llama.cpp's names: token_embd, output,
// output_norm, blk.N.*; stacked experts ffn_*_exps split evenly over ne[2]), for config c.
// Tensors of blocks n_layers and above (MTP) go to `mtp_bytes`; a unit with no tensor, a block
// out of range or a tensor of no unit is an error naming it.
struct GgufUnitBytes {
  UnitBytes units;
  int64_t mtp_bytes = 0;
  std::map<DType, std::pair<int64_t, int64_t>> by_type;  // type -> (tensors, bytes)
};
StatusOr<GgufUnitBytes> gguf_unit_bytes(const GgufHeaders& h, const ModelConfig& c);

}  // namespace shoal::cluster
