#include "cluster/launch.h"

#include <algorithm>
#include <regex>
#include <sstream>

namespace shoal::cluster {
namespace {

bool safe_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || std::string_view("@%+=:,./-_").find(c) != std::string_view::npos;
}

bool has_arg(const std::vector<std::string>& args, const std::string& flag) {
  for (const std::string& a : args)
    if (a == flag || a.rfind(flag + "=", 0) == 0) return true;
  return false;
}

// A word that goes into an mpirun option or environment value: letters, digits and ",._-:".
Status plain_word(const std::string& what, const std::string& value) {
  for (char c : value)
    if (!std::isalnum(static_cast<unsigned char>(c)) && std::string_view(",._-:").find(c) == std::string_view::npos)
      return invalid_argument(what + " '" + value + "' has a character other than letters, digits and ,._-:");
  return {};
}

}  // namespace

std::string shell_quote(const std::string& word) {
  if (!word.empty() && std::all_of(word.begin(), word.end(), safe_char)) return word;
  std::string out = "'";
  for (char c : word) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string shell_join(const std::vector<std::string>& argv) {
  std::string out;
  for (const std::string& w : argv) out += (out.empty() ? "" : " ") + shell_quote(w);
  return out;
}

std::vector<std::string> split_words(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

StatusOr<std::vector<HostSlots>> parse_hostfile(const std::string& text, const std::string& name) {
  std::vector<HostSlots> hosts;
  std::istringstream in(text);
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    line = line.substr(0, line.find('#'));
    std::vector<std::string> words = split_words(line);
    if (words.empty()) continue;
    const std::string where = name + " line " + std::to_string(n) + ": ";
    HostSlots h{words[0], 1};
    if (words[0].find('=') != std::string::npos) return invalid_argument(where + "'" + words[0] + "' is not a host name");
    for (size_t i = 1; i < words.size(); ++i) {
      const size_t eq = words[i].find('=');
      const std::string key = words[i].substr(0, eq);
      if (eq == std::string::npos || (key != "slots" && key != "max_slots" && key != "max-slots"))
        return invalid_argument(where + "'" + words[i] + "' is not slots=N or max_slots=N");
      const std::string value = words[i].substr(eq + 1);
      int v = 0;
      size_t used = 0;
      try { v = std::stoi(value, &used); } catch (...) { used = 0; }
      if (used != value.size() || v <= 0) return invalid_argument(where + words[i] + " is not a positive count");
      if (key == "slots") h.slots = v;
    }
    for (const HostSlots& seen : hosts)
      if (seen.host == h.host) return invalid_argument(where + "host " + h.host + " is listed twice");
    hosts.push_back(h);
  }
  if (hosts.empty()) return invalid_argument(name + " names no host");
  return hosts;
}

StatusOr<std::vector<std::string>> mpirun_argv(const MpirunSpec& s) {
  if (s.hosts.empty()) return invalid_argument("the hostfile names no host");
  int slots = 0;
  for (const HostSlots& h : s.hosts) slots += h.slots;
  if (s.np < 0 || s.np > slots)
    return invalid_argument("--np " + std::to_string(s.np) + " is more than the " + std::to_string(slots) +
                            " slots of " + s.hostfile);
  if (s.args.empty()) return invalid_argument("no shoal subcommand after -- (e.g. -- run --ids \"1 2 3\")");
  for (const char* flag : {"--nodes", "--local-nodes", "--token-file"})
    if (has_arg(s.args, flag)) return invalid_argument(std::string(flag) + " does not go with mpirun (ranks come from MPI)");
  SHOAL_RETURN_IF_ERROR(plain_word("--net-device", s.net_device));
  SHOAL_RETURN_IF_ERROR(plain_word("--ucx-tls", s.ucx_tls));
  SHOAL_RETURN_IF_ERROR(plain_word("--bind-to", s.bind_to));
  std::vector<std::string> a{s.mpirun};
  if (s.as_root) a.push_back("--allow-run-as-root");
  a.insert(a.end(), {"--hostfile", s.hostfile, "-np", std::to_string(s.np ? s.np : slots), "--map-by", "slot",
                     "--bind-to", s.bind_to.empty() ? "none" : s.bind_to});
  auto mca = [&](const std::string& k, const std::string& v) { a.insert(a.end(), {"--mca", k, v}); };
  if (s.transport == MpiTransport::kUcx) {
    // Debian's openmpi-mca-params.conf says pml = ^ucx, and pml ucx accepts only InfiniBand
    // devices unless told otherwise (docs/comm.md "Open MPI and UCX").
    mca("pml", "ucx");
    mca("pml_ucx_tls", "any");
    mca("pml_ucx_devices", "any");
    if (!s.net_device.empty()) a.insert(a.end(), {"-x", "UCX_NET_DEVICES=" + s.net_device});
    if (!s.ucx_tls.empty()) a.insert(a.end(), {"-x", "UCX_TLS=" + s.ucx_tls});
  } else {
    mca("pml", "ob1");
    mca("btl", "self,vader,tcp");
    if (!s.net_device.empty()) mca("btl_tcp_if_include", s.net_device);
  }
  if (!s.net_device.empty()) mca("oob_tcp_if_include", s.net_device);
  a.push_back(s.shoal);
  a.insert(a.end(), s.args.begin(), s.args.end());
  if (!s.model.empty() && !has_arg(s.args, "--model")) a.insert(a.end(), {"--model", s.model});
  return a;
}

std::string host_address(const std::string& ssh_host) {
  const size_t at = ssh_host.rfind('@');
  return at == std::string::npos ? ssh_host : ssh_host.substr(at + 1);
}

std::vector<std::string> ssh_argv(const std::vector<std::string>& ssh, const std::string& host,
                                  const std::string& remote_command) {
  std::vector<std::string> a = ssh;
  a.push_back(host);
  a.push_back(remote_command);
  return a;
}

std::string remote_check_command(const std::string& shoal, const std::string& model_dir) {
  const std::string b = shell_quote(shoal), m = shell_quote(model_dir);
  return "if [ -x " + b + " ]; then echo \"shoal-check: version $(" + b +
         " --version 2>&1 | head -n 1)\"; else echo 'shoal-check: no-shoal'; fi; "
         "if [ -f " + m + "/config.json ]; then echo 'shoal-check: config'; fi; "
         "for f in " + m + "/*.safetensors " + m + "/model.safetensors.index.json " + m + "/shoal-shard.json; do "
         "if [ -f \"$f\" ]; then echo \"shoal-check: file $(stat -c %s \"$f\") ${f##*/}\"; fi; done; "
         "awk '/^MemAvailable:/ { print \"shoal-check: memavailable_kb \" $2 }' /proc/meminfo; "
         "echo 'shoal-check: end'";
}

StatusOr<HostCheck> parse_check_output(const std::string& text) {
  HostCheck c;
  bool end = false;
  std::istringstream in(text);
  const std::string prefix = "shoal-check: ";
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(prefix, 0) != 0) continue;  // login banners and the like
    const std::string rest = line.substr(prefix.size());
    if (rest.rfind("version ", 0) == 0) {
      c.shoal_found = true;
      c.version = rest.substr(8);
    } else if (rest == "config") {
      c.config_found = true;
    } else if (rest.rfind("file ", 0) == 0) {
      std::istringstream f(rest.substr(5));
      int64_t bytes = -1;
      std::string name;
      if (!(f >> bytes >> name)) return invalid_argument("unreadable check line '" + line + "'");
      c.files[name] = bytes;
    } else if (rest.rfind("memavailable_kb ", 0) == 0) {
      try { c.mem_available = std::stoll(rest.substr(16)) * 1024; } catch (...) {
        return invalid_argument("unreadable check line '" + line + "'");
      }
    } else if (rest == "end") {
      end = true;
    }
  }
  if (!end) return invalid_argument("the check did not run to its end (output: '" + text.substr(0, 400) + "')");
  return c;
}

std::string build_id_from_version(const std::string& line) {
  static const std::regex re("^shoal ([^ ]+) \\(([^)]+)\\)");
  std::smatch m;
  if (!std::regex_search(line, m, re)) return "";
  return m[1].str() + "+" + m[2].str();
}

std::string remote_token_command(const std::string& token_file) {
  const std::string f = shell_quote(token_file);
  return "umask 077 && mkdir -p \"$(dirname " + f + ")\" && cat > " + f + " && chmod 600 " + f;
}

std::string remote_node_command(const NodeStart& n) {
  std::vector<std::string> node{n.shoal, "node", "--listen", n.listen, "--token-file", n.token_file};
  if (!n.model_dir.empty()) node.insert(node.end(), {"--model", n.model_dir});
  // fd 3 keeps the session's stdin for the watcher: an asynchronous list's stdin is /dev/null.
  return "exec 3<&0; " + shell_join(node) + " </dev/null 3<&- & pid=$!; "
         "echo \"shoal-launch: pid $pid\"; "
         "{ cat <&3 >/dev/null 2>&1; kill -TERM $pid 2>/dev/null; } & watcher=$!; exec 3<&-; "
         "wait $pid; rc=$?; kill $watcher 2>/dev/null; "
         "echo \"shoal-launch: node exited with status $rc\"; exit $rc";
}

std::string remote_kill_command(int64_t pid) { return "kill -TERM " + std::to_string(pid) + " 2>/dev/null; true"; }

StatusOr<std::vector<std::string>> coordinator_argv(const std::string& shoal, const std::vector<std::string>& args,
                                                    const std::string& model,
                                                    const std::vector<std::string>& node_addresses,
                                                    const std::string& token_file) {
  if (args.empty()) return invalid_argument("no coordinator command after -- (e.g. -- run --ids \"1 2 3\", or -- serve)");
  for (const char* flag : {"--nodes", "--local-nodes", "--token-file"})
    if (has_arg(args, flag)) return invalid_argument(std::string(flag) + " is given by the launcher; leave it out after --");
  if (node_addresses.empty()) return invalid_argument("no node to run on");
  std::vector<std::string> a{shoal};
  a.insert(a.end(), args.begin(), args.end());
  if (!model.empty() && !has_arg(args, "--model")) a.insert(a.end(), {"--model", model});
  std::string nodes;
  for (const std::string& n : node_addresses) nodes += (nodes.empty() ? "" : ",") + n;
  a.insert(a.end(), {"--nodes", nodes, "--token-file", token_file});
  return a;
}

std::string node_model_dir(const std::string& templ, int rank) {
  std::string out = templ;
  for (size_t at; (at = out.find("{rank}")) != std::string::npos;) out.replace(at, 6, std::to_string(rank));
  return out;
}

}  // namespace shoal::cluster
