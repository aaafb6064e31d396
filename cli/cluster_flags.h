// Where a command runs, the same flags for every command that runs the model (docs/distributed.md):
//   (none)             one process;
//   --local-nodes N    N ranks as threads of this process (in-process transport);
//   under mpirun/srun  rank 0 runs the command, every other rank serves (run_mpi_node);
//   --nodes h:p,...    `shoal node` processes over TCP, admitted with --token-file.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>
#include <vector>

#include "coordinator/cluster.h"
#include "coordinator/healing_cluster.h"

namespace shoal::cli {

struct ClusterFlags {
  int local_nodes = 0;
  std::string nodes;
  std::string spares;             // --spare: nodes that take a lost node's place (serve, batch)
  std::string token_file;
  std::string plan;
  bool expert_scatter = false;
  bool exact = false;
  bool no_mmap = false;
  std::string wire_dtype = "f32";
  std::vector<std::string> lora;  // LoRA adapters: NAME=DIR each, or one DIR for every sequence
  std::string merge_lora;         // one adapter folded into the weights at load
  std::string merge_into = "f32"; // where: f32 copies or the stored dtype
  bool one_model = false;         // the command runs one model (logits, run): one --lora, for every sequence
  std::string kv_dtype = "f32";   // the KV cache's values: f32 or bf16
  std::string kv_memory;          // a paged KV pool of this many bytes per rank ("16GiB") or a share ("90%"); "0": one static
                                  // cache per slot; empty: the command's default
  bool paged_by_default = false;  // serve, batch: empty --kv-memory is a pool as large as 8 x 4096 f32 positions
  double step_timeout_s = 600;
  double heartbeat_timeout_s = 5;
};

void add_cluster_flags(CLI::App* sub, ClusterFlags& flags);

// "16GiB", "512M", "2e9", "1.5TB": bytes (K/M/G/T and KiB.. binary, KB.. decimal). An error names the text.
StatusOr<int64_t> parse_bytes(const std::string& text, const std::string& flag);

// --kv-memory: "16GiB" (bytes, as parse_bytes) or a share of what each host has left, "90%" or
// "0.9" (a bare number below 1). An error names the text.
struct KvMemory {
  int64_t bytes = 0;
  double fraction = 0;
};
StatusOr<KvMemory> parse_kv_memory(const std::string& text);

// Starts the cluster the flags (or mpirun) ask for; base carries the model and cache sizes.
StatusOr<std::unique_ptr<Cluster>> open_cluster(const ClusterFlags& flags, ClusterOptions base);
// What serve and batch run on: over --nodes a HealingCluster (a lost node is taken back, or a
// spare takes its place), otherwise the cluster the flags ask for.
class ServingCluster {
 public:
  static StatusOr<ServingCluster> open(const ClusterFlags& flags, const ClusterOptions& base);
  Executor& executor() { return healing_ ? static_cast<Executor&>(*healing_) : *fixed_; }
  bool heals() const { return healing_ != nullptr; }
  int world_size() const { return healing_ ? healing_->current()->plan().world_size : fixed_->plan().world_size; }
  Status shutdown() { return healing_ ? healing_->shutdown() : fixed_->shutdown(); }

 private:
  std::unique_ptr<HealingCluster> healing_;
  std::unique_ptr<Cluster> fixed_;
};

// The same over --nodes for a HealingCluster: when it fails and spares are left, each node that
// does not accept a connection within a second is replaced, for good, by the next spare
// (`flags` keeps the replacement), and the cluster is opened again.
StatusOr<std::unique_ptr<Cluster>> open_cluster_with_spares(ClusterFlags& flags, const ClusterOptions& base);

// True when this process is a rank of an MPI job (mpirun or srun set the environment).
bool under_mpi();
int mpi_rank_from_env();
// The life of an MPI rank other than 0: serve sessions until told to exit. Returns the exit status.
int run_mpi_node();

void add_node(CLI::App& app, int& rc);

}  // namespace shoal::cli
