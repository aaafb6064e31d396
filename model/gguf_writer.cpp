#include "model/gguf_writer.h"

#include <cstring>
#include <fstream>

namespace shoal {

GgufValue gguf_u32(uint32_t v) { GgufValue x; x.type = GgufType::kU32; x.u = v; x.i = v; return x; }
GgufValue gguf_i32(int32_t v) { GgufValue x; x.type = GgufType::kI32; x.i = v; x.u = v < 0 ? 0 : uint64_t(v); return x; }
GgufValue gguf_f32(float v) { GgufValue x; x.type = GgufType::kF32; x.f = v; return x; }
GgufValue gguf_bool(bool v) { GgufValue x; x.type = GgufType::kBool; x.b = v; x.i = v; return x; }
GgufValue gguf_str(std::string v) { GgufValue x; x.type = GgufType::kString; x.s = std::move(v); return x; }
GgufValue gguf_strings(std::vector<std::string> v) {
  GgufValue x;
  x.type = GgufType::kArray;
  x.elem = GgufType::kString;
  x.count = v.size();
  x.strings = std::move(v);
  return x;
}
GgufValue gguf_ints(GgufType elem, std::vector<int64_t> v) {
  GgufValue x;
  x.type = GgufType::kArray;
  x.elem = elem;
  x.count = v.size();
  x.ints = std::move(v);
  return x;
}

namespace {

template <class T>
void put(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}
void put_string(std::string& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out += s;
}

void put_scalar(std::string& out, GgufType t, const GgufValue& v, size_t k) {
  // k: element index for arrays (SIZE_MAX: the scalar itself)
  const bool el = k != SIZE_MAX;
  const bool float_type = t == GgufType::kF32 || t == GgufType::kF64;
  const int64_t i = !el ? v.i : float_type || t == GgufType::kString ? 0 : v.ints[k];
  const double f = !el ? v.f : float_type ? v.floats[k] : 0.0;
  switch (t) {
    case GgufType::kU8: put<uint8_t>(out, uint8_t(i)); break;
    case GgufType::kI8: put<int8_t>(out, int8_t(i)); break;
    case GgufType::kU16: put<uint16_t>(out, uint16_t(i)); break;
    case GgufType::kI16: put<int16_t>(out, int16_t(i)); break;
    case GgufType::kU32: put<uint32_t>(out, uint32_t(el ? uint64_t(i) : v.u)); break;
    case GgufType::kI32: put<int32_t>(out, int32_t(i)); break;
    case GgufType::kU64: put<uint64_t>(out, el ? uint64_t(i) : v.u); break;
    case GgufType::kI64: put<int64_t>(out, i); break;
    case GgufType::kF32: put<float>(out, float(f)); break;
    case GgufType::kF64: put<double>(out, f); break;
    case GgufType::kBool: put<uint8_t>(out, el ? uint8_t(i != 0) : uint8_t(v.b)); break;
    case GgufType::kString: put_string(out, el ? v.strings[k] : v.s); break;
    default: break;
  }
}

void put_value(std::string& out, const GgufValue& v) {
  if (v.type != GgufType::kArray) return put_scalar(out, v.type, v, SIZE_MAX);
  put<uint32_t>(out, uint32_t(v.elem));
  put<uint64_t>(out, v.count);
  for (size_t k = 0; k < v.count; ++k) {
    if (v.elem == GgufType::kArray) {
      put<uint32_t>(out, uint32_t(GgufType::kArray));  // never reached for flat arrays
      put_value(out, v.items[k]);
    } else {
      put_scalar(out, v.elem, v, k);
    }
  }
}

}  // namespace

std::string gguf_image(const std::vector<std::pair<std::string, GgufValue>>& kv,
                       const std::vector<const GgufTensorBlob*>& tensors, uint64_t alignment) {
  std::string out;
  put<uint32_t>(out, 0x46554747u);
  put<uint32_t>(out, 3);
  put<uint64_t>(out, tensors.size());
  put<uint64_t>(out, kv.size());
  for (const auto& [key, v] : kv) {
    put_string(out, key);
    put<uint32_t>(out, uint32_t(v.type));
    put_value(out, v);
  }
  uint64_t offset = 0;
  for (const GgufTensorBlob* t : tensors) {
    put_string(out, t->name);
    put<uint32_t>(out, uint32_t(t->ne.size()));
    for (int64_t d : t->ne) put<uint64_t>(out, uint64_t(d));
    put<uint32_t>(out, uint32_t(dtype_info(t->dtype).ggml_id));
    put<uint64_t>(out, offset);
    offset = (offset + t->bytes.size() + alignment - 1) / alignment * alignment;
  }
  out.resize((out.size() + alignment - 1) / alignment * alignment, '\0');
  for (const GgufTensorBlob* t : tensors) {
    out.append(reinterpret_cast<const char*>(t->bytes.data()), t->bytes.size());
    out.resize((out.size() + alignment - 1) / alignment * alignment, '\0');
  }
  return out;
}

Status write_gguf(const std::filesystem::path& path, const std::vector<std::pair<std::string, GgufValue>>& kv,
                  const std::vector<const GgufTensorBlob*>& tensors, uint64_t alignment) {
  const std::string image = gguf_image(kv, tensors, alignment);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return internal_error("cannot create " + path.string());
  out.write(image.data(), std::streamsize(image.size()));
  if (!out) return internal_error("cannot write " + path.string());
  return {};
}

}  // namespace shoal
