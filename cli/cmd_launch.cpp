// shoal launch: start a cluster the way its users work. `mpirun` (a lab's workstations with
// Open MPI), `ssh` (a homelab: cli/launch_ssh.cpp), `slurm` (cli/cmd_launch_slurm.cpp, when
// built). The commands come from cluster/launch.h (pure functions, tests compare the strings).
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli/commands.h"
#include "cli/launch_ssh.h"
#include "cluster/launch.h"

namespace shoal::cli {
namespace {

struct MpirunOptions {
  std::string hostfile, model, shoal, net_device, ucx_tls, bind_to = "none", mpirun = "mpirun";
  int np = 0;
  bool tcp = false, ucx = false, dry_run = false;
  std::vector<std::string> args;
};

int run_mpirun(const MpirunOptions& o) {
  std::ifstream in(o.hostfile);
  if (!in) return fail(not_found("--hostfile " + o.hostfile + ": cannot read it"));
  std::stringstream text;
  text << in.rdbuf();
  auto hosts = cluster::parse_hostfile(text.str(), o.hostfile);
  if (!hosts.ok()) return fail(hosts.status());
  if (o.tcp && o.ucx) return fail(invalid_argument("give one of --ucx and --tcp"));
  cluster::MpirunSpec s;
  s.mpirun = o.mpirun;
  s.hostfile = o.hostfile;
  s.hosts = *hosts;
  s.np = o.np;
  s.transport = o.tcp ? cluster::MpiTransport::kTcp : cluster::MpiTransport::kUcx;
  s.net_device = o.net_device;
  s.ucx_tls = o.ucx_tls;
  s.bind_to = o.bind_to;
  s.as_root = ::geteuid() == 0;
  s.shoal = o.shoal.empty() ? std::filesystem::read_symlink("/proc/self/exe").string() : o.shoal;
  s.model = o.model;
  s.args = o.args;
  auto argv = cluster::mpirun_argv(s);
  if (!argv.ok()) return fail(argv.status());
  if (o.dry_run) {
    std::printf("%s\n", cluster::shell_join(*argv).c_str());
    return 0;
  }
  std::fprintf(stderr, "shoal launch: %s\n", cluster::shell_join(*argv).c_str());
  std::fflush(stderr);
  std::vector<char*> args;
  for (const std::string& a : *argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  ::execvp(args[0], args.data());  // mpirun takes over: its signals, its exit status
  return fail(not_found("cannot run " + o.mpirun + ": " + std::strerror(errno) + " (install openmpi-bin, or --mpirun PATH)"));
}

void add_mpirun(CLI::App& launch, int& rc) {
  auto o = std::make_shared<MpirunOptions>();
  CLI::App* sub = launch.add_subcommand("mpirun", "Run a shoal command over the hosts of an Open MPI hostfile");
  sub->add_option("--hostfile", o->hostfile, "Open MPI hostfile: 'host slots=N' per line")->required();
  sub->add_option("--np", o->np, "Ranks (default: the sum of the slots)")->check(CLI::PositiveNumber);
  sub->add_option("--model", o->model, "Checkpoint folder, same path on every host (added as --model)");
  sub->add_flag("--ucx", o->ucx, "Open MPI's pml ucx (the default)");
  sub->add_flag("--tcp", o->tcp, "Open MPI's pml ob1 with the tcp btl");
  sub->add_option("--net-device", o->net_device, "Network interface to use, e.g. eth0 (default: all)");
  sub->add_option("--ucx-tls", o->ucx_tls, "UCX_TLS, e.g. tcp,self (default: UCX's choice)");
  sub->add_option("--bind-to", o->bind_to, "mpirun --bind-to (default none: a rank's threads use the node's cores)");
  sub->add_option("--shoal", o->shoal, "shoal on the hosts (default: this binary's path)");
  sub->add_option("--mpirun", o->mpirun, "The mpirun to run (default: mpirun)");
  sub->add_flag("--dry-run", o->dry_run, "Print the mpirun line instead of running it");
  sub->add_option("args", o->args, "After --: the shoal command, e.g. -- run --ids \"1 2 3\"");
  sub->callback([o, &rc] { rc = run_mpirun(*o); });
}

void add_ssh(CLI::App& launch, int& rc) {
  auto o = std::make_shared<SshLaunchOptions>();
  CLI::App* sub = launch.add_subcommand("ssh", "Start shoal node on hosts over ssh, then the coordinator here");
  sub->add_option("--hosts", o->hosts, "Hosts a,b,c (user@host allowed); the i-th is rank i")->required();
  sub->add_option("--model", o->model, "Checkpoint folder here (the coordinator's), and on the hosts by default")->required();
  sub->add_option("--node-model", o->node_model, "Folder on the hosts; {rank} is replaced, e.g. /data/shards/rank-{rank}");
  sub->add_option("--port", o->port, "Port the nodes listen on (default 7070)")->check(CLI::Range(1, 65535));
  sub->add_option("--bind", o->bind, "Address the nodes listen on (default 0.0.0.0)");
  sub->add_option("--ssh", o->ssh, "The ssh command (default: ssh -o BatchMode=yes -o ConnectTimeout=10)");
  sub->add_option("--shoal", o->shoal, "shoal on the hosts (default: this binary's path)");
  sub->add_option("--token-file", o->token_file, "Where the generated cluster token goes, here and on each host");
  sub->add_option("--timeout", o->timeout_s, "Seconds each ssh step may take (default 60)")->check(CLI::PositiveNumber);
  sub->add_flag("--no-memory-check", [o](int64_t) { o->memory_check = false; }, "Start even where memory looks short");
  sub->add_flag("--dry-run", o->dry_run, "Print the commands instead of running them");
  sub->add_option("args", o->args, "After --: the coordinator command, e.g. -- serve --port 8000");
  sub->callback([o, &rc] { rc = run_launch_ssh(*o); });
}

}  // namespace

void add_launch(CLI::App& app, int& rc) {
  CLI::App* launch = app.add_subcommand("launch", "Start a cluster: mpirun, ssh (homelab) or slurm");
  launch->require_subcommand(1);
  add_mpirun(*launch, rc);
  add_ssh(*launch, rc);
#ifdef SHOAL_HAVE_LAUNCH_SLURM
  add_launch_slurm(*launch, rc);
#endif
}

}  // namespace shoal::cli
