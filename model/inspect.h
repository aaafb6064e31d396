// shoal inspect: what a checkpoint folder holds. Parameter counts come from the config through
// the tensor table (model/tensor_names.h), so a folder with only config.json is enough; bytes
// per dtype come from the safetensors headers when weights are present.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

#include "common/status.h"
#include "model/config.h"

namespace shoal {

struct ParamCounts {
  int64_t total = 0;   // every main-model tensor (embed, layers, final norm, lm_head); no MTP, no scales
  int64_t active = 0;  // per token: total - embedding table - routed experts not selected
  int64_t mtp = 0;     // the MTP modules' tensors
};

ParamCounts count_params(const ModelConfig& c);

struct ModelSummary {
  ModelConfig config;
  ParamCounts params;
  int64_t n_dense_layers = 0, n_moe_layers = 0;  // of the num_hidden_layers main layers
  bool has_weights = false;                      // any safetensors in the folder
  bool has_mtp_weights = false;                  // every MTP tensor is in the checkpoint
  int64_t n_tensors = 0;                         // in the safetensors headers
  std::map<std::string, uint64_t> bytes_by_dtype;  // safetensors dtype name -> tensor bytes
  std::string license;                           // "unknown" when none is found
};

StatusOr<ModelSummary> inspect_model(const std::filesystem::path& dir);

// The license of a checkpoint folder: a recognised name (MIT, Apache-2.0, ...) or the first
// non-empty line of LICENSE / LICENSE.txt / LICENSE.md / LICENSE-MODEL, else README.md's YAML
// front matter `license: ...`, else "unknown".
std::string find_license(const std::filesystem::path& dir);

std::string summary_text(const ModelSummary& s);
std::string summary_json(const ModelSummary& s);  // one JSON object, pretty-printed

}  // namespace shoal
