#include "cluster/shard.h"

#include <openssl/evp.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "model/checkpoint.h"
#include "model/gguf_writer.h"
#include "model/safetensors.h"
#include "model/synth.h"

namespace shoal::cluster {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

class Sha256 {
 public:
  Sha256() : md_(EVP_MD_CTX_new(), EVP_MD_CTX_free) { EVP_DigestInit_ex(md_.get(), EVP_sha256(), nullptr); }
  void add(const void* p, size_t n) { EVP_DigestUpdate(md_.get(), p, n); }
  std::string hex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_DigestFinal_ex(md_.get(), digest, &len);
    std::string out;
    char two[3];
    for (unsigned i = 0; i < len; ++i) std::snprintf(two, sizeof two, "%02x", digest[i]), out += two;
    return out;
  }

 private:
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> md_;
};

// A shard file being written: every byte goes to the file and into its SHA-256.
class HashedFile {
 public:
  static StatusOr<std::unique_ptr<HashedFile>> create(const fs::path& path) {
    std::unique_ptr<HashedFile> f(new HashedFile(path));
    if (!f->out_) return not_found("cannot write " + path.string());
    return f;
  }
  void put(const void* p, size_t n) {
    out_.write(static_cast<const char*>(p), std::streamsize(n));
    sha_.add(p, n);
    bytes_ += int64_t(n);
  }
  // Closes the file: its entry in the manifest.
  StatusOr<ShardFile> finish(const std::vector<std::string>& tensors) {
    out_.close();
    if (!out_) return internal_error("write failed: " + path_.string());
    return ShardFile{path_.filename().string(), bytes_, sha_.hex(), tensors};
  }

 private:
  explicit HashedFile(const fs::path& path) : path_(path), out_(path, std::ios::binary | std::ios::trunc) {}
  fs::path path_;
  std::ofstream out_;
  Sha256 sha_;
  int64_t bytes_ = 0;
};

json to_json(const ShardManifest& m) {
  json files = json::array();
  for (const ShardFile& f : m.files)
    files.push_back({{"file", f.file}, {"bytes", f.bytes}, {"sha256", f.sha256}, {"tensors", f.tensors}});
  return {{"version", m.version}, {"rank", m.rank}, {"world_size", m.world_size}, {"source", m.source}, {"files", files}};
}

std::string sample(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < 3; ++i) out += (i ? ", " : "") + names[i];
  return out + (names.size() > 3 ? ", ..." : "");
}

// A stacked ffn_*_exps tensor keeps only the hosted experts' slices, in expert order, and
// `shoal.shard.experts.<name>` lists their expert indices; every other tensor is copied whole.
// The metadata is the source's (less split.* and an earlier shard's shoal.shard.*) plus the
// shard's keys, so the file opens alone with the source's config (model/gguf_checkpoint.cpp).
StatusOr<ShardFile> write_gguf_shard(Checkpoint& source, const GgufModel& g, const std::vector<std::string>& tensors,
                                     int rank, int world_size, const fs::path& dir) {
  SHOAL_ASSIGN_OR_RETURN(auto views, gguf_hf_tensors(g, source.config()));
  struct Piece {
    int64_t expert;  // -1: the whole tensor
    const GgufView* view;
  };
  std::map<std::string, std::vector<Piece>> hosted;  // GGUF tensor -> its hosted pieces
  for (const std::string& name : tensors) {
    const auto it = views.find(name);
    if (it == views.end()) return not_found("tensor '" + name + "' is not in the GGUF model " + source.dir().string());
    const std::string& src = it->second.source;  // "blk.3.ffn_up_exps.weight[5]" for expert 5
    const size_t bracket = src.find('[');
    if (bracket == std::string::npos) hosted[src].push_back({-1, &it->second});
    else hosted[src.substr(0, bracket)].push_back({std::stoll(src.substr(bracket + 1)), &it->second});
  }
  std::vector<std::pair<std::string, GgufValue>> kv;
  for (const auto& [key, value] : g.meta().kv)
    if (!key.starts_with("split.") && !key.starts_with("shoal.shard.")) kv.emplace_back(key, value);
  kv.emplace_back("shoal.shard.rank", gguf_u32(uint32_t(rank)));
  kv.emplace_back("shoal.shard.world_size", gguf_u32(uint32_t(world_size)));
  if (const GgufValue* all = g.meta().find("shoal.shard.source_tensors")) {
    kv.emplace_back("shoal.shard.source_tensors", *all);
  } else {
    std::vector<std::string> names;
    for (const auto& part : g.parts())
      for (const GgufTensor& t : part->header().tensors) names.push_back(t.name);
    kv.emplace_back("shoal.shard.source_tensors", gguf_strings(std::move(names)));
  }
  // Tensors in the source's file order.
  std::vector<GgufTensorOut> outs;
  std::vector<std::vector<Piece>> pieces;
  for (const auto& part : g.parts()) {
    for (const GgufTensor& t : part->header().tensors) {
      auto it = hosted.find(t.name);
      if (it == hosted.end()) continue;
      std::vector<Piece>& p = it->second;
      std::sort(p.begin(), p.end(), [](const Piece& a, const Piece& b) { return a.expert < b.expert; });
      GgufTensorOut o{t.name, t.dtype, t.ne, 0, 0};
      for (const Piece& x : p) o.bytes += x.view->info.end - x.view->info.begin;
      if (p.front().expert >= 0) {
        std::vector<int64_t> ids;
        for (const Piece& x : p) ids.push_back(x.expert);
        o.ne.back() = int64_t(ids.size());
        kv.emplace_back("shoal.shard.experts." + t.name, gguf_ints(GgufType::kI32, std::move(ids)));
      }
      outs.push_back(std::move(o));
      pieces.push_back(std::move(p));
    }
  }
  const uint64_t alignment = g.meta().alignment;
  const std::string header = gguf_stream_header(kv, outs, nullptr, alignment);
  SHOAL_ASSIGN_OR_RETURN(auto file, HashedFile::create(dir / "model.gguf"));
  auto put = [&](const void* p, size_t n) { file->put(p, n); };
  put(header.data(), header.size());
  uint64_t at = 0;  // in the data section
  const std::vector<char> zeros(size_t(alignment), 0);
  for (size_t i = 0; i < outs.size(); ++i) {
    put(zeros.data(), size_t(outs[i].offset - at));
    for (const Piece& x : pieces[i]) put(x.view->data, size_t(x.view->info.end - x.view->info.begin));
    at = outs[i].offset + outs[i].bytes;
  }
  const uint64_t end = (at + alignment - 1) / alignment * alignment;  // the last tensor padded too
  put(zeros.data(), size_t(end - at));
  return file->finish(tensors);
}

// config.json and model.safetensors with the named tensors, bytes as stored.
StatusOr<ShardFile> write_safetensors_shard(Checkpoint& source, const std::vector<std::string>& tensors,
                                            const fs::path& dir) {
  std::error_code ec;
  fs::copy_file(source.dir() / "config.json", dir / "config.json", fs::copy_options::overwrite_existing, ec);
  if (ec) return not_found("cannot copy config.json into " + dir.string() + ": " + ec.message());
  std::vector<TensorRef> refs;
  std::vector<TensorSlot> slots;
  for (const std::string& name : tensors) {
    SHOAL_ASSIGN_OR_RETURN(TensorRef t, source.tensor(name));
    refs.push_back(t);
    slots.push_back({name, t.info->dtype, t.info->shape, t.info->end - t.info->begin});
  }
  std::vector<TensorSlot*> ptrs;
  for (TensorSlot& s : slots) ptrs.push_back(&s);
  const std::string header = safetensors_header(ptrs);
  SHOAL_ASSIGN_OR_RETURN(auto file, HashedFile::create(dir / "model.safetensors"));
  const uint64_t len = header.size();
  file->put(&len, 8);
  file->put(header.data(), header.size());
  for (size_t i = 0; i < refs.size(); ++i) file->put(refs[i].data, size_t(slots[i].bytes));
  return file->finish(tensors);
}

}  // namespace

StatusOr<std::string> file_sha256(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return not_found("cannot read " + file.string());
  Sha256 h;
  std::vector<char> buf(4 << 20);
  while (in) {
    in.read(buf.data(), std::streamsize(buf.size()));
    h.add(buf.data(), size_t(in.gcount()));
  }
  if (in.bad()) return internal_error("read failed: " + file.string());
  return h.hex();
}

StatusOr<ShardManifest> write_shard(Checkpoint& source, const std::vector<std::string>& tensors, int rank,
                                    int world_size, const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return not_found("cannot make " + dir.string() + ": " + ec.message());
  ShardManifest m;
  m.rank = rank;
  m.world_size = world_size;
  m.source = fs::absolute(source.dir()).string();
  if (const GgufModel* g = source.gguf()) {
    SHOAL_ASSIGN_OR_RETURN(ShardFile f, write_gguf_shard(source, *g, tensors, rank, world_size, dir));
    m.files.push_back(std::move(f));
  } else {
    SHOAL_ASSIGN_OR_RETURN(ShardFile f, write_safetensors_shard(source, tensors, dir));
    m.files.push_back(std::move(f));
  }
  std::ofstream(dir / kShardManifest) << to_json(m).dump(2) << "\n";
  if (!fs::exists(dir / kShardManifest)) return internal_error("cannot write " + (dir / kShardManifest).string());
  return m;
}

StatusOr<std::optional<ShardManifest>> read_shard_manifest(const fs::path& dir) {
  const fs::path path = dir / kShardManifest;
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::optional<ShardManifest>();
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  const json j = json::parse(text.str(), nullptr, false);
  const std::string where = path.string() + ": ";
  if (j.is_discarded() || !j.is_object()) return invalid_argument(where + "not a JSON object");
  ShardManifest m;
  try {
    m.version = j.at("version").get<int>();
    m.rank = j.at("rank").get<int>();
    m.world_size = j.at("world_size").get<int>();
    m.source = j.value("source", "");
    for (const json& f : j.at("files")) {
      ShardFile sf{f.at("file").get<std::string>(), f.at("bytes").get<int64_t>(), f.at("sha256").get<std::string>(),
                   f.at("tensors").get<std::vector<std::string>>()};
      if (sf.file.empty() || sf.file.find('/') != std::string::npos || sf.file == "..")
        return invalid_argument(where + "file '" + sf.file + "' is not a file in the folder");
      m.files.push_back(std::move(sf));
    }
  } catch (const json::exception& e) {
    return invalid_argument(where + "missing or mistyped field: " + e.what());
  }
  if (m.version != 1) return unimplemented(where + "version " + std::to_string(m.version) + " (this shoal reads 1)");
  return std::optional<ShardManifest>(std::move(m));
}

Status verify_shard(const fs::path& dir, const ShardManifest& m) {
  for (const ShardFile& f : m.files) {
    const fs::path path = dir / f.file;
    std::error_code ec;
    const auto size = fs::file_size(path, ec);
    if (ec) return not_found("shard file " + path.string() + " is missing: " + ec.message());
    if (int64_t(size) != f.bytes)
      return invalid_argument("shard file " + path.string() + " has " + std::to_string(size) + " bytes, its manifest says " +
                              std::to_string(f.bytes));
    // Hashed once per process while the file keeps its size and modification time (a 100 GB
    // shard takes about a minute): a node checks at every hello, and most hellos find it known.
    static std::mutex mu;
    static std::set<std::string> known;
    const auto mtime = fs::last_write_time(path, ec).time_since_epoch().count();
    const std::string key = fs::absolute(path).string() + "|" + std::to_string(size) + "|" + std::to_string(mtime) + "|" + f.sha256;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!ec && known.count(key)) continue;
    }
    SHOAL_ASSIGN_OR_RETURN(std::string got, file_sha256(path));
    if (got == f.sha256) {
      std::lock_guard<std::mutex> lock(mu);
      known.insert(key);
    }
    if (got != f.sha256)
      return invalid_argument("shard file " + path.string() + ": sha256 " + got.substr(0, 16) + "... differs from " +
                              f.sha256.substr(0, 16) + "... in " + kShardManifest +
                              " (changed since shoal shard wrote it: write the shard again)");
  }
  return {};
}

Status check_shard_tensors(const fs::path& dir, const ShardManifest& m, int rank, const std::vector<std::string>& hosted) {
  std::set<std::string> have;
  for (const ShardFile& f : m.files) have.insert(f.tensors.begin(), f.tensors.end());
  const std::set<std::string> want(hosted.begin(), hosted.end());
  std::vector<std::string> missing, extra;
  std::set_difference(want.begin(), want.end(), have.begin(), have.end(), std::back_inserter(missing));
  std::set_difference(have.begin(), have.end(), want.begin(), want.end(), std::back_inserter(extra));
  if (missing.empty() && extra.empty()) return {};
  std::string why = "shard " + dir.string() + " holds the units of rank " + std::to_string(m.rank) + " (of " +
                    std::to_string(m.world_size) + "), not those the plan gives rank " + std::to_string(rank) + ":";
  if (!missing.empty()) why += " " + std::to_string(missing.size()) + " tensors missing (" + sample(missing) + ")";
  if (!extra.empty()) why += " " + std::to_string(extra.size()) + " others (" + sample(extra) + ")";
  return invalid_argument(why);
}

}  // namespace shoal::cluster
