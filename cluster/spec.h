// The cluster spec: the machines a plan is made for (docs/plan.md, "shoal plan"). Read from a
// JSON file, from an Open MPI hostfile plus per-host flags, or from the Slurm environment of an
// allocation. Every error names the file (or variable), the node and the field.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace shoal::cluster {

struct GpuSpec {
  double gib = 0;            // memory
  std::string kind = "gpu";  // a key of the bandwidth table
  double bandwidth_gbs = 0;  // 0: from the table by kind
};

struct NodeSpec {
  std::string name;
  std::vector<GpuSpec> gpus;        // empty: a CPU node
  double ram_gib = 0;               // host memory shoal may use
  double link_gbps = 0;             // network link to the other nodes
  double latency_us = 50;           // one message to another node
  std::string cpu_kind = "cpu";     // key of the bandwidth table for host memory
  double ram_bandwidth_gbs = 0;     // 0: from the table by cpu_kind
  double cpu_gflops = 0;            // float32 FMA peak of the cores shoal uses, GFLOP/s; 0: compute not modeled
  // What linear reaches on those cores at t tokens a matrix (t -> GFLOP/s, `shoal inspect
  // --system`'s linear_gflops); given, it replaces half of cpu_gflops as a CPU matrix's compute rate.
  std::map<double, double> cpu_linear_gflops;
  int cpu_ranks = 1;                // ranks a CPU node runs (e.g. one per socket, --local-nodes)
  double local_gbps = 80;           // between ranks of this node
  double local_latency_us = 20;
};

struct ClusterSpec {
  std::vector<NodeSpec> nodes;
  std::map<std::string, double> bandwidth_gbs;  // overrides of the device-kind table
  std::map<std::string, double> efficiency;     // "cpu"/"gpu" -> fraction of bandwidth kernels reach
};

// The device-kind table: read bandwidth in GB/s (10^9 bytes/s) of each known kind.
const std::map<std::string, double>& default_bandwidth_table();

// JSON form (schema in docs/plan.md). `where` prefixes errors (the file's path).
StatusOr<ClusterSpec> spec_from_json(const nlohmann::json& j, const std::string& where);
StatusOr<ClusterSpec> read_spec_file(const std::filesystem::path& file);

// Values applied to every host of a hostfile or of a Slurm allocation.
struct HostDefaults {
  std::vector<double> gpus_gib;            // per host
  std::optional<double> ram_gib;           // required unless Slurm says (SLURM_MEM_PER_NODE)
  double link_gbps = 0;                    // required
  std::string gpu_kind = "gpu";
};

// Open MPI hostfile: "host [slots=N] [max_slots=N]" per line, '#' comments. Slots are not
// ranks here (ranks are one per GPU or CPU node); a host listed twice is an error.
StatusOr<ClusterSpec> spec_from_hostfile(const std::filesystem::path& file, const HostDefaults& d);

// The Slurm environment of an allocation (SLURM_JOB_NODELIST or SLURM_NODELIST,
// SLURM_JOB_NUM_NODES, SLURM_MEM_PER_NODE, SLURM_GPUS_ON_NODE, SLURM_NTASKS,
// SLURM_NTASKS_PER_NODE). `getenv` is a parameter so tests can pass a map. Warnings (a task
// count that does not match the ranks of the plan) go to `notes`.
using Getenv = std::function<std::optional<std::string>(const std::string&)>;
StatusOr<ClusterSpec> spec_from_slurm(const Getenv& getenv, const HostDefaults& d, std::vector<std::string>& notes);

// Slurm hostlists: "node[1-3,5],gpu[08-10]x" -> node1 node2 node3 node5 gpu08x gpu09x gpu10x;
// zero padding kept, several bracket groups in one name multiply out.
StatusOr<std::vector<std::string>> expand_nodelist(const std::string& list);
// SLURM_TASKS_PER_NODE / SLURM_NTASKS_PER_NODE: "2(x3),1" -> 2 2 2 1.
StatusOr<std::vector<int>> expand_tasks_per_node(const std::string& text);

}  // namespace shoal::cluster
