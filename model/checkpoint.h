// A checkpoint: a Hugging Face folder (config.json plus either model.safetensors.index.json with
// its shards, or a single *.safetensors file), or a GGUF model (a .gguf file, part 1 of a split
// one, or a folder holding one; model/gguf_checkpoint.h maps it onto the same names). Shards are
// opened (memory-mapped) only when a tensor in them is first asked for; tensors are returned as
// views into the mapping, or, with set_copy_weights (`--no-mmap`), into a copy in anonymous
// memory made when the tensor is first asked for.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"
#include "kernels/kernels.h"
#include "model/config.h"
#include "model/gguf_checkpoint.h"
#include "model/safetensors.h"
#include "model/weight_copies.h"

namespace shoal {

struct TensorRef {
  const TensorInfo* info = nullptr;
  const std::byte* data = nullptr;
};

class Checkpoint {
 public:
  static StatusOr<std::unique_ptr<Checkpoint>> open(const std::filesystem::path& dir);

  const ModelConfig& config() const { return config_; }
  const std::filesystem::path& dir() const { return dir_; }
  bool has_weights() const { return !where_.empty() || !gguf_tensors_.empty(); }
  bool has(const std::string& name) const { return where_.count(name) != 0 || gguf_tensors_.count(name) != 0; }
  // How matrix() tags ggml block-type weights (kernels::Numerics): fast by default for GGUF.
  kernels::Numerics default_numerics() const { return gguf_ ? kernels::Numerics::kFast : kernels::Numerics::kExact; }
  kernels::Numerics numerics() const { return numerics_; }
  void set_numerics(kernels::Numerics n) { numerics_ = n; }
  // The GGUF model behind this checkpoint; nullptr for a Hugging Face folder.
  const GgufModel* gguf() const { return gguf_.get(); }
  std::vector<std::string> names() const;

  StatusOr<TensorRef> tensor(const std::string& name);
  // The view into the file mapping even with copy_weights: for reading a few bytes of a tensor
  // this process may not host (the fingerprints of other ranks' units).
  StatusOr<TensorRef> mapped_tensor(const std::string& name);
  // A weight matrix [rows, cols], checked against the expected shape; F8_E4M3 weights come with
  // their `_scale_inv` block scales, checked too.
  StatusOr<kernels::Matrix> matrix(const std::string& name, int64_t rows, int64_t cols);
  // A 1-D weight [n] as a Matrix [1, n] (norm weights), or F32 vector data (router bias).
  StatusOr<kernels::Matrix> vector(const std::string& name, int64_t n);

  // Reads a tensor's bytes into this process's page tables now (madvise MADV_POPULATE_READ on
  // its pages; with copy_weights, the copy), so later use neither faults nor reads around it.
  // Returns its byte size.
  StatusOr<int64_t> prefault(const std::string& name);

  // `--no-mmap`: every tensor asked for from now on is served from a copy in this process's
  // anonymous memory (transparent huge pages) instead of the file mapping (model/weight_copies.h).
  void set_copy_weights(bool on) { copy_weights_ = on; }
  bool copy_weights() const { return copy_weights_; }

  // Tensor headers of every shard (opens all shards, reads no data): for inspect.
  StatusOr<std::vector<TensorInfo>> all_tensor_infos();

 private:
  Checkpoint() = default;
  StatusOr<SafetensorsFile*> shard(const std::string& file);

  std::filesystem::path dir_;
  ModelConfig config_;
  std::map<std::string, std::string> where_;  // tensor name -> shard file name
  std::map<std::string, std::unique_ptr<SafetensorsFile>> shards_;
  std::mutex mu_;  // guards shards_
  std::unique_ptr<GgufModel> gguf_;
  kernels::Numerics numerics_ = kernels::Numerics::kExact;
  std::map<std::string, GgufView> gguf_tensors_;  // Hugging Face name -> view
  bool copy_weights_ = false;
  WeightCopies copies_;
};

}  // namespace shoal
