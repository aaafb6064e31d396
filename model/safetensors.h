// Reading safetensors files: an 8-byte little-endian header length, a JSON header mapping
// tensor names to {dtype, shape, data_offsets}, then the data. Files are memory-mapped; only
// the pages of tensors that are read are ever touched.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/dtype.h"
#include "common/status.h"

namespace shoal {

inline constexpr uint64_t kMaxSafetensorsHeader = 100u << 20;  // the format's own limit

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range relative to the start of the data section

  int64_t numel() const;
  std::string shape_string() const;  // "[1024, 64]"
};

// Parses and validates a header (the JSON text only). data_size is the number of bytes after
// the header: every range must lie inside it, match dtype x shape, and not overlap another.
StatusOr<std::vector<TensorInfo>> parse_safetensors_header(std::string_view header, uint64_t data_size);

class SafetensorsFile {
 public:
  static StatusOr<std::unique_ptr<SafetensorsFile>> open(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const TensorInfo* find(std::string_view name) const;
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::byte* data(const TensorInfo& t) const { return data_ + t.begin; }

 private:
  SafetensorsFile() = default;
  std::filesystem::path path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  const std::byte* data_ = nullptr;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> by_name_;
};

// Writing. A tensor's place in a file being written; `offset` (of its data from the start of
// the file) is set by safetensors_header.
struct TensorSlot {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t bytes = 0;
  uint64_t offset = 0;
};
// Lays the tensors out in the order given and returns the header JSON, padded with spaces to a
// multiple of 8 as the reference writer does; the file is the u64 length, this text, the data.
std::string safetensors_header(const std::vector<TensorSlot*>& slots);

// Writes a whole file from tensors in memory, in the order given (tests and small files).
struct TensorBlob {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<std::byte> bytes;
};
Status write_safetensors(const std::filesystem::path& path, const std::vector<const TensorBlob*>& tensors);

}  // namespace shoal
