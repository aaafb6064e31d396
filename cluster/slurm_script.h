// Slurm job scripts for `shoal batch` and `shoal serve` (docs/deploy-slurm.md): a pure function
// from the job's parameters to the script text, tested by comparing strings (tests/test_slurm.cpp).
// The script is a header (#SBATCH lines and the parameters) followed by the body of
// scripts/slurm/shoal.sbatch or scripts/slurm/shoal-serve.sbatch, embedded at build time, so a
// generated script and the checked-in one run the same code.
#pragma once

#include <string>

#include "common/status.h"

namespace shoal::cluster {

struct ClusterSpec;  // cluster/spec.h

enum class SlurmJobKind { kBatch, kServe };

struct SlurmJob {
  SlurmJobKind kind = SlurmJobKind::kBatch;
  std::string shoal;             // the shoal executable on the nodes (an absolute path)
  std::string model;             // checkpoint folder, the same path on every node
  std::string input, output;     // batch: requests and results
  int nodes = 1;                 // --nodes
  int ntasks = 0;                // --ntasks = shoal ranks; 0: one per node
  int cpus_per_task = 0;         // 0: not asked
  int gpus_per_node = 0;         // 0: not asked
  std::string mem;               // --mem per node, e.g. 200G; empty: not asked
  std::string partition, account, job_name, time;  // empty: Slurm's defaults (job name: shoal-batch/-serve)
  std::string log;               // --output; empty: shoal-batch-%j.out / shoal-serve-%j.out
  int grace_s = 300;             // batch: USR1 this many seconds before the time limit
  double drain_timeout_s = 20;   // batch: shoal batch --drain-timeout (below KillWait and grace)
  std::string launcher = "srun"; // srun | mpirun | none
  std::string host = "0.0.0.0";  // serve: shoal serve --host
  int port = 8000;               // serve: shoal serve --port (0: any, printed in the log)
  std::string args;              // more shoal batch/serve flags, split at spaces by the script
};

// The script, or invalid_argument naming the parameter that is wrong.
StatusOr<std::string> slurm_script(const SlurmJob& job);

// `shoal launch slurm --cluster spec.json`: the allocation a cluster spec asks for. One node per
// spec node, one task per rank (a GPU, or cpu_ranks of a CPU node, as shoal plan counts them),
// --gpus-per-node the GPUs of a node. Sets job.nodes, job.ntasks and job.gpus_per_node; refuses
// a spec whose nodes run different numbers of ranks or hold different numbers of GPUs (Slurm
// spreads tasks evenly), naming them. `where` names the spec in errors.
Status apply_cluster_spec(const ClusterSpec& spec, const std::string& where, SlurmJob& job);

// Slurm's time formats (minutes, minutes:seconds, hours:minutes:seconds, days-hours,
// days-hours:minutes, days-hours:minutes:seconds) in seconds; -1 when `text` is none of them.
long long slurm_time_seconds(const std::string& text);

// The body of each script as built in (from its "# ---- body:" line to the end).
const std::string& slurm_body(SlurmJobKind kind);

// `word` as one word for sh: as it is when only safe characters, else in single quotes.
std::string sh_word(const std::string& word);

}  // namespace shoal::cluster
