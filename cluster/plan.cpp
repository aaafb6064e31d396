#include "cluster/plan.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>
#include <numeric>
#include <set>
#include <sstream>

#include "common/check.h"
#include "common/dtype.h"
#include "model/checkpoint.h"
#include "model/tensor_names.h"

namespace shoal::cluster {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr int64_t kPlanVersion = 1;
constexpr const char* kRouterBiasSuffix = "e_score_correction_bias";

// ---- unit bytes -------------------------------------------------------------------------------

UnitBytes zero_unit_bytes(const ModelConfig& c) {
  UnitBytes b;
  b.attn.assign(size_t(c.n_layers), 0);
  b.experts.resize(size_t(c.n_layers));
  for (int64_t i = 0; i < c.n_layers; ++i)
    if (c.is_moe_layer(i)) b.experts[size_t(i)].assign(size_t(c.n_routed_experts), 0);
  return b;
}

// The counter of the unit a table tensor belongs to; nullptr for MTP tensors (no unit).
int64_t* unit_slot(UnitBytes& b, const TensorSpec& t) {
  switch (t.unit) {
    case Unit::kEmbed: return &b.embed;
    case Unit::kHead: return &b.head;
    case Unit::kAttn: return &b.attn[size_t(t.layer)];
    case Unit::kExpert: return &b.experts[size_t(t.layer)][size_t(t.expert)];
    case Unit::kMtp: return nullptr;
  }
  return nullptr;
}

int64_t layer_bytes(const UnitBytes& b, size_t i) {
  int64_t n = b.attn[i];
  for (int64_t e : b.experts[i]) n += e;
  return n;
}

// "12.34 GB", "5.67 MB", "8.90 KB", "12 bytes" (decimal units, as shoal inspect prints).
std::string readable_bytes(long double bytes) {
  char buf[64];
  if (bytes >= 1e9L)
    std::snprintf(buf, sizeof buf, "%.2Lf GB", bytes / 1e9L);
  else if (bytes >= 1e6L)
    std::snprintf(buf, sizeof buf, "%.2Lf MB", bytes / 1e6L);
  else if (bytes >= 1e3L)
    std::snprintf(buf, sizeof buf, "%.2Lf KB", bytes / 1e3L);
  else
    std::snprintf(buf, sizeof buf, "%.0Lf bytes", bytes);
  return buf;
}

// ---- JSON reading -----------------------------------------------------------------------------

std::string shown(const json& v) {
  std::string s = v.dump();
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

std::string a_type(const json& v) {
  const std::string t = v.type_name();
  return (t == "array" || t == "object") ? "an " + t : "a " + t;
}

std::string world_text(int world_size) { return "a " + std::to_string(world_size) + "-rank world"; }

Status plan_error(const std::string& m) { return invalid_argument("plan: " + m); }

// An integer JSON value in [0, world_size).
StatusOr<int> read_rank(const json& v, const std::string& field, int world_size) {
  if (!v.is_number_integer())
    return plan_error(field + " = " + shown(v) + " is " + a_type(v) + ", not a rank (an integer)");
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u >= uint64_t(world_size))
      return plan_error(field + " = " + std::to_string(u) + " is not a rank of " + world_text(world_size));
    return int(u);
  }
  const int64_t r = v.get<int64_t>();
  if (r < 0 || r >= world_size)
    return plan_error(field + " = " + std::to_string(r) + " is not a rank of " + world_text(world_size));
  return int(r);
}

Status check_fields(const json& obj, const std::string& where, const std::set<std::string>& allowed) {
  for (const auto& [key, value] : obj.items()) {
    if (allowed.count(key)) continue;
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    return plan_error(where + (where.empty() ? "" : ".") + key + " is not a field of " +
                      (where.empty() ? "a plan" : where) + " (fields: " + list + ")");
  }
  return {};
}

StatusOr<int64_t> read_integer(const json& obj, const std::string& key) {
  if (!obj.contains(key)) return plan_error(key + " is missing");
  const json& v = obj.at(key);
  if (!v.is_number_integer())
    return plan_error(key + " = " + shown(v) + " is " + a_type(v) + ", not an integer");
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
    return plan_error(key + " = " + shown(v) + " is out of range");
  return v.get<int64_t>();
}

// ---- the default planner ----------------------------------------------------------------------

Status validate_options(const ModelConfig& c, const UnitBytes& bytes, int world_size,
                        const PlannerOptions& o, std::vector<int>& ranks) {
  if (world_size < 1) return plan_error("world size " + std::to_string(world_size) + " is not positive");
  if (c.n_layers < 0) return plan_error("the config has a negative layer count");
  if (int64_t(bytes.attn.size()) != c.n_layers || int64_t(bytes.experts.size()) != c.n_layers)
    return plan_error("unit bytes are for " + std::to_string(bytes.attn.size()) + " layers; the model has " +
                      std::to_string(c.n_layers));
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const int64_t want = c.is_moe_layer(i) ? c.n_routed_experts : 0;
    if (int64_t(bytes.experts[size_t(i)].size()) != want)
      return plan_error("unit bytes of layer " + std::to_string(i) + " have " +
                        std::to_string(bytes.experts[size_t(i)].size()) + " experts; the model has " +
                        std::to_string(want));
  }
  ranks = o.ranks;
  if (ranks.empty()) {
    ranks.resize(size_t(world_size));
    std::iota(ranks.begin(), ranks.end(), 0);
  }
  std::set<int> seen;
  for (size_t k = 0; k < ranks.size(); ++k) {
    const int r = ranks[k];
    if (r < 0 || r >= world_size)
      return plan_error("options.ranks[" + std::to_string(k) + "] = " + std::to_string(r) + " is not a rank of " +
                        world_text(world_size));
    if (!seen.insert(r).second)
      return plan_error("options.ranks[" + std::to_string(k) + "] = " + std::to_string(r) + " is listed twice");
  }
  if (!o.budget_bytes.empty()) {
    if (o.budget_bytes.size() != ranks.size())
      return plan_error("options.budget_bytes has " + std::to_string(o.budget_bytes.size()) + " entries for " +
                        std::to_string(ranks.size()) + " ranks");
    for (size_t k = 0; k < o.budget_bytes.size(); ++k)
      if (o.budget_bytes[k] <= 0)
        return plan_error("options.budget_bytes[" + std::to_string(k) + "] = " + std::to_string(o.budget_bytes[k]) +
                          " is not positive");
  }
  return {};
}

// Routed experts of MoE layers spread over the ranks in whole placement units (expert groups
// when routing is group-limited, else single experts), each layer's units laid out contiguously
// in the order of `ranks`. A rank's share of a layer's n units is q = n * share / sum(shares);
// it gets floor(q) or ceil(q) units, the ceilings going to the ranks furthest behind their
// share of the units placed so far (ties: the first in an order that rotates with the layer).
// So every layer is spread in proportion (each rank gets some when q >= 1), and when q < 1 the
// ranks holding units rotate over the layers. Exact integer arithmetic (units times shares).
void scatter_experts(const ModelConfig& c, const UnitBytes& bytes, const std::vector<int>& ranks,
                     const std::vector<int64_t>& shares, Plan& p, std::vector<long double>& load) {
  using Wide = __int128;
  const size_t k = ranks.size();
  const int64_t E = c.n_routed_experts;
  const bool grouped = c.n_expert_groups > 1 && c.topk_method != TopkMethod::kGreedy;
  const int64_t n_units = grouped ? c.n_expert_groups : E;
  Wide share_sum = 0;
  for (int64_t s : shares) share_sum += s;
  std::vector<int64_t> first(size_t(n_units) + 1);
  for (int64_t u = 0; u <= n_units; ++u) first[size_t(u)] = u * E / n_units;
  std::vector<Wide> behind(k, 0);  // (units due - units held) * share_sum, over the layers so far
  int64_t moe_index = 0;
  for (int64_t i = 0; i < c.n_layers; ++i) {
    if (!c.is_moe_layer(i)) continue;
    std::vector<int64_t> count(k);
    std::vector<Wide> due(k), priority(k);
    int64_t given = 0;
    for (size_t r = 0; r < k; ++r) {
      due[r] = Wide(n_units) * shares[r];
      count[r] = int64_t(due[r] / share_sum);
      given += count[r];
      priority[r] = behind[r] + due[r] - Wide(count[r]) * share_sum;
    }
    for (int64_t extra = n_units - given; extra > 0; --extra) {
      size_t best = k;
      for (size_t step = 0; step < k; ++step) {
        const size_t r = (size_t(moe_index) + step) % k;
        if (Wide(count[r]) * share_sum >= due[r]) continue;  // already at its ceiling
        if (best == k || priority[r] > priority[best]) best = r;
      }
      SHOAL_CHECK(best < k);
      ++count[best];
      priority[best] -= share_sum;
    }
    for (size_t r = 0; r < k; ++r) behind[r] += due[r] - Wide(count[r]) * share_sum;
    // Lay the units out contiguously in the order of `ranks`.
    const auto& eb = bytes.experts[size_t(i)];
    auto& owners = p.experts[size_t(i)];
    owners.assign(size_t(E), -1);
    int64_t u = 0;
    for (size_t r = 0; r < k; ++r)
      for (int64_t n = 0; n < count[r]; ++n, ++u)
        for (int64_t e = first[size_t(u)]; e < first[size_t(u) + 1]; ++e) {
          owners[size_t(e)] = ranks[r];
          load[r] += (long double)eb[size_t(e)];
        }
    SHOAL_CHECK_EQ(u, n_units);
    ++moe_index;
  }
}

// Contiguous layer ranges over the ranks (positions 0..k-1, in pipeline order): rank position r
// holds layers [end[r-1], end[r]) on top of its fixed load. First the smallest achievable
// maximum of load/budget (the bottleneck); among the splits that reach it, the one closest to
// proportional: the least sum of load^2/budget. `nonempty`: every rank gets at least one layer.
std::vector<int64_t> split_layers(const std::vector<long double>& weight, const std::vector<long double>& fixed,
                                  const std::vector<long double>& budget, bool nonempty) {
  const int64_t L = int64_t(weight.size());
  const size_t k = fixed.size();
  std::vector<long double> prefix(size_t(L) + 1, 0.0L);
  for (int64_t i = 0; i < L; ++i) prefix[size_t(i) + 1] = prefix[size_t(i)] + weight[size_t(i)];
  auto load = [&](size_t r, int64_t j, int64_t i) { return fixed[r] + prefix[size_t(i)] - prefix[size_t(j)]; };
  constexpr long double kInf = std::numeric_limits<long double>::infinity();
  const int64_t min_len = nonempty ? 1 : 0;
  // Rank position r may end at i when the ranks before it and after it can still have their layer.
  auto can_end = [&](size_t r, int64_t i) {
    if (!nonempty) return true;
    return i >= int64_t(r) + 1 && L - i >= int64_t(k - 1 - r);
  };

  // Phase 1: the bottleneck.
  std::vector<std::vector<long double>> worst(k, std::vector<long double>(size_t(L) + 1, kInf));
  for (int64_t i = 0; i <= L; ++i)
    if (can_end(0, i) && (k > 1 || i == L)) worst[0][size_t(i)] = load(0, 0, i) / budget[0];
  for (size_t r = 1; r < k; ++r)
    for (int64_t i = 0; i <= L; ++i) {
      if (!can_end(r, i) || (r == k - 1 && i != L)) continue;
      for (int64_t j = 0; j + min_len <= i; ++j) {
        if (worst[r - 1][size_t(j)] == kInf) continue;
        worst[r][size_t(i)] = std::min(worst[r][size_t(i)], std::max(worst[r - 1][size_t(j)], load(r, j, i) / budget[r]));
      }
    }
  const long double bottleneck = worst[k - 1][size_t(L)];
  SHOAL_CHECK(bottleneck < kInf);
  const long double limit = bottleneck * (1.0L + 1e-15L);

  // Phase 2: closest to proportional among the splits within the bottleneck.
  std::vector<std::vector<long double>> cost(k, std::vector<long double>(size_t(L) + 1, kInf));
  std::vector<std::vector<int64_t>> from(k, std::vector<int64_t>(size_t(L) + 1, -1));
  for (int64_t i = 0; i <= L; ++i) {
    if (!can_end(0, i) || (k == 1 && i != L)) continue;
    const long double l = load(0, 0, i);
    if (l / budget[0] <= limit) cost[0][size_t(i)] = l * l / budget[0];
  }
  for (size_t r = 1; r < k; ++r)
    for (int64_t i = 0; i <= L; ++i) {
      if (!can_end(r, i) || (r == k - 1 && i != L)) continue;
      for (int64_t j = 0; j + min_len <= i; ++j) {
        if (cost[r - 1][size_t(j)] == kInf) continue;
        const long double l = load(r, j, i);
        if (l / budget[r] > limit) continue;
        const long double c = cost[r - 1][size_t(j)] + l * l / budget[r];
        if (c < cost[r][size_t(i)]) {
          cost[r][size_t(i)] = c;
          from[r][size_t(i)] = j;
        }
      }
    }
  SHOAL_CHECK(cost[k - 1][size_t(L)] < kInf);
  std::vector<int64_t> end(k);
  int64_t i = L;
  for (size_t r = k; r-- > 0;) {
    end[r] = i;
    if (r > 0) i = from[r][size_t(i)];
  }
  return end;
}

}  // namespace

// ---- Plan -------------------------------------------------------------------------------------

bool Plan::hosts_anything(int rank) const {
  if (embed == rank || head == rank) return true;
  if (std::find(attn.begin(), attn.end(), rank) != attn.end()) return true;
  for (const auto& layer : experts)
    if (std::find(layer.begin(), layer.end(), rank) != layer.end()) return true;
  return false;
}

std::vector<int64_t> Plan::attn_layers(int rank) const {
  std::vector<int64_t> out;
  for (size_t i = 0; i < attn.size(); ++i)
    if (attn[i] == rank) out.push_back(int64_t(i));
  return out;
}

std::vector<bool> Plan::expert_filter(int rank, int64_t layer) const {
  SHOAL_CHECK(layer >= 0 && layer < int64_t(experts.size()));
  const auto& owners = experts[size_t(layer)];
  std::vector<bool> out(owners.size());
  for (size_t j = 0; j < owners.size(); ++j) out[j] = owners[j] == rank;
  return out;
}

std::vector<int> Plan::expert_ranks(int64_t layer) const {
  SHOAL_CHECK(layer >= 0 && layer < int64_t(experts.size()));
  const std::set<int> owners(experts[size_t(layer)].begin(), experts[size_t(layer)].end());
  return {owners.begin(), owners.end()};
}

// ---- unit bytes -------------------------------------------------------------------------------

StatusOr<UnitBytes> unit_bytes(Checkpoint& ck) {
  const ModelConfig& c = ck.config();
  if (!ck.has_weights())
    return invalid_argument(ck.dir().string() + ": no weights (safetensors) to size the plan's units from");
  SHOAL_ASSIGN_OR_RETURN(std::vector<TensorInfo> infos, ck.all_tensor_infos());
  std::map<std::string, int64_t> size;  // tensor name -> bytes as stored
  for (const TensorInfo& t : infos) size[t.name] = int64_t(t.end - t.begin);
  UnitBytes b = zero_unit_bytes(c);
  for (const TensorSpec& t : model_tensors(c, /*with_mtp=*/false)) {
    int64_t* slot = unit_slot(b, t);
    if (slot == nullptr) continue;
    auto it = size.find(t.name);
    if (it == size.end()) return not_found("tensor '" + t.name + "' is not in the checkpoint " + ck.dir().string());
    *slot += it->second;
    // FP8 block scales travel with their weight.
    auto scale = size.find(names::scale_inv(t.name));
    if (scale != size.end()) *slot += scale->second;
  }
  return b;
}

UnitBytes unit_bytes_for(const ModelConfig& c, bool fp8) {
  UnitBytes b = zero_unit_bytes(c);
  const int64_t block = c.fp8_block > 0 ? c.fp8_block : 128;
  for (const TensorSpec& t : model_tensors(c, /*with_mtp=*/false)) {
    int64_t* slot = unit_slot(b, t);
    if (slot == nullptr) continue;
    if (fp8 && t.quantized) {
      *slot += t.numel() * dtype_bytes(DType::kF8E4M3);
      *slot += ((t.shape[0] + block - 1) / block) * ((t.shape[1] + block - 1) / block) * dtype_bytes(DType::kF32);
    } else if (t.name.ends_with(kRouterBiasSuffix)) {
      *slot += t.numel() * dtype_bytes(DType::kF32);
    } else {
      *slot += t.numel() * dtype_bytes(DType::kBF16);
    }
  }
  return b;
}

void add_lora_bytes(UnitBytes& bytes, const LoraAdapter& lora) {
  for (const auto& [name, m] : lora.modules) {
    const uint64_t b = lora_module_memory_bytes(m.a, m.b);  // Q8_0 A: blocks; Bᵀ's copy counted
    long long layer = -1, expert = -1;
    if (std::sscanf(name.c_str(), "model.layers.%lld.mlp.experts.%lld.", &layer, &expert) == 2 && layer >= 0 &&
        size_t(layer) < bytes.experts.size() && expert >= 0 && size_t(expert) < bytes.experts[size_t(layer)].size()) {
      bytes.experts[size_t(layer)][size_t(expert)] += int64_t(b);
    } else if (std::sscanf(name.c_str(), "model.layers.%lld.", &layer) == 1 && layer >= 0 && size_t(layer) < bytes.attn.size()) {
      bytes.attn[size_t(layer)] += int64_t(b);
    }
  }
}

int64_t rank_weight_bytes(const Plan& plan, const UnitBytes& bytes, int rank) {
  SHOAL_CHECK_EQ(plan.attn.size(), bytes.attn.size());
  SHOAL_CHECK_EQ(plan.experts.size(), bytes.experts.size());
  int64_t n = 0;
  if (plan.embed == rank) n += bytes.embed;
  if (plan.head == rank) n += bytes.head;
  for (size_t i = 0; i < plan.attn.size(); ++i) {
    if (plan.attn[i] == rank) n += bytes.attn[i];
    SHOAL_CHECK_EQ(plan.experts[i].size(), bytes.experts[i].size());
    for (size_t j = 0; j < plan.experts[i].size(); ++j)
      if (plan.experts[i][j] == rank) n += bytes.experts[i][j];
  }
  return n;
}

// ---- JSON -------------------------------------------------------------------------------------

json plan_to_json(const Plan& plan) {
  json layers = json::array();
  for (size_t i = 0; i < plan.attn.size(); ++i) {
    json layer = {{"attn", plan.attn[i]}};
    const auto& owners = i < plan.experts.size() ? plan.experts[i] : std::vector<int>{};
    if (!owners.empty()) {
      const bool one_rank = std::all_of(owners.begin(), owners.end(), [&](int r) { return r == owners[0]; });
      if (!one_rank)
        layer["experts"] = owners;
      else if (owners[0] != plan.attn[i])
        layer["experts"] = owners[0];
      // else omitted: the experts live with the layer's attention block
    }
    layers.push_back(std::move(layer));
  }
  return {{"version", kPlanVersion},
          {"world_size", plan.world_size},
          {"embed", plan.embed},
          {"head", plan.head},
          {"layers", std::move(layers)}};
}

StatusOr<Plan> plan_from_json(const json& j, const ModelConfig& c, int world_size) {
  if (world_size < 1) return plan_error("world size " + std::to_string(world_size) + " is not positive");
  if (!j.is_object()) return plan_error("the plan is " + a_type(j) + ", not a JSON object");
  SHOAL_RETURN_IF_ERROR(check_fields(j, "", {"version", "world_size", "embed", "head", "layers"}));

  SHOAL_ASSIGN_OR_RETURN(const int64_t version, read_integer(j, "version"));
  if (version != kPlanVersion)
    return plan_error("version = " + std::to_string(version) + " is not supported (this build reads version " +
                      std::to_string(kPlanVersion) + ")");
  SHOAL_ASSIGN_OR_RETURN(const int64_t plan_world, read_integer(j, "world_size"));
  if (plan_world != world_size)
    return plan_error("world_size = " + std::to_string(plan_world) + ", but the world has " +
                      std::to_string(world_size) + " ranks");

  Plan p;
  p.world_size = world_size;
  for (const char* key : {"embed", "head"})
    if (!j.contains(key)) return plan_error(std::string(key) + " is missing");
  SHOAL_ASSIGN_OR_RETURN(p.embed, read_rank(j.at("embed"), "embed", world_size));
  SHOAL_ASSIGN_OR_RETURN(p.head, read_rank(j.at("head"), "head", world_size));

  if (!j.contains("layers")) return plan_error("layers is missing");
  const json& layers = j.at("layers");
  if (!layers.is_array()) return plan_error("layers is " + a_type(layers) + ", not an array");
  if (int64_t(layers.size()) != c.n_layers)
    return plan_error("layers has " + std::to_string(layers.size()) + " entries, but the model has " +
                      std::to_string(c.n_layers) + " layers");
  p.attn.resize(size_t(c.n_layers));
  p.experts.resize(size_t(c.n_layers));
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string at = "layers[" + std::to_string(i) + "]";
    const json& layer = layers[size_t(i)];
    if (!layer.is_object()) return plan_error(at + " is " + a_type(layer) + ", not an object");
    SHOAL_RETURN_IF_ERROR(check_fields(layer, at, {"attn", "experts"}));
    if (!layer.contains("attn")) return plan_error(at + ".attn is missing");
    SHOAL_ASSIGN_OR_RETURN(const int attn, read_rank(layer.at("attn"), at + ".attn", world_size));
    p.attn[size_t(i)] = attn;
    if (!c.is_moe_layer(i)) {
      if (layer.contains("experts"))
        return plan_error(at + ".experts is given, but layer " + std::to_string(i) + " is dense (no routed experts)");
      continue;
    }
    auto& owners = p.experts[size_t(i)];
    const size_t E = size_t(c.n_routed_experts);
    if (!layer.contains("experts")) {
      owners.assign(E, attn);
      continue;
    }
    const json& ex = layer.at("experts");
    if (ex.is_array()) {
      if (ex.size() != E)
        return plan_error(at + ".experts has " + std::to_string(ex.size()) + " entries, but layer " +
                          std::to_string(i) + " has " + std::to_string(E) + " routed experts");
      owners.resize(E);
      for (size_t e = 0; e < E; ++e) {
        SHOAL_ASSIGN_OR_RETURN(owners[e], read_rank(ex[e], at + ".experts[" + std::to_string(e) + "]", world_size));
      }
    } else if (ex.is_number_integer()) {
      SHOAL_ASSIGN_OR_RETURN(const int r, read_rank(ex, at + ".experts", world_size));
      owners.assign(E, r);
    } else {
      return plan_error(at + ".experts = " + shown(ex) + " is " + a_type(ex) + ", not a rank or an array of " +
                        std::to_string(E) + " ranks");
    }
  }
  return p;
}

StatusOr<Plan> read_plan_file(const fs::path& file, const ModelConfig& c, int world_size) {
  std::error_code ec;
  if (fs::is_directory(file, ec)) return invalid_argument(file.string() + ": is a folder, not a plan file");
  std::ifstream in(file, std::ios::binary);
  if (!in) return not_found(file.string() + ": cannot open the plan file");
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return invalid_argument(file.string() + ": cannot read the plan file");
  json j;
  try {
    j = json::parse(ss.str());
  } catch (const json::parse_error& e) {
    std::string what = e.what();
    if (const size_t close = what.find("] "); what.rfind("[json.exception", 0) == 0 && close != std::string::npos)
      what = what.substr(close + 2);
    return invalid_argument(file.string() + ": not valid JSON (at byte " + std::to_string(e.byte) + "): " + what);
  }
  StatusOr<Plan> plan = plan_from_json(j, c, world_size);
  if (!plan.ok()) return plan.status().with_context(file.string());
  return plan;
}

// ---- the default planner ----------------------------------------------------------------------

StatusOr<Plan> default_plan(const ModelConfig& c, const UnitBytes& bytes, int world_size,
                            const PlannerOptions& options) {
  std::vector<int> ranks;
  SHOAL_RETURN_IF_ERROR(validate_options(c, bytes, world_size, options, ranks));
  const size_t k = ranks.size();
  const int64_t L = c.n_layers;
  const bool budgets = !options.budget_bytes.empty();
  // Expert scatter spreads routed experts; a model without MoE layers (Qwen2, Llama) is the
  // plain pipeline either way.
  bool any_moe = false;
  for (int64_t i = 0; i < L; ++i) any_moe = any_moe || c.is_moe_layer(i);
  const bool scatter = options.expert_scatter && any_moe;
  const std::vector<int64_t> shares = budgets ? options.budget_bytes : std::vector<int64_t>(k, 1);
  std::vector<long double> budget(shares.begin(), shares.end());

  Plan p;
  p.world_size = world_size;
  p.embed = ranks.front();
  p.head = ranks.back();
  p.attn.assign(size_t(L), ranks.front());
  p.experts.resize(size_t(L));

  std::vector<long double> fixed(k, 0.0L);  // bytes placed before the pipeline split
  if (scatter) scatter_experts(c, bytes, ranks, shares, p, fixed);
  // The split balances the bytes each rank holds, except that expert scatter without budgets
  // balances the attention blocks' work per token: there the embedding's table, which a token
  // reads one row of, is as large as several blocks and would leave its rank idle. A pipeline's
  // layers keep the bytes: their work per token depends on how many of their experts a step
  // reads, which the planner does not know (docs/plan.md).
  if (budgets || !scatter) fixed.front() += (long double)bytes.embed;
  fixed.back() += (long double)bytes.head;
  std::vector<long double> weight(static_cast<size_t>(L));
  for (int64_t i = 0; i < L; ++i)
    weight[size_t(i)] = (long double)(scatter ? bytes.attn[size_t(i)] : layer_bytes(bytes, size_t(i)));

  const bool nonempty = !scatter && L >= int64_t(k);
  const std::vector<int64_t> end = split_layers(weight, fixed, budget, nonempty);
  int64_t i = 0;
  for (size_t r = 0; r < k; ++r)
    for (; i < end[r]; ++i) {
      p.attn[size_t(i)] = ranks[r];
      if (!scatter && c.is_moe_layer(i)) p.experts[size_t(i)].assign(size_t(c.n_routed_experts), ranks[r]);
    }

  if (budgets) {
    bool fits = true;
    long double need_all = 0, have_all = 0;
    std::string per_rank;
    for (size_t r = 0; r < k; ++r) {
      const int64_t need = rank_weight_bytes(p, bytes, ranks[r]);
      const int64_t have = options.budget_bytes[r];
      need_all += need;
      have_all += have;
      per_rank += "; rank " + std::to_string(ranks[r]) + " needs " + readable_bytes(need) + " of its " +
                  readable_bytes(have);
      if (need > have) {
        fits = false;
        per_rank += " (over by " + readable_bytes(need - have) + ")";
      }
    }
    if (!fits)
      return Status(Code::kResourceExhausted,
                    std::string("plan: the weights do not fit the memory budgets") +
                        (scatter ? " (pipeline with expert scatter)" : " (pipeline)") + ": " +
                        readable_bytes(need_all) + " of weights, " + readable_bytes(have_all) + " budgeted in all" +
                        per_rank);
  }
  return p;
}

}  // namespace shoal::cluster
