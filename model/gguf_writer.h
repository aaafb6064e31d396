// Writing GGUF (version 3, little-endian, llama.cpp's layout): for synth --format gguf, shard and
// tests. Metadata values of every type, tensors in the order given at `alignment`.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "model/gguf.h"

namespace shoal {

struct GgufTensorBlob {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> ne;       // ggml order
  std::vector<std::byte> bytes;  // the stored blocks
};

GgufValue gguf_u32(uint32_t v);
GgufValue gguf_i32(int32_t v);
GgufValue gguf_f32(float v);
GgufValue gguf_bool(bool v);
GgufValue gguf_str(std::string v);
GgufValue gguf_strings(std::vector<std::string> v);
GgufValue gguf_ints(GgufType elem, std::vector<int64_t> v);

// The whole file image.
std::string gguf_image(const std::vector<std::pair<std::string, GgufValue>>& kv,
                       const std::vector<const GgufTensorBlob*>& tensors, uint64_t alignment = 32);
Status write_gguf(const std::filesystem::path& path, const std::vector<std::pair<std::string, GgufValue>>& kv,
                  const std::vector<const GgufTensorBlob*>& tensors, uint64_t alignment = 32);

}  // namespace shoal
