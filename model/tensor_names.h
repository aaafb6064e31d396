// The one table of Hugging Face tensor names and shapes for a DeepSeek-V2/V3 checkpoint.
// Loading, synth, inspect and (later) placement all read it, so a name is spelled only here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace shoal {

// The unit of placement a tensor belongs to (see docs/architecture.md).
enum class Unit { kEmbed, kAttn, kExpert, kHead, kMtp };

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;  // [rows, cols] for matrices, [n] for vectors
  Unit unit;
  int64_t layer = -1;          // -1 for embed/head
  int64_t expert = -1;         // routed expert index, kExpert only
  bool quantized = false;      // stored as F8_E4M3 + weight_scale_inv in fp8 checkpoints

  int64_t numel() const;
};

namespace names {
std::string embed();                                       // model.embed_tokens.weight
std::string final_norm();                                  // model.norm.weight
std::string lm_head();                                     // lm_head.weight
std::string layer(int64_t i, const std::string& suffix);   // model.layers.{i}.{suffix}
std::string expert(int64_t i, int64_t j, const std::string& proj);  // ...mlp.experts.{j}.{proj}.weight
std::string scale_inv(const std::string& weight);          // {weight}_scale_inv
}  // namespace names

// Tensors of decoder layer i (attention, norms, and dense MLP or MoE), in a stable order.
std::vector<TensorSpec> layer_tensors(const ModelConfig& c, int64_t i);
// Tensors of MTP module k (layer index n_layers + k): its decoder layer plus embed/enorm/hnorm/
// eh_proj/shared_head, as the release lays them out.
std::vector<TensorSpec> mtp_tensors(const ModelConfig& c, int64_t k);
// Every tensor of the model: embed, layers, final norm, lm_head (unless tied), then MTP layers.
std::vector<TensorSpec> model_tensors(const ModelConfig& c, bool with_mtp);

}  // namespace shoal
