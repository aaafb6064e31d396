// shoal launch ssh: a homelab cluster over ssh (docs/deploy-homelab.md). Checks every host,
// copies a fresh cluster token, starts `shoal node` on each, runs the coordinator, and tears it
// all down on Ctrl-C, SIGTERM, the coordinator's end, or the death of any node. The commands
// come from cluster/launch.h; this file runs them.
#pragma once

#include <string>
#include <vector>

namespace shoal::cli {

struct SshLaunchOptions {
  std::string hosts;               // a,b,c (user@host allowed); hosts[i] runs rank i + 1
  std::string model;               // the coordinator's checkpoint (and the nodes' by default)
  std::string node_model;          // the nodes' folder; "{rank}" is replaced; default: model
  int port = 7070;
  std::string bind = "0.0.0.0";    // address nodes listen on
  std::string ssh = "ssh -o BatchMode=yes -o ConnectTimeout=10";
  std::string shoal;               // shoal on the hosts; default: this binary's path
  std::string token_file = ".shoal/launch-token";  // on every host and here (relative: home dir)
  double timeout_s = 60;           // each ssh step: checks, token copy, node start, teardown
  bool memory_check = true;
  bool dry_run = false;
  std::vector<std::string> args;   // the coordinator command: run ..., serve ...
};

// Returns the exit status: the coordinator's, 1 when a check failed or a node died, 128+signal
// when stopped by SIGINT/SIGTERM.
int run_launch_ssh(const SshLaunchOptions& options);

}  // namespace shoal::cli
