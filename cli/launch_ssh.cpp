#include "cli/launch_ssh.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>

#include "cli/commands.h"
#include "cluster/launch.h"
#include "cluster/plan.h"
#include "model/checkpoint.h"

namespace shoal::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using cluster::shell_join;

Status deadline_exceeded(std::string m) { return Status(Code::kDeadlineExceeded, std::move(m)); }
Status unavailable(std::string m) { return Status(Code::kUnavailable, std::move(m)); }

int g_signal_pipe[2] = {-1, -1};
void on_signal(int sig) {
  const char c = char(sig);
  (void)!::write(g_signal_pipe[1], &c, 1);
}

// A child process in its own process group (a Ctrl-C at the terminal reaches only the
// launcher, which then stops everything in order), stdout and stderr on one pipe.
struct Proc {
  std::string host;  // for messages
  pid_t pid = -1;
  int in = -1, out = -1;
  std::string buf;   // stdout not yet split into lines
  std::string all;   // everything read (checks)
  bool eof = false, exited = false;
  int status = 0;

  bool running() { return pid > 0 && !reap(); }
  bool reap() {
    if (exited || pid <= 0) return true;
    if (::waitpid(pid, &status, WNOHANG) == pid) exited = true;
    return exited;
  }
  void signal(int sig) { if (pid > 0 && !exited) ::kill(-pid, sig); }
  void close_in() { if (in >= 0) ::close(in), in = -1; }
  // Reads what is there (non-blocking); false when nothing more is there now, or at EOF.
  bool read_some() {
    char chunk[4096];
    const ssize_t got = ::read(out, chunk, sizeof chunk);
    if (got > 0) {
      buf.append(chunk, size_t(got));
      all.append(chunk, size_t(got));
      return true;
    }
    if (got < 0 && errno == EINTR) return true;
    if (got == 0 || errno != EAGAIN) eof = true;
    return false;
  }
  bool next_line(std::string& line) {
    const size_t nl = buf.find('\n');
    if (nl == std::string::npos) return false;
    line = buf.substr(0, nl);
    buf.erase(0, nl + 1);
    return true;
  }
};

Proc spawn(const std::vector<std::string>& argv, const std::string& host, bool capture, bool stdin_pipe) {
  Proc p;
  p.host = host;
  int out[2] = {-1, -1}, in[2] = {-1, -1};
  if ((capture && ::pipe(out) != 0) || (stdin_pipe && ::pipe(in) != 0)) return p;
  p.pid = ::fork();
  if (p.pid == 0) {
    ::setpgid(0, 0);
    ::signal(SIGINT, SIG_DFL);
    ::signal(SIGTERM, SIG_DFL);
    ::signal(SIGPIPE, SIG_DFL);
    if (stdin_pipe) ::dup2(in[0], 0);
    else ::dup2(::open("/dev/null", O_RDONLY), 0);
    if (capture) ::dup2(out[1], 1), ::dup2(out[1], 2);
    for (int fd : {out[0], out[1], in[0], in[1], g_signal_pipe[0], g_signal_pipe[1]})
      if (fd > 2) ::close(fd);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execvp(args[0], args.data());
    std::fprintf(stderr, "shoal launch: cannot run %s: %s\n", argv[0].c_str(), std::strerror(errno));
    ::_exit(127);
  }
  if (capture) {
    ::close(out[1]);
    p.out = out[0];
    ::fcntl(p.out, F_SETFL, O_NONBLOCK);
  }
  if (stdin_pipe) {
    ::close(in[0]);
    p.in = in[1];
  }
  return p;
}

// Waits for every proc's output to end and the proc to exit, until `deadline`; those still
// running then are killed and named in the error.
Status wait_all(std::vector<Proc>& procs, Clock::time_point deadline, const std::string& what) {
  while (true) {
    std::vector<pollfd> fds;
    bool busy = false;
    for (Proc& p : procs) {
      if (!p.eof && p.out >= 0) fds.push_back({p.out, POLLIN, 0}), busy = true;
      else if (!p.reap()) busy = true;
    }
    if (!busy) return {};
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) break;
    ::poll(fds.data(), fds.size(), int(std::min<int64_t>(left, 100)));
    for (Proc& p : procs)
      if (!p.eof && p.out >= 0) while (p.read_some()) {}
  }
  std::string late;
  for (Proc& p : procs)
    if (!p.eof || !p.reap()) {
      late += (late.empty() ? "" : ", ") + p.host;
      p.signal(SIGKILL);
      ::waitpid(p.pid, &p.status, 0);
      p.exited = true;
    }
  return deadline_exceeded(what + ": no answer from " + late + " by the deadline");
}

std::string exit_text(int status) {
  if (WIFEXITED(status)) return "exit status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("signal ") + strsignal(WTERMSIG(status));
  return "status " + std::to_string(status);
}

StatusOr<std::string> new_token() {
  unsigned char bytes[32];
  if (::getrandom(bytes, sizeof bytes, 0) != ssize_t(sizeof bytes)) return internal_error("getrandom failed");
  std::string hex;
  char two[3];
  for (unsigned char b : bytes) std::snprintf(two, sizeof two, "%02x", b), hex += two;
  return hex;
}

Status write_local_token(const fs::path& file, const std::string& token) {
  std::error_code ec;
  if (file.has_parent_path()) fs::create_directories(file.parent_path(), ec);
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) return unavailable("cannot write the token file " + file.string() + ": " + std::strerror(errno));
  const std::string text = token + "\n";
  const bool ok = ::fchmod(fd, 0600) == 0 && ::write(fd, text.data(), text.size()) == ssize_t(text.size());
  ::close(fd);
  return ok ? Status() : unavailable("cannot write the token file " + file.string());
}

bool has_arg(const std::vector<std::string>& args, const std::string& flag, std::string* value = nullptr) {
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == flag) {
      if (value && i + 1 < args.size()) *value = args[i + 1];
      return true;
    }
    if (args[i].rfind(flag + "=", 0) == 0) {
      if (value) *value = args[i].substr(flag.size() + 1);
      return true;
    }
  }
  return false;
}

// Weight bytes of each host's rank under the plan the coordinator will use (its --plan, or the
// default planner over ranks 1..N with the coordinator hosting nothing).
StatusOr<std::vector<int64_t>> host_shares(const SshLaunchOptions& o, size_t n) {
  SHOAL_ASSIGN_OR_RETURN(auto ck, Checkpoint::open(o.model));
  SHOAL_ASSIGN_OR_RETURN(cluster::UnitBytes bytes, cluster::unit_bytes(*ck));
  std::string plan_file;
  cluster::Plan plan;
  if (has_arg(o.args, "--plan", &plan_file)) {
    SHOAL_ASSIGN_OR_RETURN(plan, cluster::read_plan_file(plan_file, ck->config(), int(n) + 1));
  } else {
    cluster::PlannerOptions po;
    for (size_t r = 1; r <= n; ++r) po.ranks.push_back(int(r));
    po.expert_scatter = has_arg(o.args, "--expert-scatter");
    SHOAL_ASSIGN_OR_RETURN(plan, cluster::default_plan(ck->config(), bytes, int(n) + 1, po));
  }
  std::vector<int64_t> out;
  for (size_t r = 1; r <= n; ++r) out.push_back(cluster::rank_weight_bytes(plan, bytes, int(r)));
  return out;
}

std::string gib(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", double(bytes) / double(int64_t{1} << 30));
  return buf;
}

// Everything a host must have: shoal of this build, the model files, memory for its share.
Status check_hosts(const SshLaunchOptions& o, const std::vector<std::string>& hosts,
                   const std::vector<std::string>& ssh) {
  std::vector<int64_t> shares(hosts.size(), 0);
  if (o.memory_check) {
    SHOAL_ASSIGN_OR_RETURN(shares, host_shares(o, hosts.size()));
  }
  std::map<std::string, int64_t> local;  // the coordinator's files, which full copies must match
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(o.model, ec))
    if (e.path().extension() == ".safetensors" || e.path().filename() == "model.safetensors.index.json")
      local[e.path().filename().string()] = int64_t(e.file_size(ec));
  std::vector<Proc> procs;
  for (size_t i = 0; i < hosts.size(); ++i) {
    const std::string dir = cluster::node_model_dir(o.node_model, int(i) + 1);
    procs.push_back(spawn(cluster::ssh_argv(ssh, hosts[i], cluster::remote_check_command(o.shoal, dir)), hosts[i], true, false));
  }
  SHOAL_RETURN_IF_ERROR(wait_all(procs, Clock::now() + std::chrono::milliseconds(int64_t(o.timeout_s * 1000)),
                                 "checking the hosts over ssh"));
  const std::string mine = std::string(SHOAL_VERSION) + "+" + SHOAL_GIT_COMMIT;
  std::string problems;
  for (size_t i = 0; i < hosts.size(); ++i) {
    const std::string& h = hosts[i];
    const std::string dir = cluster::node_model_dir(o.node_model, int(i) + 1);
    auto c = cluster::parse_check_output(procs[i].all);
    auto bad = [&](const std::string& why) { problems += "\n  " + h + ": " + why; };
    if (!c.ok()) {
      bad("ssh " + exit_text(procs[i].status) + ": " + c.status().message());
      continue;
    }
    if (!c->shoal_found) bad("no executable " + o.shoal + " (give its path with --shoal)");
    else if (cluster::build_id_from_version(c->version) != mine)
      bad("shoal there is '" + c->version + "', this one is build " + mine + ": install the same build everywhere");
    if (!c->config_found) bad("no " + dir + "/config.json");
    if (o.node_model == o.model) {
      for (const auto& [name, bytes] : local) {
        auto it = c->files.find(name);
        if (it == c->files.end()) bad("no " + dir + "/" + name);
        else if (it->second != bytes)
          bad(dir + "/" + name + " has " + std::to_string(it->second) + " bytes, here " + std::to_string(bytes));
      }
    } else if (!c->files.count("shoal-shard.json")) {
      bad("no " + dir + "/shoal-shard.json (write the shards with shoal shard)");
    }
    if (o.memory_check && c->mem_available >= 0 && c->mem_available < shares[i])
      bad(gib(c->mem_available) + " available (MemAvailable), its share (rank " + std::to_string(i + 1) + ") is " +
          gib(shares[i]) + " of weights (--no-memory-check to start anyway)");
    if (problems.empty() || problems.find("\n  " + h + ":") == std::string::npos)
      std::fprintf(stderr, "shoal launch: %s: ok (%s, %s available, share %s)\n", h.c_str(), c->version.c_str(),
                   c->mem_available >= 0 ? gib(c->mem_available).c_str() : "? GiB", gib(shares[i]).c_str());
  }
  if (!problems.empty()) return unavailable("hosts not ready:" + problems);
  return {};
}

struct Node {
  Proc proc;
  int64_t remote_pid = -1;
  bool listening = false;
  std::string died;  // why, once it died
};

// Reads a node session's lines: its pid, its listening line, its exit; forwards the rest.
void pump(Node& n) {
  while (!n.proc.eof && n.proc.read_some()) {}
  std::string line;
  while (n.proc.next_line(line)) {
    if (line.rfind("shoal-launch: pid ", 0) == 0) {
      n.remote_pid = std::atoll(line.c_str() + 18);
    } else if (line.rfind("shoal-launch: node exited with status ", 0) == 0) {
      if (n.died.empty()) n.died = "its shoal node exited with status " + line.substr(38);
    } else {
      if (line.find("shoal node: listening on ") != std::string::npos) n.listening = true;
      std::fprintf(stderr, "[%s] %s\n", n.proc.host.c_str(), line.c_str());
    }
  }
  if (n.proc.eof && n.died.empty() && n.proc.reap()) n.died = "its ssh session ended (" + exit_text(n.proc.status) + ")";
}

// Stops the coordinator, then every node: closing a session's stdin ends its node; sessions
// still open after a while get an explicit kill over ssh; local ssh processes left are killed.
void teardown(std::vector<Node>& nodes, Proc* coordinator, const std::vector<std::string>& ssh, double timeout_s) {
  if (coordinator && coordinator->running()) {
    coordinator->signal(SIGTERM);
    const auto end = Clock::now() + std::chrono::seconds(10);
    while (coordinator->running() && Clock::now() < end) ::usleep(20000);
    if (coordinator->running()) coordinator->signal(SIGKILL), ::waitpid(coordinator->pid, &coordinator->status, 0);
  }
  for (Node& n : nodes) n.proc.close_in();
  auto wait_nodes = [&](Clock::time_point end) {
    while (Clock::now() < end) {
      bool open = false;
      for (Node& n : nodes) pump(n), open |= !(n.proc.eof && n.proc.reap());
      if (!open) return;
      ::usleep(50000);
    }
  };
  wait_nodes(Clock::now() + std::chrono::seconds(5));
  std::vector<Proc> kills;
  for (Node& n : nodes)
    if (!(n.proc.eof && n.proc.reap()) && n.remote_pid > 0)
      kills.push_back(spawn(cluster::ssh_argv(ssh, n.proc.host, cluster::remote_kill_command(n.remote_pid)), n.proc.host, true, false));
  if (!kills.empty()) {
    const Status s = wait_all(kills, Clock::now() + std::chrono::milliseconds(int64_t(timeout_s * 1000)), "stopping the nodes");
    if (!s.ok()) std::fprintf(stderr, "shoal launch: %s\n", s.to_string().c_str());
    wait_nodes(Clock::now() + std::chrono::seconds(5));
  }
  for (Node& n : nodes)
    if (!(n.proc.eof && n.proc.reap())) {
      std::fprintf(stderr, "shoal launch: %s: the node's session did not end; killing the local ssh\n", n.proc.host.c_str());
      n.proc.signal(SIGKILL);
      ::waitpid(n.proc.pid, &n.proc.status, 0);
    }
}

int launch(const SshLaunchOptions& o) {
  std::vector<std::string> hosts;
  for (const std::string& h : cluster::split_words([&] { std::string s = o.hosts; for (char& c : s) if (c == ',') c = ' '; return s; }()))
    hosts.push_back(h);
  if (hosts.empty()) return fail(invalid_argument("--hosts names no host"));
  const std::vector<std::string> ssh = cluster::split_words(o.ssh);
  if (ssh.empty()) return fail(invalid_argument("--ssh is empty"));
  std::vector<std::string> addresses;
  for (const std::string& h : hosts) addresses.push_back(cluster::host_address(h) + ":" + std::to_string(o.port));
  auto coord = cluster::coordinator_argv(o.shoal, o.args, o.model, addresses, o.token_file);
  if (!coord.ok()) return fail(coord.status());
  (*coord)[0] = fs::read_symlink("/proc/self/exe").string();  // the coordinator runs here
  std::vector<std::string> node_cmds;
  for (size_t i = 0; i < hosts.size(); ++i)
    node_cmds.push_back(cluster::remote_node_command({o.shoal, o.bind + ":" + std::to_string(o.port), o.token_file,
                                                      cluster::node_model_dir(o.node_model, int(i) + 1)}));
  if (o.dry_run) {
    for (size_t i = 0; i < hosts.size(); ++i) {
      std::printf("# %s (rank %zu)\n", hosts[i].c_str(), i + 1);
      std::printf("%s\n", shell_join(cluster::ssh_argv(ssh, hosts[i], cluster::remote_token_command(o.token_file))).c_str());
      std::printf("%s\n", shell_join(cluster::ssh_argv(ssh, hosts[i], node_cmds[i])).c_str());
    }
    std::printf("# coordinator (here)\n%s\n", shell_join(*coord).c_str());
    return 0;
  }
  const auto step = std::chrono::milliseconds(int64_t(o.timeout_s * 1000));
  if (Status s = check_hosts(o, hosts, ssh); !s.ok()) return fail(s);

  // A fresh token: here for the coordinator, and over each ssh session's stdin to each host.
  auto token = new_token();
  if (!token.ok()) return fail(token.status());
  if (Status s = write_local_token(o.token_file, *token); !s.ok()) return fail(s);
  std::vector<Proc> copies;
  for (const std::string& h : hosts) {
    copies.push_back(spawn(cluster::ssh_argv(ssh, h, cluster::remote_token_command(o.token_file)), h, true, true));
    const std::string text = *token + "\n";
    (void)!::write(copies.back().in, text.data(), text.size());
    copies.back().close_in();
  }
  if (Status s = wait_all(copies, Clock::now() + step, "copying the cluster token"); !s.ok()) return fail(s);
  for (Proc& p : copies)
    if (!WIFEXITED(p.status) || WEXITSTATUS(p.status) != 0)
      return fail(unavailable(p.host + ": copying the cluster token to " + o.token_file + " failed (" +
                              exit_text(p.status) + "): " + p.all));

  std::vector<Node> nodes;
  for (size_t i = 0; i < hosts.size(); ++i) {
    nodes.emplace_back();
    nodes.back().proc = spawn(cluster::ssh_argv(ssh, hosts[i], node_cmds[i]), hosts[i], true, true);
  }
  auto stop = [&](Proc* coordinator, int rc) {
    teardown(nodes, coordinator, ssh, o.timeout_s);
    return rc;
  };
  // Every node listening, by the deadline.
  for (const auto end = Clock::now() + step;;) {
    bool all = true;
    for (Node& n : nodes) {
      pump(n);
      if (!n.died.empty()) {
        std::fprintf(stderr, "shoal: error: node on %s did not start: %s\n", n.proc.host.c_str(), n.died.c_str());
        return stop(nullptr, 1);
      }
      all &= n.listening;
    }
    if (all) break;
    if (char sig = 0; ::read(g_signal_pipe[0], &sig, 1) == 1) {
      std::fprintf(stderr, "shoal launch: %s: stopping every node\n", strsignal(sig));
      return stop(nullptr, 128 + sig);
    }
    if (Clock::now() >= end) {
      for (Node& n : nodes)
        if (!n.listening) std::fprintf(stderr, "shoal: error: node on %s: not listening within %.0f s\n", n.proc.host.c_str(), o.timeout_s);
      return stop(nullptr, 1);
    }
    ::usleep(50000);
  }
  for (size_t i = 0; i < nodes.size(); ++i)
    std::fprintf(stderr, "shoal launch: %s: rank %zu, node pid %lld listening on %s\n", hosts[i].c_str(), i + 1,
                 (long long)nodes[i].remote_pid, addresses[i].c_str());
  std::fprintf(stderr, "shoal launch: coordinator: %s\n", shell_join(*coord).c_str());
  std::fflush(stderr);
  Proc coordinator = spawn(*coord, "coordinator", false, false);

  // Watch: a signal, a node's death, or the coordinator's end.
  std::optional<Clock::time_point> coordinator_done;  // set when it failed: wait briefly for a node to name
  while (true) {
    std::vector<pollfd> fds{{g_signal_pipe[0], POLLIN, 0}};
    for (Node& n : nodes) if (!n.proc.eof) fds.push_back({n.proc.out, POLLIN, 0});
    ::poll(fds.data(), fds.size(), 100);
    char sig = 0;
    if (::read(g_signal_pipe[0], &sig, 1) == 1) {
      std::fprintf(stderr, "shoal launch: %s: stopping the coordinator and every node\n", strsignal(sig));
      return stop(&coordinator, 128 + sig);
    }
    for (size_t i = 0; i < nodes.size(); ++i) {
      pump(nodes[i]);
      if (!nodes[i].died.empty()) {
        std::fprintf(stderr, "shoal: error: node on %s (rank %zu, %s) died: %s; stopping the rest\n", hosts[i].c_str(),
                     i + 1, addresses[i].c_str(), nodes[i].died.c_str());
        return stop(&coordinator, 1);
      }
    }
    if (!coordinator_done && coordinator.reap()) {
      if (WIFEXITED(coordinator.status) && WEXITSTATUS(coordinator.status) == 0) return stop(nullptr, 0);
      coordinator_done = Clock::now();
    }
    if (coordinator_done && Clock::now() - *coordinator_done > std::chrono::seconds(3)) {
      std::fprintf(stderr, "shoal: error: the coordinator ended with %s; stopping the nodes\n", exit_text(coordinator.status).c_str());
      return stop(nullptr, WIFEXITED(coordinator.status) ? WEXITSTATUS(coordinator.status) : 1);
    }
  }
}

}  // namespace

int run_launch_ssh(const SshLaunchOptions& options) {
  SshLaunchOptions o = options;
  if (o.shoal.empty()) o.shoal = fs::read_symlink("/proc/self/exe").string();
  if (o.node_model.empty()) o.node_model = o.model;
  if (::pipe(g_signal_pipe) != 0) return fail(internal_error("pipe failed"));
  ::fcntl(g_signal_pipe[0], F_SETFL, O_NONBLOCK);
  ::fcntl(g_signal_pipe[1], F_SETFL, O_NONBLOCK);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  return launch(o);
}

}  // namespace shoal::cli
