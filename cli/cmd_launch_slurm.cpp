// shoal launch slurm: writes (or prints) a Slurm job script for `shoal batch` over a corpus or for
// `shoal serve` (docs/deploy-slurm.md). The text comes from cluster/slurm_script.h (a pure
// function, tested by comparing strings); this file only resolves paths, writes the file and,
// with --submit, hands it to sbatch.
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>

#include "cli/commands.h"
#include "cluster/slurm_script.h"
#include "cluster/spec.h"

namespace shoal::cli {
namespace {

namespace fs = std::filesystem;

struct SlurmOptions {
  cluster::SlurmJob job;
  bool batch = false, serve = false, submit = false;
  std::string out, cluster;
  bool nodes_given = false, ntasks_given = false, gpus_given = false;
};

std::string absolute(const std::string& path) {
  if (path.empty()) return path;
  std::error_code ec;
  const fs::path p = fs::absolute(path, ec);
  return ec ? path : p.lexically_normal().string();
}

int run(SlurmOptions o) {
  if (o.batch && o.serve) return fail(invalid_argument("give one of --batch and --serve"));
  cluster::SlurmJob& j = o.job;
  if (!o.cluster.empty()) {
    if (o.nodes_given || o.ntasks_given || o.gpus_given)
      return fail(invalid_argument("--cluster sets --nodes, --ntasks and --gpus-per-node: give either"));
    auto spec = cluster::read_spec_file(o.cluster);
    if (!spec.ok()) return fail(spec.status());
    if (Status s = cluster::apply_cluster_spec(*spec, o.cluster, j); !s.ok()) return fail(s);
  }
  j.kind = o.serve ? cluster::SlurmJobKind::kServe : cluster::SlurmJobKind::kBatch;
  if (j.shoal.empty()) {
    std::error_code ec;
    j.shoal = fs::read_symlink("/proc/self/exe", ec).string();
    if (ec) return fail(not_found("cannot find this shoal's path (/proc/self/exe): give --shoal PATH"));
  } else {
    j.shoal = absolute(j.shoal);
  }
  j.model = absolute(j.model);
  j.input = absolute(j.input);
  j.output = absolute(j.output);
  auto script = cluster::slurm_script(j);
  if (!script.ok()) return fail(script.status());
  if (o.out.empty()) {
    if (o.submit) return fail(invalid_argument("--submit needs --out FILE: the script sbatch is given"));
    std::fputs(script->c_str(), stdout);
    return 0;
  }
  {
    std::ofstream f(o.out, std::ios::binary | std::ios::trunc);
    if (!f) return fail(invalid_argument("--out " + o.out + ": cannot write it: " + std::strerror(errno)));
    f << *script;
    f.flush();
    if (!f) return fail(invalid_argument("--out " + o.out + ": write failed: " + std::strerror(errno)));
  }
  ::chmod(o.out.c_str(), 0755);
  if (!o.submit) {
    std::fprintf(stderr, "shoal launch slurm: wrote %s; submit it with: sbatch %s\n", o.out.c_str(), o.out.c_str());
    return 0;
  }
  std::fprintf(stderr, "shoal launch slurm: wrote %s; sbatch %s\n", o.out.c_str(), o.out.c_str());
  std::fflush(stderr);
  ::execlp("sbatch", "sbatch", o.out.c_str(), static_cast<char*>(nullptr));  // sbatch prints the job id
  return fail(not_found(std::string("cannot run sbatch: ") + std::strerror(errno) +
                        " (install slurm-client, or submit " + o.out + " on a login node)"));
}

}  // namespace

void add_launch_slurm(CLI::App& launch, int& rc) {
  auto o = std::make_shared<SlurmOptions>();
  cluster::SlurmJob& j = o->job;
  CLI::App* sub = launch.add_subcommand(
      "slurm", "Write a Slurm job script: shoal batch over a corpus (--batch, resumable, requeued) or shoal serve (--serve)");
  sub->add_flag("--batch", o->batch, "A batch job: shoal batch -i IN -o OUT (the default)");
  sub->add_flag("--serve", o->serve, "A serving job: shoal serve on the first node");
  sub->add_option("--model", j.model, "Checkpoint folder, the same path on every node")->required();
  sub->add_option("-i,--input", j.input, "--batch: the requests file (OpenAI batch format)");
  sub->add_option("-o,--output", j.output, "--batch: the results file (also the journal a rerun resumes from)");
  CLI::Option* nodes = sub->add_option("--nodes", j.nodes, "Nodes (default 1)");
  CLI::Option* ntasks = sub->add_option("--ntasks", j.ntasks, "Tasks = shoal ranks (default: one per node)");
  sub->add_option("--cpus-per-task", j.cpus_per_task, "CPUs per task (default: Slurm's)");
  CLI::Option* gpus = sub->add_option("--gpus-per-node", j.gpus_per_node, "GPUs per node (default: none asked)");
  sub->add_option("--cluster", o->cluster,
                  "Cluster spec (JSON, docs/plan.md): nodes, tasks (one per GPU, or cpu_ranks) and GPUs per node from it");
  sub->add_option("--mem", j.mem, "Memory per node, e.g. 200G (default: Slurm's)");
  sub->add_option("--partition", j.partition, "Partition (default: the cluster's default)");
  sub->add_option("--account", j.account, "Account to charge");
  sub->add_option("--time", j.time, "Time limit: minutes, HH:MM:SS or D-HH:MM:SS (default: the partition's)");
  sub->add_option("--grace", j.grace_s,
                  "--batch: seconds before the time limit when the job stops shoal batch and requeues itself (default 300)");
  sub->add_option("--drain-timeout", j.drain_timeout_s,
                  "--batch: seconds running requests may finish after SIGTERM; below KillWait and --grace (default 20)");
  sub->add_option("--job-name", j.job_name, "Job name (default shoal-batch / shoal-serve)");
  sub->add_option("--log", j.log, "Job log (sbatch --output; default shoal-batch-%j.out in the submit folder)");
  sub->add_option("--launcher", j.launcher, "How ranks start in the allocation: srun (--mpi=pmix, default), mpirun, none");
  sub->add_option("--shoal", j.shoal, "shoal on the nodes (default: this binary's path)");
  sub->add_option("--host", j.host, "--serve: address to bind on the first node (default 0.0.0.0)");
  sub->add_option("--port", j.port, "--serve: port (default 8000; 0: any, printed in the job log)");
  sub->add_option("--args", j.args, "More shoal batch/serve flags, e.g. \"--slots 32 --max-seq-len 8192\"");
  sub->add_option("--out", o->out, "Write the script to FILE (default: print it)");
  sub->add_flag("--submit", o->submit, "Then submit it: sbatch FILE (needs --out)");
  sub->callback([o, &rc, nodes, ntasks, gpus] {
    o->nodes_given = nodes->count() > 0;
    o->ntasks_given = ntasks->count() > 0;
    o->gpus_given = gpus->count() > 0;
    rc = run(*o);
  });
}

}  // namespace shoal::cli
