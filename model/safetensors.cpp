#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

namespace shoal {

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorInfo::shape_string() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

namespace {

using nlohmann::json;

StatusOr<TensorInfo> parse_entry(const std::string& name, const json& e, uint64_t data_size) {
  auto bad = [&](const std::string& why) { return invalid_argument("tensor '" + name + "': " + why); };
  if (!e.is_object()) return bad("entry is not an object");
  if (!e.contains("dtype") || !e["dtype"].is_string()) return bad("missing 'dtype'");
  if (!e.contains("shape") || !e["shape"].is_array()) return bad("missing 'shape'");
  if (!e.contains("data_offsets") || !e["data_offsets"].is_array() || e["data_offsets"].size() != 2)
    return bad("missing 'data_offsets' [begin, end]");
  TensorInfo t;
  t.name = name;
  const std::string dtype = e["dtype"].get<std::string>();
  auto d = dtype_from_name(dtype);
  if (!d) return Status(Code::kUnimplemented, "tensor '" + name + "': unknown dtype '" + dtype + "'");
  t.dtype = *d;
  // Element count with an overflow guard: no real tensor comes near 2^48 elements.
  uint64_t numel = 1;
  for (const json& dim : e["shape"]) {
    if (!dim.is_number_unsigned()) return bad("shape entries must be non-negative integers");
    const uint64_t v = dim.get<uint64_t>();
    if (v > (1ull << 48) || (v && numel > (1ull << 48) / v)) return bad("shape is too large");
    numel *= v;
    t.shape.push_back(int64_t(v));
  }
  for (const json& off : e["data_offsets"])
    if (!off.is_number_unsigned()) return bad("data_offsets must be non-negative integers");
  t.begin = e["data_offsets"][0].get<uint64_t>();
  t.end = e["data_offsets"][1].get<uint64_t>();
  if (t.begin > t.end) return bad("data_offsets begin > end");
  if (t.end > data_size)
    return Status(Code::kOutOfRange, "tensor '" + name + "': data_offsets end " + std::to_string(t.end) +
                                         " is past the end of the data (" + std::to_string(data_size) + " bytes)");
  const uint64_t want = numel * uint64_t(dtype_bytes(t.dtype));
  if (t.end - t.begin != want)
    return bad("holds " + std::to_string(t.end - t.begin) + " bytes but " + dtype + " " + t.shape_string() +
               " needs " + std::to_string(want));
  return t;
}

}  // namespace

StatusOr<std::vector<TensorInfo>> parse_safetensors_header(std::string_view header, uint64_t data_size) {
  json j = json::parse(header.begin(), header.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return invalid_argument("header is not valid JSON");
  if (!j.is_object()) return invalid_argument("header is not a JSON object");
  std::vector<TensorInfo> out;
  for (const auto& [name, entry] : j.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) return invalid_argument("__metadata__ is not an object");
      continue;
    }
    SHOAL_ASSIGN_OR_RETURN(TensorInfo t, parse_entry(name, entry, data_size));
    out.push_back(std::move(t));
  }
  // Empty tensors occupy no bytes: leave them out, or one sorted between two overlapping
  // tensors would hide the overlap.
  std::vector<const TensorInfo*> by_offset;
  for (const auto& t : out)
    if (t.begin != t.end) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo& a = *by_offset[i - 1];
    const TensorInfo& b = *by_offset[i];
    if (b.begin < a.end) return invalid_argument("tensors '" + a.name + "' and '" + b.name + "' overlap");
  }
  return out;
}

StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::open(const std::filesystem::path& path) {
  const std::string where = path.string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return not_found(where + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return invalid_argument(where + ": not a regular file");
  }
  const uint64_t size = uint64_t(st.st_size);
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  if (size < 8) {
    ::close(fd);
    return invalid_argument(where + ": truncated: " + std::to_string(size) + " bytes, no header length");
  }
  f->map_ = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (f->map_ == MAP_FAILED) {
    f->map_ = nullptr;
    return internal_error(where + ": mmap failed: " + std::strerror(errno));
  }
  f->map_size_ = size;
  const auto* base = static_cast<const std::byte*>(f->map_);
  uint64_t header_len = 0;
  std::memcpy(&header_len, base, 8);  // little-endian on every host we build for
  if (header_len > kMaxSafetensorsHeader)
    return invalid_argument(where + ": header length " + std::to_string(header_len) + " exceeds the 100 MiB limit");
  if (header_len > size - 8)
    return invalid_argument(where + ": truncated: header of " + std::to_string(header_len) + " bytes but the file has " +
                            std::to_string(size - 8) + " after the length");
  const std::string_view header(reinterpret_cast<const char*>(base + 8), header_len);
  auto tensors = parse_safetensors_header(header, size - 8 - header_len);
  if (!tensors.ok()) return tensors.status().with_context(where);
  f->tensors_ = std::move(tensors).value();
  f->data_ = base + 8 + header_len;
  for (size_t i = 0; i < f->tensors_.size(); ++i) f->by_name_.emplace(f->tensors_[i].name, i);
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

std::string safetensors_header(const std::vector<TensorSlot*>& slots) {
  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  for (TensorSlot* t : slots) {
    header[t->name] = {{"dtype", std::string(dtype_name(t->dtype))},
                       {"shape", t->shape},
                       {"data_offsets", {offset, offset + t->bytes}}};
    t->offset = offset;
    offset += t->bytes;
  }
  std::string text = header.dump();
  text.resize((text.size() + 7) / 8 * 8, ' ');
  for (TensorSlot* t : slots) t->offset += 8 + text.size();
  return text;
}

Status write_safetensors(const std::filesystem::path& path, const std::vector<const TensorBlob*>& tensors) {
  std::vector<TensorSlot> slots;
  for (const TensorBlob* t : tensors) slots.push_back({t->name, t->dtype, t->shape, t->bytes.size()});
  std::vector<TensorSlot*> ptrs;
  for (auto& slot : slots) ptrs.push_back(&slot);
  const std::string text = safetensors_header(ptrs);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return not_found("cannot write " + path.string());
  const uint64_t len = text.size();
  out.write(reinterpret_cast<const char*>(&len), 8);
  out.write(text.data(), std::streamsize(text.size()));
  for (const TensorBlob* t : tensors)
    out.write(reinterpret_cast<const char*>(t->bytes.data()), std::streamsize(t->bytes.size()));
  if (!out) return internal_error("write failed: " + path.string());
  return {};
}

}  // namespace shoal
