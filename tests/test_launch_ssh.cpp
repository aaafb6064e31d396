// shoal launch ssh against three "hosts": network namespaces h1..h3, each with a real OpenSSH
// sshd (tests/support/netns/up.sh), the launcher and coordinator on h1. A completion through the
// started cluster equals the single process's; kill -9 of one node makes the launcher name that
// host and stop the rest; Ctrl-C stops everything; hosts without shoal are refused by name.
// Needs root (network namespaces) and iproute2 + openssh-server/-client (scripts/setup).
#include <catch2/catch.hpp>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <thread>

#include "support/files.h"
#include "support/process.h"

namespace fs = std::filesystem;
using shoal::test::read_file;
using shoal::test::Child;
using shoal::test::run_command;
using namespace std::chrono_literals;

namespace {

const std::string kShoal = SHOAL_BINARY;
const std::string kNetns = SHOAL_NETNS_DIR;
const std::string kPrefix = "shoal-ls";
const std::string kSsh = "'ssh -F /run/" + kPrefix + "-ssh/ssh_config'";

// Three hosts with sshd for the life of one test case, and a synthesized model with a tokenizer.
struct Cluster {
  fs::path dir;
  std::string model;
  Cluster() {
    REQUIRE(::geteuid() == 0);  // network namespaces need root (CI runs as root)
    std::string t = (fs::temp_directory_path() / "shoal-test-launch-ssh-XXXXXX").string();
    REQUIRE(::mkdtemp(t.data()));
    dir = t;
    int status = -1;
    std::string out = run_command("timeout 120 " + kNetns + "/up.sh " + kPrefix + " 3 2>&1", &status);
    INFO(out);
    REQUIRE(status == 0);
    model = (dir / "model").string();
    out = run_command(kShoal + " synth --config " + SHOAL_FIXTURES + "/tiny-v3-bf16/config.json --tokenizer " +
                          SHOAL_FIXTURES + "/tokenizer-deepseek-v3 --seed 3 --out " + model + " 2>&1",
                      &status);
    INFO(out);
    REQUIRE(status == 0);
  }
  ~Cluster() {
    int status = -1;
    run_command(kNetns + "/down.sh " + kPrefix + " >/dev/null 2>&1", &status);
    fs::remove_all(dir);
  }
  std::string path(const std::string& name) const { return (dir / name).string(); }
  // `shoal launch ssh` on h1 over h1..h3, coordinator command `args`.
  std::string launch(const std::string& args, const std::string& extra = "") const {
    return kNetns + "/exec.sh " + kPrefix + " h1 " + kShoal + " launch ssh --hosts h1,h2,h3 --model " + model +
           " --ssh " + kSsh + " --token-file " + path("token") + " --timeout 60 " + extra + " -- " + args;
  }
};

// shoal processes still running in the namespace of a host.
std::vector<pid_t> shoal_pids(const std::string& host) {
  int status = -1;
  const std::string out = run_command("ip netns pids " + kPrefix + "-" + host, &status);
  std::vector<pid_t> pids;
  std::istringstream in(out);
  for (pid_t pid; in >> pid;) {
    std::string comm = read_file("/proc/" + std::to_string(pid) + "/comm");
    if (comm == "shoal\n") pids.push_back(pid);
  }
  return pids;
}

// True once no host runs a shoal process, waiting up to `timeout`.
bool all_stopped(std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (true) {
    bool none = true;
    for (const char* h : {"h1", "h2", "h3"}) none &= shoal_pids(h).empty();
    if (none) return true;
    if (std::chrono::steady_clock::now() >= end) return false;
    std::this_thread::sleep_for(100ms);
  }
}

std::string generated_line(const std::string& out) {
  std::smatch m;
  return std::regex_search(out, m, std::regex("generated:[ 0-9]*")) ? m.str() : "";
}

// Waits for the launcher's "node pid N" line for `host` in its stderr file.
pid_t node_pid(const std::string& err_file, const std::string& host) {
  std::smatch m;
  const std::string err = read_file(err_file);
  return std::regex_search(err, m, std::regex("shoal launch: " + host + ": rank [0-9]+, node pid ([0-9]+)"))
             ? pid_t(std::stoi(m[1]))
             : -1;
}

}  // namespace

TEST_CASE("shoal launch ssh over three namespace hosts gives the single process's completion", "[launch][ssh]") {
  Cluster c;
  const std::string args = "run --ids \"1 2 3 4\" --max-tokens 8";
  int status = -1;
  const std::string want = generated_line(run_command(kShoal + " " + args + " --model " + c.model + " 2>/dev/null", &status));
  REQUIRE(status == 0);
  REQUIRE(want.size() > std::string("generated:").size());

  const auto t0 = std::chrono::steady_clock::now();
  const std::string out = run_command("timeout -k 10 300 " + c.launch(args) + " 2>" + c.path("err"), &status);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::string err = read_file(c.path("err"));
  INFO("took " << took << " s\nstdout: " << out << "\nstderr: " << err);
  REQUIRE(status == 0);
  CHECK(generated_line(out) == want);
  for (int r = 1; r <= 3; ++r) {
    const std::string h = "h" + std::to_string(r);
    CHECK_THAT(err, Catch::Contains("shoal launch: " + h + ": ok (shoal ") &&
                        Catch::Contains("shoal launch: " + h + ": rank " + std::to_string(r) + ", node pid"));
  }
  // The coordinator was told the three nodes; the token file is the owner's only.
  CHECK_THAT(err, Catch::Contains("--nodes h1:7070,h2:7070,h3:7070 --token-file " + c.path("token")));
  CHECK((fs::status(c.path("token")).permissions() & fs::perms::all) == (fs::perms::owner_read | fs::perms::owner_write));
  CHECK(read_file(c.path("token")).size() == 65);  // 32 random bytes in hex, newline
  CHECK(all_stopped(10s));
}

TEST_CASE("shoal launch ssh: kill -9 of one node stops the rest naming its host and Ctrl-C stops all",
          "[launch][ssh][failure]") {
  Cluster c;
  for (const bool interrupt : {false, true}) {
    INFO((interrupt ? "SIGINT to the launcher" : "kill -9 of h2's node"));
    Child launcher(c.launch("serve --host 127.0.0.1 --port 0"), c.path("err"));
    std::string seen;
    const bool up = launcher.read_until(
        [](const std::string& s) { return s.find("shoal serve: listening on") != std::string::npos; }, seen, 180s);
    INFO("stdout: " << seen << "\nstderr: " << read_file(c.path("err")));
    REQUIRE(up);
    const pid_t victim = node_pid(c.path("err"), "h2");
    REQUIRE(victim > 0);
    const auto t0 = std::chrono::steady_clock::now();
    if (interrupt) launcher.kill(SIGINT);
    else ::kill(victim, SIGKILL);
    const int status = launcher.wait_exit(60s);
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const std::string err = read_file(c.path("err"));
    INFO("stopped after " << took << " s; stderr: " << err);
    REQUIRE(status != -1);  // it ended by the deadline
    REQUIRE(WIFEXITED(status));
    if (interrupt) {
      CHECK(WEXITSTATUS(status) == 128 + SIGINT);
      CHECK_THAT(err, Catch::Contains("Interrupt: stopping the coordinator and every node"));
    } else {
      CHECK(WEXITSTATUS(status) == 1);
      CHECK_THAT(err, Catch::Contains("node on h2 (rank 2, h2:7070) died: its shoal node exited with status 137"));
    }
    CHECK(took < 30);
    CHECK(all_stopped(10s));
  }
}

TEST_CASE("shoal launch ssh refuses hosts without shoal naming each", "[launch][ssh]") {
  Cluster c;
  int status = -1;
  const std::string out = run_command("timeout -k 10 120 " + c.launch("run --ids 1", "--shoal /nonexistent/shoal") + " 2>&1", &status);
  INFO(out);
  CHECK(WEXITSTATUS(status) == 1);
  for (const char* h : {"h1", "h2", "h3"})
    CHECK_THAT(out, Catch::Contains(std::string(h) + ": no executable /nonexistent/shoal"));
  CHECK(all_stopped(1s));
}
