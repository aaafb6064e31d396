#include "model/checkpoint.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <algorithm>
#include "model/tensor_names.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace shoal {
namespace fs = std::filesystem;

namespace {

StatusOr<std::map<std::string, std::string>> read_index(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found("cannot open " + path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  auto j = nlohmann::json::parse(ss.str(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return invalid_argument(path.string() + ": not a JSON object");
  if (!j.contains("weight_map") || !j["weight_map"].is_object())
    return invalid_argument(path.string() + ": missing 'weight_map'");
  std::map<std::string, std::string> where;
  for (const auto& [name, file] : j["weight_map"].items()) {
    if (!file.is_string()) return invalid_argument(path.string() + ": weight_map['" + name + "'] is not a file name");
    const std::string f = file.get<std::string>();
    if (f.empty() || f.find('/') != std::string::npos || f == "..")
      return invalid_argument(path.string() + ": weight_map['" + name + "'] = '" + f + "' is not a file in the folder");
    where.emplace(name, f);
  }
  return where;
}

}  // namespace

StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::open(const fs::path& dir) {
  std::error_code ec;
  std::unique_ptr<Checkpoint> ck(new Checkpoint());
  ck->dir_ = dir;
  if (is_gguf_path(dir)) {
    SHOAL_ASSIGN_OR_RETURN(ck->gguf_, GgufModel::open(dir));
    SHOAL_ASSIGN_OR_RETURN(ck->config_, gguf_model_config(*ck->gguf_));
    SHOAL_ASSIGN_OR_RETURN(ck->gguf_tensors_, gguf_hf_tensors(*ck->gguf_, ck->config_));
    ck->numerics_ = ck->default_numerics();
    return ck;
  }
  if (!fs::is_directory(dir, ec))
    return not_found(dir.string() + ": not a folder (a Hugging Face checkpoint) or a .gguf file");
  SHOAL_ASSIGN_OR_RETURN(ck->config_, load_config(dir / "config.json"));
  const fs::path index = dir / "model.safetensors.index.json";
  if (fs::exists(index, ec)) {
    SHOAL_ASSIGN_OR_RETURN(ck->where_, read_index(index));
    return ck;
  }
  // Single-file checkpoints: every *.safetensors in the folder (normally model.safetensors).
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (entry.path().extension() == ".safetensors") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    SHOAL_ASSIGN_OR_RETURN(SafetensorsFile * file, ck->shard(f.filename().string()));
    for (const auto& t : file->tensors()) ck->where_.emplace(t.name, f.filename().string());
  }
  return ck;  // a folder with only config.json is valid: counts need no weights
}

StatusOr<SafetensorsFile*> Checkpoint::shard(const std::string& file) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = shards_.find(file);
  if (it != shards_.end()) return it->second.get();
  SHOAL_ASSIGN_OR_RETURN(auto opened, SafetensorsFile::open(dir_ / file));
  SafetensorsFile* raw = opened.get();
  shards_.emplace(file, std::move(opened));
  return raw;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  for (const auto& [name, file] : where_) out.push_back(name);
  for (const auto& [name, view] : gguf_tensors_) out.push_back(name);
  return out;
}

StatusOr<TensorRef> Checkpoint::tensor(const std::string& name) {
  SHOAL_ASSIGN_OR_RETURN(TensorRef t, mapped_tensor(name));
  if (!copy_weights_) return t;
  SHOAL_ASSIGN_OR_RETURN(t.data, copies_.get(name, t.data, size_t(t.info->end - t.info->begin)));
  return t;
}

StatusOr<TensorRef> Checkpoint::mapped_tensor(const std::string& name) {
  if (gguf_) {
    auto g = gguf_tensors_.find(name);
    if (g == gguf_tensors_.end()) return not_found("tensor '" + name + "' is not in the GGUF model " + dir_.string());
    return TensorRef{&g->second.info, g->second.data};
  }
  auto it = where_.find(name);
  if (it == where_.end()) return not_found("tensor '" + name + "' is not in the checkpoint " + dir_.string());
  SHOAL_ASSIGN_OR_RETURN(SafetensorsFile * file, shard(it->second));
  const TensorInfo* info = file->find(name);
  if (!info) return not_found("tensor '" + name + "' is listed in the index but missing from " + it->second);
  return TensorRef{info, file->data(*info)};
}

StatusOr<int64_t> Checkpoint::prefault(const std::string& name) {
  SHOAL_ASSIGN_OR_RETURN(TensorRef t, tensor(name));
  const int64_t bytes = int64_t(t.info->end - t.info->begin);
  if (bytes == 0 || copy_weights_) return bytes;  // a copy is resident once made
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = uintptr_t(t.data) & ~(page - 1);
  const uintptr_t end = uintptr_t(t.data) + uintptr_t(bytes);
  if (::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_READ) != 0)
    return Status(Code::kInternal, "tensor '" + name + "': cannot read it into memory: " + std::strerror(errno));
  return bytes;
}

StatusOr<kernels::Matrix> Checkpoint::matrix(const std::string& name, int64_t rows, int64_t cols) {
  SHOAL_ASSIGN_OR_RETURN(TensorRef t, tensor(name));
  const std::vector<int64_t> want{rows, cols};
  if (t.info->shape != want)
    return invalid_argument("tensor '" + name + "' has shape " + t.info->shape_string() + ", expected [" +
                            std::to_string(rows) + ", " + std::to_string(cols) + "]");
  kernels::Matrix m;
  m.data = t.data;
  m.dtype = t.info->dtype;
  m.rows = rows;
  m.cols = cols;
  m.numerics = numerics_;
  if (m.dtype != DType::kF8E4M3) return m;
  m.block = config_.fp8_block;
  const std::string sname = names::scale_inv(name);
  auto s = tensor(sname);
  if (!s.ok()) return s.status().with_context("F8_E4M3 tensor '" + name + "': block scales '" + sname + "'");
  const std::vector<int64_t> sshape{(rows + m.block - 1) / m.block, (cols + m.block - 1) / m.block};
  if (s->info->shape != sshape || s->info->dtype != DType::kF32)
    return invalid_argument("tensor '" + sname + "' is " + std::string(dtype_name(s->info->dtype)) + " " +
                            s->info->shape_string() + ", expected F32 [" + std::to_string(sshape[0]) + ", " +
                            std::to_string(sshape[1]) + "]");
  m.scale_inv = reinterpret_cast<const float*>(s->data);
  return m;
}

StatusOr<kernels::Matrix> Checkpoint::vector(const std::string& name, int64_t n) {
  SHOAL_ASSIGN_OR_RETURN(TensorRef t, tensor(name));
  if (t.info->shape != std::vector<int64_t>{n})
    return invalid_argument("tensor '" + name + "' has shape " + t.info->shape_string() + ", expected [" +
                            std::to_string(n) + "]");
  if (t.info->dtype == DType::kF8E4M3)
    return invalid_argument("tensor '" + name + "' is F8_E4M3; vectors must be F32, F16 or BF16");
  kernels::Matrix m;
  m.data = t.data;
  m.dtype = t.info->dtype;
  m.rows = 1;
  m.cols = n;
  return m;
}

StatusOr<std::vector<TensorInfo>> Checkpoint::all_tensor_infos() {
  std::vector<TensorInfo> out;
  for (const auto& [name, view] : gguf_tensors_) out.push_back(view.info);
  std::map<std::string, std::string> files;  // shard -> first tensor the index puts there
  for (const auto& [name, file] : where_) files.emplace(file, name);
  for (const auto& [file, first] : files) {
    auto f = shard(file);
    if (!f.ok()) return f.status().with_context("tensor '" + first + "' (and any other the index puts in " + file + ")");
    for (const auto& t : (*f)->tensors()) out.push_back(t);
  }
  return out;
}

}  // namespace shoal
