// Slurm job scripts: header from the parameters + the body of scripts/slurm/*.sbatch.
#include "cluster/slurm_script.h"

#include <cstdio>
#include <regex>

#include "cluster/slurm_bodies.h"
#include "cluster/spec.h"

namespace shoal::cluster {
namespace {

const char* kBodyMarker = "# ---- body:";

std::string body_of(const char* script) {
  const std::string text(script);
  const size_t at = text.find(kBodyMarker);
  return at == std::string::npos ? std::string() : text.substr(at);
}

std::string fmt_seconds(double s) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%g", s);
  return buf;
}

// A value that goes on an #SBATCH line: one word, printable.
Status check_sbatch_value(const std::string& flag, const std::string& value) {
  for (unsigned char c : value)
    if (c <= ' ' || c == '"' || c == '\'' || c == '\\' || c == 0x7f)
      return invalid_argument(flag + " '" + value + "': an #SBATCH value cannot hold spaces, quotes or control characters");
  return {};
}

Status check_line(const std::string& flag, const std::string& value) {
  for (unsigned char c : value)
    if (c == '\n' || c == '\r' || c == 0) return invalid_argument(flag + ": the value holds a line break or NUL");
  return {};
}

}  // namespace

std::string sh_word(const std::string& word) {
  static const std::regex safe("[A-Za-z0-9_./:=@%+,-]+");
  if (std::regex_match(word, safe)) return word;
  std::string out = "'";
  for (char c : word) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

long long slurm_time_seconds(const std::string& text) {
  // minutes | minutes:seconds | hours:minutes:seconds | days-hours | days-hours:minutes | days-hours:minutes:seconds
  static const std::regex plain("([0-9]+)(?::([0-9]+))?(?::([0-9]+))?");
  static const std::regex days("([0-9]+)-([0-9]+)(?::([0-9]+))?(?::([0-9]+))?");
  std::smatch m;
  auto num = [&](int i) { return m[i].matched ? std::stoll(m[i].str()) : 0LL; };
  try {
    if (std::regex_match(text, m, days)) return num(1) * 86400 + num(2) * 3600 + num(3) * 60 + num(4);
    if (std::regex_match(text, m, plain)) {
      if (m[3].matched) return num(1) * 3600 + num(2) * 60 + num(3);
      return num(1) * 60 + num(2);
    }
  } catch (...) {  // a number too long for long long
  }
  return -1;
}

const std::string& slurm_body(SlurmJobKind kind) {
  static const std::string batch = body_of(embedded::kShoalSbatch);
  static const std::string serve = body_of(embedded::kShoalServeSbatch);
  return kind == SlurmJobKind::kBatch ? batch : serve;
}

Status apply_cluster_spec(const ClusterSpec& spec, const std::string& where, SlurmJob& job) {
  if (spec.nodes.empty()) return invalid_argument(where + ": the cluster spec has no nodes");
  auto ranks_of = [](const NodeSpec& n) { return n.gpus.empty() ? n.cpu_ranks : int(n.gpus.size()); };
  const NodeSpec& first = spec.nodes.front();
  for (const NodeSpec& n : spec.nodes) {
    if (ranks_of(n) != ranks_of(first) || n.gpus.size() != first.gpus.size())
      return invalid_argument(where + ": node " + n.name + " has " + std::to_string(n.gpus.size()) + " GPUs and " +
                              std::to_string(ranks_of(n)) + " ranks, node " + first.name + " " +
                              std::to_string(first.gpus.size()) + " GPUs and " + std::to_string(ranks_of(first)) +
                              " ranks: Slurm spreads tasks evenly over the nodes; give --nodes, --ntasks and "
                              "--gpus-per-node yourself (and a --plan that matches)");
  }
  job.nodes = int(spec.nodes.size());
  job.ntasks = job.nodes * ranks_of(first);
  job.gpus_per_node = int(first.gpus.size());
  return {};
}

StatusOr<std::string> slurm_script(const SlurmJob& j) {
  const bool batch = j.kind == SlurmJobKind::kBatch;
  const std::string what = batch ? "batch" : "serve";
  for (const auto& [flag, value] :
       {std::pair<std::string, const std::string*>{"--shoal", &j.shoal}, {"--model", &j.model}, {"--input", &j.input},
        {"--output", &j.output}, {"--args", &j.args}, {"--host", &j.host}})
    SHOAL_RETURN_IF_ERROR(check_line(flag, *value));
  if (j.shoal.empty()) return invalid_argument("--shoal: the path of the shoal executable on the nodes is empty");
  if (j.model.empty()) return invalid_argument("--model is required: the checkpoint folder, the same path on every node");
  if (batch) {
    if (j.input.empty()) return invalid_argument("--batch jobs need -i/--input: the requests file");
    if (j.output.empty()) return invalid_argument("--batch jobs need -o/--output: the results file");
    if (j.input == j.output) return invalid_argument("-o/--output " + j.output + " is the input file");
  } else {
    if (!j.input.empty() || !j.output.empty())
      return invalid_argument("-i/--input and -o/--output are for --batch jobs; a --serve job takes requests over HTTP");
  }
  if (j.nodes < 1) return invalid_argument("--nodes " + std::to_string(j.nodes) + ": a job needs at least one node");
  const int ntasks = j.ntasks == 0 ? j.nodes : j.ntasks;
  if (ntasks < j.nodes)
    return invalid_argument("--ntasks " + std::to_string(ntasks) + " is fewer than --nodes " + std::to_string(j.nodes) +
                            ": every node needs at least one task (a shoal rank)");
  if (j.cpus_per_task < 0) return invalid_argument("--cpus-per-task " + std::to_string(j.cpus_per_task) + " is negative");
  if (j.gpus_per_node < 0) return invalid_argument("--gpus-per-node " + std::to_string(j.gpus_per_node) + " is negative");
  if (j.launcher != "srun" && j.launcher != "mpirun" && j.launcher != "none")
    return invalid_argument("--launcher '" + j.launcher + "': use srun (srun --mpi=pmix), mpirun or none");
  if (j.launcher == "none" && ntasks > 1)
    return invalid_argument("--launcher none runs one process, but the job has " + std::to_string(ntasks) +
                            " tasks: use srun or mpirun, or --ntasks 1");
  SHOAL_RETURN_IF_ERROR(check_sbatch_value("--partition", j.partition));
  SHOAL_RETURN_IF_ERROR(check_sbatch_value("--account", j.account));
  SHOAL_RETURN_IF_ERROR(check_sbatch_value("--job-name", j.job_name));
  SHOAL_RETURN_IF_ERROR(check_sbatch_value("--mem", j.mem));
  SHOAL_RETURN_IF_ERROR(check_sbatch_value("--log", j.log));
  SHOAL_RETURN_IF_ERROR(check_sbatch_value("--time", j.time));
  long long limit_s = -1;
  if (!j.time.empty()) {
    limit_s = slurm_time_seconds(j.time);
    if (limit_s <= 0)
      return invalid_argument("--time '" + j.time +
                              "' is not a Slurm time limit (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS) above 0");
  }
  if (batch) {
    if (j.grace_s < 1) return invalid_argument("--grace " + std::to_string(j.grace_s) + ": the warning before the time limit must be at least 1 s");
    if (limit_s > 0 && j.grace_s >= limit_s)
      return invalid_argument("--grace " + std::to_string(j.grace_s) + " s is not below --time " + j.time + " (" +
                              std::to_string(limit_s) + " s): the job would be warned before it starts");
    if (!(j.drain_timeout_s >= 0)) return invalid_argument("--drain-timeout " + fmt_seconds(j.drain_timeout_s) + " is negative");
    if (j.drain_timeout_s >= j.grace_s)
      return invalid_argument("--drain-timeout " + fmt_seconds(j.drain_timeout_s) + " s is not below --grace " +
                              std::to_string(j.grace_s) + " s: the drain must end before the time limit");
  } else {
    if (j.port < 0 || j.port > 65535) return invalid_argument("--port " + std::to_string(j.port) + " is not a port (0-65535)");
    if (j.host.empty()) return invalid_argument("--host is empty: the address shoal serve binds, e.g. 0.0.0.0");
    SHOAL_RETURN_IF_ERROR(check_sbatch_value("--host", j.host));
  }
  const std::string& body = slurm_body(j.kind);
  if (body.empty()) return internal_error("the built-in " + what + " script has no body (scripts/slurm)");

  const std::string name = j.job_name.empty() ? "shoal-" + what : j.job_name;
  const std::string log = j.log.empty() ? "shoal-" + what + "-%j.out" : j.log;
  std::string s = "#!/bin/bash\n";
  if (batch) {
    s += "# Written by `shoal launch slurm --batch`: shoal batch over " + j.input + " into " + j.output + ",\n";
    s += "# " + std::to_string(ntasks) + " shoal ranks (one per Slurm task), resumable. Submit: sbatch THIS_FILE.\n";
  } else {
    s += "# Written by `shoal launch slurm --serve`: shoal serve of " + j.model + ",\n";
    s += "# " + std::to_string(ntasks) + " shoal ranks (one per Slurm task). Submit: sbatch THIS_FILE.\n";
  }
  s += "# The job log " + log + " says how it goes. docs/deploy-slurm.md.\n";
  s += "#SBATCH --job-name=" + name + "\n";
  s += "#SBATCH --nodes=" + std::to_string(j.nodes) + "\n";
  s += "#SBATCH --ntasks=" + std::to_string(ntasks) + "\n";
  if (j.cpus_per_task > 0) s += "#SBATCH --cpus-per-task=" + std::to_string(j.cpus_per_task) + "\n";
  if (j.gpus_per_node > 0) s += "#SBATCH --gpus-per-node=" + std::to_string(j.gpus_per_node) + "\n";
  if (!j.mem.empty()) s += "#SBATCH --mem=" + j.mem + "\n";
  if (!j.partition.empty()) s += "#SBATCH --partition=" + j.partition + "\n";
  if (!j.account.empty()) s += "#SBATCH --account=" + j.account + "\n";
  if (!j.time.empty()) s += "#SBATCH --time=" + j.time + "\n";
  if (batch) {
    s += "#SBATCH --requeue\n";
    s += "#SBATCH --signal=B:USR1@" + std::to_string(j.grace_s) + "\n";
    s += "#SBATCH --open-mode=append\n";
  }
  s += "#SBATCH --output=" + log + "\n";
  s += "\n";
  s += "SHOAL_BIN=" + sh_word(j.shoal) + "\n";
  s += "SHOAL_MODEL=" + sh_word(j.model) + "\n";
  if (batch) {
    s += "SHOAL_INPUT=" + sh_word(j.input) + "\n";
    s += "SHOAL_OUTPUT=" + sh_word(j.output) + "\n";
  }
  s += "SHOAL_LAUNCHER=" + j.launcher + "\n";
  if (batch) {
    s += "SHOAL_DRAIN_TIMEOUT=" + fmt_seconds(j.drain_timeout_s) + "\n";
  } else {
    s += "SHOAL_HOST=" + j.host + "\n";
    s += "SHOAL_PORT=" + std::to_string(j.port) + "\n";
  }
  s += "SHOAL_ARGS=" + sh_word(j.args) + "\n";
  s += "\n";
  s += body;
  return s;
}

}  // namespace shoal::cluster
