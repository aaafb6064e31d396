// Reading GGUF files (llama.cpp's format, versions 2 and 3, little-endian): a header, metadata
// key/values, tensor infos, then the tensor data at `general.alignment`. Every length, count,
// offset and dimension is bounded before use; a bad file is an error naming the file and what
// was wrong. Files are memory-mapped; only the pages of tensors that are read are touched.
// A model split by llama-gguf-split (NAME-0000k-of-0000N.gguf) is opened as one GgufModel.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/dtype.h"
#include "common/status.h"

namespace shoal {

enum class GgufType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};
std::string_view gguf_type_name(GgufType t);

// One metadata value. Scalars keep their integer, float, bool or string; arrays keep their
// element type and count, with string elements in `strings`, numeric ones in `ints` (integers
// and bools) or `floats`, and nested arrays in `items`.
struct GgufValue {
  GgufType type = GgufType::kU8;
  uint64_t u = 0;   // unsigned integers
  int64_t i = 0;    // signed integers (and unsigned ones that fit)
  double f = 0;     // floats
  bool b = false;
  std::string s;
  GgufType elem = GgufType::kU8;  // arrays
  uint64_t count = 0;             // arrays
  std::vector<std::string> strings;
  std::vector<int64_t> ints;
  std::vector<double> floats;
  std::vector<GgufValue> items;

  bool is_integer() const;
  bool is_float() const { return type == GgufType::kF32 || type == GgufType::kF64; }
  std::string describe() const;  // "UINT32 7", "ARRAY[STRING] (1024 entries)"
};

struct GgufTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> ne;  // ggml order: ne[0] is the row length (fastest axis)
  uint64_t offset = 0;      // from the start of the data section
  uint64_t bytes = 0;

  int64_t rows() const;               // product of ne[1..]
  std::vector<int64_t> shape() const; // numpy / Hugging Face order (ne reversed)
};

struct GgufHeader {
  uint32_t version = 0;
  std::vector<std::pair<std::string, GgufValue>> kv;  // in file order
  std::vector<GgufTensor> tensors;                    // in file order
  uint64_t alignment = 32;
  uint64_t data_offset = 0;  // of the data section from the start of the file

  const GgufValue* find(std::string_view key) const;
};

// Parses a whole file image (tests and the fuzzer call it on bytes in memory).
StatusOr<GgufHeader> parse_gguf(const std::byte* data, uint64_t size);

class GgufFile {
 public:
  static StatusOr<std::unique_ptr<GgufFile>> open(const std::filesystem::path& path);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const GgufHeader& header() const { return header_; }
  uint64_t size() const { return size_; }
  const std::byte* data(const GgufTensor& t) const { return base_ + header_.data_offset + t.offset; }

 private:
  GgufFile() = default;
  std::filesystem::path path_;
  void* map_ = nullptr;
  uint64_t size_ = 0;
  const std::byte* base_ = nullptr;
  GgufHeader header_;
};

// A GGUF model: one file, or every part of a split one. `path` is a file (a single-file model or
// part 1 of a split one) or a folder holding exactly one GGUF model.
class GgufModel {
 public:
  static StatusOr<std::unique_ptr<GgufModel>> open(const std::filesystem::path& path);

  struct Located {
    const GgufTensor* tensor;
    const std::byte* data;
    const GgufFile* file;
  };
  std::optional<Located> find(std::string_view name) const;
  // Metadata of the model (part 1 carries it all).
  const GgufHeader& meta() const { return parts_.front()->header(); }
  const std::vector<std::unique_ptr<GgufFile>>& parts() const { return parts_; }
  const std::filesystem::path& first_path() const { return parts_.front()->path(); }

 private:
  std::vector<std::unique_ptr<GgufFile>> parts_;
  std::map<std::string, std::pair<size_t, size_t>, std::less<>> index_;  // name -> (part, tensor)
};

// Whether path names a GGUF model (a *.gguf file, or a folder with *.gguf files and no config.json).
bool is_gguf_path(const std::filesystem::path& path);

}  // namespace shoal
