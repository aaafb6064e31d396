// shoal plan (cluster/spec.h, cluster/fit.h): cluster specs from JSON, hostfiles and Slurm
// variables with their errors; weight formats against a real checkpoint's headers, the
// release's size and the block arithmetic of GGUF; the acceptance pools of issue 6 through the
// binary; plan files read back by read_plan_file; the decode prediction against a hand count.
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "cluster/fit.h"
#include "cluster/plan.h"
#include "cluster/spec.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "support/expect.h"
#include "support/files.h"
#include "support/process.h"

using Catch::Matchers::Contains;
using nlohmann::json;
using namespace shoal;
using namespace shoal::cluster;
namespace fs = std::filesystem;
using shoal::test::TempDir;
using shoal::test::read_file;
using shoal::test::write_file;

namespace {

const fs::path kFixtures = SHOAL_FIXTURES;
const fs::path kConfig671b = kFixtures / "configs" / "deepseek-v3-671b" / "config.json";
const fs::path kBenchConfig = fs::path(SHOAL_FIXTURES).parent_path().parent_path() / "bench" / "configs" / "dist-2048.json";

using shoal::test::CliRun;
using shoal::test::shoal_cli;

json node(const std::string& name, std::vector<double> gpus, double ram, double link = 25) {
  return {{"name", name}, {"gpus_gib", gpus}, {"ram_gib", ram}, {"link_gbps", link}};
}

json nodes_like(int n, std::vector<double> gpus, double ram) {
  json nodes = json::array();
  for (int i = 0; i < n; ++i) nodes.push_back(node("n" + std::to_string(i), gpus, ram));
  return {{"nodes", nodes}};
}

// `shoal plan --json` on a spec written to a temp file; the JSON it printed.
struct PlanRun {
  int rc;
  json j;
  std::string err;
};
PlanRun plan_cli(const json& spec, const std::string& args, const fs::path& model = kConfig671b) {
  TempDir tmp;
  write_file(tmp.path / "cluster.json", spec.dump());
  const CliRun r = shoal_cli("plan --model '" + model.string() + "' --cluster '" + (tmp.path / "cluster.json").string() +
                             "' --json " + args);
  INFO(r.err);
  json j;
  REQUIRE_NOTHROW(j = json::parse(r.out));
  return {r.rc, j, r.err};
}

using shoal::test::config_of;

int64_t sum_units(const UnitBytes& b) {
  int64_t n = b.embed + b.head;
  for (size_t i = 0; i < b.attn.size(); ++i) {
    n += b.attn[i];
    for (int64_t e : b.experts[i]) n += e;
  }
  return n;
}

// Every rank within its device and host memory; weights add up to the model's.
void check_capacities(const json& j) {
  int64_t weights = 0;
  for (const json& r : j["ranks"]) {
    INFO("rank " << r["rank"] << " on " << r["node"] << " " << r["device"]);
    CHECK(r["total_bytes"].get<int64_t>() <= r["capacity_bytes"].get<int64_t>());
    CHECK(r["host_weight_bytes"].get<int64_t>() <= r["host_capacity_bytes"].get<int64_t>());
    CHECK(r["total_bytes"].get<int64_t>() ==
          r["weight_bytes"].get<int64_t>() + r["kv_bytes"].get<int64_t>() + r["workspace_bytes"].get<int64_t>());
    weights += r["weight_bytes"].get<int64_t>() + r["host_weight_bytes"].get<int64_t>();
  }
  CHECK(weights == j["placed_weight_bytes"].get<int64_t>());
  CHECK(j["weight_bytes"].get<int64_t>() == weights + j["mtp_weight_bytes"].get<int64_t>());
}

}  // namespace

// ---- Slurm hostlists ------------------------------------------------------------------------

TEST_CASE("expand_nodelist expands Slurm bracket ranges", "[cluster_plan][slurm]") {
  using V = std::vector<std::string>;
  auto ok = [](const std::string& s) {
    auto r = expand_nodelist(s);
    INFO(s << ": " << r.status().to_string());
    REQUIRE(r.ok());
    return *r;
  };
  CHECK(ok("node[1-3,5]") == V{"node1", "node2", "node3", "node5"});
  CHECK(ok("gpu[08-10]x") == V{"gpu08x", "gpu09x", "gpu10x"});
  CHECK(ok("a,b[1-2],c") == V{"a", "b1", "b2", "c"});
  CHECK(ok("r[1-2]-n[7,9]") == V{"r1-n7", "r1-n9", "r2-n7", "r2-n9"});
  CHECK(ok("solo") == V{"solo"});
  CHECK(ok("n[098-101]") == V{"n098", "n099", "n100", "n101"});
  auto bad = [](const std::string& s, const std::string& why) {
    auto r = expand_nodelist(s);
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.status().message(), Contains(s) && Contains(why));
  };
  bad("node[3-1]", "runs backwards");
  bad("node[1-", "'[' without ']'");
  bad("node]", "']' without '['");
  bad("node[]", "empty brackets");
  bad("node[a-b]", "is not N or N-M");
  bad("a,,b", "an empty name");
}

TEST_CASE("expand_tasks_per_node reads Slurm's N(xM) counts", "[cluster_plan][slurm]") {
  auto r = expand_tasks_per_node("2(x3),1");
  REQUIRE(r.ok());
  CHECK(*r == std::vector<int>{2, 2, 2, 1});
  CHECK(expand_tasks_per_node("4").value() == std::vector<int>{4});
  for (const char* s : {"2(x)", "x", "2(y3)", "2(x3", ""}) {
    INFO(s);
    CHECK_FALSE(expand_tasks_per_node(s).ok());
  }
}

TEST_CASE("spec_from_slurm builds the nodes of an allocation", "[cluster_plan][slurm]") {
  std::map<std::string, std::string> env = {{"SLURM_JOB_NODELIST", "gpu[01-03]"},
                                            {"SLURM_JOB_NUM_NODES", "3"},
                                            {"SLURM_MEM_PER_NODE", "65536"},
                                            {"SLURM_NTASKS", "3"},
                                            {"SLURM_TASKS_PER_NODE", "1(x3)"}};
  auto getenv = [&](const std::string& k) -> std::optional<std::string> {
    auto it = env.find(k);
    return it == env.end() ? std::nullopt : std::optional<std::string>(it->second);
  };
  HostDefaults d;
  d.link_gbps = 100;
  d.gpus_gib = {24, 24};
  std::vector<std::string> notes;
  auto s = spec_from_slurm(getenv, d, notes);
  REQUIRE(s.ok());
  REQUIRE(s->nodes.size() == 3);
  CHECK(s->nodes[2].name == "gpu03");
  CHECK(s->nodes[0].ram_gib == 64.0);  // 65536 MB
  CHECK(s->nodes[1].gpus.size() == 2);
  // 3 tasks, but the plan has 6 ranks (one per GPU): said, with the srun count.
  REQUIRE(notes.size() == 2);
  CHECK_THAT(notes[0], Contains("SLURM_NTASKS = 3") && Contains("srun -n 6"));
  CHECK_THAT(notes[1], Contains("runs 1 tasks on gpu01"));

  env["SLURM_JOB_NUM_NODES"] = "4";
  auto wrong = spec_from_slurm(getenv, d, notes);
  REQUIRE_FALSE(wrong.ok());
  CHECK_THAT(wrong.status().message(), Contains("SLURM_JOB_NUM_NODES = 4") && Contains("names 3 nodes"));
  env["SLURM_JOB_NUM_NODES"] = "3";
  env["SLURM_GPUS_ON_NODE"] = "2";
  d.gpus_gib.clear();
  auto no_sizes = spec_from_slurm(getenv, d, notes);
  REQUIRE_FALSE(no_sizes.ok());
  CHECK_THAT(no_sizes.status().message(), Contains("SLURM_GPUS_ON_NODE") && Contains("--gpus-gib"));
  env.erase("SLURM_JOB_NODELIST");
  CHECK_THAT(spec_from_slurm(getenv, d, notes).status().message(), Contains("SLURM_JOB_NODELIST is not set"));
  env["SLURM_JOB_NODELIST"] = "gpu[1-";
  CHECK_THAT(spec_from_slurm(getenv, d, notes).status().message(), Contains("SLURM_JOB_NODELIST") && Contains("without"));
}

// ---- cluster spec JSON and hostfiles --------------------------------------------------------

TEST_CASE("the minimal cluster spec reads, and a bad one names the field", "[cluster_plan][spec]") {
  auto s = spec_from_json(json::parse(R"({"nodes": [{"name": "a", "gpus_gib": [24, 24], "ram_gib": 64, "link_gbps": 25},
                                                    {"name": "b", "ram_gib": 128, "link_gbps": 10}]})"),
                          "c.json");
  REQUIRE(s.ok());
  REQUIRE(s->nodes.size() == 2);
  CHECK(s->nodes[0].gpus.size() == 2);
  CHECK(s->nodes[0].gpus[1].gib == 24);
  CHECK(s->nodes[1].gpus.empty());  // a CPU node
  auto err = [](const std::string& text) {
    auto r = spec_from_json(json::parse(text), "c.json");
    REQUIRE_FALSE(r.ok());
    return r.status().message();
  };
  CHECK_THAT(err(R"({"nodes": [{"name": "a", "ram_gib": 8}]})"), Contains("c.json: nodes[0].link_gbps is missing"));
  CHECK_THAT(err(R"({"nodes": [{"name": "a", "ram_gib": 8, "link_gbps": 1}, {"name": "b", "gpus_gib": [24, -1], "ram_gib": 8, "link_gbps": 1}]})"),
             Contains("nodes[1].gpus_gib[1] = -1 must be positive"));
  CHECK_THAT(err(R"({"nodes": [{"name": "a", "gpu_gib": [24], "ram_gib": 8, "link_gbps": 1}]})"),
             Contains("nodes[0].gpu_gib is not a field of a node"));
  CHECK_THAT(err(R"({"nodes": [{"name": "a", "ram_gib": "8", "link_gbps": 1}]})"),
             Contains("nodes[0].ram_gib = \"8\" is a string, not a number"));
  CHECK_THAT(err(R"({"nodes": [{"name": "a", "ram_gib": 0, "link_gbps": 1}]})"),
             Contains("nodes[0].ram_gib = 0 on a node without GPUs"));
  CHECK_THAT(err(R"({"nodes": [{"name": "a", "ram_gib": 8, "link_gbps": 1}, {"name": "a", "ram_gib": 8, "link_gbps": 1}]})"),
             Contains("nodes[1] 'a' repeats nodes[0]"));
  CHECK_THAT(err(R"({"nodes": [{"name": "a", "gpus_gib": [8, 8], "gpu_kind": ["t4"], "ram_gib": 8, "link_gbps": 1}]})"),
             Contains("nodes[0].gpu_kind has 1 entries for 2 GPUs"));
  CHECK_THAT(err(R"({"nodes": []})"), Contains("nodes = [] is not a non-empty array"));
  CHECK_THAT(err(R"({"node": []})"), Contains("node is not a field of a cluster spec"));
  CHECK_THAT(err(R"({"nodes": [{"name": "a", "ram_gib": 8, "link_gbps": 1}], "efficiency": {"cpu": 2}})"),
             Contains("efficiency.cpu = 2 is more than 1"));
  CHECK_THAT(err(R"({"nodes": [{"name": "a", "ram_gib": 8, "link_gbps": 1, "cpu_linear_gflops": 20}]})"),
             Contains("nodes[0].cpu_linear_gflops = 20 is not an object of tokens -> GFLOP/s"));
  CHECK_THAT(err(R"({"nodes": [{"name": "a", "ram_gib": 8, "link_gbps": 1, "cpu_linear_gflops": {}}]})"),
             Contains("nodes[0].cpu_linear_gflops = {} is not an object"));
  CHECK_THAT(err(R"({"nodes": [{"name": "a", "ram_gib": 8, "link_gbps": 1, "cpu_linear_gflops": {"four": 20}}]})"),
             Contains("nodes[0].cpu_linear_gflops: key \"four\" is not a token count of 1 or more"));
  CHECK_THAT(err(R"({"nodes": [{"name": "a", "ram_gib": 8, "link_gbps": 1, "cpu_linear_gflops": {"0.5": 20}}]})"),
             Contains("key \"0.5\" is not a token count of 1 or more"));
  CHECK_THAT(err(R"({"nodes": [{"name": "a", "ram_gib": 8, "link_gbps": 1, "cpu_linear_gflops": {"4": 0}}]})"),
             Contains("nodes[0].cpu_linear_gflops.4 = 0 must be positive"));
}

TEST_CASE("read_spec_file names the file", "[cluster_plan][spec]") {
  TempDir tmp;
  write_file(tmp.path / "c.json", "{\"nodes\": [");
  auto r = read_spec_file(tmp.path / "c.json");
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.status().message(), Contains((tmp.path / "c.json").string() + ": not valid JSON (at byte"));
  CHECK_THAT(read_spec_file(tmp.path / "missing.json").status().message(), Contains("cannot open the cluster spec"));
}

TEST_CASE("spec_from_hostfile reads Open MPI hostfiles and names the line", "[cluster_plan][spec]") {
  TempDir tmp;
  const fs::path h = tmp.path / "hosts";
  write_file(h, "# lab\nws1 slots=2\n\nws2 max_slots=4  # the old one\nws3\n");
  HostDefaults d;
  d.gpus_gib = {24, 12};
  d.ram_gib = 64;
  d.link_gbps = 10;
  auto s = spec_from_hostfile(h, d);
  REQUIRE(s.ok());
  REQUIRE(s->nodes.size() == 3);
  CHECK(s->nodes[1].name == "ws2");
  CHECK(s->nodes[2].gpus[1].gib == 12);
  CHECK(s->nodes[0].link_gbps == 10);
  write_file(h, "ws1\nws2 slots=x\n");
  CHECK_THAT(spec_from_hostfile(h, d).status().message(), Contains(h.string() + ":2: slots = 'x' is not a count"));
  write_file(h, "ws1\nws2 cpus=2\n");
  CHECK_THAT(spec_from_hostfile(h, d).status().message(), Contains(":2: 'cpus=2' is not slots=N"));
  write_file(h, "ws1\n# x\nws1\n");
  CHECK_THAT(spec_from_hostfile(h, d).status().message(), Contains(":3: host 'ws1' is listed again (first on line 1)"));
  write_file(h, "# nothing\n");
  CHECK_THAT(spec_from_hostfile(h, d).status().message(), Contains("no hosts in the hostfile"));
  write_file(h, "ws1\n");
  d.link_gbps = 0;
  CHECK_THAT(spec_from_hostfile(h, d).status().message(), Contains("--link-gbps is required"));
}

// ---- weight formats ---------------------------------------------------------------------------

TEST_CASE("fp8 and bf16 unit bytes are plan.h's, and GGUF blocks add up to the parameters",
          "[cluster_plan][formats]") {
  const ModelConfig c = config_of(kConfig671b);
  CHECK(unit_bytes_in(c, WeightFormat::kFp8) == unit_bytes_for(c, true));
  CHECK(unit_bytes_in(c, WeightFormat::kBf16) == unit_bytes_for(c, false));
  const ParamCounts p = count_params(c);
  int64_t moe_layers = 0;
  for (int64_t i = 0; i < c.n_layers; ++i) moe_layers += c.is_moe_layer(i);
  // BF16: 2 bytes a parameter, the router biases (E per MoE layer) 4.
  CHECK(sum_units(unit_bytes_in(c, WeightFormat::kBf16)) == 2 * p.total + 2 * moe_layers * c.n_routed_experts);
  // q8_0 and q4_k share the F32 rest R; the quantized Q take 34/32 and 144/256 bytes each.
  // Solving both totals for Q and R must give back every parameter: Q + R/4 == total.
  const long double b8 = sum_units(unit_bytes_in(c, WeightFormat::kQ8_0));
  const long double b4 = sum_units(unit_bytes_in(c, WeightFormat::kQ4K));
  const long double q = (b8 - b4) / (34.0L / 32 - 144.0L / 256);
  const long double rest = b8 - q * 34 / 32;
  CHECK(std::llround(q + rest / 4) == p.total);
  CHECK(b4 * 8 / p.total > 4.5);   // 4.5 bits per quantized weight, F32 vectors and router on top
  CHECK(b4 * 8 / p.total < 4.52);
}

TEST_CASE("fp8 bytes of a config equal a real FP8 checkpoint's tensors", "[cluster_plan][formats]") {
  // tiny-v3-fp8 holds its MTP layer: the plan places the main model, the MTP bytes are apart.
  const fs::path dir = kFixtures / "tiny-v3-fp8";
  const ModelConfig c = config_of(dir);
  int64_t main = 0, mtp = 0;
  const std::string mtp_prefix = "model.layers." + std::to_string(c.n_layers) + ".";
  for (const auto& f : fs::directory_iterator(dir)) {
    if (f.path().extension() != ".safetensors") continue;
    auto st = SafetensorsFile::open(f.path());
    REQUIRE(st.ok());
    for (const TensorInfo& t : (*st)->tensors()) (t.name.rfind(mtp_prefix, 0) == 0 ? mtp : main) += int64_t(t.end - t.begin);
  }
  REQUIRE(mtp > 0);
  TempDir tmp;
  fs::copy_file(dir / "config.json", tmp.path / "config.json");
  const PlanRun r = plan_cli(nodes_like(1, {}, 16), "--weights fp8", tmp.path / "config.json");
  CHECK(r.rc == 0);
  CHECK(r.j["placed_weight_bytes"].get<int64_t>() == main);
  CHECK(r.j["mtp_weight_bytes"].get<int64_t>() == mtp);
  CHECK(r.j["weight_bytes"].get<int64_t>() == main + mtp);
}

// ---- the acceptance pools of issue 6 (DeepSeek-V3 671B) ----------------------------------------

TEST_CASE("plan --json counts parameters as inspect does and sizes the FP8 release", "[cluster_plan][671b]") {
  const PlanRun r = plan_cli(nodes_like(12, {80, 80, 80, 80, 80, 80, 80, 80}, 512), "--weights fp8");
  REQUIRE(r.rc == 0);
  const CliRun inspect = shoal_cli("inspect --json --model '" + kConfig671b.parent_path().string() + "'");
  REQUIRE(inspect.rc == 0);
  const json i = json::parse(inspect.out);
  CHECK(r.j["total_params"] == 671026419200);
  CHECK(r.j["active_params"] == 36625618432);
  for (const char* k : {"total_params", "active_params", "mtp_params"}) CHECK(r.j[k] == i[k]);
  // DeepSeek-V3's published safetensors shards hold 688,574,839,360 bytes, MTP layer included:
  // weight_bytes is the checkpoint as published; the ranks hold placed_weight_bytes (no MTP).
  const long double release = 688574839360.0L;
  const long double all = r.j["weight_bytes"].get<int64_t>();
  CHECK(std::abs(all - release) / release < 0.01L);
  CHECK(r.j["placed_weight_bytes"].get<int64_t>() + r.j["mtp_weight_bytes"].get<int64_t>() == r.j["weight_bytes"]);
  // The MTP layer is a decoder layer plus embedding and head: over 1% of the release on its own.
  CHECK(r.j["mtp_weight_bytes"].get<int64_t>() > 0.01L * release);
}

TEST_CASE("12 nodes of 2 x 24 GB GPUs: --gpu-only refuses FP8 and accepts q4_k", "[cluster_plan][671b]") {
  const json pool = nodes_like(12, {24, 24}, 128);
  TempDir tmp;
  const fs::path out = tmp.path / "plan.json";
  const PlanRun fp8 = plan_cli(pool, "--gpu-only --weights fp8 --out '" + out.string() + "'");
  CHECK_FALSE(fs::exists(out));  // no plan file for a plan that does not fit
  CHECK(fp8.rc == 3);
  CHECK(fp8.j["fits"] == false);
  REQUIRE(!fp8.j["reasons"].empty());
  CHECK_THAT(fp8.j["reasons"][0].get<std::string>(), Contains("on the GPUs alone") && Contains("fp8 weights"));
  bool over = false;
  for (const json& line : fp8.j["reasons"]) over = over || line.get<std::string>().find("over by") != std::string::npos;
  CHECK(over);
  const std::string suggestions = fp8.j["suggestions"].dump();
  CHECK_THAT(suggestions, Contains("--weights q4_k") && Contains("more nodes") && Contains("without --gpu-only"));
  CHECK_THAT(fp8.err, Contains("does not fit"));

  const PlanRun q4 = plan_cli(pool, "--gpu-only --weights q4_k");
  CHECK(q4.rc == 0);
  CHECK(q4.j["fits"] == true);
  check_capacities(q4.j);
  for (const json& r : q4.j["ranks"]) CHECK(r["host_experts"] == 0);
  CHECK(q4.j["ranks"].size() == 24);
}

TEST_CASE("12 nodes of 2 x 24 GB GPUs and 128 GB RAM hold FP8 with experts in RAM", "[cluster_plan][671b]") {
  TempDir tmp;
  const json pool = nodes_like(12, {24, 24}, 128);
  const PlanRun r = plan_cli(pool, "--weights fp8 --out '" + (tmp.path / "plan.json").string() + "'");
  REQUIRE(r.rc == 0);
  check_capacities(r.j);
  int64_t host_experts = 0, experts = 0;
  for (const json& rank : r.j["ranks"]) {
    host_experts += rank["host_experts"].get<int64_t>();
    experts += rank["experts"].get<int64_t>();
    for (const json& range : rank["host_expert_ranges"]) CHECK(range["first"] <= range["last"]);
  }
  CHECK(host_experts > 0);
  CHECK(experts == 58 * 256);  // every routed expert of the 58 MoE layers, once
  CHECK_THAT(r.j["warnings"].dump(), Contains("sit in host memory"));
  // The plan file is the one --plan takes, and puts on each rank what the report says.
  const ModelConfig c = config_of(kConfig671b);
  auto plan = read_plan_file(tmp.path / "plan.json", c, 24);
  INFO(plan.status().to_string());
  REQUIRE(plan.ok());
  const UnitBytes bytes = unit_bytes_in(c, WeightFormat::kFp8);
  for (const json& rank : r.j["ranks"])
    CHECK(rank_weight_bytes(*plan, bytes, rank["rank"].get<int>()) ==
          rank["weight_bytes"].get<int64_t>() + rank["host_weight_bytes"].get<int64_t>());
  // The text form shows them too.
  write_file(tmp.path / "c.json", pool.dump());
  const CliRun text = shoal_cli("plan --model '" + kConfig671b.string() + "' --cluster '" + (tmp.path / "c.json").string() + "'");
  CHECK(text.rc == 0);
  CHECK_THAT(text.out, Contains("in host memory: layer") && Contains("predicted decode"));
}

TEST_CASE("12 nodes of 8 x 80 GB GPUs hold FP8 on the GPUs alone", "[cluster_plan][671b]") {
  const PlanRun r = plan_cli(nodes_like(12, {80, 80, 80, 80, 80, 80, 80, 80}, 512), "--gpu-only --weights fp8");
  REQUIRE(r.rc == 0);
  check_capacities(r.j);
  for (const json& rank : r.j["ranks"]) CHECK(rank["host_experts"] == 0);
  CHECK(r.j["prediction"]["full_pipeline_tokens_per_s"] > r.j["prediction"]["one_sequence_tokens_per_s"]);
  const PlanRun scatter = plan_cli(nodes_like(12, {80, 80, 80, 80, 80, 80, 80, 80}, 512), "--gpu-only --expert-scatter");
  REQUIRE(scatter.rc == 0);
  check_capacities(scatter.j);
  CHECK(r.j["expert_exchange_bytes_per_token"] == 0);
  CHECK(scatter.j["expert_exchange_bytes_per_token"] > 0);
}

TEST_CASE("a mixed pool of 24, 16 and 12 GB GPUs and a CPU node stays within every capacity",
          "[cluster_plan][671b]") {
  json pool = {{"nodes", {node("big", {24}, 64), node("mid", {16}, 64), node("small", {12}, 32), node("cpu", {}, 512)}}};
  const PlanRun r = plan_cli(pool, "--weights q4_k");
  REQUIRE(r.rc == 0);
  check_capacities(r.j);
  REQUIRE(r.j["ranks"].size() == 4);
  CHECK(r.j["ranks"][3]["device"] == "cpu");
  CHECK(r.j["ranks"][3]["weight_bytes"] > 0);  // the GPUs cannot hold it: the CPU node takes a share
  // A model the GPUs hold: the CPU node gets nothing (GPUs first).
  const PlanRun small = plan_cli(pool, "", kBenchConfig);
  REQUIRE(small.rc == 0);
  check_capacities(small.j);
  CHECK(small.j["ranks"][3]["weight_bytes"] == 0);
}

TEST_CASE("heterogeneous GPUs get shares in proportion to their memory", "[cluster_plan][671b]") {
  json pool = {{"nodes", {node("a", {80, 80, 80, 80}, 64), node("b", {48, 48}, 64), node("c", {24, 24}, 64)}}};
  const PlanRun r = plan_cli(pool, "--gpu-only --weights q4_k");
  REQUIRE(r.rc == 0);
  check_capacities(r.j);
  const ModelConfig c = config_of(kConfig671b);
  const UnitBytes b = unit_bytes_in(c, WeightFormat::kQ4K);
  const int64_t kv_layer = r.j["kv_bytes_per_layer"].get<int64_t>();
  long double largest_layer = 0, placed = 0, room = 0;
  for (size_t i = 0; i < b.attn.size(); ++i) {
    long double layer = b.attn[i] + kv_layer;
    for (int64_t e : b.experts[i]) layer += e;
    largest_layer = std::max(largest_layer, layer);
  }
  for (const json& rank : r.j["ranks"]) {
    placed += rank["weight_bytes"].get<int64_t>() + rank["kv_bytes"].get<int64_t>();
    room += rank["capacity_bytes"].get<int64_t>() - rank["workspace_bytes"].get<int64_t>();
  }
  for (const json& rank : r.j["ranks"]) {
    const long double share = placed * (rank["capacity_bytes"].get<int64_t>() - rank["workspace_bytes"].get<int64_t>()) / room;
    const long double got = rank["weight_bytes"].get<int64_t>() + rank["kv_bytes"].get<int64_t>();
    INFO("rank " << rank["rank"] << " got " << double(got) << " of a share of " << double(share));
    CHECK(std::abs(got - share) <= 1.5L * largest_layer + b.embed + b.head);
  }
}

// ---- errors through the binary ----------------------------------------------------------------

TEST_CASE("shoal plan errors name what was wrong", "[cluster_plan][errors]") {
  TempDir tmp;
  const std::string model = " --model '" + kConfig671b.string() + "'";
  write_file(tmp.path / "bad.json", R"({"nodes": [{"name": "a", "gpus_gib": [24], "ram_gib": 64}]})");
  CliRun r = shoal_cli("plan" + model + " --cluster '" + (tmp.path / "bad.json").string() + "'");
  CHECK(r.rc == 1);
  CHECK_THAT(r.err, Contains((tmp.path / "bad.json").string() + ": nodes[0].link_gbps is missing"));
  write_file(tmp.path / "kind.json", R"({"nodes": [{"name": "a", "gpus_gib": [24], "gpu_kind": "rtx9090", "ram_gib": 64, "link_gbps": 1}]})");
  r = shoal_cli("plan" + model + " --cluster '" + (tmp.path / "kind.json").string() + "'");
  CHECK(r.rc == 1);
  CHECK_THAT(r.err, Contains("nodes[0].gpu_kind = 'rtx9090' is not in the bandwidth table"));
  r = shoal_cli("plan" + model + " --cluster '" + (tmp.path / "kind.json").string() + "' --bandwidth rtx9090=2000 --weights q4_k");
  CHECK(r.rc == 3);  // known now; 24 GiB is far from enough
  r = shoal_cli("plan" + model + " --cluster '" + (tmp.path / "kind.json").string() + "' --weights q5");
  CHECK(r.rc == 1);
  CHECK_THAT(r.err, Contains("--weights 'q5' is not fp8, bf16, q8_0 or q4_k"));
  r = shoal_cli("plan" + model);
  CHECK(r.rc == 1);
  CHECK_THAT(r.err, Contains("exactly one of --cluster"));
  write_file(tmp.path / "hosts", "a\nb slots=two\n");
  r = shoal_cli("plan" + model + " --hostfile '" + (tmp.path / "hosts").string() + "' --gpus-gib 24,24 --ram-gib 64 --link-gbps 10");
  CHECK(r.rc == 1);
  CHECK_THAT(r.err, Contains((tmp.path / "hosts").string() + ":2: slots = 'two' is not a count"));
  r = shoal_cli("plan" + model + " --hostfile '" + (tmp.path / "hosts").string() + "' --gpus-gib 24,x --ram-gib 64 --link-gbps 10");
  CHECK(r.rc == 1);
  CHECK_THAT(r.err, Contains("--gpus-gib '24,x': 'x' is not a positive number"));
  r = shoal_cli("plan --model '" + (tmp.path / "nothing").string() + "' --local-nodes 1 --ram-bandwidth-gbs 10");
  CHECK(r.rc == 1);
}

TEST_CASE("shoal plan reads a hostfile and the Slurm environment", "[cluster_plan][spec]") {
  TempDir tmp;
  write_file(tmp.path / "hosts", "w1 slots=2\nw2\nw3\n");
  const std::string model = " --model '" + kConfig671b.string() + "' --weights q4_k --json";
  CliRun r = shoal_cli("plan" + model + " --hostfile '" + (tmp.path / "hosts").string() +
                       "' --gpus-gib 48,48 --ram-gib 256 --link-gbps 25");
  REQUIRE(r.rc == 0);
  json j = json::parse(r.out);
  CHECK(j["ranks"].size() == 6);
  CHECK(j["ranks"][5]["node"] == "w3");
  const std::string slurm = " --slurm --gpus-gib 80,80 --link-gbps 100";
  r = shoal_cli("plan" + model + slurm, "env -u SLURM_JOB_NODELIST -u SLURM_NODELIST");
  CHECK(r.rc == 1);
  CHECK_THAT(r.err, Contains("SLURM_JOB_NODELIST is not set"));
  r = shoal_cli("plan" + model + slurm,
                "env -u SLURM_NODELIST -u SLURM_JOB_NUM_NODES -u SLURM_GPUS_ON_NODE -u SLURM_NTASKS_PER_NODE "
                "-u SLURM_TASKS_PER_NODE SLURM_JOB_NODELIST='c[1-3]' SLURM_MEM_PER_NODE=262144 SLURM_NTASKS=6");
  INFO(r.err);
  REQUIRE(r.rc == 0);
  j = json::parse(r.out);
  REQUIRE(j["ranks"].size() == 6);
  CHECK(j["ranks"][4]["node"] == "c3");
  CHECK(j["ranks"][4]["device"] == "gpu:0");
}

// ---- the prediction -------------------------------------------------------------------------

TEST_CASE("this machine with --local-nodes 2: the prediction is the bytes a token reads over the bandwidth",
          "[cluster_plan][predict]") {
  const double bw = 60;  // GB/s, given so the test does not measure
  const CliRun r = shoal_cli("plan --model '" + kBenchConfig.string() +
                             "' --local-nodes 2 --ram-bandwidth-gbs 60 --context 96 --json");
  INFO(r.err);
  REQUIRE(r.rc == 0);
  const json j = json::parse(r.out);
  REQUIRE(j["ranks"].size() == 2);
  CHECK(j["ranks"][0]["device"] == "cpu:0");
  CHECK(j["ranks"][1]["layers"].size() > 0);
  // One BF16 token reads about its active parameters (2 bytes each) and the embedding row;
  // shoal's BF16 whole-model decode streams at 0.77 of the read bandwidth (docs/performance.md).
  const ModelConfig c = config_of(kBenchConfig);
  const double seconds = (2.0 * double(count_params(c).active) + 2.0 * double(c.dim)) / (bw * 0.77 * 1e9);
  const double predicted = j["prediction"]["one_sequence_tokens_per_s"].get<double>();
  CHECK(predicted == Approx(1 / seconds).epsilon(0.05));
  CHECK(j["hop_bytes_per_token"] == 4 * c.dim + 12);  // the runtime measured 8204 B at hidden 2048
  CHECK(j["hops_per_token"] == 1);
  // Both ranks share the node's memory: a full pipeline is no faster than one sequence.
  const double full = j["prediction"]["full_pipeline_tokens_per_s"].get<double>();
  CHECK(full >= predicted);
  CHECK(full < predicted * 1.05);
}

// A CPU node whose FMA peak the spec gives (cpu_gflops): a step takes the longer of streaming its
// weights and their multiply-adds at half that peak. At 1 GFLOP/s every matrix is compute-bound,
// so one token takes 2 x its active parameters (the embedding row aside) over 0.5 GFLOP/s.
TEST_CASE("cpu_gflops: on a slow enough CPU a token takes its multiply-adds' time", "[cluster_plan][predict]") {
  const ModelConfig c = config_of(kBenchConfig);
  const json spec = {{"nodes", {{{"name", "a"}, {"ram_gib", 16}, {"link_gbps", 1e6}, {"latency_us", 0},
                                 {"ram_bandwidth_gbs", 60}, {"cpu_gflops", 1}}}}};
  const PlanRun r = plan_cli(spec, "--context 1 --weights bf16", kBenchConfig);
  REQUIRE(r.rc == 0);
  const double seconds = 2.0 * double(count_params(c).active) / 0.5e9;
  CHECK(r.j["prediction"]["one_sequence_tokens_per_s"].get<double>() == Approx(1 / seconds).epsilon(0.02));
  // Without it, the same node is memory-bound: far faster.
  const json fast = {{"nodes", {{{"name", "a"}, {"ram_gib", 16}, {"link_gbps", 1e6}, {"latency_us", 0}, {"ram_bandwidth_gbs", 60}}}}};
  CHECK(plan_cli(fast, "--context 1 --weights bf16", kBenchConfig).j["prediction"]["one_sequence_tokens_per_s"].get<double>() >
        50 / seconds);
}

// The measured compute rate (cpu_linear_gflops, `shoal inspect --system`'s linear_gflops): linear
// in log2 of the tokens between its points, flat beyond them; shared by a node's ranks; without
// it, half the FMA peak.
TEST_CASE("cpu_compute_gflops: the measured curve, interpolated in log2 of the tokens", "[cluster_plan][predict]") {
  RankSlot r;
  CHECK(cpu_compute_gflops(r, 4) == 0);  // neither given: compute not modeled
  r.cpu_gflops = 80;
  CHECK(cpu_compute_gflops(r, 4) == Approx(40));
  r.cpu_linear_gflops = {{1, 10}, {4, 30}, {16, 40}};
  CHECK(cpu_compute_gflops(r, 1) == Approx(10));
  CHECK(cpu_compute_gflops(r, 0.5) == Approx(10));  // flat below the first point
  CHECK(cpu_compute_gflops(r, 2) == Approx(20));    // halfway from 1 to 4 in log2
  CHECK(cpu_compute_gflops(r, 4) == Approx(30));
  CHECK(cpu_compute_gflops(r, 8) == Approx(35));
  CHECK(cpu_compute_gflops(r, 64) == Approx(40));   // flat beyond the last
  // A node's figure is shared by the ranks it runs.
  const ClusterSpec spec = spec_from_json(json::parse(R"({"nodes": [{"name": "a", "ram_gib": 16, "link_gbps": 1,
      "cpu_ranks": 2, "cpu_linear_gflops": {"1": 10, "8": 40}}]})"), "c.json").value();
  FitOptions o;
  const std::vector<RankSlot> slots = rank_slots(spec, o).value();
  REQUIRE(slots.size() == 2);
  CHECK(cpu_compute_gflops(slots[1], 1) == Approx(5));
  CHECK(cpu_compute_gflops(slots[1], 8) == Approx(20));
}

// With a measured rate so slow that every matrix is compute-bound, one token takes 2 x its active
// parameters over the rate at 1 token, and a full step of 8 sequences (one stage: one micro-batch
// of 8) 2 x 8 x active over the rate at 8 tokens when the curve is flat from 1 to 8: every
// multiply-add counted once, whatever the routing. Attention's multiply-adds at a long context:
// 2 x context x heads x (2 x kv_lora_rank + rope) a token and layer, at the rate of one token.
TEST_CASE("cpu_linear_gflops: steps take their multiply-adds at the measured rate", "[cluster_plan][predict]") {
  const ModelConfig c = config_of(kBenchConfig);
  auto spec = [](const json& curve) {
    return json{{"nodes", {{{"name", "a"}, {"ram_gib", 16}, {"link_gbps", 1e6}, {"latency_us", 0},
                            {"ram_bandwidth_gbs", 60}, {"cpu_gflops", 1000}, {"cpu_linear_gflops", curve}}}}};
  };
  const double active = double(count_params(c).active);
  const PlanRun one = plan_cli(spec({{"1", 1}, {"8", 1}}), "--context 1 --weights bf16", kBenchConfig);
  REQUIRE(one.rc == 0);
  CHECK(one.j["prediction"]["one_sequence_tokens_per_s"].get<double>() == Approx(1e9 / (2 * active)).epsilon(0.02));
  // The curve, not half of cpu_gflops (which would be 500 times faster).
  const PlanRun eight = plan_cli(spec({{"1", 2}, {"8", 2}}), "--context 1 --weights bf16 --concurrency 8", kBenchConfig);
  REQUIRE(eight.rc == 0);
  CHECK(eight.j["prediction"]["full_pipeline_tokens_per_s"].get<double>() == Approx(2e9 / (2 * active)).epsilon(0.02));
  // A rate that grows with the tokens: a step of 8 beats 8 steps of one by up to the ratio.
  const PlanRun rising = plan_cli(spec({{"1", 1}, {"8", 4}}), "--context 1 --weights bf16 --concurrency 8", kBenchConfig);
  const double full = rising.j["prediction"]["full_pipeline_tokens_per_s"].get<double>();
  CHECK(full > 1.5e9 / (2 * active));
  CHECK(full < 4e9 / (2 * active));
  // Attention at a context of 4096, one sequence, 1 GFLOP/s.
  const int64_t context = 4096;
  const PlanRun longer = plan_cli(spec({{"1", 1}}), "--context 4096 --weights bf16", kBenchConfig);
  REQUIRE(longer.rc == 0);
  const double attention_ms = 2.0 * double(context) * double(c.n_heads) *
                              double(2 * c.kv_lora_rank + c.qk_rope_head_dim) * double(c.n_layers) / 1e9 * 1e3;
  CHECK(longer.j["prediction"]["one_sequence_ms"]["kv_cache"].get<double>() == Approx(attention_ms).epsilon(0.01));
}

// Two compute-bound one-core nodes cannot do more multiply-adds than both cores together: the full
// pipeline's tokens/s stays within 2 x rate / (2 x active), pipelined or with experts scattered,
// where each rank also runs experts for the other's tokens (counted beside its own stage).
TEST_CASE("full pipeline: no more multiply-adds than the cores can do, experts served counted", "[cluster_plan][predict]") {
  const ModelConfig c = config_of(kBenchConfig);
  const json node = {{"ram_gib", 16}, {"link_gbps", 1e6}, {"latency_us", 0}, {"ram_bandwidth_gbs", 60},
                     {"cpu_linear_gflops", {{"1", 1}}}};
  json a = node, b = node;
  a["name"] = "a";
  b["name"] = "b";
  const json spec = {{"nodes", {a, b}}};
  const double bound = 2e9 / (2 * double(count_params(c).active));
  for (const std::string mode : {"", " --expert-scatter"}) {
    INFO(mode);
    const PlanRun r = plan_cli(spec, "--context 1 --weights bf16 --concurrency 8" + mode, kBenchConfig);
    REQUIRE(r.rc == 0);
    const double full = r.j["prediction"]["full_pipeline_tokens_per_s"].get<double>();
    CHECK(full <= bound * 1.001);
    CHECK(full > bound * 0.5);
  }
}

// A rank that runs experts for another stage's tokens does that work beside its own stage. Two
// compute-bound stages (a flat 1 GFLOP/s), every routed expert of every layer placed on the first:
// per cycle (a micro-batch of b = 4 tokens in each stage) the first rank computes its layers'
// attention units and all 7 MoE layers' experts for b tokens each (b x k uses of an expert's
// parameters a layer, whatever the routing), 2 multiply-adds a parameter and use.
TEST_CASE("full pipeline: a rank's cycle counts the experts it runs for the other stage", "[cluster_plan][predict]") {
  const ModelConfig c = config_of(kBenchConfig);
  const json spec_json = {{"nodes", {{{"name", "a"}, {"ram_gib", 16}, {"link_gbps", 1e6}, {"latency_us", 0},
                                      {"ram_bandwidth_gbs", 60}, {"cpu_linear_gflops", {{"1", 1}}}},
                                     {{"name", "b"}, {"ram_gib", 16}, {"link_gbps", 1e6}, {"latency_us", 0},
                                      {"ram_bandwidth_gbs", 60}, {"cpu_linear_gflops", {{"1", 1}}}}}}};
  const ClusterSpec spec = spec_from_json(spec_json, "c.json").value();
  FitOptions o;
  o.weights = WeightFormat::kBf16;
  o.context = 1;
  o.concurrency = 8;
  FitResult r = fit_plan(c, spec, o).value();
  REQUIRE(r.fits);
  const UnitBytes bytes = unit_bytes_in(c, WeightFormat::kBf16);
  const int first = r.plan.attn.front(), second = r.plan.attn.back();
  REQUIRE(first != second);
  for (auto& owners : r.plan.experts) std::fill(owners.begin(), owners.end(), first);
  const double bpp = double(r.weight_bytes) / double(r.params.total), b = 4, g = 1e9;
  const double k = double(c.n_activated_experts);
  double first_s = 0, experts_s = 0;
  for (size_t i = 0; i < r.plan.attn.size(); ++i) {
    if (r.plan.attn[i] == first) first_s += 2 * b * double(bytes.attn[i]) / bpp / g;
    if (!bytes.experts[i].empty()) experts_s += 2 * b * k * double(bytes.experts[i][0]) / bpp / g;
  }
  const Prediction p = predict(c, spec, r, bytes);
  REQUIRE(p.pipeline_stages == 2);
  // The first rank's cycle: its attention units and every layer's experts (the embedding's rows
  // and context-1 attention are a fraction of a percent).
  CHECK(p.full_pipeline_tokens_per_s == Approx(b / (first_s + experts_s)).epsilon(0.01));
}

// Expert scatter: a layer waits for the rank with the larger share of the token's experts. On
// dist-2048 over two ranks of 4 groups each (6 experts of 64, top 4 of 8 groups), the larger share
// averages E[max(X, 6 - X)]: the groups a token picks on the first rank, j, are hypergeometric
// (8 groups, 4 there, 4 drawn), its experts there X | j hypergeometric (32 candidates, 8j there,
// 6 drawn). With links that cost nothing, one sequence's weight time in the pipeline (every
// expert of a layer on one rank: 6 experts' bytes) exceeds the scatter's (the larger share) by
// 7 MoE layers x (6 - E[max]) experts' bytes; the attention, embedding row and head are alike.
TEST_CASE("expert scatter: a layer waits for the larger share of the token's experts", "[cluster_plan][predict]") {
  const ModelConfig c = config_of(kBenchConfig);
  const json spec = {{"nodes", {{{"name", "a"}, {"ram_gib", 16}, {"link_gbps", 1e6}, {"latency_us", 0}, {"ram_bandwidth_gbs", 60}},
                                {{"name", "b"}, {"ram_gib", 16}, {"link_gbps", 1e6}, {"latency_us", 0}, {"ram_bandwidth_gbs", 60}}}}};
  const PlanRun pipe = plan_cli(spec, "--context 1 --weights bf16", kBenchConfig);
  const PlanRun scatter = plan_cli(spec, "--context 1 --weights bf16 --expert-scatter", kBenchConfig);
  REQUIRE(pipe.rc == 0);
  REQUIRE(scatter.rc == 0);
  auto choose = [](int n, int k) {
    double r = 1;
    for (int i = 1; i <= k; ++i) r = r * double(n - k + i) / double(i);
    return k < 0 || k > n ? 0.0 : r;
  };
  double larger = 0;  // E[max(X, 6 - X)]
  for (int j = 0; j <= 4; ++j) {
    const double pj = choose(4, j) * choose(4, 4 - j) / choose(8, 4);
    for (int x = 0; x <= 6; ++x) larger += pj * choose(8 * j, x) * choose(32 - 8 * j, 6 - x) / choose(32, 6) * std::max(x, 6 - x);
  }
  CHECK(larger == Approx(4.2).margin(0.2));  // against 3 experts for an even split
  const double expert_ms = 3.0 * double(c.dim) * double(c.moe_inter_dim) * 2 / (60 * 0.77 * 1e9) * 1e3;
  const double moe_layers = double(c.n_layers - c.n_dense_layers);
  const double want = moe_layers * (6 - larger) * expert_ms;  // what scatter saves over one rank
  const double got = pipe.j["prediction"]["one_sequence_ms"]["weights"].get<double>() -
                     scatter.j["prediction"]["one_sequence_ms"]["weights"].get<double>();
  CHECK(got == Approx(want).epsilon(0.05));
}

// The expert exchange as the runtime does it (docs/distributed.md): per MoE layer and token, the
// row once to the other rank when one of its experts is there, and one partial sum back per
// maximal combine node reached; the whole groups of --expert-scatter on 2 ranks are one node each.
// `--wire-dtype bf16` halves every row. (The runtime measured 111.5 KB and 55.6 KB per token on
// this config: docs/distributed.md.)
TEST_CASE("plan's expert exchange bytes follow the combine tree and --wire-dtype", "[cluster_plan][predict][wire]") {
  const ModelConfig c = config_of(kBenchConfig);
  auto plan_json = [&](const std::string& dt) {
    const CliRun r = shoal_cli("plan --model '" + kBenchConfig.string() +
                               "' --local-nodes 2 --ram-bandwidth-gbs 60 --expert-scatter --json --wire-dtype " + dt);
    INFO(r.err);
    REQUIRE(r.rc == 0);
    return json::parse(r.out);
  };
  const json f32 = plan_json("f32"), bf16 = plan_json("bf16");
  CHECK(f32["hop_bytes_per_token"] == 4 * c.dim + 12);
  CHECK(bf16["hop_bytes_per_token"] == 2 * c.dim + 12);
  // Half the experts (4 whole groups of 8) on the other rank: a token reaches it unless all
  // topk_group groups it picks are local, then one row goes there and one partial comes back.
  const int64_t G = c.n_expert_groups, pick = c.n_limited_groups, held = G / 2;
  double miss = 1;
  for (int64_t t = 0; t < pick; ++t) miss *= double(G - held - t) / double(G - t);
  int64_t moe_layers = 0;
  for (int64_t i = 0; i < c.n_layers; ++i) moe_layers += c.is_moe_layer(i);
  const double want = double(moe_layers) * 2 * (1 - miss) * double(4 * c.dim + 12);
  CHECK(f32["expert_exchange_bytes_per_token"].get<double>() == Approx(want).epsilon(1e-9));
  CHECK(bf16["expert_exchange_bytes_per_token"].get<double>() ==
        Approx(want * double(2 * c.dim + 12) / double(4 * c.dim + 12)).epsilon(1e-9));
  const CliRun bad = shoal_cli("plan --model '" + kBenchConfig.string() + "' --local-nodes 2 --wire-dtype f16");
  CHECK(bad.rc != 0);
  CHECK_THAT(bad.err, Catch::Contains("--wire-dtype") && Catch::Contains("f16"));
  const CliRun kv = shoal_cli("plan --model '" + kBenchConfig.string() + "' --local-nodes 2 --kv-dtype f16");
  CHECK(kv.rc != 0);
  CHECK_THAT(kv.err, Catch::Contains("--kv-dtype 'f16' is not f32, bf16 or fp8"));
}

// ---- the library ----------------------------------------------------------------------------

TEST_CASE("fit_plan: a long context that does not fit says which context does, and that one fits",
          "[cluster_plan][library]") {
  const ModelConfig c = config_of(kBenchConfig);
  auto spec = spec_from_json(nodes_like(1, {24, 24}, 64), "");
  REQUIRE(spec.ok());
  FitOptions o;
  o.weights = WeightFormat::kBf16;
  o.gpu_only = true;
  o.context = 65536;
  o.concurrency = 64;
  o.kv_dtype = DType::kF32;  // the default, as the runtime's: the halving to bf16 is checked below
  auto r = fit_plan(c, *spec, o);
  REQUIRE(r.ok());
  REQUIRE_FALSE(r->fits);
  // KV: context x concurrency x (kv_lora_rank + qk_rope_head_dim) x 4 bytes a layer.
  CHECK(r->kv_bytes_per_layer == int64_t(65536) * 64 * (512 + 64) * 4);
  std::string suggested;
  for (const auto& s : r->suggestions)
    if (s.find("--context ") != std::string::npos) suggested = s;
  REQUIRE(!suggested.empty());
  const int64_t ctx = std::stoll(suggested.substr(suggested.find("--context ") + 10));
  CHECK(ctx < o.context);
  o.context = ctx;
  auto shorter = fit_plan(c, *spec, o);
  REQUIRE(shorter.ok());
  CHECK(shorter->fits);
  o.context = ctx * 2;  // the suggestion is the longest halving that fits
  CHECK_FALSE(fit_plan(c, *spec, o)->fits);
  o.kv_dtype = DType::kBF16;  // a bf16 cache holds twice the context in the same bytes
  auto bf16 = fit_plan(c, *spec, o);
  REQUIRE(bf16.ok());
  CHECK(bf16->kv_bytes_per_layer == shorter->kv_bytes_per_layer);
  CHECK(bf16->fits);
}

TEST_CASE("fit_plan: CPU ranks, --gpu-only without GPUs, and the plan matches the report", "[cluster_plan][library]") {
  const ModelConfig c = config_of(kBenchConfig);
  auto spec = spec_from_json(json::parse(R"({"nodes": [{"name": "a", "ram_gib": 8, "link_gbps": 10, "cpu_ranks": 3},
                                                       {"name": "b", "ram_gib": 4, "link_gbps": 1}]})"),
                             "");
  REQUIRE(spec.ok());
  FitOptions o;
  o.weights = WeightFormat::kBf16;
  auto r = fit_plan(c, *spec, o);
  REQUIRE(r.ok());
  REQUIRE(r->fits);
  REQUIRE(r->ranks.size() == 4);
  CHECK(r->ranks[2].slot.device == "cpu:2");
  CHECK(r->ranks[3].slot.device == "cpu");
  const UnitBytes b = unit_bytes_in(c, WeightFormat::kBf16);
  int64_t all = 0;
  for (const RankFit& f : r->ranks) {
    CHECK(rank_weight_bytes(r->plan, b, f.slot.rank) == f.weight_bytes + f.host_weight_bytes);
    CHECK(f.total_bytes <= f.slot.capacity_bytes);
    all += f.weight_bytes;
  }
  CHECK(all == sum_units(b));
  // Four pipeline stages (8 layers over 4 ranks): three hops.
  CHECK(r->prediction.hops == 3);
  o.gpu_only = true;
  CHECK_THAT(fit_plan(c, *spec, o).status().message(), Contains("--gpu-only, but no GPU"));
  o.gpu_only = false;
  o.context = 0;
  CHECK_THAT(fit_plan(c, *spec, o).status().message(), Contains("--context 0 is not positive"));
}

// ---- the KV cache pool (issue 18) --------------------------------------------------------------

namespace {

// One position of `layers` layers of a DeepSeek (MLA) config, from its config.json alone: the
// latent and the roped key, `value_bytes` each.
int64_t mla_position_bytes(const json& config, int64_t layers, int64_t value_bytes) {
  return layers * (config["kv_lora_rank"].get<int64_t>() + config["qk_rope_head_dim"].get<int64_t>()) * value_bytes;
}

int64_t round_up_64(int64_t n) { return (n + 63) / 64 * 64; }

// A plan's KV figures (--json) against a count of its own: each rank with attention layers
// holds, besides the reserve of `concurrency` sequences of `context` positions (whole blocks of
// 64 positions each), whole blocks of 64 positions of its layers in capacity - total; the cluster
// the least of those ranks; "serves" as many sequences of each context as fit, each in whole blocks.
void check_kv_pool(const json& j, const json& config, int64_t value_bytes) {
  const int64_t reserved = j["concurrency"].get<int64_t>() * round_up_64(j["context"].get<int64_t>());
  CHECK(j["kv_dtype"] == (value_bytes == 2 ? "bf16" : "f32"));
  CHECK(j["kv_block_tokens"] == 64);
  CHECK(j["kv_bytes_per_layer"].get<int64_t>() == mla_position_bytes(config, 1, value_bytes) * reserved);
  CHECK(j["kv_bytes_per_token"].get<int64_t>() ==
        mla_position_bytes(config, config["num_hidden_layers"].get<int64_t>(), value_bytes));
  int64_t least = -1, least_free = -1, least_rank = -1, attention_ranks = 0;
  for (const json& r : j["ranks"]) {
    INFO("rank " << r["rank"] << ": " << r.dump());
    const int64_t layers = int64_t(r["layers"].size());
    if (layers == 0) {  // no attention, no KV pool
      CHECK(r["kv_bytes_per_token"] == 0);
      CHECK(r["kv_free_tokens"] == 0);
      CHECK(r["kv_tokens"] == 0);
      continue;
    }
    ++attention_ranks;
    const int64_t position = mla_position_bytes(config, layers, value_bytes);
    const int64_t free = r["capacity_bytes"].get<int64_t>() - r["total_bytes"].get<int64_t>();
    REQUIRE(free >= 0);
    const int64_t free_tokens = free / (64 * position) * 64;
    CHECK(r["kv_bytes"].get<int64_t>() == layers * j["kv_bytes_per_layer"].get<int64_t>());
    CHECK(r["kv_bytes_per_token"].get<int64_t>() == position);
    CHECK(r["kv_free_bytes"].get<int64_t>() == free);
    CHECK(r["kv_free_tokens"].get<int64_t>() == free_tokens);
    CHECK(r["kv_tokens"].get<int64_t>() == reserved + free_tokens);
    // What the leftover holds beyond its whole blocks is less than one block.
    CHECK(free - free_tokens * position < 64 * position);
    if (least < 0 || reserved + free_tokens < least) least = reserved + free_tokens, least_rank = r["rank"];
    least_free = least_free < 0 ? free_tokens : std::min(least_free, free_tokens);
  }
  REQUIRE(attention_ranks > 0);
  CHECK(j["kv_tokens"].get<int64_t>() == least);
  CHECK(j["kv_free_tokens"].get<int64_t>() == least_free);
  CHECK(j["kv_rank"].get<int64_t>() == least_rank);
  std::vector<int64_t> contexts;
  const int64_t max = config["max_position_embeddings"].get<int64_t>();
  for (int64_t ctx : {4096, 32768, 131072})
    if (ctx <= max) contexts.push_back(ctx);
  if (contexts.back() != max) contexts.push_back(max);
  REQUIRE(j["serves"].size() == contexts.size());
  for (size_t k = 0; k < contexts.size(); ++k) {
    CHECK(j["serves"][k]["context"].get<int64_t>() == contexts[k]);
    CHECK(j["serves"][k]["sequences"].get<int64_t>() == least / round_up_64(contexts[k]));
  }
}

// The "serves" line of the text report, written from the JSON's figures.
std::string serves_line(const json& j) {
  std::string line = "serves: ";
  for (size_t k = 0; k < j["serves"].size(); ++k)
    line += (k ? ", " : "") + std::to_string(j["serves"][k]["sequences"].get<int64_t>()) +
            (k ? " of " : " sequences of ") + std::to_string(j["serves"][k]["context"].get<int64_t>() / 1024) + "K";
  return line + "\n";
}

}  // namespace

TEST_CASE("kv_serve_contexts: 4K, 32K, 128K and the model's maximum, none above it", "[cluster_plan][kv]") {
  ModelConfig c;
  c.max_position_embeddings = 163840;  // DeepSeek-V3
  CHECK(kv_serve_contexts(c) == std::vector<int64_t>{4096, 32768, 131072, 163840});
  c.max_position_embeddings = 131072;  // the R1 distills
  CHECK(kv_serve_contexts(c) == std::vector<int64_t>{4096, 32768, 131072});
  c.max_position_embeddings = 100000;
  CHECK(kv_serve_contexts(c) == std::vector<int64_t>{4096, 32768, 100000});
  c.max_position_embeddings = 2048;
  CHECK(kv_serve_contexts(c) == std::vector<int64_t>{2048});
  c.max_position_embeddings = 0;  // not given: the three
  CHECK(kv_serve_contexts(c) == std::vector<int64_t>{4096, 32768, 131072});
  // Each sequence takes whole blocks of 64 positions.
  CHECK(kv_sequences(640, 64) == 10);
  CHECK(kv_sequences(640, 65) == 5);
  CHECK(kv_sequences(640, 100) == 5);
  CHECK(kv_sequences(639, 64) == 9);
  CHECK(kv_sequences(4096 * 3 - 64, 4096) == 2);
}

TEST_CASE("fit_plan: one rank's KV pool is its leftover in whole blocks, plus the reserve in whole blocks",
          "[cluster_plan][kv][library]") {
  const ModelConfig c = config_of(kBenchConfig);
  const json config = json::parse(read_file(kBenchConfig));
  auto spec_of = [](long double bytes) {
    json s = {{"nodes", {{{"name", "a"}, {"ram_gib", double(bytes / (int64_t(1) << 30))}, {"link_gbps", 10}}}}};
    auto spec = spec_from_json(s, "");
    REQUIRE(spec.ok());
    return *spec;
  };
  FitOptions o;
  o.weights = WeightFormat::kBf16;
  o.context = 1000;  // 16 blocks: 1024 positions a sequence
  o.concurrency = 3;
  CHECK(o.kv_dtype == DType::kF32);  // the default, as the runtime's
  o.kv_dtype = DType::kBF16;         // asked for: 2 bytes a value
  auto big = fit_plan(c, spec_of(64.0L * (int64_t(1) << 30)), o);
  REQUIRE(big.ok());
  REQUIRE(big->fits);
  REQUIRE(big->ranks.size() == 1);
  const int64_t total = big->ranks[0].total_bytes;
  const int64_t position = 8 * (512 + 64) * 2;  // 8 layers of latent and roped key, bf16: 9,216 bytes
  const int64_t block = 64 * position;
  CHECK(big->kv_bytes_per_layer == 3 * 1024 * (512 + 64) * 2);
  CHECK(big->ranks[0].kv_bytes == 8 * big->kv_bytes_per_layer);
  CHECK(big->ranks[0].kv_bytes_per_token == position);
  CHECK(big->kv_bytes_per_token == position);

  // 200 blocks and one byte short of the 201st: 200 blocks.
  auto r = fit_plan(c, spec_of(total + 201.0L * block - 1), o);
  REQUIRE(r.ok());
  REQUIRE(r->fits);
  CHECK(r->ranks[0].total_bytes == total);  // what the rank holds does not depend on its leftover
  CHECK(r->ranks[0].kv_free_bytes == 201 * block - 1);
  CHECK(r->ranks[0].kv_free_tokens == 200 * 64);
  CHECK(r->ranks[0].kv_tokens == 3 * 1024 + 200 * 64);
  CHECK(r->kv_tokens == 3 * 1024 + 200 * 64);  // 15,872
  CHECK(r->kv_free_tokens == 200 * 64);
  CHECK(r->kv_rank == 0);
  REQUIRE(r->kv_serves.size() == 4);
  CHECK(r->kv_serves[0].context == 4096);
  CHECK(r->kv_serves[0].sequences == 3);  // 15,872 / 4,096
  CHECK(r->kv_serves[1].sequences == 0);
  CHECK(r->kv_serves[3].context == 163840);
  // The 201st block whole.
  r = fit_plan(c, spec_of(total + 201.0L * block), o);
  REQUIRE(r.ok());
  CHECK(r->ranks[0].kv_free_tokens == 201 * 64);
  CHECK(r->kv_tokens == 3 * 1024 + 201 * 64);
  // The same through the JSON report.
  check_kv_pool(fit_to_json(*r, spec_of(total + 201.0L * block)), config, 2);
}

TEST_CASE("fit_plan: the cluster's KV pool is the least of its attention ranks'", "[cluster_plan][kv][library]") {
  const ModelConfig c = config_of(kBenchConfig);
  const json config = json::parse(read_file(kBenchConfig));
  json s = {{"nodes",
             {{{"name", "a"}, {"ram_gib", 3}, {"link_gbps", 10}},
              {{"name", "b"}, {"ram_gib", 4}, {"link_gbps", 10}},
              {{"name", "c"}, {"ram_gib", 6}, {"link_gbps", 10}}}}};
  auto spec = spec_from_json(s, "");
  REQUIRE(spec.ok());
  FitOptions o;
  o.weights = WeightFormat::kBf16;
  o.context = 100;  // 2 blocks a sequence
  o.concurrency = 5;
  auto r = fit_plan(c, *spec, o);
  REQUIRE(r.ok());
  REQUIRE(r->fits);
  const json j = fit_to_json(*r, *spec);
  check_kv_pool(j, config, 4);  // f32, the default
  // The ranks' pools differ, and the cluster's is the smallest, not the sum or the largest.
  std::set<int64_t> tokens;
  for (const RankFit& f : r->ranks)
    if (!f.layers.empty()) tokens.insert(f.kv_tokens);
  REQUIRE(tokens.size() > 1);
  CHECK(r->kv_tokens == *tokens.begin());
  CHECK(r->kv_tokens - r->kv_free_tokens == 5 * 128);  // the reserve, in whole blocks
  // The text report says the same.
  const std::string text = fit_text(*r, *spec);
  CHECK_THAT(text, Contains("KV cache pool (f32, blocks of 64 positions") &&
                       Contains("KV tokens: " + std::to_string(r->kv_tokens) + " for the cluster") &&
                       Contains("rank " + std::to_string(r->kv_rank) + ")") && Contains(serves_line(j)));
}

TEST_CASE("DeepSeek-V3 on the pools of docs/plan.md: KV bytes per position, tokens per rank and for the cluster",
          "[cluster_plan][kv][671b]") {
  const json config = json::parse(read_file(kConfig671b));
  const json pool24 = nodes_like(12, {24, 24}, 128);

  // 24 GPUs of 24 GiB holding q4_k: f32 by default (as the runtime's), 61 x 576 x 4 = 140,544
  // bytes a position.
  const PlanRun q4 = plan_cli(pool24, "--gpu-only --weights q4_k");
  REQUIRE(q4.rc == 0);
  check_kv_pool(q4.j, config, 4);
  CHECK(q4.j["kv_bytes_per_token"] == 140544);
  CHECK(q4.j["serves"].size() == 4);  // 4K, 32K, 128K and the config's 160K
  CHECK(q4.j["serves"][0]["sequences"] > 0);
  // A bf16 cache: half the bytes a position, about twice the positions.
  const PlanRun q4_bf16 = plan_cli(pool24, "--gpu-only --weights q4_k --kv-dtype bf16");
  REQUIRE(q4_bf16.rc == 0);
  check_kv_pool(q4_bf16.j, config, 2);
  CHECK(q4_bf16.j["kv_bytes_per_token"] == 70272);
  CHECK(q4.j["kv_tokens"].get<int64_t>() < q4_bf16.j["kv_tokens"].get<int64_t>() / 2 + 4096);
  // A longer reserve is part of the pool, not on top of it.
  const PlanRun long_ctx = plan_cli(pool24, "--gpu-only --weights q4_k --context 32768 --concurrency 4");
  REQUIRE(long_ctx.rc == 0);
  check_kv_pool(long_ctx.j, config, 4);
  CHECK(long_ctx.j["kv_tokens"].get<int64_t>() - long_ctx.j["kv_free_tokens"].get<int64_t>() == 4 * 32768);
  CHECK(long_ctx.j["serves"][1]["sequences"] >= 4);

  // FP8 with experts in host memory: the GPUs are filled with experts, little is left for KV.
  const PlanRun spilled = plan_cli(pool24, "--weights fp8");
  REQUIRE(spilled.rc == 0);
  check_kv_pool(spilled.j, config, 4);
  CHECK(spilled.j["kv_tokens"].get<int64_t>() < q4.j["kv_tokens"].get<int64_t>());

  // 96 GPUs of 80 GiB: ranks with no layers (the embedding's, the head's, the idle ones) keep no KV.
  const PlanRun big = plan_cli(nodes_like(12, {80, 80, 80, 80, 80, 80, 80, 80}, 512), "--gpu-only --weights fp8");
  REQUIRE(big.rc == 0);
  check_kv_pool(big.j, config, 4);
  CHECK(big.j["ranks"][0]["layers"].empty());

  // The text form: the per-rank table, the cluster's tokens and the serves line.
  TempDir tmp;
  write_file(tmp.path / "c.json", pool24.dump());
  const CliRun text = shoal_cli("plan --model '" + kConfig671b.string() + "' --cluster '" +
                                (tmp.path / "c.json").string() + "' --gpu-only --weights q4_k");
  REQUIRE(text.rc == 0);
  CHECK_THAT(text.out, Contains("KV cache: 4096 positions x 1 sequence(s), f32 latent") &&
                           Contains("KV cache pool (f32, blocks of 64 positions") &&
                           Contains("KV tokens: " + std::to_string(q4.j["kv_tokens"].get<int64_t>()) + " for the cluster") &&
                           Contains("140.54 KB a position over all 61 layers") && Contains(serves_line(q4.j)));
}
