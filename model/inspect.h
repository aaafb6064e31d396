// shoal inspect: what a checkpoint folder or GGUF model holds. Parameter counts come from the
// config through the tensor table (model/tensor_names.h), so a folder with only config.json is
// enough; bytes per dtype come from the safetensors headers when weights are present, or from a
// GGUF's tensor infos (per ggml type, with the file type, parts, general.name and license).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "model/config.h"

namespace shoal {

struct ParamCounts {
  int64_t total = 0;   // every main-model tensor (embed, layers, final norm, lm_head); no MTP, no scales
  int64_t active = 0;  // per token: total - embedding table - routed experts not selected
  int64_t mtp = 0;     // the MTP modules' tensors
};

ParamCounts count_params(const ModelConfig& c);

// What only a GGUF model has (docs/gguf.md): its metadata and its tensors as the file stores them
// (stacked experts and split attn_k_b / attn_v_b count as the GGUF tensors they are).
struct GgufSummary {
  uint32_t version = 0;
  std::string architecture;  // general.architecture
  std::string name;          // general.name; "" when absent
  int64_t file_type = -1;    // general.file_type; -1 when absent
  struct Part {
    std::string file;
    uint64_t bytes = 0;  // of the file
  };
  std::vector<Part> parts;
  struct TypeBytes {
    int64_t tensors = 0;
    uint64_t bytes = 0;
  };
  std::map<std::string, TypeBytes> by_type;  // ggml type name -> tensors, bytes
};

// llama.cpp's name of a general.file_type (gguf-py LlamaFileType): 15 -> "MOSTLY_Q4_K_M";
// "UNKNOWN" for an id it does not define.
std::string llama_file_type_name(int64_t file_type);

struct ModelSummary {
  ModelConfig config;
  ParamCounts params;
  int64_t n_dense_layers = 0, n_moe_layers = 0;  // of the num_hidden_layers main layers
  bool has_weights = false;                      // any safetensors in the folder
  bool has_mtp_weights = false;                  // every MTP tensor is in the checkpoint
  int64_t n_tensors = 0;                         // in the safetensors headers
  std::map<std::string, uint64_t> bytes_by_dtype;  // safetensors dtype name -> tensor bytes
  std::string license;                           // "unknown" when none is found
  std::optional<GgufSummary> gguf;               // a GGUF model; then n_tensors and bytes_by_dtype are its tensors'
};

// `path`: a checkpoint folder, or a GGUF model (a .gguf file, part 1 of a split one, or a folder).
StatusOr<ModelSummary> inspect_model(const std::filesystem::path& path);

// The license of a checkpoint folder: a recognised name (MIT, Apache-2.0, ...) or the first
// non-empty line of LICENSE / LICENSE.txt / LICENSE.md / LICENSE-MODEL, else README.md's YAML
// front matter `license: ...`, else "unknown".
std::string find_license(const std::filesystem::path& dir);

std::string summary_text(const ModelSummary& s);
std::string summary_json(const ModelSummary& s);  // one JSON object, pretty-printed

}  // namespace shoal
