// The placement plan (cluster/plan.h): unit bytes against sums over the safetensors headers
// (tensor names classified here, not through the tensor table), the JSON form and every
// validation error, and the default planner against brute-force optima, whole expert groups,
// the topk_group bound on ranks per token (by enumeration), budget proportions and refusals.
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "cluster/plan.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/tensor_names.h"

using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;
using nlohmann::json;
using namespace shoal;
using namespace shoal::cluster;
namespace fs = std::filesystem;

namespace {

const fs::path kFixtures = SHOAL_FIXTURES;
const std::string kBf16 = "tiny-v3-bf16";
const std::string kFp8 = "tiny-v3-fp8";
const fs::path kConfig671b = kFixtures / "configs" / "deepseek-v3-671b" / "config.json";

// ---- helpers --------------------------------------------------------------------------------

ModelConfig config_of(const fs::path& path) {
  auto c = load_config(path);
  REQUIRE(c.ok());
  return *c;
}

UnitBytes fixture_unit_bytes(const std::string& name) {
  auto ck = Checkpoint::open(kFixtures / name);
  REQUIRE(ck.ok());
  auto b = unit_bytes(*ck.value());
  INFO(b.status().to_string());
  REQUIRE(b.ok());
  return *b;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  REQUIRE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Tensor name -> stored bytes, read straight from the safetensors headers of a folder.
std::map<std::string, int64_t> header_sizes(const fs::path& dir) {
  std::map<std::string, int64_t> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".safetensors") continue;
    const std::string bytes = slurp(entry.path());
    REQUIRE(bytes.size() >= 8);
    uint64_t len = 0;
    std::memcpy(&len, bytes.data(), 8);
    const json header = json::parse(bytes.substr(8, len));
    for (const auto& [name, t] : header.items()) {
      if (name == "__metadata__") continue;
      out[name] = t.at("data_offsets")[1].get<int64_t>() - t.at("data_offsets")[0].get<int64_t>();
    }
  }
  REQUIRE(!out.empty());
  return out;
}

// Unit bytes from the tensor names alone, as Hugging Face spells them; bytes of tensors of the
// MTP layers (index >= n_layers) go to `mtp`.
UnitBytes classify_by_name(const ModelConfig& c, const std::map<std::string, int64_t>& sizes, int64_t& mtp) {
  UnitBytes b;
  b.attn.assign(size_t(c.n_layers), 0);
  b.experts.resize(size_t(c.n_layers));
  for (int64_t i = 0; i < c.n_layers; ++i)
    if (i >= c.n_dense_layers) b.experts[size_t(i)].assign(size_t(c.n_routed_experts), 0);
  static const std::regex layer_re(R"(^model\.layers\.(\d+)\.(.+)$)");
  static const std::regex expert_re(R"(^mlp\.experts\.(\d+)\.)");
  mtp = 0;
  for (const auto& [name, n] : sizes) {
    std::smatch m, e;
    if (name == "model.embed_tokens.weight") {
      b.embed += n;
    } else if (name == "model.norm.weight" || name == "lm_head.weight") {
      b.head += n;
    } else if (std::regex_match(name, m, layer_re)) {
      const int64_t i = std::stoll(m[1].str());
      const std::string rest = m[2].str();
      if (i >= c.n_layers) {
        mtp += n;
      } else if (std::regex_search(rest, e, expert_re)) {
        b.experts[size_t(i)].at(size_t(std::stoll(e[1].str()))) += n;
      } else {
        b.attn[size_t(i)] += n;
      }
    } else {
      FAIL("unexpected tensor " << name);
    }
  }
  return b;
}

int64_t total(const UnitBytes& b) {
  int64_t n = b.embed + b.head;
  for (size_t i = 0; i < b.attn.size(); ++i) {
    n += b.attn[i];
    for (int64_t e : b.experts[i]) n += e;
  }
  return n;
}

int64_t layer_total(const UnitBytes& b, size_t i) {
  return b.attn[i] + std::accumulate(b.experts[i].begin(), b.experts[i].end(), int64_t(0));
}

std::vector<int> iota_ranks(int n) {
  std::vector<int> r(static_cast<size_t>(n));
  std::iota(r.begin(), r.end(), 0);
  return r;
}

Plan plan_ok(const ModelConfig& c, const UnitBytes& b, int world, const PlannerOptions& o) {
  auto p = default_plan(c, b, world, o);
  INFO(p.status().to_string());
  REQUIRE(p.ok());
  return *p;
}

// Shape and range checks every plan must pass; every unit has exactly one rank from `ranks`.
void check_covers(const ModelConfig& c, const Plan& p, int world, const std::vector<int>& ranks) {
  const std::set<int> allowed(ranks.begin(), ranks.end());
  REQUIRE(p.world_size == world);
  CHECK(allowed.count(p.embed));
  CHECK(allowed.count(p.head));
  REQUIRE(int64_t(p.attn.size()) == c.n_layers);
  REQUIRE(int64_t(p.experts.size()) == c.n_layers);
  for (int64_t i = 0; i < c.n_layers; ++i) {
    CHECK(allowed.count(p.attn[size_t(i)]));
    if (!c.is_moe_layer(i)) {
      CHECK(p.experts[size_t(i)].empty());
      continue;
    }
    REQUIRE(int64_t(p.experts[size_t(i)].size()) == c.n_routed_experts);
    for (int r : p.experts[size_t(i)]) CHECK(allowed.count(r));
  }
}

// Attention blocks in pipeline order: the position in `ranks` never decreases over the layers,
// embed on the first rank, head on the last. Returns each position's layer count.
std::vector<int64_t> check_contiguous(const Plan& p, const std::vector<int>& ranks) {
  std::map<int, size_t> pos;
  for (size_t k = 0; k < ranks.size(); ++k) pos[ranks[k]] = k;
  CHECK(p.embed == ranks.front());
  CHECK(p.head == ranks.back());
  std::vector<int64_t> count(ranks.size(), 0);
  for (size_t i = 0; i < p.attn.size(); ++i) {
    ++count[pos.at(p.attn[i])];
    if (i > 0) CHECK(pos.at(p.attn[i - 1]) <= pos.at(p.attn[i]));
  }
  return count;
}

// Every split of L layers into k consecutive ranges (ends[r] exclusive); nonempty: no empty range.
void for_each_split(int64_t L, size_t k, bool nonempty, const std::function<void(const std::vector<int64_t>&)>& f) {
  std::vector<int64_t> ends(k);
  std::function<void(size_t, int64_t)> rec = [&](size_t r, int64_t start) {
    if (r == k - 1) {
      if (nonempty && start >= L) return;
      ends[r] = L;
      f(ends);
      return;
    }
    for (int64_t e = start + (nonempty ? 1 : 0); e <= L; ++e) {
      ends[r] = e;
      rec(r + 1, e);
    }
  };
  rec(0, 0);
}

// Pipeline loads of a split: embed on position 0, head on the last, whole layers.
std::vector<int64_t> split_loads(const UnitBytes& b, const std::vector<int64_t>& ends) {
  std::vector<int64_t> load(ends.size(), 0);
  load.front() += b.embed;
  load.back() += b.head;
  int64_t i = 0;
  for (size_t r = 0; r < ends.size(); ++r)
    for (; i < ends[r]; ++i) load[r] += layer_total(b, size_t(i));
  return load;
}

double max_ratio(const std::vector<int64_t>& load, const std::vector<double>& budget) {
  double m = 0;
  for (size_t r = 0; r < load.size(); ++r) m = std::max(m, double(load[r]) / budget[r]);
  return m;
}

// As the planner's messages print sizes (decimal units).
std::string readable(int64_t bytes) {
  char buf[64];
  const double b = double(bytes);
  if (b >= 1e9)
    std::snprintf(buf, sizeof buf, "%.2f GB", b / 1e9);
  else if (b >= 1e6)
    std::snprintf(buf, sizeof buf, "%.2f MB", b / 1e6);
  else if (b >= 1e3)
    std::snprintf(buf, sizeof buf, "%.2f KB", b / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%lld bytes", (long long)bytes);
  return buf;
}

// Expert groups of a layer: group g holds experts [g*E/G, (g+1)*E/G).
int64_t group_of(const ModelConfig& c, int64_t expert) {
  return expert / (c.n_routed_experts / c.n_expert_groups);
}

// Expert scatter: each rank's experts of a layer are whole groups; any choice of at most
// topk_group groups (what group-limited routing lets one token reach) touches at most
// topk_group ranks, checked over every such choice; expert_ranks/expert_filter agree.
void check_scatter(const ModelConfig& c, const Plan& p, const std::vector<int>& ranks) {
  const int64_t G = c.n_expert_groups, E = c.n_routed_experts;
  for (int64_t i = 0; i < c.n_layers; ++i) {
    if (!c.is_moe_layer(i)) continue;
    const auto& owners = p.experts[size_t(i)];
    std::vector<std::set<int>> group_ranks(static_cast<size_t>(G));
    for (int64_t e = 0; e < E; ++e) group_ranks[size_t(group_of(c, e))].insert(owners[size_t(e)]);
    for (int64_t g = 0; g < G; ++g) CHECK(group_ranks[size_t(g)].size() == 1);
    int64_t choices = 0;
    for (uint32_t mask = 1; mask < (1u << G); ++mask) {
      if (__builtin_popcount(mask) > c.n_limited_groups) continue;
      std::set<int> touched;
      for (int64_t e = 0; e < E; ++e)
        if (mask >> group_of(c, e) & 1) touched.insert(owners[size_t(e)]);
      CHECK(int64_t(touched.size()) <= c.n_limited_groups);
      ++choices;
    }
    CHECK(choices > 0);
    const std::set<int> all(owners.begin(), owners.end());
    CHECK(p.expert_ranks(i) == std::vector<int>(all.begin(), all.end()));
    for (int r : ranks) {
      const std::vector<bool> f = p.expert_filter(r, i);
      REQUIRE(int64_t(f.size()) == E);
      for (int64_t e = 0; e < E; ++e) CHECK(f[size_t(e)] == (owners[size_t(e)] == r));
    }
  }
}

// Expert bytes each rank holds over all layers.
std::map<int, int64_t> expert_bytes_by_rank(const Plan& p, const UnitBytes& b) {
  std::map<int, int64_t> out;
  for (size_t i = 0; i < p.experts.size(); ++i)
    for (size_t e = 0; e < p.experts[i].size(); ++e) out[p.experts[i][e]] += b.experts[i][e];
  return out;
}

}  // namespace

// ---- unit bytes -------------------------------------------------------------------------------

TEST_CASE("unit_bytes of the fixtures: every non-MTP tensor in its unit, scales included") {
  for (const std::string& name : {kBf16, kFp8}) {
    INFO(name);
    const ModelConfig c = config_of(kFixtures / name);
    const UnitBytes b = fixture_unit_bytes(name);
    const auto sizes = header_sizes(kFixtures / name);
    int64_t mtp = 0;
    const UnitBytes want = classify_by_name(c, sizes, mtp);
    CHECK(b == want);
    int64_t all = 0;
    for (const auto& [n, s] : sizes) all += s;
    CHECK(mtp > 0);  // the fixtures carry an MTP layer, which belongs to no unit
    CHECK(total(b) == all - mtp);
    CHECK(b.experts[0].empty());  // first_k_dense_replace = 1
    for (size_t i = 1; i < b.experts.size(); ++i) {
      REQUIRE(int64_t(b.experts[i].size()) == c.n_routed_experts);
      for (int64_t e : b.experts[i]) CHECK(e > 0);
    }
    // The config alone gives the same numbers (the dtypes synth writes, fp8 as the config says).
    CHECK(unit_bytes_for(c, c.fp8) == b);
  }
  // fp8: the scales are in (weights are 1 byte, scales F32): one routed expert of the fp8
  // fixture is 3 matrices of 160x256 e4m3 plus 3 scales of [2, 2] floats.
  const UnitBytes fp8 = fixture_unit_bytes(kFp8);
  CHECK(fp8.experts[1][0] == 3 * (160 * 256 + 2 * 2 * 4));
  const UnitBytes bf16 = fixture_unit_bytes(kBf16);
  CHECK(bf16.experts[1][0] == 3 * 32 * 64 * 2);
  CHECK(bf16.embed == 1024 * 64 * 2);
  CHECK(bf16.head == 64 * 2 + 1024 * 64 * 2);
}

TEST_CASE("unit_bytes_for the 671B config: the release's bytes") {
  const ModelConfig c = config_of(kConfig671b);
  const UnitBytes b = unit_bytes_for(c, /*fp8=*/true);
  REQUIRE(b.attn.size() == 61);
  // One routed expert: gate/up [2048, 7168] and down [7168, 2048] in e4m3 plus [16, 56] F32 scales.
  CHECK(b.experts[3][255] == 3 * (2048 * 7168 + 16 * 56 * 4));
  CHECK(b.experts[2].empty());
  CHECK(b.embed == int64_t(129280) * 7168 * 2);
  CHECK(b.head == 7168 * 2 + int64_t(129280) * 7168 * 2);
  // With the MTP layer (sized here by its own rule) it is exactly the published shards' size.
  int64_t mtp = 0;
  for (const TensorSpec& t : mtp_tensors(c, 0)) {
    if (t.quantized)
      mtp += t.numel() + ((t.shape[0] + 127) / 128) * ((t.shape[1] + 127) / 128) * 4;
    else
      mtp += t.numel() * (t.name.ends_with("e_score_correction_bias") ? 4 : 2);
  }
  CHECK(total(b) + mtp == int64_t(688574839360));
  // bf16: every tensor 2 bytes except the F32 router bias, no scales.
  const UnitBytes h = unit_bytes_for(c, /*fp8=*/false);
  CHECK(h.experts[3][0] == 3 * 2048 * 7168 * 2);
  CHECK(h.attn[3] > b.attn[3]);
}

TEST_CASE("unit_bytes: tied embeddings leave the head with the final norm only") {
  ModelConfig c = config_of(kFixtures / kBf16);
  c.tie_word_embeddings = true;
  const UnitBytes b = unit_bytes_for(c, false);
  CHECK(b.head == c.dim * 2);
  CHECK(b.embed == c.vocab_size * c.dim * 2);
}

TEST_CASE("unit_bytes: a checkpoint without weights or missing a tensor is an error") {
  const fs::path dir = fs::temp_directory_path() / ("shoal-test-plan-" + std::to_string(std::random_device{}()));
  fs::create_directories(dir);
  fs::copy_file(kFixtures / kBf16 / "config.json", dir / "config.json");
  {
    auto ck = Checkpoint::open(dir);
    REQUIRE(ck.ok());
    auto b = unit_bytes(*ck.value());
    REQUIRE(!b.ok());
    CHECK_THAT(b.status().message(), Contains(dir.string()));
  }
  // An index naming one tensor: the others are missing.
  {
    std::ofstream(dir / "model.safetensors.index.json")
        << R"({"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}})";
    fs::copy_file(kFixtures / kBf16 / "model-00001-of-00002.safetensors", dir / "model-00001-of-00002.safetensors");
    auto ck = Checkpoint::open(dir);
    REQUIRE(ck.ok());
    auto b = unit_bytes(*ck.value());
    // The shard holds many tensors, but not all of them: the first missing one is named.
    REQUIRE(!b.ok());
    CHECK(b.status().code() == Code::kNotFound);
    CHECK_THAT(b.status().message(), Contains("is not in the checkpoint"));
  }
  fs::remove_all(dir);
}

// ---- Plan accessors ---------------------------------------------------------------------------

TEST_CASE("Plan accessors") {
  Plan p;
  p.world_size = 4;
  p.embed = 0;
  p.head = 2;
  p.attn = {0, 0, 2};
  p.experts = {{}, {0, 2, 2, 0}, {2, 2, 2, 2}};
  CHECK(p.hosts_anything(0));
  CHECK(!p.hosts_anything(1));
  CHECK(p.hosts_anything(2));
  CHECK(!p.hosts_anything(3));
  CHECK(p.attn_layers(0) == std::vector<int64_t>{0, 1});
  CHECK(p.attn_layers(2) == std::vector<int64_t>{2});
  CHECK(p.attn_layers(1).empty());
  CHECK(p.expert_filter(0, 0).empty());
  CHECK(p.expert_filter(0, 1) == std::vector<bool>{true, false, false, true});
  CHECK(p.expert_filter(1, 1) == std::vector<bool>{false, false, false, false});
  CHECK(p.expert_ranks(1) == std::vector<int>{0, 2});
  CHECK(p.expert_ranks(0).empty());
  p.experts[2] = {3, 2, 2, 2};
  CHECK(p.hosts_anything(3));
  UnitBytes b;
  b.embed = 1;
  b.head = 10;
  b.attn = {100, 1000, 10000};
  b.experts = {{}, {1 << 16, 1 << 17, 1 << 18, 1 << 19}, {1 << 20, 1 << 21, 1 << 22, 1 << 23}};
  CHECK(rank_weight_bytes(p, b, 0) == 1 + 100 + 1000 + (1 << 16) + (1 << 19));
  CHECK(rank_weight_bytes(p, b, 1) == 0);
  CHECK(rank_weight_bytes(p, b, 2) == 10 + 10000 + (1 << 17) + (1 << 18) + (1 << 21) + (1 << 22) + (1 << 23));
  CHECK(rank_weight_bytes(p, b, 3) == (1 << 20));
}

// ---- JSON -------------------------------------------------------------------------------------

TEST_CASE("plan JSON: the schema, round trips, and read_plan_file") {
  const ModelConfig c = config_of(kFixtures / kBf16);  // 4 layers, layer 0 dense, 8 experts
  // Written by hand: experts as one rank, omitted (= attn), and per expert.
  const json j = json::parse(R"({
    "version": 1, "world_size": 3, "embed": 0, "head": 2,
    "layers": [
      {"attn": 0},
      {"attn": 0, "experts": 1},
      {"attn": 1},
      {"attn": 2, "experts": [0, 0, 1, 1, 2, 2, 0, 1]}
    ]})");
  auto p = plan_from_json(j, c, 3);
  INFO(p.status().to_string());
  REQUIRE(p.ok());
  CHECK(p->world_size == 3);
  CHECK(p->embed == 0);
  CHECK(p->head == 2);
  CHECK(p->attn == std::vector<int>{0, 0, 1, 2});
  CHECK(p->experts[0].empty());
  CHECK(p->experts[1] == std::vector<int>(8, 1));
  CHECK(p->experts[2] == std::vector<int>(8, 1));
  CHECK(p->experts[3] == std::vector<int>{0, 0, 1, 1, 2, 2, 0, 1});
  // plan_to_json writes the short forms back.
  const json back = plan_to_json(*p);
  CHECK(back == j);

  // Round trips of planner output, in memory and through a file.
  const UnitBytes b = fixture_unit_bytes(kBf16);
  const fs::path file = fs::temp_directory_path() / ("shoal-test-plan-" + std::to_string(std::random_device{}()) + ".json");
  for (int world : {1, 2, 3, 5})
    for (bool scatter : {false, true}) {
      INFO("world " << world << " scatter " << scatter);
      PlannerOptions o;
      o.expert_scatter = scatter;
      const Plan q = plan_ok(c, b, world, o);
      auto again = plan_from_json(plan_to_json(q), c, world);
      REQUIRE(again.ok());
      CHECK(*again == q);
      std::ofstream(file) << plan_to_json(q).dump(2);
      auto read = read_plan_file(file, c, world);
      INFO(read.status().to_string());
      REQUIRE(read.ok());
      CHECK(*read == q);
    }
  fs::remove(file);
}

TEST_CASE("plan JSON: every malformed field is an error naming it") {
  const ModelConfig c = config_of(kFixtures / kBf16);
  const json good = json::parse(R"({
    "version": 1, "world_size": 3, "embed": 0, "head": 2,
    "layers": [{"attn": 0}, {"attn": 0, "experts": 1}, {"attn": 1}, {"attn": 2, "experts": [0, 0, 1, 1, 2, 2, 0, 1]}]})");
  REQUIRE(plan_from_json(good, c, 3).ok());
  struct Case {
    std::string what;
    std::function<void(json&)> edit;
    std::string message;  // the whole message must contain this
  };
  const std::vector<Case> cases = {
      {"not an object", [](json& j) { j = json::array(); }, "plan: the plan is an array, not a JSON object"},
      {"unknown field", [](json& j) { j["comment"] = "x"; }, "plan: comment is not a field of a plan"},
      {"version missing", [](json& j) { j.erase("version"); }, "plan: version is missing"},
      {"version 2", [](json& j) { j["version"] = 2; }, "plan: version = 2 is not supported"},
      {"version string", [](json& j) { j["version"] = "1"; }, "plan: version = \"1\" is a string, not an integer"},
      {"world_size missing", [](json& j) { j.erase("world_size"); }, "plan: world_size is missing"},
      {"world_size 4", [](json& j) { j["world_size"] = 4; }, "plan: world_size = 4, but the world has 3 ranks"},
      {"world_size float", [](json& j) { j["world_size"] = 3.0; }, "plan: world_size = 3.0 is a number, not an integer"},
      {"embed missing", [](json& j) { j.erase("embed"); }, "plan: embed is missing"},
      {"embed 3", [](json& j) { j["embed"] = 3; }, "plan: embed = 3 is not a rank of a 3-rank world"},
      {"head -1", [](json& j) { j["head"] = -1; }, "plan: head = -1 is not a rank of a 3-rank world"},
      {"head string", [](json& j) { j["head"] = "0"; }, "plan: head = \"0\" is a string, not a rank (an integer)"},
      {"head huge", [](json& j) { j["head"] = UINT64_MAX; },
       "plan: head = 18446744073709551615 is not a rank of a 3-rank world"},
      {"head missing", [](json& j) { j.erase("head"); }, "plan: head is missing"},
      {"layers missing", [](json& j) { j.erase("layers"); }, "plan: layers is missing"},
      {"layers object", [](json& j) { j["layers"] = json::object(); }, "plan: layers is an object, not an array"},
      {"layers too few", [](json& j) { j["layers"].erase(3); }, "plan: layers has 3 entries, but the model has 4 layers"},
      {"layer not object", [](json& j) { j["layers"][2] = json::array({1}); }, "plan: layers[2] is an array, not an object"},
      {"layer unknown field", [](json& j) { j["layers"][1]["expert"] = 1; },
       "plan: layers[1].expert is not a field of layers[1] (fields: attn, experts)"},
      {"attn missing", [](json& j) { j["layers"][2].erase("attn"); }, "plan: layers[2].attn is missing"},
      {"attn null", [](json& j) { j["layers"][2]["attn"] = nullptr; }, "plan: layers[2].attn = null is a null, not a rank"},
      {"attn float", [](json& j) { j["layers"][2]["attn"] = 1.5; }, "plan: layers[2].attn = 1.5 is a number, not a rank"},
      {"attn bool", [](json& j) { j["layers"][2]["attn"] = true; }, "plan: layers[2].attn = true is a boolean, not a rank"},
      {"attn out of range", [](json& j) { j["layers"][0]["attn"] = 3; }, "plan: layers[0].attn = 3 is not a rank of a 3-rank world"},
      {"expert out of range", [](json& j) { j["layers"][3]["experts"][5] = 7; },
       "plan: layers[3].experts[5] = 7 is not a rank of a 3-rank world"},
      {"expert wrong type", [](json& j) { j["layers"][3]["experts"][0] = "a"; },
       "plan: layers[3].experts[0] = \"a\" is a string, not a rank"},
      {"experts short", [](json& j) { j["layers"][3]["experts"].erase(7); },
       "plan: layers[3].experts has 7 entries, but layer 3 has 8 routed experts"},
      {"experts long", [](json& j) { j["layers"][3]["experts"].push_back(0); },
       "plan: layers[3].experts has 9 entries, but layer 3 has 8 routed experts"},
      {"experts one rank out of range", [](json& j) { j["layers"][1]["experts"] = 5; },
       "plan: layers[1].experts = 5 is not a rank of a 3-rank world"},
      {"experts string", [](json& j) { j["layers"][1]["experts"] = "all"; },
       "plan: layers[1].experts = \"all\" is a string, not a rank or an array of 8 ranks"},
      {"experts object", [](json& j) { j["layers"][1]["experts"] = json::object(); },
       "plan: layers[1].experts = {} is an object, not a rank or an array of 8 ranks"},
      {"experts on a dense layer", [](json& j) { j["layers"][0]["experts"] = 0; },
       "plan: layers[0].experts is given, but layer 0 is dense"},
  };
  for (const Case& k : cases) {
    INFO(k.what);
    json j = good;
    k.edit(j);
    auto p = plan_from_json(j, c, 3);
    REQUIRE(!p.ok());
    CHECK(p.status().code() == Code::kInvalidArgument);
    CHECK_THAT(p.status().message(), Contains(k.message));
  }
}

TEST_CASE("read_plan_file: errors name the file, parse errors the byte") {
  const ModelConfig c = config_of(kFixtures / kBf16);
  const fs::path dir = fs::temp_directory_path() / ("shoal-test-plan-" + std::to_string(std::random_device{}()));
  fs::create_directories(dir);
  const fs::path file = dir / "plan.json";

  auto missing = read_plan_file(dir / "none.json", c, 1);
  REQUIRE(!missing.ok());
  CHECK(missing.status().code() == Code::kNotFound);
  CHECK_THAT(missing.status().message(), StartsWith((dir / "none.json").string()));

  auto folder = read_plan_file(dir, c, 1);
  REQUIRE(!folder.ok());
  CHECK_THAT(folder.status().message(), StartsWith(dir.string()));

  std::ofstream(file) << R"({"version": 1, "world_size": 1,, })";
  auto bad = read_plan_file(file, c, 1);
  REQUIRE(!bad.ok());
  CHECK(bad.status().code() == Code::kInvalidArgument);
  CHECK_THAT(bad.status().message(), StartsWith(file.string() + ": not valid JSON (at byte 32)"));

  std::ofstream(file, std::ios::trunc) << R"({"version": 1, "world_size": 2, "embed": 0, "head": 0, "layers": []})";
  auto wrong = read_plan_file(file, c, 1);
  REQUIRE(!wrong.ok());
  CHECK(wrong.status().message() == file.string() + ": plan: world_size = 2, but the world has 1 ranks");
  fs::remove_all(dir);
}

// ---- the default planner: pipeline ------------------------------------------------------------

TEST_CASE("default_plan pipeline: covers every unit, contiguous, the best split, a layer per rank") {
  for (const std::string& name : {kBf16, kFp8}) {
    const ModelConfig c = config_of(kFixtures / name);
    const UnitBytes b = fixture_unit_bytes(name);
    for (int world : {1, 2, 3, 5}) {
      INFO(name << " world " << world);
      const Plan p = plan_ok(c, b, world, {});
      const std::vector<int> ranks = iota_ranks(world);
      check_covers(c, p, world, ranks);
      const std::vector<int64_t> count = check_contiguous(p, ranks);
      // Pure pipeline: each layer's experts live with its attention block.
      for (int64_t i = 0; i < c.n_layers; ++i)
        for (int r : p.experts[size_t(i)]) CHECK(r == p.attn[size_t(i)]);
      if (c.n_layers >= world)
        for (int64_t n : count) CHECK(n >= 1);
      int64_t sum = 0;
      for (int r = 0; r < world; ++r) sum += rank_weight_bytes(p, b, r);
      CHECK(sum == total(b));
      // The largest rank is as small as any contiguous split can make it (brute force).
      std::vector<int64_t> ends(static_cast<size_t>(world));
      for (int r = 0, i = 0; r < world; ++r) ends[size_t(r)] = i += int(count[size_t(r)]);
      const std::vector<double> equal(size_t(world), 1.0);
      std::vector<int64_t> loads;
      for (int r = 0; r < world; ++r) loads.push_back(rank_weight_bytes(p, b, r));
      CHECK(loads == split_loads(b, ends));
      double best = 1e300;
      for_each_split(c.n_layers, size_t(world), c.n_layers >= world,
                     [&](const std::vector<int64_t>& e) { best = std::min(best, max_ratio(split_loads(b, e), equal)); });
      CHECK(max_ratio(loads, equal) == best);
    }
  }
}

TEST_CASE("default_plan pipeline over chosen ranks in a chosen order") {
  const ModelConfig c = config_of(kFixtures / kBf16);
  const UnitBytes b = fixture_unit_bytes(kBf16);
  PlannerOptions o;
  o.ranks = {3, 1};
  const Plan p = plan_ok(c, b, 4, o);
  check_covers(c, p, 4, o.ranks);
  const std::vector<int64_t> count = check_contiguous(p, o.ranks);
  CHECK(count == std::vector<int64_t>{2, 2});  // first the layers on 3, then those on 1
  CHECK(!p.hosts_anything(0));
  CHECK(!p.hosts_anything(2));
  CHECK(rank_weight_bytes(p, b, 3) + rank_weight_bytes(p, b, 1) == total(b));
}

TEST_CASE("default_plan pipeline of the 671B config: balanced within a layer") {
  const ModelConfig c = config_of(kConfig671b);
  const UnitBytes b = unit_bytes_for(c, true);
  int64_t max_layer = 0;
  for (size_t i = 0; i < b.attn.size(); ++i) max_layer = std::max(max_layer, layer_total(b, i));
  for (int world : {2, 3, 8, 16, 61, 64}) {
    INFO("world " << world);
    const Plan p = plan_ok(c, b, world, {});
    const std::vector<int> ranks = iota_ranks(world);
    check_covers(c, p, world, ranks);
    const std::vector<int64_t> count = check_contiguous(p, ranks);
    int64_t with_layers = 0;
    for (int64_t n : count) with_layers += n > 0;
    CHECK(with_layers == std::min<int64_t>(world, 61));
    if (world <= 61) {
      const double ideal = double(total(b)) / world;
      for (int r = 0; r < world; ++r) {
        const double load = double(rank_weight_bytes(p, b, r));
        CHECK(load <= ideal + double(max_layer));
        CHECK(load >= ideal - double(max_layer));
      }
    }
  }
}

TEST_CASE("default_plan pipeline: budgets 1:3 and 1:2:3 give bytes in proportion, within a layer") {
  struct Model {
    ModelConfig c;
    UnitBytes b;
  };
  const ModelConfig c671 = config_of(kConfig671b);
  const std::vector<Model> models = {{config_of(kFixtures / kBf16), fixture_unit_bytes(kBf16)},
                                     {config_of(kFixtures / kFp8), fixture_unit_bytes(kFp8)},
                                     {c671, unit_bytes_for(c671, true)}};
  for (const Model& m : models) {
    int64_t max_layer = 0;
    for (size_t i = 0; i < m.b.attn.size(); ++i) max_layer = std::max(max_layer, layer_total(m.b, i));
    for (const std::vector<int64_t>& shares : {std::vector<int64_t>{1, 3}, {3, 1}, {1, 2, 3}}) {
      const int world = int(shares.size());
      const int64_t scale = 2 * total(m.b);  // budgets comfortably above the model
      PlannerOptions o;
      for (int64_t s : shares) o.budget_bytes.push_back(s * scale);
      const Plan p = plan_ok(m.c, m.b, world, o);
      check_covers(m.c, p, world, iota_ranks(world));
      check_contiguous(p, iota_ranks(world));
      const int64_t share_sum = std::accumulate(shares.begin(), shares.end(), int64_t(0));
      for (int r = 0; r < world; ++r) {
        INFO("layers " << m.c.n_layers << " rank " << r << " of shares " << shares.size());
        const double ideal = double(total(m.b)) * double(shares[size_t(r)]) / double(share_sum);
        const double load = double(rank_weight_bytes(p, m.b, r));
        CHECK(std::abs(load - ideal) <= double(max_layer));
      }
      // And no contiguous split has a smaller largest load/budget.
      std::vector<double> budget(shares.begin(), shares.end());
      std::vector<int64_t> loads;
      for (int r = 0; r < world; ++r) loads.push_back(rank_weight_bytes(p, m.b, r));
      if (m.c.n_layers <= 8) {
        double best = 1e300;
        for_each_split(m.c.n_layers, size_t(world), true,
                       [&](const std::vector<int64_t>& e) { best = std::min(best, max_ratio(split_loads(m.b, e), budget)); });
        CHECK(max_ratio(loads, budget) == Approx(best).epsilon(1e-12));
      }
    }
  }
}

TEST_CASE("default_plan: budgets too small are refused with every rank's numbers") {
  const ModelConfig c = config_of(kFixtures / kBf16);
  const UnitBytes b = fixture_unit_bytes(kBf16);
  // The split the planner makes for budgets 1:1 (it depends only on the proportions).
  PlannerOptions big;
  big.budget_bytes = {1000 * total(b), 1000 * total(b)};
  const Plan p = plan_ok(c, b, 2, big);
  const int64_t need0 = rank_weight_bytes(p, b, 0), need1 = rank_weight_bytes(p, b, 1);

  // Exactly enough fits, with that split.
  PlannerOptions exact;
  exact.budget_bytes = {std::max(need0, need1), std::max(need0, need1)};
  CHECK(plan_ok(c, b, 2, exact) == p);

  // One byte less for the larger rank: no contiguous split fits.
  PlannerOptions small;
  const int64_t budget = std::max(need0, need1) - 1;
  small.budget_bytes = {budget, budget};
  auto refused = default_plan(c, b, 2, small);
  REQUIRE(!refused.ok());
  CHECK(refused.status().code() == Code::kResourceExhausted);
  const std::string& m = refused.status().message();
  CHECK_THAT(m, Contains("rank 0 needs " + readable(need0) + " of its " + readable(budget)));
  CHECK_THAT(m, Contains("rank 1 needs " + readable(need1) + " of its " + readable(budget)));
  CHECK_THAT(m, Contains("over by"));
  CHECK_THAT(m, Contains(readable(total(b)) + " of weights"));

  // The 671B model on 8 machines of 64 GB: refused, in GB.
  const ModelConfig c671 = config_of(kConfig671b);
  const UnitBytes b671 = unit_bytes_for(c671, true);
  PlannerOptions gb;
  gb.budget_bytes.assign(8, int64_t(64e9));
  for (bool scatter : {false, true}) {
    gb.expert_scatter = scatter;
    auto r = default_plan(c671, b671, 8, gb);
    REQUIRE(!r.ok());
    CHECK(r.status().code() == Code::kResourceExhausted);
    for (int k = 0; k < 8; ++k) CHECK_THAT(r.status().message(), Contains("rank " + std::to_string(k) + " needs "));
    CHECK_THAT(r.status().message(), Contains("of its 64.00 GB (over by"));
    CHECK_THAT(r.status().message(), Contains("512.00 GB budgeted in all"));
  }
  // ... and fits on 8 of 96 GB.
  gb.budget_bytes.assign(8, int64_t(96e9));
  for (bool scatter : {false, true}) {
    gb.expert_scatter = scatter;
    const Plan q = plan_ok(c671, b671, 8, gb);
    for (int k = 0; k < 8; ++k) CHECK(rank_weight_bytes(q, b671, k) <= int64_t(96e9));
  }
}

TEST_CASE("default_plan: invalid options name the option") {
  const ModelConfig c = config_of(kFixtures / kBf16);
  const UnitBytes b = fixture_unit_bytes(kBf16);
  struct Case {
    PlannerOptions o;
    int world;
    std::string message;
  };
  std::vector<Case> cases;
  cases.push_back({{{0, 3}, {}, false}, 3, "plan: options.ranks[1] = 3 is not a rank of a 3-rank world"});
  cases.push_back({{{0, -1}, {}, false}, 3, "plan: options.ranks[1] = -1 is not a rank"});
  cases.push_back({{{1, 0, 1}, {}, false}, 3, "plan: options.ranks[2] = 1 is listed twice"});
  cases.push_back({{{}, {10, 10}, false}, 3, "plan: options.budget_bytes has 2 entries for 3 ranks"});
  cases.push_back({{{0, 1}, {10, 0}, false}, 3, "plan: options.budget_bytes[1] = 0 is not positive"});
  cases.push_back({{{0, 1}, {-5, 10}, true}, 3, "plan: options.budget_bytes[0] = -5 is not positive"});
  cases.push_back({{}, 0, "plan: world size 0 is not positive"});
  for (const Case& k : cases) {
    INFO(k.message);
    auto p = default_plan(c, b, k.world, k.o);
    REQUIRE(!p.ok());
    CHECK(p.status().code() == Code::kInvalidArgument);
    CHECK_THAT(p.status().message(), Contains(k.message));
  }
  // Unit bytes of another model.
  const UnitBytes other = fixture_unit_bytes(kFp8);
  UnitBytes fewer = b;
  fewer.attn.pop_back();
  fewer.experts.pop_back();
  auto p = default_plan(c, fewer, 2, {});
  REQUIRE(!p.ok());
  CHECK_THAT(p.status().message(), Contains("unit bytes are for 3 layers"));
  auto q = default_plan(c, other, 2, {});
  REQUIRE(!q.ok());
  CHECK_THAT(q.status().message(), Contains("unit bytes of layer 1 have 16 experts"));
}

// ---- the default planner: expert scatter ------------------------------------------------------

TEST_CASE("default_plan expert scatter: whole groups, at most topk_group ranks per token") {
  const ModelConfig c671 = config_of(kConfig671b);
  struct Model {
    std::string name;
    ModelConfig c;
    UnitBytes b;
  };
  const std::vector<Model> models = {{kBf16, config_of(kFixtures / kBf16), fixture_unit_bytes(kBf16)},
                                     {kFp8, config_of(kFixtures / kFp8), fixture_unit_bytes(kFp8)},
                                     {"671b", c671, unit_bytes_for(c671, true)}};
  for (const Model& m : models)
    for (int world : {1, 2, 3, 4, 5, 8, 16}) {
      INFO(m.name << " world " << world);
      PlannerOptions o;
      o.expert_scatter = true;
      const Plan p = plan_ok(m.c, m.b, world, o);
      const std::vector<int> ranks = iota_ranks(world);
      check_covers(m.c, p, world, ranks);
      check_contiguous(p, ranks);
      check_scatter(m.c, p, ranks);
      int64_t sum = 0;
      for (int r = 0; r < world; ++r) sum += rank_weight_bytes(p, m.b, r);
      CHECK(sum == total(m.b));
      // Groups per layer: with at least as many groups as ranks every rank gets some of each
      // layer; with fewer, the ranks holding them rotate so that over all MoE layers each rank
      // holds the floor or the ceiling of its share of group placements.
      const int64_t G = m.c.n_expert_groups;
      int64_t n_moe = 0;
      std::map<int, int64_t> groups_held;
      for (int64_t i = 0; i < m.c.n_layers; ++i) {
        if (!m.c.is_moe_layer(i)) continue;
        ++n_moe;
        std::map<int, int64_t> per_layer;
        for (int64_t g = 0; g < G; ++g) ++per_layer[p.experts[size_t(i)][size_t(g * (m.c.n_routed_experts / G))]];
        for (const auto& [r, n] : per_layer) groups_held[r] += n;
        if (G >= world) CHECK(int64_t(per_layer.size()) == world);
        if (G < world) CHECK(int64_t(per_layer.size()) == G);
      }
      for (int r = 0; r < world; ++r) {
        INFO("rank " << r << " holds " << groups_held[r] << " of " << n_moe * G);
        CHECK(groups_held[r] >= n_moe * G / world);
        CHECK(groups_held[r] <= (n_moe * G + world - 1) / world);
      }
    }
}

TEST_CASE("default_plan expert scatter of the 671B config: balanced, attention by what is left") {
  const ModelConfig c = config_of(kConfig671b);
  const UnitBytes b = unit_bytes_for(c, true);
  int64_t max_attn = 0;
  for (int64_t a : b.attn) max_attn = std::max(max_attn, a);
  const int64_t group = 32 * b.experts[3][0];  // 256 experts in 8 groups
  for (int world : {3, 4, 8, 12}) {
    INFO("world " << world);
    PlannerOptions o;
    o.expert_scatter = true;
    const Plan p = plan_ok(c, b, world, o);
    check_scatter(c, p, iota_ranks(world));
    const double ideal = double(total(b) - b.embed) / world;  // work per token, as the planner balances it
    for (int r = 0; r < world; ++r) {
      const double load = double(rank_weight_bytes(p, b, r) - (r == p.embed ? b.embed : 0));
      CHECK(load <= ideal + double(max_attn + group));
      CHECK(load >= ideal - double(max_attn + group));
    }
  }
  // Budgets 1:3 over 2 ranks: 2 and 6 groups per layer, totals within a layer of 1:3.
  PlannerOptions o;
  o.expert_scatter = true;
  o.budget_bytes = {int64_t(1000e9), int64_t(3000e9)};
  const Plan p = plan_ok(c, b, 2, o);
  check_scatter(c, p, {0, 1});
  const auto experts = expert_bytes_by_rank(p, b);
  CHECK(experts.at(1) == 3 * experts.at(0));
  const double ideal0 = double(total(b)) / 4;
  CHECK(std::abs(double(rank_weight_bytes(p, b, 0)) - ideal0) <= double(layer_total(b, 3)));
}

TEST_CASE("default_plan expert scatter: budgets in proportion, within a group") {
  for (const std::string& name : {kBf16, kFp8}) {
    const ModelConfig c = config_of(kFixtures / name);
    const UnitBytes b = fixture_unit_bytes(name);
    const int64_t group = (c.n_routed_experts / c.n_expert_groups) * b.experts[1][0];
    int64_t all_experts = 0;
    for (const auto& layer : b.experts)
      for (int64_t e : layer) all_experts += e;
    for (const std::vector<int64_t>& shares : {std::vector<int64_t>{1, 3}, {1, 2, 3}, {1, 1, 1, 5}, {2, 1, 1, 1, 1}}) {
      INFO(name << " shares of " << shares.size());
      const int world = int(shares.size());
      PlannerOptions o;
      o.expert_scatter = true;
      for (int64_t s : shares) o.budget_bytes.push_back(s * 10 * total(b));
      const Plan p = plan_ok(c, b, world, o);
      check_covers(c, p, world, iota_ranks(world));
      check_scatter(c, p, iota_ranks(world));
      const auto held = expert_bytes_by_rank(p, b);
      const int64_t share_sum = std::accumulate(shares.begin(), shares.end(), int64_t(0));
      for (int r = 0; r < world; ++r) {
        const double ideal = double(all_experts) * double(shares[size_t(r)]) / double(share_sum);
        const double got = held.count(r) ? double(held.at(r)) : 0.0;
        CHECK(std::abs(got - ideal) < double(group));
      }
    }
  }
}

TEST_CASE("default_plan expert scatter with one expert group spreads single experts") {
  ModelConfig c = config_of(kFixtures / kFp8);  // 16 experts
  c.n_expert_groups = 1;
  c.n_limited_groups = 1;
  const UnitBytes b = unit_bytes_for(c, true);
  PlannerOptions o;
  o.expert_scatter = true;
  for (int world : {3, 5, 16, 20}) {
    INFO("world " << world);
    const Plan p = plan_ok(c, b, world, o);
    check_covers(c, p, world, iota_ranks(world));
    for (int64_t i = 1; i < c.n_layers; ++i) {
      const auto& owners = p.experts[size_t(i)];
      // Contiguous runs in rank order, sizes within one of each other.
      std::map<int, int64_t> count;
      for (size_t e = 0; e < owners.size(); ++e) {
        ++count[owners[e]];
        if (e > 0) CHECK(owners[e - 1] <= owners[e]);
      }
      CHECK(int64_t(count.size()) == std::min<int64_t>(world, 16));
      int64_t lo = INT64_MAX, hi = 0;
      for (const auto& [r, n] : count) lo = std::min(lo, n), hi = std::max(hi, n);
      if (world <= 16) CHECK(hi - lo <= 1);
    }
  }
}
