// Launchers as pure functions: a description of the cluster in, argv vectors and shell command
// strings out (docs/deploy-university.md, docs/deploy-homelab.md). Nothing here starts a
// process; cli/cmd_launch.cpp and cli/launch_ssh.cpp run what these build. Tests compare the
// strings (tests/test_launch.cpp).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/status.h"

namespace shoal::cluster {

// ---- shell words ----

// One word for sh: as is when it has only safe characters, else in single quotes.
std::string shell_quote(const std::string& word);
std::string shell_join(const std::vector<std::string>& argv);
// Splits a command given as one string (--ssh "ssh -F cfg") at whitespace; no quoting rules.
std::vector<std::string> split_words(const std::string& text);

// ---- mpirun ----

struct HostSlots {
  std::string host;
  int slots = 1;
};
// Open MPI hostfile text: "host [slots=N] [max_slots=M]" per line, '#' comments. `name` (the
// file) is named in errors: "hosts.txt line 3: slots=x is not a positive count".
StatusOr<std::vector<HostSlots>> parse_hostfile(const std::string& text, const std::string& name);

enum class MpiTransport { kUcx, kTcp };

struct MpirunSpec {
  std::string mpirun = "mpirun";
  std::string hostfile;             // path given to mpirun
  std::vector<HostSlots> hosts;     // its contents (parse_hostfile)
  int np = 0;                       // ranks; 0: the sum of the slots
  MpiTransport transport = MpiTransport::kUcx;
  std::string net_device;           // e.g. eth0: UCX_NET_DEVICES, btl/oob_tcp_if_include; empty: all
  std::string ucx_tls;              // e.g. tcp,self: UCX_TLS; empty: UCX's choice
  std::string bind_to = "none";     // --bind-to: a rank runs one OpenMP thread per core it may use
  bool as_root = false;             // adds --allow-run-as-root
  std::string shoal;                // the shoal binary, same path on every host
  std::string model;                // appended as --model unless args has one; may be empty
  std::vector<std::string> args;    // the shoal subcommand and its flags (run ..., serve ...)
};
// `mpirun [--allow-run-as-root] --hostfile H -np N --map-by slot --bind-to B <transport> shoal
// args... [--model M]`. Errors: no hosts, np above the slots, no subcommand, a net device or
// transport word with shell-special characters.
StatusOr<std::vector<std::string>> mpirun_argv(const MpirunSpec& spec);

// ---- ssh (homelab) ----

// "user@host" -> "host" (the address nodes listen on and the coordinator dials).
std::string host_address(const std::string& ssh_host);
// The ssh command words, then the host, then one remote command string (ssh joins its
// arguments and hands them to the remote shell, so the command is passed as one word).
std::vector<std::string> ssh_argv(const std::vector<std::string>& ssh, const std::string& host,
                                  const std::string& remote_command);

// What a host has, as printed by remote_check_command and read by parse_check_output.
struct HostCheck {
  bool shoal_found = false;
  std::string version;                   // first line of `shoal --version`
  bool config_found = false;
  std::map<std::string, int64_t> files;  // *.safetensors, index and shard manifest: name -> bytes
  int64_t mem_available = -1;            // MemAvailable of /proc/meminfo, bytes; -1: unknown
};
// A POSIX sh script printing "shoal-check: ..." lines about `shoal` and `model_dir`.
std::string remote_check_command(const std::string& shoal, const std::string& model_dir);
// Reads the lines of remote_check_command's output; an output without its end marker is an
// error (the host did not run it to the end).
StatusOr<HostCheck> parse_check_output(const std::string& text);

// "shoal 0.1.0 (abc123), cpu only" -> "0.1.0+abc123", the build id the hello compares; "" when
// the line is not shoal's --version.
std::string build_id_from_version(const std::string& version_line);

// Writes stdin to `token_file` on the host, readable by its owner only (umask 077, chmod 600).
std::string remote_token_command(const std::string& token_file);

struct NodeStart {
  std::string shoal;
  std::string listen;      // HOST:PORT
  std::string token_file;
  std::string model_dir;   // empty: the coordinator's path
};
// Starts `shoal node` on the host and prints "shoal-launch: pid N"; the node ends when the
// launcher closes the ssh session's stdin (or the session dies), and its exit is reported as
// "shoal-launch: node exited with status S" before the script exits with S.
std::string remote_node_command(const NodeStart& node);
// Ends the node with that pid (SIGTERM), for hosts whose session did not take it down.
std::string remote_kill_command(int64_t pid);

// `shoal <args> [--model M] --nodes h1:p,h2:p --token-file F`; args must not hold --nodes,
// --token-file, --local-nodes (the launcher gives them).
StatusOr<std::vector<std::string>> coordinator_argv(const std::string& shoal, const std::vector<std::string>& args,
                                                    const std::string& model,
                                                    const std::vector<std::string>& node_addresses,
                                                    const std::string& token_file);

// "{rank}" in a node's model path template -> its rank (hosts[i] is rank i + 1).
std::string node_model_dir(const std::string& templ, int rank);

}  // namespace shoal::cluster
