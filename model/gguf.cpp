#include "model/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <regex>
#include <set>

namespace shoal {
namespace fs = std::filesystem;

std::string_view gguf_type_name(GgufType t) {
  static constexpr std::string_view kNames[] = {"UINT8", "INT8",   "UINT16", "INT16", "UINT32", "INT32", "FLOAT32",
                                                "BOOL",  "STRING", "ARRAY",  "UINT64", "INT64", "FLOAT64"};
  const auto i = static_cast<uint32_t>(t);
  return i < std::size(kNames) ? kNames[i] : "?";
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufType::kU8: case GgufType::kI8: case GgufType::kU16: case GgufType::kI16: case GgufType::kU32:
    case GgufType::kI32: case GgufType::kU64: case GgufType::kI64: return true;
    default: return false;
  }
}

std::string GgufValue::describe() const {
  const std::string t(gguf_type_name(type));
  if (type == GgufType::kArray)
    return "ARRAY[" + std::string(gguf_type_name(elem)) + "] (" + std::to_string(count) + " entries)";
  if (type == GgufType::kString) return t + " \"" + s.substr(0, 64) + (s.size() > 64 ? "...\"" : "\"");
  if (type == GgufType::kBool) return t + (b ? " true" : " false");
  if (is_float()) return t + " " + std::to_string(f);
  if (type == GgufType::kU64) return t + " " + std::to_string(u);
  return t + " " + std::to_string(i);
}

int64_t GgufTensor::rows() const {
  int64_t r = 1;
  for (size_t d = 1; d < ne.size(); ++d) r *= ne[d];
  return r;
}

std::vector<int64_t> GgufTensor::shape() const { return {ne.rbegin(), ne.rend()}; }

const GgufValue* GgufHeader::find(std::string_view key) const {
  for (const auto& [k, v] : kv)
    if (k == key) return &v;
  return nullptr;
}

namespace {

constexpr uint32_t kMaxDims = 4;             // GGML_MAX_DIMS
constexpr uint64_t kMaxDim = uint64_t(1) << 48;  // no real tensor axis comes near this
constexpr int kMaxArrayDepth = 8;

// A bounds-checked little-endian reader over the file image.
class Cursor {
 public:
  Cursor(const std::byte* p, uint64_t size) : p_(p), size_(size) {}
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }
  const Status& status() const { return status_; }
  bool ok() const { return status_.ok(); }

  void fail(const std::string& why) {
    if (status_.ok()) status_ = invalid_argument(why + " (at byte " + std::to_string(pos_) + ")");
  }
  template <class T>
  T read(const char* what) {
    T v{};
    if (!ok()) return v;
    if (left() < sizeof(T)) {
      status_ = out_of_range(std::string("truncated: ") + what + " needs " + std::to_string(sizeof(T)) +
                             " bytes at byte " + std::to_string(pos_) + ", the file has " + std::to_string(size_));
      return v;
    }
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string string(const char* what) {
    const uint64_t n = read<uint64_t>(what);
    if (!ok()) return {};
    if (n > left()) {
      status_ = out_of_range(std::string(what) + ": string of " + std::to_string(n) + " bytes at byte " +
                             std::to_string(pos_) + " runs past the end of the file (" + std::to_string(left()) +
                             " bytes left)");
      return {};
    }
    std::string s(reinterpret_cast<const char*>(p_ + pos_), size_t(n));
    pos_ += n;
    return s;
  }

 private:
  const std::byte* p_;
  uint64_t size_;
  uint64_t pos_ = 0;
  Status status_;
};

// Bytes an element of a scalar type takes (0 for strings and arrays, which vary).
uint64_t scalar_bytes(GgufType t) {
  switch (t) {
    case GgufType::kU8: case GgufType::kI8: case GgufType::kBool: return 1;
    case GgufType::kU16: case GgufType::kI16: return 2;
    case GgufType::kU32: case GgufType::kI32: case GgufType::kF32: return 4;
    case GgufType::kU64: case GgufType::kI64: case GgufType::kF64: return 8;
    default: return 0;
  }
}

bool known_type(uint32_t t) { return t <= uint32_t(GgufType::kF64); }

// Reads one scalar of type t into v (v.type already set).
void read_scalar(Cursor& c, GgufType t, GgufValue& v, const std::string& key) {
  switch (t) {
    case GgufType::kU8: v.u = c.read<uint8_t>(key.c_str()); v.i = int64_t(v.u); break;
    case GgufType::kI8: v.i = c.read<int8_t>(key.c_str()); break;
    case GgufType::kU16: v.u = c.read<uint16_t>(key.c_str()); v.i = int64_t(v.u); break;
    case GgufType::kI16: v.i = c.read<int16_t>(key.c_str()); break;
    case GgufType::kU32: v.u = c.read<uint32_t>(key.c_str()); v.i = int64_t(v.u); break;
    case GgufType::kI32: v.i = c.read<int32_t>(key.c_str()); break;
    case GgufType::kU64: v.u = c.read<uint64_t>(key.c_str()); v.i = v.u > uint64_t(INT64_MAX) ? -1 : int64_t(v.u); break;
    case GgufType::kI64: v.i = c.read<int64_t>(key.c_str()); break;
    case GgufType::kF32: v.f = c.read<float>(key.c_str()); break;
    case GgufType::kF64: v.f = c.read<double>(key.c_str()); break;
    case GgufType::kBool: {
      const uint8_t x = c.read<uint8_t>(key.c_str());
      if (c.ok() && x > 1) c.fail("metadata '" + key + "': bool is " + std::to_string(x) + ", not 0 or 1");
      v.b = x == 1;
      v.i = x;
      break;
    }
    case GgufType::kString: v.s = c.string(key.c_str()); break;
    default: c.fail("metadata '" + key + "': unknown value type"); break;
  }
  if (v.is_integer() && t != GgufType::kU64 && t != GgufType::kU8 && t != GgufType::kU16 && t != GgufType::kU32)
    v.u = v.i < 0 ? 0 : uint64_t(v.i);
}

void read_value(Cursor& c, GgufType t, GgufValue& v, const std::string& key, int depth) {
  v.type = t;
  if (t != GgufType::kArray) return read_scalar(c, t, v, key);
  if (depth >= kMaxArrayDepth) return c.fail("metadata '" + key + "': arrays nested deeper than 8");
  const uint32_t et = c.read<uint32_t>(key.c_str());
  const uint64_t n = c.read<uint64_t>(key.c_str());
  if (!c.ok()) return;
  if (!known_type(et)) return c.fail("metadata '" + key + "': unknown array element type " + std::to_string(et));
  v.elem = GgufType(et);
  v.count = n;
  // Every element takes at least one byte (strings 8): a count the rest of the file cannot hold is absurd.
  const uint64_t least = v.elem == GgufType::kString ? 8 : v.elem == GgufType::kArray ? 12 : scalar_bytes(v.elem);
  if (n > c.left() / least) {
    c.fail("metadata '" + key + "': array of " + std::to_string(n) + " " + std::string(gguf_type_name(v.elem)) +
           " entries cannot fit in the " + std::to_string(c.left()) + " bytes left");
    return;
  }
  for (uint64_t k = 0; k < n && c.ok(); ++k) {
    GgufValue e;
    read_value(c, v.elem, e, key, depth + 1);
    if (v.elem == GgufType::kString) v.strings.push_back(std::move(e.s));
    else if (v.elem == GgufType::kArray) v.items.push_back(std::move(e));
    else if (e.is_float()) v.floats.push_back(e.f);
    else v.ints.push_back(v.elem == GgufType::kU64 ? int64_t(e.u) : e.i);
  }
}

Status read_tensor_info(Cursor& c, uint64_t k, GgufTensor& t) {
  const std::string where = "tensor info " + std::to_string(k);
  t.name = c.string(where.c_str());
  const uint32_t n_dims = c.read<uint32_t>(where.c_str());
  if (!c.ok()) return c.status();
  const std::string label = "tensor '" + t.name + "'";
  if (t.name.empty()) return invalid_argument(where + ": empty name");
  if (n_dims == 0 || n_dims > kMaxDims)
    return invalid_argument(label + ": n_dims is " + std::to_string(n_dims) + " (1 to 4 allowed)");
  // The product of the non-zero dimensions is bounded, not only the element count: with a zero
  // dimension the count is 0 whatever the others, and rows() (the product of ne[1..]) would overflow.
  uint64_t extent = 1;
  for (uint32_t d = 0; d < n_dims; ++d) {
    const uint64_t v = c.read<uint64_t>(label.c_str());
    if (!c.ok()) return c.status();
    if (v > kMaxDim || (v && extent > kMaxDim / v))
      return invalid_argument(label + ": dimension ne[" + std::to_string(d) + "] = " + std::to_string(v) + " is too large");
    if (v) extent *= v;
    t.ne.push_back(int64_t(v));
  }
  const uint32_t type = c.read<uint32_t>(label.c_str());
  t.offset = c.read<uint64_t>(label.c_str());
  if (!c.ok()) return c.status();
  const auto dtype = dtype_from_ggml_id(type);
  if (!dtype) return unimplemented(label + ": unknown or unsupported ggml type id " + std::to_string(type));
  t.dtype = *dtype;
  const int64_t block = dtype_block(t.dtype);
  if (t.ne[0] % block != 0)
    return invalid_argument(label + ": row length ne[0] = " + std::to_string(t.ne[0]) + " is not a multiple of " +
                            std::string(dtype_name(t.dtype)) + "'s block of " + std::to_string(block));
  t.bytes = uint64_t(t.ne[0] / block) * uint64_t(dtype_bytes(t.dtype)) * uint64_t(t.rows());
  return {};
}

}  // namespace

StatusOr<GgufHeader> parse_gguf(const std::byte* data, uint64_t size) {
  Cursor c(data, size);
  GgufHeader h;
  const uint32_t magic = c.read<uint32_t>("magic");
  if (!c.ok()) return c.status();
  if (magic != 0x46554747u)  // "GGUF" little-endian
    return invalid_argument("not a GGUF file: the first 4 bytes are not 'GGUF'");
  h.version = c.read<uint32_t>("version");
  if (!c.ok()) return c.status();
  if (h.version == 1) return unimplemented("GGUF version 1 is not supported (2 and 3 are); re-convert the file");
  if (h.version != 2 && h.version != 3) {
    const bool swapped = __builtin_bswap32(h.version) == 2 || __builtin_bswap32(h.version) == 3;
    return unimplemented("GGUF version " + std::to_string(h.version) + " is not supported (2 and 3 are)" +
                         (swapped ? "; this looks like a big-endian GGUF, which is not supported" : ""));
  }
  const uint64_t n_tensors = c.read<uint64_t>("tensor count");
  const uint64_t n_kv = c.read<uint64_t>("metadata count");
  if (!c.ok()) return c.status();
  // A key/value takes at least 12 bytes, a tensor info at least 28: counts the file cannot hold are absurd.
  if (n_kv > c.left() / 12) return invalid_argument("metadata count " + std::to_string(n_kv) + " is larger than the file can hold");
  if (n_tensors > c.left() / 28) return invalid_argument("tensor count " + std::to_string(n_tensors) + " is larger than the file can hold");
  std::set<std::string, std::less<>> keys;
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = c.string("metadata key");
    const uint32_t type = c.read<uint32_t>("metadata type");
    if (!c.ok()) return c.status();
    if (!known_type(type)) return invalid_argument("metadata '" + key + "': unknown value type " + std::to_string(type));
    if (!keys.insert(key).second) return invalid_argument("metadata key '" + key + "' appears twice");
    GgufValue v;
    read_value(c, GgufType(type), v, key, 0);
    if (!c.ok()) return c.status();
    h.kv.emplace_back(std::move(key), std::move(v));
  }
  if (const GgufValue* a = h.find("general.alignment")) {
    if (!a->is_integer() || a->u == 0 || (a->u & (a->u - 1)) != 0 || a->u > (1u << 20))
      return invalid_argument("metadata 'general.alignment' is " + a->describe() + ": must be a power of two");
    h.alignment = a->u;
  }
  std::set<std::string, std::less<>> names;
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensor t;
    SHOAL_RETURN_IF_ERROR(read_tensor_info(c, k, t));
    if (!names.insert(t.name).second) return invalid_argument("tensor '" + t.name + "' appears twice");
    if (t.offset % h.alignment != 0)
      return invalid_argument("tensor '" + t.name + "': data offset " + std::to_string(t.offset) +
                              " is not a multiple of the alignment " + std::to_string(h.alignment));
    h.tensors.push_back(std::move(t));
  }
  h.data_offset = (c.pos() + h.alignment - 1) / h.alignment * h.alignment;
  if (h.data_offset > size && !h.tensors.empty())
    return out_of_range("the data section (at byte " + std::to_string(h.data_offset) + ") starts past the end of the file");
  const uint64_t data_size = size > h.data_offset ? size - h.data_offset : 0;
  std::vector<const GgufTensor*> by_offset;
  for (const GgufTensor& t : h.tensors) {
    if (t.offset > data_size || t.bytes > data_size - t.offset)
      return out_of_range("tensor '" + t.name + "': its " + std::to_string(t.bytes) + " bytes at data offset " +
                          std::to_string(t.offset) + " run past the end of the file (data section of " +
                          std::to_string(data_size) + " bytes)");
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t k = 1; k < by_offset.size(); ++k)
    if (by_offset[k - 1]->offset + by_offset[k - 1]->bytes > by_offset[k]->offset)
      return invalid_argument("tensors '" + by_offset[k - 1]->name + "' and '" + by_offset[k]->name + "' overlap");
  return h;
}

StatusOr<std::unique_ptr<GgufFile>> GgufFile::open(const fs::path& path) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return not_found("cannot open " + path.string() + ": " + std::strerror(errno));
  struct stat st{};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return invalid_argument(path.string() + ": not a regular file");
  }
  f->size_ = uint64_t(st.st_size);
  if (f->size_ == 0) {
    ::close(fd);
    return invalid_argument(path.string() + ": empty file, not a GGUF");
  }
  void* map = ::mmap(nullptr, f->size_, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return internal_error("cannot map " + path.string() + ": " + std::strerror(errno));
  f->map_ = map;
  f->base_ = static_cast<const std::byte*>(map);
  auto header = parse_gguf(f->base_, f->size_);
  if (!header.ok()) return header.status().with_context(path.string());
  f->header_ = std::move(*header);
  return f;
}

GgufFile::~GgufFile() {
  if (map_) ::munmap(map_, size_);
}

namespace {

struct SplitName {
  std::string prefix;
  int no = 0, count = 0;  // 1-based part number, number of parts
};

std::optional<SplitName> split_name(const fs::path& p) {
  static const std::regex re(R"((.*)-(\d{5})-of-(\d{5})\.gguf)");
  std::smatch m;
  const std::string name = p.filename().string();
  if (!std::regex_match(name, m, re)) return std::nullopt;
  return SplitName{m[1].str(), std::stoi(m[2].str()), std::stoi(m[3].str())};
}

fs::path part_path(const fs::path& dir, const SplitName& s, int no) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "-%05d-of-%05d.gguf", no, s.count);
  return dir / (s.prefix + buf);
}

int64_t meta_int(const GgufHeader& h, const char* key, int64_t fallback) {
  const GgufValue* v = h.find(key);
  return v && v->is_integer() ? v->i : fallback;
}

// The files of the model `path` names: one file, or parts 1..N of a split model.
StatusOr<std::vector<fs::path>> model_files(const fs::path& path) {
  std::error_code ec;
  fs::path first = path;
  if (fs::is_directory(path, ec)) {
    std::vector<fs::path> ggufs;
    for (const auto& e : fs::directory_iterator(path, ec))
      if (e.path().extension() == ".gguf") ggufs.push_back(e.path());
    std::sort(ggufs.begin(), ggufs.end());
    if (ggufs.empty()) return not_found(path.string() + ": no .gguf file in the folder");
    std::set<std::string> models;  // a split model counts once
    for (const auto& g : ggufs) {
      const auto s = split_name(g);
      models.insert(s ? s->prefix + "-of-" + std::to_string(s->count) : g.filename().string());
    }
    if (models.size() > 1) {
      std::string list;
      for (const auto& g : ggufs) list += (list.empty() ? "" : ", ") + g.filename().string();
      return invalid_argument(path.string() + ": holds more than one GGUF model (" + list +
                              "); pass the file (or part 1) to use");
    }
    first = ggufs.front();
    if (const auto s = split_name(first); s && s->no != 1) first = part_path(path, *s, 1);
  }
  const auto s = split_name(first);
  if (!s) return std::vector<fs::path>{first};
  if (s->no != 1)
    return invalid_argument(first.string() + " is part " + std::to_string(s->no) + " of " + std::to_string(s->count) +
                            ": pass part 1 (" + part_path(first.parent_path(), *s, 1).filename().string() +
                            ") or the folder");
  if (s->count < 1) return invalid_argument(first.string() + ": a split model of 0 parts");
  std::vector<fs::path> files;
  for (int k = 1; k <= s->count; ++k) {
    const fs::path p = part_path(first.parent_path(), *s, k);
    if (!fs::exists(p, ec)) return not_found(p.string() + ": part " + std::to_string(k) + " of " +
                                             std::to_string(s->count) + " is missing");
    files.push_back(p);
  }
  return files;
}

}  // namespace

StatusOr<std::unique_ptr<GgufModel>> GgufModel::open(const fs::path& path) {
  SHOAL_ASSIGN_OR_RETURN(std::vector<fs::path> files, model_files(path));
  auto m = std::make_unique<GgufModel>();
  int64_t total = -1;
  size_t tensors = 0;
  for (size_t k = 0; k < files.size(); ++k) {
    SHOAL_ASSIGN_OR_RETURN(auto f, GgufFile::open(files[k]));
    const GgufHeader& h = f->header();
    const int64_t no = meta_int(h, "split.no", -1), count = meta_int(h, "split.count", -1);
    const int64_t tcount = meta_int(h, "split.tensors.count", -1);
    const std::string name = files[k].string();
    if (files.size() == 1) {
      if (count > 1)
        return invalid_argument(name + ": is part " + std::to_string(no + 1) + " of a model split in " +
                                std::to_string(count) + " parts, but its name does not say so; "
                                "keep llama-gguf-split's NAME-0000k-of-0000N.gguf names");
    } else {
      if (count != int64_t(files.size()) || no != int64_t(k))
        return invalid_argument(name + ": its split.no/split.count (" + std::to_string(no) + "/" +
                                std::to_string(count) + ") say it is not part " + std::to_string(k + 1) + " of " +
                                std::to_string(files.size()));
      if (k == 0) total = tcount;
      else if (tcount != total)
        return invalid_argument(name + ": split.tensors.count " + std::to_string(tcount) + " differs from part 1's " +
                                std::to_string(total) + ": a part of another model?");
    }
    for (size_t t = 0; t < h.tensors.size(); ++t)
      if (!m->index_.emplace(h.tensors[t].name, std::make_pair(k, t)).second)
        return invalid_argument(name + ": tensor '" + h.tensors[t].name + "' is also in an earlier part");
    tensors += h.tensors.size();
    m->parts_.push_back(std::move(f));
  }
  if (files.size() > 1 && int64_t(tensors) != total)
    return invalid_argument(files.front().string() + ": the parts hold " + std::to_string(tensors) +
                            " tensors but split.tensors.count says " + std::to_string(total));
  if (!m->meta().find("general.architecture"))
    return invalid_argument(files.front().string() + ": no 'general.architecture' (is this part 1?)");
  return m;
}

std::optional<GgufModel::Located> GgufModel::find(std::string_view name) const {
  auto it = index_.find(name);
  if (it == index_.end()) return std::nullopt;
  const GgufFile& f = *parts_[it->second.first];
  const GgufTensor& t = f.header().tensors[it->second.second];
  return Located{&t, f.data(t), &f};
}

bool is_gguf_path(const fs::path& path) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) return path.extension() == ".gguf";
  if (!fs::is_directory(path, ec) || fs::exists(path / "config.json", ec)) return false;
  for (const auto& e : fs::directory_iterator(path, ec))
    if (e.path().extension() == ".gguf") return true;
  return false;
}

}  // namespace shoal
