// Bad input gets a clear error and exit code, never a crash. Each case is checked at the
// library level (the Status code, and that the message names the file / tensor / field / id)
// and, for many, through the CLI on a corrupted copy of a fixture: `shoal logits` / `shoal run`
// must exit with status 1 (not a signal) and say on stderr what is wrong.
#include <stdlib.h>
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "coordinator/engine.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/safetensors.h"

using Catch::Matchers::Contains;
using nlohmann::json;
using namespace shoal;
namespace fs = std::filesystem;

namespace {

const std::string kBf16 = "tiny-v3-bf16";
const std::string kFp8 = "tiny-v3-fp8";
const std::string kShard1 = "model-00001-of-00002.safetensors";
const std::string kShard2 = "model-00002-of-00002.safetensors";
const std::string kIndex = "model.safetensors.index.json";

// A fresh folder under the temp directory, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "shoal-test-errors-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& name) const { return path_ / name; }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  REQUIRE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  REQUIRE(out.good());
  out.write(bytes.data(), std::streamsize(bytes.size()));
  REQUIRE(out.good());
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[size_t(i)] = char((v >> (8 * i)) & 0xFF);
  return s;
}

// A safetensors file from raw parts: the 8-byte length (of the header as given unless
// `length` says otherwise), the header text, then `data_bytes` zero bytes.
void write_raw_safetensors(const fs::path& p, const std::string& header, uint64_t data_bytes,
                           std::optional<uint64_t> length = std::nullopt) {
  write_file(p, le64(length.value_or(header.size())) + header + std::string(data_bytes, '\0'));
}

// Copies a fixture's checkpoint files (not golden.json) into a temp folder to corrupt.
void copy_fixture(const std::string& name, const TempDir& dir) {
  const fs::path src = fs::path(SHOAL_FIXTURES) / name;
  for (const std::string& f : std::vector<std::string>{"config.json", kIndex, kShard1, kShard2})
    fs::copy_file(src / f, dir / f, fs::copy_options::overwrite_existing);
}

// 'name', as the messages quote names.
std::string q(const std::string& name) {
  std::string r = "'";
  r += name;
  r += '\'';
  return r;
}

json read_json(const fs::path& p) { return json::parse(read_file(p)); }
void write_json(const fs::path& p, const json& j) { write_file(p, j.dump(2)); }
void edit_json(const fs::path& p, const std::function<void(json&)>& edit) {
  json j = read_json(p);
  edit(j);
  write_json(p, j);
}

// Rewrites the JSON header of a safetensors file (padded to a multiple of 8 with spaces);
// the data section is kept byte for byte, so offsets stay valid unless the edit changes them.
void edit_shard_header(const fs::path& p, const std::function<void(json&)>& edit) {
  const std::string bytes = read_file(p);
  REQUIRE(bytes.size() >= 8);
  uint64_t len = 0;
  std::memcpy(&len, bytes.data(), 8);
  REQUIRE(len <= bytes.size() - 8);
  json header = json::parse(bytes.substr(8, len));
  edit(header);
  std::string text = header.dump();
  text.resize((text.size() + 7) / 8 * 8, ' ');
  write_file(p, le64(text.size()) + text + bytes.substr(8 + len));
}

// Runs the shoal binary with `args`; stdout is discarded, stderr captured.
struct CliResult {
  bool exited = false;  // false: killed by a signal (a crash)
  int code = -1;
  std::string err;
};

CliResult run_cli(const std::string& args) {
  TempDir tmp;
  const fs::path err = tmp / "stderr.txt";
  const std::string cmd = std::string(SHOAL_BINARY) + " " + args + " >/dev/null 2>'" + err.string() + "'";
  const int status = std::system(cmd.c_str());
  CliResult r;
  REQUIRE(status != -1);
  r.exited = WIFEXITED(status);
  if (r.exited) r.code = WEXITSTATUS(status);
  r.err = read_file(err);
  return r;
}

// `shoal logits` on a model folder: exit 1 with "shoal: error:" and each of `needles` on stderr.
void expect_cli_error(const std::string& args, const std::vector<std::string>& needles) {
  const CliResult r = run_cli(args);
  INFO("shoal " << args << "\nstderr: " << r.err);
  REQUIRE(r.exited);
  CHECK(r.code == 1);  // 1: a reported error; 128+N from the shell would be a signal
  CHECK_THAT(r.err, Contains("shoal: error:"));
  for (const auto& n : needles) CHECK_THAT(r.err, Contains(n));
}

std::string logits_args(const TempDir& dir, const std::string& ids = "0 17 42") {
  return "logits --model '" + dir.str() + "' --ids '" + ids + "'";
}

void expect_status(const Status& s, Code code, const std::vector<std::string>& needles) {
  INFO("status: " << s.to_string());
  REQUIRE_FALSE(s.ok());
  CHECK(s.code() == code);
  for (const auto& n : needles) CHECK_THAT(s.message(), Contains(n));
}

template <typename T>
void expect_error(const StatusOr<T>& r, Code code, const std::vector<std::string>& needles) {
  REQUIRE_FALSE(r.ok());
  expect_status(r.status(), code, needles);
}

// A valid one-tensor header: "w" F32 [4] at [0, 16).
const std::string kOneTensor = R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})";

json fixture_config(const std::string& fixture) {
  return read_json(fs::path(SHOAL_FIXTURES) / fixture / "config.json");
}

StatusOr<ModelConfig> parse_edited_config(const std::function<void(json&)>& edit) {
  json c = fixture_config(kBf16);
  edit(c);
  return parse_config(c.dump());
}

}  // namespace

// ---- safetensors: the file itself -------------------------------------------------------------

TEST_CASE("safetensors: a file shorter than the 8-byte length is truncated", "[errors][safetensors]") {
  TempDir dir;
  const fs::path p = dir / "short.safetensors";
  for (const std::string& bytes : {std::string(), std::string("\x10\0\0\0\0", 5)}) {
    write_file(p, bytes);
    auto f = SafetensorsFile::open(p);
    expect_error(f, Code::kInvalidArgument, {p.string(), "truncated"});
  }
}

TEST_CASE("safetensors: a header length larger than the file is truncated", "[errors][safetensors]") {
  TempDir dir;
  const fs::path p = dir / "cut.safetensors";
  write_raw_safetensors(p, kOneTensor, 16, /*length=*/4096);
  auto f = SafetensorsFile::open(p);
  expect_error(f, Code::kInvalidArgument, {p.string(), "truncated", "4096"});
}

TEST_CASE("safetensors: a header length over the 100 MiB limit", "[errors][safetensors]") {
  TempDir dir;
  const fs::path p = dir / "huge.safetensors";
  for (uint64_t len : {kMaxSafetensorsHeader + 1, uint64_t(1) << 40, ~uint64_t(0)}) {
    write_raw_safetensors(p, kOneTensor, 16, len);
    auto f = SafetensorsFile::open(p);
    expect_error(f, Code::kInvalidArgument, {p.string(), std::to_string(len), "100 MiB"});
  }
}

TEST_CASE("safetensors: a missing file or a folder", "[errors][safetensors]") {
  TempDir dir;
  expect_error(SafetensorsFile::open(dir / "absent.safetensors"), Code::kNotFound, {"absent.safetensors"});
  expect_error(SafetensorsFile::open(dir.path()), Code::kInvalidArgument, {dir.str(), "not a regular file"});
}

TEST_CASE("safetensors: a header that is not JSON or not an object", "[errors][safetensors]") {
  expect_error(parse_safetensors_header("this is not json", 0), Code::kInvalidArgument, {"not valid JSON"});
  expect_error(parse_safetensors_header("{\"w\": {", 0), Code::kInvalidArgument, {"not valid JSON"});
  expect_error(parse_safetensors_header("", 0), Code::kInvalidArgument, {"not valid JSON"});
  expect_error(parse_safetensors_header("[1, 2, 3]", 0), Code::kInvalidArgument, {"not a JSON object"});
  expect_error(parse_safetensors_header("\"w\"", 0), Code::kInvalidArgument, {"not a JSON object"});
  expect_error(parse_safetensors_header(R"({"w": 5})", 0), Code::kInvalidArgument, {"'w'", "not an object"});
  expect_error(parse_safetensors_header(R"({"__metadata__": 5})", 0), Code::kInvalidArgument, {"__metadata__"});
  // Through open: the message names the file.
  TempDir dir;
  const fs::path p = dir / "text.safetensors";
  write_raw_safetensors(p, "not json at all!", 0);
  expect_error(SafetensorsFile::open(p), Code::kInvalidArgument, {p.string(), "not valid JSON"});
  write_raw_safetensors(p, "[1,2,3]  ", 0);
  expect_error(SafetensorsFile::open(p), Code::kInvalidArgument, {p.string(), "not a JSON object"});
}

TEST_CASE("safetensors: entries with missing or mistyped fields", "[errors][safetensors]") {
  auto parse = [](const std::string& entry) {
    return parse_safetensors_header("{\"w\":" + entry + "}", 1 << 20);
  };
  expect_error(parse(R"({"shape":[4],"data_offsets":[0,16]})"), Code::kInvalidArgument, {"'w'", "dtype"});
  expect_error(parse(R"({"dtype":"F32","data_offsets":[0,16]})"), Code::kInvalidArgument, {"'w'", "shape"});
  expect_error(parse(R"({"dtype":"F32","shape":[4]})"), Code::kInvalidArgument, {"'w'", "data_offsets"});
  expect_error(parse(R"({"dtype":"F32","shape":[4],"data_offsets":[0]})"), Code::kInvalidArgument,
               {"'w'", "data_offsets"});
  expect_error(parse(R"({"dtype":"F32","shape":[-4],"data_offsets":[0,16]})"), Code::kInvalidArgument,
               {"'w'", "shape"});
  expect_error(parse(R"({"dtype":"F32","shape":[4.5],"data_offsets":[0,16]})"), Code::kInvalidArgument,
               {"'w'", "shape"});
  expect_error(parse(R"({"dtype":"F32","shape":[4],"data_offsets":[-1,15]})"), Code::kInvalidArgument,
               {"'w'", "data_offsets"});
  expect_error(parse(R"({"dtype":"F32","shape":[4],"data_offsets":[16,0]})"), Code::kInvalidArgument,
               {"'w'", "begin > end"});
  // Element counts that overflow 64 bits must be refused, not wrap to a small byte count.
  expect_error(parse(R"({"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,0]})"),
               Code::kInvalidArgument, {"'w'", "too large"});
  expect_error(parse(R"({"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,4]})"),
               Code::kInvalidArgument, {"'w'", "too large"});
}

TEST_CASE("safetensors: data offsets past the end of the data", "[errors][safetensors]") {
  expect_error(parse_safetensors_header(kOneTensor, 8), Code::kOutOfRange, {"'w'", "16", "8 bytes"});
  expect_error(parse_safetensors_header(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[18446744073709551600,18446744073709551615]}})", 64),
               Code::kOutOfRange, {"'w'"});
  TempDir dir;
  const fs::path p = dir / "short-data.safetensors";
  write_raw_safetensors(p, kOneTensor, 12);  // 4 bytes short
  expect_error(SafetensorsFile::open(p), Code::kOutOfRange, {p.string(), "'w'", "past the end"});
}

TEST_CASE("safetensors: overlapping tensors", "[errors][safetensors]") {
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
      R"( "b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})";
  expect_error(parse_safetensors_header(header, 24), Code::kInvalidArgument, {"'a'", "'b'", "overlap"});
  // The same range twice.
  expect_error(parse_safetensors_header(R"({"a":{"dtype":"BF16","shape":[8],"data_offsets":[0,16]},)"
                                        R"( "b":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 16),
               Code::kInvalidArgument, {"overlap"});
  // One range inside another.
  expect_error(parse_safetensors_header(R"({"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]},)"
                                        R"( "b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
                                        R"( "c":{"dtype":"F32","shape":[2],"data_offsets":[32,40]}})", 40),
               Code::kInvalidArgument, {"'a'", "'b'", "overlap"});
  TempDir dir;
  const fs::path p = dir / "overlap.safetensors";
  write_raw_safetensors(p, header, 24);
  expect_error(SafetensorsFile::open(p), Code::kInvalidArgument, {p.string(), "overlap"});
  // Adjacent tensors and empty tensors are fine.
  CHECK(parse_safetensors_header(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                                 R"( "e":{"dtype":"F32","shape":[0],"data_offsets":[16,16]},)"
                                 R"( "b":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}})", 32)
            .ok());
}

TEST_CASE("safetensors: an empty tensor between two overlapping ones does not hide the overlap",
          "[errors][safetensors]") {
  // a = [0, 16), b = [8, 24) overlap; the empty e at 4 sorts between them.
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
      R"( "e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
      R"( "b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})";
  expect_error(parse_safetensors_header(header, 24), Code::kInvalidArgument, {"'a'", "'b'", "overlap"});
}

TEST_CASE("safetensors: a byte count that does not match dtype x shape", "[errors][safetensors]") {
  expect_error(parse_safetensors_header(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}})", 64),
               Code::kInvalidArgument, {"'w'", "12 bytes", "F32 [4]", "needs 16"});
  expect_error(parse_safetensors_header(R"({"w":{"dtype":"BF16","shape":[3, 5],"data_offsets":[0,32]}})", 64),
               Code::kInvalidArgument, {"'w'", "32 bytes", "BF16 [3, 5]", "needs 30"});
  TempDir dir;
  const fs::path p = dir / "size.safetensors";
  write_raw_safetensors(p, R"({"w":{"dtype":"F8_E4M3","shape":[4,4],"data_offsets":[0,32]}})", 32);
  expect_error(SafetensorsFile::open(p), Code::kInvalidArgument, {p.string(), "'w'", "needs 16"});
}

TEST_CASE("safetensors: an unknown dtype", "[errors][safetensors]") {
  for (const std::string& dtype : std::vector<std::string>{"I4", "F8_E5M2", "I64", "f32", ""}) {
    const std::string header = R"({"w":{"dtype":")" + dtype + R"(","shape":[4],"data_offsets":[0,4]}})";
    expect_error(parse_safetensors_header(header, 64), Code::kUnimplemented, {"'w'", q(dtype), "dtype"});
  }
  TempDir dir;
  const fs::path p = dir / "i4.safetensors";
  write_raw_safetensors(p, R"({"w":{"dtype":"I4","shape":[8],"data_offsets":[0,4]}})", 4);
  expect_error(SafetensorsFile::open(p), Code::kUnimplemented, {p.string(), "'w'", "'I4'"});
}

TEST_CASE("safetensors: files written by write_safetensors read back", "[errors][safetensors]") {
  TempDir dir;
  TensorBlob a{"a", DType::kF32, {2, 2}, std::vector<std::byte>(16)};
  TensorBlob b{"b", DType::kF8E4M3, {3}, std::vector<std::byte>(3)};
  REQUIRE(write_safetensors(dir / "ok.safetensors", {&a, &b}).ok());
  auto f = SafetensorsFile::open(dir / "ok.safetensors");
  REQUIRE(f.ok());
  REQUIRE((*f)->find("b") != nullptr);
  CHECK((*f)->find("b")->shape_string() == "[3]");
  CHECK((*f)->find("c") == nullptr);
}

// ---- checkpoint folders: shards, index, tensors --------------------------------------------------

TEST_CASE("checkpoint: a truncated shard", "[errors][checkpoint][cli]") {
  TempDir dir;
  copy_fixture(kBf16, dir);
  const fs::path shard = dir / kShard1;
  SECTION("cut inside the header") {
    fs::resize_file(shard, 1000);
    expect_error(Engine::open(dir.path(), {}), Code::kInvalidArgument, {shard.string(), "truncated"});
    expect_cli_error(logits_args(dir), {kShard1, "truncated"});
  }
  SECTION("cut inside the data") {
    fs::resize_file(shard, fs::file_size(shard) - 100);
    expect_error(Engine::open(dir.path(), {}), Code::kOutOfRange, {shard.string(), "past the end"});
    expect_cli_error(logits_args(dir), {kShard1, "past the end"});
  }
  SECTION("shorter than the length") {
    fs::resize_file(shard, 3);
    expect_error(Engine::open(dir.path(), {}), Code::kInvalidArgument, {shard.string(), "truncated"});
    expect_cli_error(logits_args(dir), {kShard1, "truncated"});
  }
}

TEST_CASE("checkpoint: a shard header rewritten to garbage", "[errors][checkpoint][cli]") {
  TempDir dir;
  copy_fixture(kBf16, dir);
  const fs::path shard = dir / kShard2;
  SECTION("not JSON") {
    std::string bytes = read_file(shard);
    std::memset(bytes.data() + 8, '#', 64);
    write_file(shard, bytes);
    expect_error(Engine::open(dir.path(), {}), Code::kInvalidArgument, {shard.string(), "not valid JSON"});
    expect_cli_error(logits_args(dir), {kShard2, "not valid JSON"});
  }
  SECTION("header length over 100 MiB") {
    std::string bytes = read_file(shard);
    const std::string len = le64(uint64_t(1) << 32);
    bytes.replace(0, 8, len);
    write_file(shard, bytes);
    expect_error(Engine::open(dir.path(), {}), Code::kInvalidArgument, {shard.string(), "100 MiB"});
    expect_cli_error(logits_args(dir), {kShard2, "100 MiB"});
  }
  SECTION("offsets past the end") {
    edit_shard_header(shard, [](json& h) { h["model.norm.weight"]["data_offsets"] = {1u << 30, (1u << 30) + 128}; });
    expect_error(Engine::open(dir.path(), {}), Code::kOutOfRange, {shard.string(), "model.norm.weight"});
    expect_cli_error(logits_args(dir), {kShard2, "model.norm.weight", "past the end"});
  }
  SECTION("overlapping tensors") {
    edit_shard_header(shard, [](json& h) {
      h["model.norm.weight"]["data_offsets"] = h["lm_head.weight"]["data_offsets"];
      h["model.norm.weight"]["shape"] = h["lm_head.weight"]["shape"];
    });
    expect_error(Engine::open(dir.path(), {}), Code::kInvalidArgument, {shard.string(), "overlap"});
    expect_cli_error(logits_args(dir), {kShard2, "lm_head.weight", "model.norm.weight", "overlap"});
  }
  SECTION("byte count not matching dtype x shape") {
    edit_shard_header(shard, [](json& h) { h["model.norm.weight"]["shape"] = {65}; });
    expect_error(Engine::open(dir.path(), {}), Code::kInvalidArgument, {shard.string(), "model.norm.weight", "needs 130"});
    expect_cli_error(logits_args(dir), {kShard2, "model.norm.weight", "needs 130"});
  }
  SECTION("unknown dtype") {
    edit_shard_header(shard, [](json& h) { h["model.norm.weight"]["dtype"] = "F8_E5M2"; });
    expect_error(Engine::open(dir.path(), {}), Code::kUnimplemented, {shard.string(), "model.norm.weight", "F8_E5M2"});
    expect_cli_error(logits_args(dir), {kShard2, "model.norm.weight", "F8_E5M2"});
  }
}

TEST_CASE("checkpoint: the index names a tensor its shard lacks", "[errors][checkpoint][cli]") {
  TempDir dir;
  copy_fixture(kBf16, dir);
  // model.norm.weight lives in shard 2; the index says shard 1.
  edit_json(dir / kIndex, [](json& j) { j["weight_map"]["model.norm.weight"] = kShard1; });
  auto ck = Checkpoint::open(dir.path());
  REQUIRE(ck.ok());
  expect_error((*ck)->tensor("model.norm.weight"), Code::kNotFound, {"'model.norm.weight'", kShard1});
  expect_error(Engine::open(dir.path(), {}), Code::kNotFound, {"'model.norm.weight'", kShard1});
  expect_cli_error(logits_args(dir), {"model.norm.weight", kShard1});
}

TEST_CASE("checkpoint: the index names a shard that does not exist", "[errors][checkpoint][cli]") {
  TempDir dir;
  copy_fixture(kBf16, dir);
  edit_json(dir / kIndex, [](json& j) { j["weight_map"]["lm_head.weight"] = "model-00003-of-00002.safetensors"; });
  expect_error(Engine::open(dir.path(), {}), Code::kNotFound, {"model-00003-of-00002.safetensors"});
  expect_cli_error(logits_args(dir), {"model-00003-of-00002.safetensors"});
}

TEST_CASE("checkpoint: a broken index", "[errors][checkpoint]") {
  TempDir dir;
  copy_fixture(kBf16, dir);
  const fs::path index = dir / kIndex;
  SECTION("not JSON") {
    write_file(index, "{\"weight_map\": ");
    expect_error(Checkpoint::open(dir.path()), Code::kInvalidArgument, {index.string(), "not a JSON object"});
  }
  SECTION("no weight_map") {
    write_file(index, "{\"metadata\": {}}");
    expect_error(Checkpoint::open(dir.path()), Code::kInvalidArgument, {index.string(), "weight_map"});
  }
  SECTION("a file name that is not a string") {
    edit_json(index, [](json& j) { j["weight_map"]["lm_head.weight"] = 2; });
    expect_error(Checkpoint::open(dir.path()), Code::kInvalidArgument, {index.string(), "lm_head.weight"});
  }
  SECTION("a file outside the folder") {
    edit_json(index, [](json& j) { j["weight_map"]["lm_head.weight"] = "../" + kShard2; });
    expect_error(Checkpoint::open(dir.path()), Code::kInvalidArgument, {index.string(), "lm_head.weight", "../"});
  }
}

TEST_CASE("checkpoint: a tensor the model needs is absent", "[errors][checkpoint][cli]") {
  TempDir dir;
  copy_fixture(kBf16, dir);
  SECTION("missing from the index") {
    edit_json(dir / kIndex, [](json& j) { j["weight_map"].erase("lm_head.weight"); });
    expect_error(Engine::open(dir.path(), {}), Code::kNotFound, {"'lm_head.weight'", dir.str()});
    expect_cli_error(logits_args(dir), {"lm_head.weight"});
  }
  SECTION("a layer beyond the checkpoint") {
    // Layers 0-3 plus the MTP layer 4 are stored; layer 5 is not.
    edit_json(dir / "config.json", [](json& c) { c["num_hidden_layers"] = 6; });
    expect_error(Engine::open(dir.path(), {}), Code::kNotFound, {"model.layers.5."});
    expect_cli_error(logits_args(dir), {"model.layers.5."});
  }
  SECTION("a single-file checkpoint without the embedding") {
    TempDir single;
    fs::copy_file(dir / "config.json", single / "config.json");
    TensorBlob norm{"model.norm.weight", DType::kBF16, {64}, std::vector<std::byte>(128)};
    REQUIRE(write_safetensors(single / "model.safetensors", {&norm}).ok());
    expect_error(Engine::open(single.path(), {}), Code::kNotFound, {"'model.embed_tokens.weight'"});
    expect_cli_error(logits_args(single), {"model.embed_tokens.weight"});
  }
  SECTION("a folder with only config.json") {
    TempDir bare;
    fs::copy_file(dir / "config.json", bare / "config.json");
    expect_error(Engine::open(bare.path(), {}), Code::kNotFound, {bare.str(), "safetensors"});
    expect_cli_error(logits_args(bare), {"safetensors"});
  }
}

TEST_CASE("checkpoint: a tensor with the wrong shape", "[errors][checkpoint][cli]") {
  TempDir dir;
  copy_fixture(kBf16, dir);
  SECTION("same bytes, other shape") {
    // model.norm.weight is BF16 [64]; [8, 8] holds the same 128 bytes, so the file is valid.
    edit_shard_header(dir / kShard2, [](json& h) { h["model.norm.weight"]["shape"] = {8, 8}; });
    auto ck = Checkpoint::open(dir.path());
    REQUIRE(ck.ok());
    expect_error((*ck)->vector("model.norm.weight", 64), Code::kInvalidArgument,
                 {"'model.norm.weight'", "[8, 8]", "expected [64]"});
    expect_error(Engine::open(dir.path(), {}), Code::kInvalidArgument, {"'model.norm.weight'", "[8, 8]", "[64]"});
    expect_cli_error(logits_args(dir), {"model.norm.weight", "[8, 8]", "[64]"});
  }
  SECTION("a matrix transposed") {
    // layer 0 o_proj is [64, 128]; stored as [128, 64].
    const std::string name = "model.layers.0.self_attn.o_proj.weight";
    const fs::path shard = dir / read_json(dir / kIndex)["weight_map"][name].get<std::string>();
    edit_shard_header(shard, [&](json& h) { h[name]["shape"] = {128, 64}; });
    expect_error(Engine::open(dir.path(), {}), Code::kInvalidArgument, {q(name), "[128, 64]", "[64, 128]"});
    expect_cli_error(logits_args(dir), {name, "[128, 64]", "[64, 128]"});
  }
  SECTION("the config disagrees with the weights") {
    edit_json(dir / "config.json", [](json& c) { c["hidden_size"] = 96; });
    expect_error(Engine::open(dir.path(), {}), Code::kInvalidArgument, {"model.embed_tokens.weight", "[1024, 96]"});
    expect_cli_error(logits_args(dir), {"model.embed_tokens.weight", "[1024, 96]"});
  }
}

// ---- FP8 weights and their block scales ---------------------------------------------------------

TEST_CASE("fp8: a weight without its _scale_inv or with a wrongly shaped one", "[errors][fp8]") {
  TempDir dir;
  write_json(dir / "config.json", fixture_config(kFp8));
  // A [200, 130] F8_E4M3 weight in 128x128 blocks needs F32 [2, 2] scales.
  TensorBlob w{"w", DType::kF8E4M3, {200, 130}, std::vector<std::byte>(200 * 130)};
  auto write = [&](std::vector<const TensorBlob*> blobs) {
    REQUIRE(write_safetensors(dir / "model.safetensors", blobs).ok());
  };
  SECTION("with the right scales it loads") {
    TensorBlob s{"w_scale_inv", DType::kF32, {2, 2}, std::vector<std::byte>(16)};
    write({&w, &s});
    auto ck = Checkpoint::open(dir.path());
    REQUIRE(ck.ok());
    auto m = (*ck)->matrix("w", 200, 130);
    REQUIRE(m.ok());
    CHECK(m->scale_inv != nullptr);
  }
  SECTION("no _scale_inv") {
    write({&w});
    auto ck = Checkpoint::open(dir.path());
    REQUIRE(ck.ok());
    expect_error((*ck)->matrix("w", 200, 130), Code::kNotFound, {"'w'", "'w_scale_inv'"});
  }
  SECTION("wrongly shaped _scale_inv") {
    TensorBlob s{"w_scale_inv", DType::kF32, {1, 2}, std::vector<std::byte>(8)};
    write({&w, &s});
    auto ck = Checkpoint::open(dir.path());
    REQUIRE(ck.ok());
    expect_error((*ck)->matrix("w", 200, 130), Code::kInvalidArgument, {"'w_scale_inv'", "[1, 2]", "F32 [2, 2]"});
  }
  SECTION("_scale_inv of the wrong dtype") {
    TensorBlob s{"w_scale_inv", DType::kBF16, {2, 2}, std::vector<std::byte>(8)};
    write({&w, &s});
    auto ck = Checkpoint::open(dir.path());
    REQUIRE(ck.ok());
    expect_error((*ck)->matrix("w", 200, 130), Code::kInvalidArgument, {"'w_scale_inv'", "BF16", "F32 [2, 2]"});
  }
  SECTION("an F8 vector") {
    TensorBlob v{"v", DType::kF8E4M3, {64}, std::vector<std::byte>(64)};
    write({&v});
    auto ck = Checkpoint::open(dir.path());
    REQUIRE(ck.ok());
    expect_error((*ck)->vector("v", 64), Code::kInvalidArgument, {"'v'", "F8_E4M3"});
  }
}

TEST_CASE("fp8: the fixture with a block scale removed or reshaped", "[errors][fp8][cli]") {
  TempDir dir;
  copy_fixture(kFp8, dir);
  const std::string weight = "model.layers.0.mlp.down_proj.weight";
  const std::string scale = weight + "_scale_inv";
  const fs::path shard = dir / read_json(dir / kIndex)["weight_map"][scale].get<std::string>();
  SECTION("removed from the index and the shard") {
    edit_json(dir / kIndex, [&](json& j) { j["weight_map"].erase(scale); });
    edit_shard_header(shard, [&](json& h) { h.erase(scale); });
    expect_error(Engine::open(dir.path(), {}), Code::kNotFound, {q(weight), q(scale)});
    expect_cli_error(logits_args(dir), {weight, scale});
  }
  SECTION("listed in the index but absent from the shard") {
    edit_shard_header(shard, [&](json& h) {
      h[scale + ".renamed"] = h[scale];
      h.erase(scale);
    });
    expect_error(Engine::open(dir.path(), {}), Code::kNotFound, {q(scale)});
    expect_cli_error(logits_args(dir), {scale});
  }
  SECTION("in a shard that does not exist") {
    // The error must say why the scales could not be read, not only that they are absent.
    const std::string missing = "model-00009-of-00002.safetensors";
    edit_json(dir / kIndex, [&](json& j) { j["weight_map"][scale] = missing; });
    expect_error(Engine::open(dir.path(), {}), Code::kNotFound, {q(scale), missing});
    expect_cli_error(logits_args(dir), {scale, missing});
  }
  SECTION("transposed") {
    // [2, 3] for a [64, 320] weight; [3, 2] holds the same bytes.
    std::vector<int64_t> shape;
    edit_shard_header(shard, [&](json& h) {
      shape = h[scale]["shape"].get<std::vector<int64_t>>();
      REQUIRE(shape.size() == 2);
      REQUIRE(shape[0] != shape[1]);
      h[scale]["shape"] = {shape[1], shape[0]};
    });
    TensorInfo expected;
    expected.shape = shape;
    const std::string want = "F32 " + expected.shape_string();
    expect_error(Engine::open(dir.path(), {}), Code::kInvalidArgument, {q(scale), want});
    expect_cli_error(logits_args(dir), {scale, want});
  }
}

// ---- config.json ---------------------------------------------------------------------------------

TEST_CASE("config: the fixtures parse", "[errors][config]") {
  REQUIRE(parse_config(fixture_config(kBf16).dump()).ok());
  REQUIRE(parse_config(fixture_config(kFp8).dump()).ok());
}

TEST_CASE("config: not JSON or not an object", "[errors][config]") {
  expect_error(parse_config("{\"model_type\": "), Code::kInvalidArgument, {"not valid JSON"});
  expect_error(parse_config(""), Code::kInvalidArgument, {"not valid JSON"});
  expect_error(parse_config("[1, 2]"), Code::kInvalidArgument, {"JSON object"});
  TempDir dir;
  write_file(dir / "config.json", "model_type = deepseek_v3\n");
  expect_error(load_config(dir.path()), Code::kInvalidArgument, {(dir / "config.json").string(), "not valid JSON"});
  expect_error(load_config(dir / "absent.json"), Code::kNotFound, {"absent.json"});
}

TEST_CASE("config: a missing field", "[errors][config][cli]") {
  const std::vector<std::string> fields = {"kv_lora_rank", "vocab_size", "hidden_size", "num_hidden_layers",
                                           "q_lora_rank", "qk_rope_head_dim", "rms_norm_eps", "n_routed_experts",
                                           "num_experts_per_tok", "routed_scaling_factor", "model_type"};
  for (const std::string& field : fields) {
    INFO("without " << field);
    auto c = parse_edited_config([&](json& j) { j.erase(field); });
    expect_error(c, Code::kInvalidArgument, {q(field), "missing"});
  }
  auto c = parse_edited_config([](json& j) { j["rope_scaling"].erase("factor"); });
  expect_error(c, Code::kInvalidArgument, {"'rope_scaling.factor'", "missing"});
  c = parse_edited_config([](json& j) { j["kv_lora_rank"] = nullptr; });
  expect_error(c, Code::kInvalidArgument, {"'kv_lora_rank'", "null"});

  TempDir dir;
  copy_fixture(kBf16, dir);
  edit_json(dir / "config.json", [](json& j) { j.erase("kv_lora_rank"); });
  expect_error(load_config(dir.path()), Code::kInvalidArgument, {(dir / "config.json").string(), "'kv_lora_rank'"});
  expect_cli_error(logits_args(dir), {"config.json", "kv_lora_rank", "missing"});
}

TEST_CASE("config: a field of the wrong type", "[errors][config][cli]") {
  struct Case {
    std::string field;
    json value;
    std::string says;
  };
  const std::vector<Case> cases = {
      {"hidden_size", "64", "integer"},          {"vocab_size", 1024.5, "integer"},
      {"kv_lora_rank", -32, ">= 1"},             {"num_attention_heads", 0, ">= 1"},
      {"rms_norm_eps", "1e-6", "number"},        {"norm_topk_prob", 1, "true or false"},
      {"model_type", 3, "string"},               {"tie_word_embeddings", "no", "true or false"},
      {"scoring_func", json::array(), "string"}, {"rope_scaling", 8, "object"},
      {"quantization_config", "fp8", "object"},  {"qk_rope_head_dim", 15, "even"},
  };
  for (const auto& k : cases) {
    INFO(k.field << " = " << k.value.dump());
    auto c = parse_edited_config([&](json& j) { j[k.field] = k.value; });
    expect_error(c, Code::kInvalidArgument, {q(k.field), k.says});
  }
  TempDir dir;
  copy_fixture(kBf16, dir);
  edit_json(dir / "config.json", [](json& j) { j["hidden_size"] = "sixty-four"; });
  expect_cli_error(logits_args(dir), {"config.json", "hidden_size", "integer"});
}

TEST_CASE("config: an unsupported value", "[errors][config][cli]") {
  expect_error(parse_edited_config([](json& j) { j["model_type"] = "mistral"; }), Code::kInvalidArgument,
               {"'model_type'", "'mistral'"});
  expect_error(parse_edited_config([](json& j) { j["scoring_func"] = "relu"; }), Code::kInvalidArgument,
               {"'scoring_func'", "'relu'"});
  expect_error(parse_edited_config([](json& j) { j["topk_method"] = "foo"; }), Code::kInvalidArgument,
               {"'topk_method'", "'foo'"});
  expect_error(parse_edited_config([](json& j) { j["rope_scaling"]["type"] = "linear"; }), Code::kInvalidArgument,
               {"rope_scaling.type", "'linear'"});
  expect_error(parse_edited_config([](json& j) {
                 j["rope_scaling"].erase("type");
                 j["rope_scaling"]["rope_type"] = "dynamic";
               }),
               Code::kInvalidArgument, {"'dynamic'"});
  expect_error(parse_edited_config([](json& j) { j["hidden_act"] = "gelu"; }), Code::kInvalidArgument,
               {"'hidden_act'"});
  expect_error(parse_edited_config([](json& j) { j["num_experts_per_tok"] = 9; }), Code::kInvalidArgument,
               {"'num_experts_per_tok'"});
  expect_error(parse_edited_config([](json& j) { j["n_group"] = 3; }), Code::kInvalidArgument, {"'n_group'"});
  expect_error(parse_edited_config([](json& j) { j["topk_group"] = 5; }), Code::kInvalidArgument, {"'topk_group'"});
  expect_error(parse_edited_config([](json& j) { j["rope_scaling"]["factor"] = 0.5; }), Code::kInvalidArgument,
               {"'rope_scaling.factor'"});
  expect_error(parse_edited_config([](json& j) {
                 j["quantization_config"] = {{"quant_method", "awq"}};
               }),
               Code::kInvalidArgument, {"'quantization_config.quant_method'", "'awq'"});
  expect_error(parse_edited_config([](json& j) {
                 j["quantization_config"] = {{"quant_method", "fp8"}, {"fmt", "e5m2"}};
               }),
               Code::kInvalidArgument, {"'quantization_config.fmt'", "'e5m2'"});
  expect_error(parse_edited_config([](json& j) {
                 j["quantization_config"] = {{"quant_method", "fp8"}, {"weight_block_size", {128, 64}}};
               }),
               Code::kInvalidArgument, {"'quantization_config.weight_block_size'", "[128,64]"});

  struct Cli {
    std::string field;
    json value;
  };
  for (const auto& k : std::vector<Cli>{{"model_type", "mistral"}, {"scoring_func", "relu"}, {"topk_method", "foo"}}) {
    TempDir dir;
    copy_fixture(kBf16, dir);
    edit_json(dir / "config.json", [&](json& j) { j[k.field] = k.value; });
    expect_cli_error(logits_args(dir), {"config.json", k.field, k.value.get<std::string>()});
  }
  TempDir dir;
  copy_fixture(kBf16, dir);
  edit_json(dir / "config.json", [](json& j) { j["rope_scaling"]["type"] = "linear"; });
  expect_cli_error("run --model '" + dir.str() + "' --ids '0 1'", {"config.json", "rope_scaling.type", "linear"});
}

// The dense distills' configs (Qwen2, Llama): what would change the computation and is not
// supported is refused by name; what does not change it is accepted.
TEST_CASE("config: qwen2 and llama fields that are refused or accepted", "[errors][config][dense]") {
  auto edited = [](const std::string& fixture, const std::function<void(json&)>& edit) {
    json c = fixture_config(fixture);
    edit(c);
    return parse_config(c.dump());
  };
  REQUIRE(edited("tiny-qwen2", [](json&) {}).ok());
  REQUIRE(edited("tiny-llama3", [](json&) {}).ok());
  // Sliding windows: refused where a layer would use one, accepted where none would.
  expect_error(edited("tiny-qwen2", [](json& j) { j["use_sliding_window"] = true; j["sliding_window"] = 64; j["max_window_layers"] = 1; }),
               Code::kInvalidArgument, {"'use_sliding_window'", "sliding-window"});
  CHECK(edited("tiny-qwen2", [](json& j) { j["use_sliding_window"] = true; j["max_window_layers"] = 3; }).ok());
  expect_error(edited("tiny-qwen2", [](json& j) { j["num_key_value_heads"] = 3; }), Code::kInvalidArgument,
               {"'num_key_value_heads'", "divide"});
  expect_error(edited("tiny-qwen2", [](json& j) { j["num_attention_heads"] = 5; j["num_key_value_heads"] = 5; }),
               Code::kInvalidArgument, {"'num_attention_heads'", "hidden_size"});
  expect_error(edited("tiny-llama3", [](json& j) { j["rope_scaling"]["rope_type"] = "yarn"; }),
               Code::kInvalidArgument, {"rope_scaling.rope_type", "'yarn'"});
  expect_error(edited("tiny-llama3", [](json& j) { j["rope_scaling"].erase("low_freq_factor"); }),
               Code::kInvalidArgument, {"'rope_scaling.low_freq_factor'", "missing"});
  expect_error(edited("tiny-llama3", [](json& j) { j["rope_scaling"]["low_freq_factor"] = 4.0; }),
               Code::kInvalidArgument, {"'rope_scaling.high_freq_factor'"});
  expect_error(edited("tiny-llama3", [](json& j) { j["mlp_bias"] = true; }), Code::kInvalidArgument, {"'mlp_bias'"});
  expect_error(edited("tiny-llama3", [](json& j) { j["head_dim"] = 15; }), Code::kInvalidArgument, {"'head_dim'", "odd"});
  expect_error(edited("tiny-llama3", [](json& j) { j["quantization_config"] = {{"quant_method", "fp8"}}; }),
               Code::kInvalidArgument, {"'quantization_config'"});
  expect_error(edited("tiny-llama3", [](json& j) { j["eos_token_id"] = json::array(); }), Code::kInvalidArgument,
               {"'eos_token_id'"});
  // Llama 3.1 lists several end tokens: the first is the eos.
  auto listed = edited("tiny-llama3", [](json& j) { j["eos_token_id"] = {897, 5, 6}; });
  REQUIRE(listed.ok());
  CHECK(listed->eos_token_id == 897);
  // A config that claims biases its checkpoint lacks: the error names the missing tensor.
  TempDir dir;
  copy_fixture("tiny-llama3", dir);
  edit_json(dir / "config.json", [](json& j) { j["attention_bias"] = true; });
  expect_cli_error(logits_args(dir), {"model.layers.0.self_attn.q_proj.bias"});
}

TEST_CASE("config: a deeply nested value gives an error and no stack overflow", "[errors][config]") {
  // A hostile config.json: a field holding an array nested a million deep. Reporting the field
  // must not recurse through the value (json::dump is recursive).
  const int depth = 1'000'000;
  json c = fixture_config(kBf16);
  c.erase("hidden_size");
  std::string text = c.dump();
  text.pop_back();  // the closing brace
  text += ",\"hidden_size\":" + std::string(depth, '[') + std::string(depth, ']') + "}";
  expect_error(parse_config(text), Code::kInvalidArgument, {"'hidden_size'", "integer"});
  // The same inside quantization_config.weight_block_size.
  c = fixture_config(kBf16);
  text = c.dump();
  text.pop_back();
  text += ",\"quantization_config\":{\"quant_method\":\"fp8\",\"weight_block_size\":" + std::string(depth, '[') +
          std::string(depth, ']') + "}}";
  expect_error(parse_config(text), Code::kInvalidArgument, {"weight_block_size"});
}

// ---- token ids -------------------------------------------------------------------------------------

TEST_CASE("token ids: an id >= vocab_size", "[errors][ids][cli]") {
  const fs::path dir = fs::path(SHOAL_FIXTURES) / kBf16;
  auto engine = Engine::open(dir, {});
  REQUIRE(engine.ok());
  expect_error(generate_greedy(**engine, {{0, 17, 1024}}, 2, false, false), Code::kInvalidArgument,
               {"token id 1024", "[0, 1024)"});
  expect_error(generate_greedy(**engine, {{0, 17, 2147483647}}, 0, true, false), Code::kInvalidArgument,
               {"token id 2147483647"});
  expect_error(generate_greedy(**engine, {{-1}}, 1, false, false), Code::kInvalidArgument, {"token id -1"});
  // The engine still works afterwards.
  CHECK(generate_greedy(**engine, {{0, 17, 42}}, 2, false, false).ok());

  const std::string model = "--model '" + dir.string() + "'";
  expect_cli_error("logits " + model + " --ids '0 17 1024'", {"token id 1024", "1024)"});
  expect_cli_error("logits " + model + " --ids '0 1' --ids '0 5000'", {"token id 5000"});
  expect_cli_error("run " + model + " --ids '0 99999' --max-tokens 2", {"token id 99999"});
  expect_cli_error("logits " + model + " --ids '0 abc'", {"'abc'"});
  expect_cli_error("logits " + model + " --ids '0 -3'", {"'-3'"});
  expect_cli_error("logits " + model + " --ids '99999999999'", {"'99999999999'"});
  expect_cli_error("logits " + model + " --ids ' , '", {"no token ids"});
}

TEST_CASE("cli: a model folder that does not exist", "[errors][cli]") {
  TempDir dir;
  const std::string absent = (dir / "no-such-model").string();
  expect_cli_error("logits --model '" + absent + "' --ids '0 1'", {absent});
  expect_cli_error("run --model '" + absent + "' --ids '0 1'", {absent});
}
