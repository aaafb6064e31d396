// shoal shard: per-rank folders of a 3-rank plan (the coordinator, rank 0, hosts nothing) hold
// exactly each rank's tensors with the source's bytes and a manifest whose sha256 is sha256sum's;
// TCP nodes started on the shards give the single process's logits; a tampered shard file and a
// shard of another rank are refused at the hello, naming the file or the rank; so is a file
// changed under a running node that had already checked it. A GGUF source gives GGUF shards
// holding only each rank's tensors and expert slices, on which TCP nodes give the same bits.
#include <catch2/catch.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "model/checkpoint.h"
#include "model/gguf.h"
#include "support/files.h"
#include "support/process.h"

namespace fs = std::filesystem;
using shoal::test::TempDir;
using shoal::test::read_file;
using json = nlohmann::json;
using shoal::test::Child;
using shoal::test::run_command;
using namespace std::chrono_literals;

namespace {

const std::string kShoal = SHOAL_BINARY;
const std::string kModel = std::string(SHOAL_FIXTURES) + "/tiny-v3-bf16";
const std::string kIds = " --ids \"0 17 42 99 3 250 7\" --ids \"5 6 1000 8\" --greedy 4";

// Runs cmd; REQUIREs success; returns stdout (stderr shown on failure).
std::string run_ok(const std::string& cmd) {
  int status = -1;
  const std::string err_file = fs::temp_directory_path() / ("shoal-test-shard-err-" + std::to_string(::getpid()));
  const std::string out = run_command(cmd + " 2>" + err_file, &status);
  std::ifstream in(err_file);
  const std::string err((std::istreambuf_iterator<char>(in)), {});
  fs::remove(err_file);
  INFO(cmd << "\n" << out.substr(0, 3000) << "\n" << err.substr(0, 3000));
  REQUIRE(status == 0);
  return out;
}

double max_diff(const json& a, const json& b) {
  if (!a.is_array()) return std::abs(a.get<double>() - b.get<double>());
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, max_diff(a[i], b[i]));
  return worst;
}

struct Node {
  std::unique_ptr<Child> child;
  std::string address;
};

Node start_node(const std::string& token, const std::string& model, const std::string& log = "") {
  Node n;
  n.child = std::make_unique<Child>(kShoal + " node --listen 127.0.0.1:0 --token-file " + token + " --model " + model, log);
  std::string line;
  REQUIRE(n.child->read_line(line, 10s));
  std::smatch m;
  REQUIRE(std::regex_search(line, m, std::regex("listening on (127\\.0\\.0\\.1:[0-9]+)")));
  n.address = m[1];
  return n;
}

// A 3-rank plan for the TCP world: rank 0 (the coordinator) hosts nothing; layers 0-1 and the
// embedding on rank 1, layers 2-3 and the head on rank 2, each MoE layer's experts alternating.
json three_rank_plan(const json& config) {
  json layers = json::array();
  const int n = config["num_hidden_layers"], dense = config["first_k_dense_replace"];
  for (int i = 0; i < n; ++i) {
    json l = {{"attn", i < n / 2 ? 1 : 2}};
    if (i >= dense) {
      json e = json::array();
      for (int j = 0; j < config["n_routed_experts"].get<int>(); ++j) e.push_back(j % 2 + 1);
      l["experts"] = e;
    }
    layers.push_back(l);
  }
  return {{"version", 1}, {"world_size", 3}, {"embed", 1}, {"head", 2}, {"layers", layers}};
}

// Changes one byte in the middle of a file, in place.
void flip_middle_byte(const std::string& file) {
  std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
  const auto mid = std::streamoff(fs::file_size(file) / 2);
  io.seekg(mid);
  char c = 0;
  io.read(&c, 1);
  c = char(c ^ 0x5a);
  io.seekp(mid);
  io.write(&c, 1);
}

}  // namespace

TEST_CASE("shoal shard writes each rank's tensors and TCP nodes on the shards give the same logits", "[shard]") {
  TempDir t;
  const json config = json::parse(std::ifstream(kModel + "/config.json"));
  std::ofstream(t / "plan.json") << three_rank_plan(config).dump(2);
  const std::string out = run_ok(kShoal + " shard --model " + kModel + " --plan " + t / "plan.json" + " --out " + t / "shards");
  CHECK_THAT(out, Catch::Contains("rank 1: ") && Catch::Contains("rank 2: "));
  CHECK_FALSE(fs::exists(t / "shards/rank-0"));  // rank 0 hosts nothing

  // Every tensor of the source, except the MTP layer's (shoal does not run it), is in exactly
  // one shard, with the source's bytes; the manifest's hash is sha256sum's.
  auto source = shoal::Checkpoint::open(kModel);
  REQUIRE(source.ok());
  std::set<std::string> seen;
  for (int r : {1, 2}) {
    const std::string dir = t / ("shards/rank-" + std::to_string(r));
    const json m = json::parse(std::ifstream(dir + "/shoal-shard.json"));
    CHECK(m["rank"] == r);
    CHECK(m["world_size"] == 3);
    REQUIRE(m["files"].size() == 1);
    const json& f = m["files"][0];
    int status = -1;
    const std::string sum = run_command("sha256sum " + dir + "/" + f["file"].get<std::string>(), &status);
    CHECK(sum.substr(0, 64) == f["sha256"].get<std::string>());
    CHECK(f["bytes"].get<int64_t>() == int64_t(fs::file_size(dir + "/" + f["file"].get<std::string>())));
    auto shard = shoal::Checkpoint::open(dir);
    REQUIRE(shard.ok());
    CHECK((*shard)->names().size() == f["tensors"].size());
    for (const std::string& name : (*shard)->names()) {
      CHECK(seen.insert(name).second);
      auto a = (*source)->tensor(name);
      auto b = (*shard)->tensor(name);
      REQUIRE(a.ok());
      REQUIRE(b.ok());
      const size_t bytes = a->info->end - a->info->begin;
      REQUIRE(b->info->end - b->info->begin == bytes);
      CHECK(std::equal(a->data, a->data + bytes, b->data));
    }
  }
  const int mtp_layer = config["num_hidden_layers"];
  for (const std::string& name : (*source)->names())
    if (name.rfind("model.layers." + std::to_string(mtp_layer) + ".", 0) != 0) CHECK(seen.count(name) == 1);

  // Nodes on their own shards: the single process's logits.
  std::ofstream(t / "token") << "shard-test-token\n";
  fs::permissions(t / "token", fs::perms::owner_read | fs::perms::owner_write);
  Node n1 = start_node(t / "token", t / "shards/rank-1");
  Node n2 = start_node(t / "token", t / "shards/rank-2", t / "n2.log");
  const json want = json::parse(run_ok(kShoal + " logits --model " + kModel + kIds));
  const json got = json::parse(run_ok("timeout 120 " + kShoal + " logits --model " + kModel + kIds + " --plan " +
                                      t / "plan.json" + " --nodes " + n1.address + "," + n2.address +
                                      " --token-file " + t / "token"));
  CHECK(got["greedy_ids"] == want["greedy_ids"]);
  CHECK(max_diff(want["prompt_logits"], got["prompt_logits"]) <= 1e-5);
  CHECK(max_diff(want["greedy_logits"], got["greedy_logits"]) <= 1e-5);

  // One byte changed in the middle of rank 2's file (beyond what the weights fingerprint
  // samples of the tensors there): refused at the hello, naming the file.
  fs::copy(t / "shards/rank-2", t / "tampered");
  const std::string file = t / "tampered/model.safetensors";
  flip_middle_byte(file);
  Node bad = start_node(t / "token", t / "tampered", t / "bad.log");
  int status = -1;
  std::string err = run_command("timeout 120 " + kShoal + " logits --model " + kModel + kIds + " --plan " + t / "plan.json" +
                                    " --nodes " + n1.address + "," + bad.address + " --token-file " + t / "token" + " 2>&1",
                                &status);
  // The node refuses the hello naming the file (it tells the coordinator too, which fails naming
  // rank 2).
  INFO(err << "\nnode: " << read_file(t / "bad.log"));
  CHECK(status != 0);
  CHECK_THAT(err, Catch::Contains("rank 2 ("));
  CHECK_THAT(read_file(t / "bad.log"), Catch::Contains("refused the coordinator") &&
                                     Catch::Contains("shard file " + file + ": sha256") && Catch::Contains("differs from"));

  // Rank 1's shard where rank 2 should be: refused, naming both ranks.
  Node wrong = start_node(t / "token", t / "shards/rank-1", t / "wrong.log");
  err = run_command("timeout 120 " + kShoal + " logits --model " + kModel + kIds + " --plan " + t / "plan.json" +
                        " --nodes " + n1.address + "," + wrong.address + " --token-file " + t / "token" + " 2>&1",
                    &status);
  INFO(err << "\nnode: " << read_file(t / "wrong.log"));
  CHECK(status != 0);
  CHECK_THAT(err, Catch::Contains("rank 2 ("));
  CHECK_THAT(read_file(t / "wrong.log"), Catch::Contains("holds the units of rank 1 (of 3), not those the plan gives rank 2"));

  // The same change under a running node that already checked its shard: the file's
  // modification time moved, so the node hashes it again and refuses.
  flip_middle_byte(t / "shards/rank-2/model.safetensors");
  err = run_command("timeout 120 " + kShoal + " logits --model " + kModel + kIds + " --plan " + t / "plan.json" +
                        " --nodes " + n1.address + "," + n2.address + " --token-file " + t / "token" + " 2>&1",
                    &status);
  INFO(err << "\nnode: " << read_file(t / "n2.log"));
  CHECK(status != 0);
  CHECK_THAT(read_file(t / "n2.log"), Catch::Contains("shard file " + t / "shards/rank-2/model.safetensors" + ": sha256"));

  // A bad plan file is named.
  std::ofstream(t / "notaplan.json") << "[1, 2]";
  err = run_command(kShoal + " shard --model " + kModel + " --plan " + t / "notaplan.json" + " --out " + t / "x 2>&1", &status);
  CHECK(status != 0);
  CHECK_THAT(err, Catch::Contains("notaplan.json: not a plan"));
}

TEST_CASE("shoal shard of a GGUF: one GGUF per rank with only its experts, nodes on them give the same bits", "[shard][gguf]") {
  TempDir t;
  const std::string model = std::string(SHOAL_FIXTURES) + "/gguf-a-q4_k_m-split";
  auto source = shoal::Checkpoint::open(model);
  REQUIRE(source.ok());
  const shoal::ModelConfig& c = (*source)->config();
  const json config = {{"num_hidden_layers", c.n_layers},
                       {"first_k_dense_replace", c.n_dense_layers},
                       {"n_routed_experts", c.n_routed_experts}};
  std::ofstream(t / "plan.json") << three_rank_plan(config).dump(2);
  const std::string out = run_ok(kShoal + " shard --model " + model + " --plan " + t / "plan.json" + " --out " + t / "shards");
  CHECK_THAT(out, Catch::Contains("rank 1: ") && Catch::Contains("model.gguf"));
  CHECK_FALSE(fs::exists(t / "shards/rank-0"));

  uint64_t whole = 0;
  for (const auto& e : fs::directory_iterator(model))
    if (e.path().extension() == ".gguf") whole += fs::file_size(e.path());
  std::set<std::string> seen;
  for (int r : {1, 2}) {
    INFO("rank " << r);
    const std::string dir = t / ("shards/rank-" + std::to_string(r));
    CHECK_FALSE(fs::exists(dir + "/config.json"));
    const json m = json::parse(std::ifstream(dir + "/shoal-shard.json"));
    CHECK(m["rank"] == r);
    REQUIRE(m["files"].size() == 1);
    const json& f = m["files"][0];
    CHECK(f["file"] == "model.gguf");
    int status = -1;
    const std::string sum = run_command("sha256sum " + dir + "/model.gguf", &status);
    CHECK(sum.substr(0, 64) == f["sha256"].get<std::string>());
    const uint64_t bytes = fs::file_size(dir + "/model.gguf");
    CHECK(f["bytes"].get<int64_t>() == int64_t(bytes));
    CHECK(bytes < whole * 3 / 4);  // only its tensors, and half of the experts

    // Opens alone with the source's config, and holds the source's bytes for its tensors.
    auto shard = shoal::Checkpoint::open(dir);
    INFO(shard.status().to_string());
    REQUIRE(shard.ok());
    const shoal::ModelConfig& sc = (*shard)->config();
    CHECK(sc.n_layers == c.n_layers);
    CHECK(sc.n_routed_experts == c.n_routed_experts);
    CHECK(sc.topk_method == c.topk_method);
    CHECK(sc.tie_word_embeddings == c.tie_word_embeddings);
    CHECK(sc.mla_split_kv_b == c.mla_split_kv_b);
    CHECK((*shard)->names().size() == f["tensors"].size());
    for (const std::string& name : (*shard)->names()) {
      CHECK(seen.insert(name).second);
      auto a = (*source)->tensor(name);
      auto b = (*shard)->tensor(name);
      REQUIRE(a.ok());
      REQUIRE(b.ok());
      const size_t n = a->info->end - a->info->begin;
      REQUIRE(b->info->end - b->info->begin == n);
      CHECK(a->info->dtype == b->info->dtype);
      CHECK(std::equal(a->data, a->data + n, b->data));
    }
    // Experts alternate: rank 1 keeps the even ones of each MoE layer, rank 2 the odd ones.
    const shoal::GgufModel& g = *(*shard)->gguf();
    const auto exps = g.find("blk.2.ffn_down_exps.weight");
    REQUIRE(exps.has_value());
    CHECK(exps->tensor->ne[2] == c.n_routed_experts / 2);
    const shoal::GgufValue* ids = g.meta().find("shoal.shard.experts.blk.2.ffn_down_exps.weight");
    REQUIRE(ids != nullptr);
    std::vector<int64_t> want;
    for (int64_t j = r - 1; j < c.n_routed_experts; j += 2) want.push_back(j);
    CHECK(ids->ints == want);
  }
  for (const std::string& name : (*source)->names()) CHECK(seen.count(name) == 1);

  // TCP nodes on their shards, the coordinator on the whole file: the same bits, both numerics.
  std::ofstream(t / "token") << "shard-test-token\n";
  fs::permissions(t / "token", fs::perms::owner_read | fs::perms::owner_write);
  Node n1 = start_node(t / "token", t / "shards/rank-1");
  Node n2 = start_node(t / "token", t / "shards/rank-2");
  for (const std::string numerics : {"", " --exact"}) {
    INFO(numerics);
    const json want = json::parse(run_ok(kShoal + " logits --model " + model + kIds + numerics));
    const json got = json::parse(run_ok("timeout 120 " + kShoal + " logits --model " + model + kIds + numerics +
                                        " --plan " + t / "plan.json" + " --nodes " + n1.address + "," + n2.address +
                                        " --token-file " + t / "token"));
    CHECK(got["greedy_ids"] == want["greedy_ids"]);
    CHECK(max_diff(want["prompt_logits"], got["prompt_logits"]) == 0.0);
    CHECK(max_diff(want["greedy_logits"], got["greedy_logits"]) == 0.0);
  }
}
