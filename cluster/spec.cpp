#include "cluster/spec.h"

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

namespace shoal::cluster {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

Status spec_error(const std::string& where, const std::string& m) {
  return invalid_argument((where.empty() ? "" : where + ": ") + m);
}

std::string shown(const json& v) {
  std::string s = v.dump();
  return s.size() > 40 ? s.substr(0, 37) + "..." : s;
}

// A JSON number >= 0 (> 0 when `positive`) at `field`.
StatusOr<double> read_number(const json& v, const std::string& where, const std::string& field, bool positive) {
  if (!v.is_number())
    return spec_error(where, field + " = " + shown(v) + " is a " + v.type_name() + ", not a number");
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < 0 || (positive && x == 0))
    return spec_error(where, field + " = " + shown(v) + " must be " + (positive ? "positive" : "zero or more"));
  return x;
}

StatusOr<std::string> read_string(const json& v, const std::string& where, const std::string& field) {
  if (!v.is_string() || v.get<std::string>().empty())
    return spec_error(where, field + " = " + shown(v) + " is not a non-empty string");
  return v.get<std::string>();
}

Status check_fields(const json& obj, const std::string& where, const std::string& at,
                    const std::set<std::string>& allowed) {
  for (const auto& [key, value] : obj.items()) {
    if (allowed.count(key)) continue;
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    return spec_error(where, (at.empty() ? "" : at + ".") + key + " is not a field of " +
                                 (at.empty() ? "a cluster spec" : "a node") + " (fields: " + list + ")");
  }
  return {};
}

Status read_table(const json& j, const std::string& where, const std::string& key, bool fraction,
                  std::map<std::string, double>& out) {
  if (!j.contains(key)) return {};
  const json& t = j.at(key);
  if (!t.is_object()) return spec_error(where, key + " is a " + std::string(t.type_name()) + ", not an object");
  for (const auto& [k, v] : t.items()) {
    SHOAL_ASSIGN_OR_RETURN(const double x, read_number(v, where, key + "." + k, true));
    if (fraction && x > 1) return spec_error(where, key + "." + k + " = " + shown(v) + " is more than 1");
    out[k] = x;
  }
  return {};
}

Status read_node(const json& n, const std::string& where, const std::string& at, NodeSpec& node) {
  if (!n.is_object()) return spec_error(where, at + " is a " + std::string(n.type_name()) + ", not an object");
  SHOAL_RETURN_IF_ERROR(check_fields(n, where, at,
                                     {"name", "gpus_gib", "gpu_kind", "gpu_bandwidth_gbs", "ram_gib", "link_gbps",
                                      "latency_us", "cpu_kind", "ram_bandwidth_gbs", "cpu_gflops", "cpu_linear_gflops", "cpu_ranks", "local_gbps",
                                      "local_latency_us"}));
  for (const char* key : {"name", "ram_gib", "link_gbps"})
    if (!n.contains(key)) return spec_error(where, at + "." + key + " is missing");
  SHOAL_ASSIGN_OR_RETURN(node.name, read_string(n.at("name"), where, at + ".name"));
  SHOAL_ASSIGN_OR_RETURN(node.ram_gib, read_number(n.at("ram_gib"), where, at + ".ram_gib", false));
  SHOAL_ASSIGN_OR_RETURN(node.link_gbps, read_number(n.at("link_gbps"), where, at + ".link_gbps", true));
  if (n.contains("gpus_gib")) {
    const json& g = n.at("gpus_gib");
    if (!g.is_array()) return spec_error(where, at + ".gpus_gib = " + shown(g) + " is not an array of GiB");
    for (size_t i = 0; i < g.size(); ++i) {
      GpuSpec gpu;
      SHOAL_ASSIGN_OR_RETURN(gpu.gib, read_number(g[i], where, at + ".gpus_gib[" + std::to_string(i) + "]", true));
      node.gpus.push_back(gpu);
    }
  }
  // gpu_kind / gpu_bandwidth_gbs: one value for all GPUs, or one per GPU.
  auto per_gpu = [&](const char* key, auto&& apply) -> Status {
    if (!n.contains(key)) return {};
    const json& v = n.at(key);
    if (v.is_array() && v.size() != node.gpus.size())
      return spec_error(where, at + "." + key + " has " + std::to_string(v.size()) + " entries for " +
                                   std::to_string(node.gpus.size()) + " GPUs");
    for (size_t i = 0; i < node.gpus.size(); ++i) {
      const bool one = !v.is_array();
      SHOAL_RETURN_IF_ERROR(apply(one ? v : v[i], at + "." + key + (one ? "" : "[" + std::to_string(i) + "]"),
                                  node.gpus[i]));
    }
    return {};
  };
  SHOAL_RETURN_IF_ERROR(per_gpu("gpu_kind", [&](const json& v, const std::string& f, GpuSpec& g) -> Status {
    SHOAL_ASSIGN_OR_RETURN(g.kind, read_string(v, where, f));
    return {};
  }));
  SHOAL_RETURN_IF_ERROR(per_gpu("gpu_bandwidth_gbs", [&](const json& v, const std::string& f, GpuSpec& g) -> Status {
    SHOAL_ASSIGN_OR_RETURN(g.bandwidth_gbs, read_number(v, where, f, true));
    return {};
  }));
  if (n.contains("latency_us")) {
    SHOAL_ASSIGN_OR_RETURN(node.latency_us, read_number(n.at("latency_us"), where, at + ".latency_us", false));
  }
  if (n.contains("cpu_kind")) {
    SHOAL_ASSIGN_OR_RETURN(node.cpu_kind, read_string(n.at("cpu_kind"), where, at + ".cpu_kind"));
  }
  if (n.contains("ram_bandwidth_gbs")) {
    SHOAL_ASSIGN_OR_RETURN(node.ram_bandwidth_gbs,
                           read_number(n.at("ram_bandwidth_gbs"), where, at + ".ram_bandwidth_gbs", true));
  }
  if (n.contains("cpu_gflops")) {
    SHOAL_ASSIGN_OR_RETURN(node.cpu_gflops, read_number(n.at("cpu_gflops"), where, at + ".cpu_gflops", true));
  }
  if (n.contains("cpu_linear_gflops")) {
    const json& t = n.at("cpu_linear_gflops");
    const std::string field = at + ".cpu_linear_gflops";
    if (!t.is_object() || t.empty())
      return spec_error(where, field + " = " + shown(t) + " is not an object of tokens -> GFLOP/s (shoal inspect --system)");
    for (const auto& [k, v] : t.items()) {
      char* end = nullptr;
      const double tokens = std::strtod(k.c_str(), &end);
      if (k.empty() || *end != '\0' || !std::isfinite(tokens) || tokens < 1)
        return spec_error(where, field + ": key \"" + k + "\" is not a token count of 1 or more");
      SHOAL_ASSIGN_OR_RETURN(node.cpu_linear_gflops[tokens], read_number(v, where, field + "." + k, true));
    }
  }
  if (n.contains("local_gbps")) {
    SHOAL_ASSIGN_OR_RETURN(node.local_gbps, read_number(n.at("local_gbps"), where, at + ".local_gbps", true));
  }
  if (n.contains("local_latency_us")) {
    SHOAL_ASSIGN_OR_RETURN(node.local_latency_us,
                           read_number(n.at("local_latency_us"), where, at + ".local_latency_us", false));
  }
  if (n.contains("cpu_ranks")) {
    const json& v = n.at("cpu_ranks");
    if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > 1024)
      return spec_error(where, at + ".cpu_ranks = " + shown(v) + " is not an integer in [1, 1024]");
    if (!node.gpus.empty())
      return spec_error(where, at + ".cpu_ranks is given, but the node has GPUs (one rank per GPU)");
    node.cpu_ranks = int(v.get<int64_t>());
  }
  if (node.gpus.empty() && node.ram_gib <= 0)
    return spec_error(where, at + ".ram_gib = 0 on a node without GPUs: it could hold nothing");
  return {};
}

Status check_names(const ClusterSpec& s, const std::string& where, const std::string& what) {
  std::map<std::string, size_t> seen;
  for (size_t i = 0; i < s.nodes.size(); ++i) {
    auto [it, fresh] = seen.emplace(s.nodes[i].name, i);
    if (!fresh)
      return spec_error(where, what + "[" + std::to_string(i) + "] '" + s.nodes[i].name + "' repeats " + what + "[" +
                                   std::to_string(it->second) + "]");
  }
  return {};
}

StatusOr<std::string> slurp(const fs::path& file, const std::string& what) {
  std::error_code ec;
  if (fs::is_directory(file, ec)) return invalid_argument(file.string() + ": is a folder, not a " + what);
  std::ifstream in(file, std::ios::binary);
  if (!in) return not_found(file.string() + ": cannot open the " + what);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

NodeSpec host_node(const std::string& name, const HostDefaults& d, double ram_gib) {
  NodeSpec n;
  n.name = name;
  n.ram_gib = ram_gib;
  n.link_gbps = d.link_gbps;
  for (double g : d.gpus_gib) n.gpus.push_back({g, d.gpu_kind, 0});
  return n;
}

Status check_defaults(const HostDefaults& d, const std::string& where, bool ram_known) {
  if (!(d.link_gbps > 0)) return spec_error(where, "--link-gbps is required (the network speed between hosts)");
  if (!ram_known && !d.ram_gib) return spec_error(where, "--ram-gib is required (host memory per host)");
  if (d.ram_gib && !(*d.ram_gib >= 0)) return spec_error(where, "--ram-gib must be zero or more");
  for (size_t i = 0; i < d.gpus_gib.size(); ++i)
    if (!(d.gpus_gib[i] > 0))
      return spec_error(where, "--gpus-gib entry " + std::to_string(i) + " must be positive (GiB per GPU)");
  if (d.gpus_gib.empty() && d.ram_gib && *d.ram_gib <= 0)
    return spec_error(where, "hosts without GPUs need --ram-gib > 0");
  return {};
}

}  // namespace

const std::map<std::string, double>& default_bandwidth_table() {
  // Vendor peak memory bandwidth, GB/s. "cpu": a dual-channel DDR5 desktop; "gpu": an unnamed GPU.
  static const std::map<std::string, double> table = {
      {"cpu", 60},      {"epyc-ddr5", 460}, {"xeon-ddr5", 300}, {"gpu", 500},     {"h200", 4800},
      {"h100", 3350},   {"h100-pcie", 2000}, {"a100-80", 2039}, {"a100", 1555},   {"l40s", 864},
      {"a6000", 768},   {"v100", 900},      {"t4", 320},       {"rtx4090", 1008}, {"rtx4080", 717},
      {"rtx4070", 504}, {"rtx3090", 936},   {"rtx3080", 760},  {"rtx3060", 360},  {"mi300x", 5300},
  };
  return table;
}

StatusOr<ClusterSpec> spec_from_json(const json& j, const std::string& where) {
  if (!j.is_object()) return spec_error(where, "the cluster spec is a " + std::string(j.type_name()) + ", not an object");
  SHOAL_RETURN_IF_ERROR(check_fields(j, where, "", {"nodes", "bandwidth_gbs", "efficiency"}));
  if (!j.contains("nodes")) return spec_error(where, "nodes is missing");
  const json& nodes = j.at("nodes");
  if (!nodes.is_array() || nodes.empty()) return spec_error(where, "nodes = " + shown(nodes) + " is not a non-empty array");
  ClusterSpec s;
  for (size_t i = 0; i < nodes.size(); ++i) {
    NodeSpec n;
    SHOAL_RETURN_IF_ERROR(read_node(nodes[i], where, "nodes[" + std::to_string(i) + "]", n));
    s.nodes.push_back(std::move(n));
  }
  SHOAL_RETURN_IF_ERROR(check_names(s, where, "nodes"));
  SHOAL_RETURN_IF_ERROR(read_table(j, where, "bandwidth_gbs", false, s.bandwidth_gbs));
  SHOAL_RETURN_IF_ERROR(read_table(j, where, "efficiency", true, s.efficiency));
  for (const auto& [k, v] : s.efficiency)
    if (k != "cpu" && k != "gpu") return spec_error(where, "efficiency." + k + " is not cpu or gpu");
  return s;
}

StatusOr<ClusterSpec> read_spec_file(const fs::path& file) {
  SHOAL_ASSIGN_OR_RETURN(const std::string text, slurp(file, "cluster spec"));
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    return invalid_argument(file.string() + ": not valid JSON (at byte " + std::to_string(e.byte) + ")");
  }
  return spec_from_json(j, file.string());
}

StatusOr<ClusterSpec> spec_from_hostfile(const fs::path& file, const HostDefaults& d) {
  SHOAL_ASSIGN_OR_RETURN(const std::string text, slurp(file, "hostfile"));
  SHOAL_RETURN_IF_ERROR(check_defaults(d, file.string(), false));
  ClusterSpec s;
  std::istringstream in(text);
  std::map<std::string, int> line_of;
  int line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (const size_t hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream words(line);
    std::string host, word;
    if (!(words >> host)) continue;
    const std::string at = file.string() + ":" + std::to_string(line_no);
    if (host.find('=') != std::string::npos) return spec_error(at, "'" + host + "' is not a host name");
    while (words >> word) {
      const size_t eq = word.find('=');
      const std::string key = word.substr(0, eq);
      if (eq == std::string::npos || (key != "slots" && key != "max_slots" && key != "max-slots"))
        return spec_error(at, "'" + word + "' is not slots=N or max_slots=N");
      const std::string value = word.substr(eq + 1);
      if (value.empty() || value.find_first_not_of("0123456789") != std::string::npos)
        return spec_error(at, key + " = '" + value + "' is not a count");
    }
    if (auto [it, fresh] = line_of.emplace(host, line_no); !fresh)
      return spec_error(at, "host '" + host + "' is listed again (first on line " + std::to_string(it->second) + ")");
    s.nodes.push_back(host_node(host, d, *d.ram_gib));
  }
  if (s.nodes.empty()) return spec_error(file.string(), "no hosts in the hostfile");
  return s;
}

StatusOr<std::vector<std::string>> expand_nodelist(const std::string& list) {
  auto bad = [&](const std::string& why) { return invalid_argument("nodelist '" + list + "': " + why); };
  // Split at top-level commas.
  std::vector<std::string> names;
  int depth = 0;
  std::string cur;
  std::vector<std::string> parts;
  for (char ch : list) {
    if (ch == '[') ++depth;
    if (ch == ']' && --depth < 0) return bad("']' without '['");
    if (ch == ',' && depth == 0) {
      parts.push_back(cur);
      cur.clear();
    } else {
      cur += ch;
    }
  }
  if (depth != 0) return bad("'[' without ']'");
  parts.push_back(cur);
  for (const std::string& part : parts) {
    if (part.empty()) return bad("an empty name");
    std::vector<std::string> expanded = {""};
    size_t i = 0;
    while (i < part.size()) {
      if (part[i] != '[') {
        for (auto& e : expanded) e += part[i];
        ++i;
        continue;
      }
      const size_t close = part.find(']', i);
      const std::string body = part.substr(i + 1, close - i - 1);
      if (body.empty()) return bad("empty brackets in '" + part + "'");
      std::vector<std::string> items;
      std::istringstream ranges(body);
      for (std::string r; std::getline(ranges, r, ',');) {
        const size_t dash = r.find('-');
        const std::string lo = r.substr(0, dash), hi = dash == std::string::npos ? lo : r.substr(dash + 1);
        auto digits = [](const std::string& x) { return !x.empty() && x.find_first_not_of("0123456789") == std::string::npos; };
        if (!digits(lo) || !digits(hi) || lo.size() > 9 || hi.size() > 9)
          return bad("'" + r + "' in '" + part + "' is not N or N-M");
        const long a = std::stol(lo), b = std::stol(hi);
        if (b < a) return bad("range '" + r + "' in '" + part + "' runs backwards");
        if (b - a >= 100000) return bad("range '" + r + "' in '" + part + "' is too long");
        for (long v = a; v <= b; ++v) {
          std::string num = std::to_string(v);
          if (num.size() < lo.size()) num.insert(0, lo.size() - num.size(), '0');  // zero padding
          items.push_back(num);
        }
      }
      std::vector<std::string> next;
      for (const auto& e : expanded)
        for (const auto& it : items) next.push_back(e + it);
      expanded = std::move(next);
      if (expanded.size() > 100000) return bad("more than 100000 names");
      i = close + 1;
    }
    names.insert(names.end(), expanded.begin(), expanded.end());
  }
  return names;
}

StatusOr<std::vector<int>> expand_tasks_per_node(const std::string& text) {
  auto bad = [&](const std::string& why) { return invalid_argument("tasks per node '" + text + "': " + why); };
  std::vector<int> out;
  std::istringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    int count = 0, repeat = 1;
    char x = 0, close = 0;
    std::istringstream one(item);
    if (!(one >> count) || count < 0) return bad("'" + item + "' is not N or N(xM)");
    if (one.peek() == '(') {
      one.get();
      if (!(one >> x >> repeat >> close) || x != 'x' || close != ')' || repeat < 1)
        return bad("'" + item + "' is not N or N(xM)");
    }
    if (one.peek() != EOF) return bad("'" + item + "' is not N or N(xM)");
    out.insert(out.end(), size_t(repeat), count);
  }
  if (out.empty()) return bad("no counts");
  return out;
}

StatusOr<ClusterSpec> spec_from_slurm(const Getenv& getenv, const HostDefaults& d, std::vector<std::string>& notes) {
  std::string var = "SLURM_JOB_NODELIST";
  auto list = getenv(var);
  if (!list) list = getenv(var = "SLURM_NODELIST");
  if (!list) return invalid_argument("slurm: SLURM_JOB_NODELIST is not set (run inside an allocation: salloc, sbatch)");
  auto names = expand_nodelist(*list);
  if (!names.ok()) return names.status().with_context(var);
  auto positive_int = [&](const std::string& name) -> StatusOr<std::optional<long>> {
    auto v = getenv(name);
    if (!v) return std::optional<long>{};
    char* end = nullptr;
    const long x = std::strtol(v->c_str(), &end, 10);
    if (v->empty() || *end != '\0' || x < 0) return invalid_argument(name + " = '" + *v + "' is not a count");
    return std::optional<long>(x);
  };
  SHOAL_ASSIGN_OR_RETURN(auto n_nodes, positive_int("SLURM_JOB_NUM_NODES"));
  if (n_nodes && size_t(*n_nodes) != names->size())
    return invalid_argument("SLURM_JOB_NUM_NODES = " + std::to_string(*n_nodes) + ", but " + var + " '" + *list +
                            "' names " + std::to_string(names->size()) + " nodes");
  SHOAL_ASSIGN_OR_RETURN(auto mem_mb, positive_int("SLURM_MEM_PER_NODE"));
  SHOAL_RETURN_IF_ERROR(check_defaults(d, "slurm", mem_mb.has_value()));
  const double ram_gib = d.ram_gib ? *d.ram_gib : double(*mem_mb) / 1024.0;
  if (d.gpus_gib.empty() && ram_gib <= 0) return invalid_argument("slurm: hosts without GPUs need memory (--ram-gib)");
  SHOAL_ASSIGN_OR_RETURN(auto gpus_on_node, positive_int("SLURM_GPUS_ON_NODE"));
  if (gpus_on_node && *gpus_on_node > 0 && d.gpus_gib.empty())
    return invalid_argument("slurm: SLURM_GPUS_ON_NODE = " + std::to_string(*gpus_on_node) +
                            " says how many GPUs, not their memory: give --gpus-gib (one entry per GPU)");
  if (gpus_on_node && size_t(*gpus_on_node) != d.gpus_gib.size())
    notes.push_back("SLURM_GPUS_ON_NODE = " + std::to_string(*gpus_on_node) + ", but --gpus-gib lists " +
                    std::to_string(d.gpus_gib.size()) + " GPUs per node; planning for --gpus-gib");
  ClusterSpec s;
  for (const auto& n : *names) s.nodes.push_back(host_node(n, d, ram_gib));
  SHOAL_RETURN_IF_ERROR(check_names(s, "slurm", "SLURM_JOB_NODELIST"));
  // Ranks of the plan: one per GPU, or one per CPU node; compare with the tasks Slurm runs.
  const size_t per_node = d.gpus_gib.empty() ? 1 : d.gpus_gib.size();
  const size_t ranks = per_node * s.nodes.size();
  SHOAL_ASSIGN_OR_RETURN(auto ntasks, positive_int("SLURM_NTASKS"));
  if (ntasks && size_t(*ntasks) != ranks)
    notes.push_back("SLURM_NTASKS = " + std::to_string(*ntasks) + ", but the plan has " + std::to_string(ranks) +
                    " ranks (one per GPU or CPU node): start them with srun -n " + std::to_string(ranks));
  for (const char* name : {"SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE"}) {
    auto v = getenv(name);
    if (!v) continue;
    auto counts = expand_tasks_per_node(*v);
    if (!counts.ok()) return counts.status().with_context(name);
    if (counts->size() == 1) counts->assign(s.nodes.size(), counts->front());
    if (counts->size() != s.nodes.size())
      return invalid_argument(std::string(name) + " = '" + *v + "' gives " + std::to_string(counts->size()) +
                              " nodes, but the nodelist has " + std::to_string(s.nodes.size()));
    for (size_t i = 0; i < counts->size(); ++i)
      if (size_t((*counts)[i]) != per_node) {
        notes.push_back(std::string(name) + " = '" + *v + "' runs " + std::to_string((*counts)[i]) + " tasks on " +
                        s.nodes[i].name + "; the plan has " + std::to_string(per_node) + " ranks per node");
        break;
      }
    break;
  }
  return s;
}

}  // namespace shoal::cluster
