// The launchers' command builders (cluster/launch.h): hostfiles, mpirun lines, ssh remote
// commands and their parsing, compared as strings; the remote scripts are also run by sh here.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include "cluster/launch.h"
#include "support/files.h"
#include "support/process.h"

using namespace shoal::cluster;
using shoal::test::run_command;

TEST_CASE("shell words are quoted only when they need it", "[launch]") {
  CHECK(shell_quote("abc-1.2/x:y,z@h=3%+_") == "abc-1.2/x:y,z@h=3%+_");
  CHECK(shell_quote("") == "''");
  CHECK(shell_quote("1 2 3") == "'1 2 3'");
  CHECK(shell_quote("it's") == "'it'\\''s'");
  CHECK(shell_quote("$HOME") == "'$HOME'");
  CHECK(shell_join({"a", "b c", "d"}) == "a 'b c' d");
  CHECK(split_words("  ssh  -F cfg\t-q ") == std::vector<std::string>{"ssh", "-F", "cfg", "-q"});
  // What sh makes of a joined line is the words again.
  int status = -1;
  const std::string out = run_command("printf '%s|' " + shell_join({"x y", "it's", "$HOME", "*", "a\"b"}), &status);
  CHECK(status == 0);
  CHECK(out == "x y|it's|$HOME|*|a\"b|");
}

TEST_CASE("hostfiles: slots per host and comments and errors naming the line", "[launch]") {
  auto h = parse_hostfile("# lab\nws1 slots=2\nws2   # one slot\n\nws3 slots=4 max_slots=8\n", "hosts.txt");
  REQUIRE(h.ok());
  REQUIRE(h->size() == 3);
  CHECK((*h)[0].host == "ws1");
  CHECK((*h)[0].slots == 2);
  CHECK((*h)[1].host == "ws2");
  CHECK((*h)[1].slots == 1);
  CHECK((*h)[2].slots == 4);
  for (const auto& [text, what] : std::vector<std::pair<std::string, std::string>>{
           {"ws1 slots=x\n", "hosts.txt line 1: slots=x is not a positive count"},
           {"ws1\nws2 slots=0\n", "hosts.txt line 2: slots=0 is not a positive count"},
           {"ws1 cpus=2\n", "hosts.txt line 1: 'cpus=2' is not slots=N or max_slots=N"},
           {"ws1\nws1\n", "hosts.txt line 2: host ws1 is listed twice"},
           {"# nothing\n", "hosts.txt names no host"}}) {
    auto bad = parse_hostfile(text, "hosts.txt");
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.status().message() == what);
  }
}

namespace {
MpirunSpec lab() {
  MpirunSpec s;
  s.hostfile = "lab.hosts";
  s.hosts = {{"ws1", 2}, {"ws2", 1}, {"ws3", 1}};
  s.shoal = "/opt/shoal/bin/shoal";
  s.model = "/data/ds-v3";
  s.args = {"serve", "--port", "8000"};
  return s;
}
}  // namespace

TEST_CASE("mpirun lines for UCX and TCP with ranks from the slots", "[launch]") {
  MpirunSpec s = lab();
  auto a = mpirun_argv(s);
  REQUIRE(a.ok());
  CHECK(shell_join(*a) ==
        "mpirun --hostfile lab.hosts -np 4 --map-by slot --bind-to none --mca pml ucx --mca pml_ucx_tls any "
        "--mca pml_ucx_devices any /opt/shoal/bin/shoal serve --port 8000 --model /data/ds-v3");

  s.as_root = true;
  s.np = 3;
  s.net_device = "enp5s0";
  s.ucx_tls = "tcp,self";
  a = mpirun_argv(s);
  REQUIRE(a.ok());
  CHECK(shell_join(*a) ==
        "mpirun --allow-run-as-root --hostfile lab.hosts -np 3 --map-by slot --bind-to none --mca pml ucx "
        "--mca pml_ucx_tls any --mca pml_ucx_devices any -x UCX_NET_DEVICES=enp5s0 -x UCX_TLS=tcp,self "
        "--mca oob_tcp_if_include enp5s0 /opt/shoal/bin/shoal serve --port 8000 --model /data/ds-v3");

  s = lab();
  s.transport = MpiTransport::kTcp;
  s.net_device = "eth0";
  s.bind_to = "socket";
  s.args = {"run", "--ids", "1 2 3", "--model", "/elsewhere"};  // its own --model wins
  a = mpirun_argv(s);
  REQUIRE(a.ok());
  CHECK(shell_join(*a) ==
        "mpirun --hostfile lab.hosts -np 4 --map-by slot --bind-to socket --mca pml ob1 --mca btl self,vader,tcp "
        "--mca btl_tcp_if_include eth0 --mca oob_tcp_if_include eth0 /opt/shoal/bin/shoal run --ids '1 2 3' "
        "--model /elsewhere");
}

TEST_CASE("mpirun lines refuse what cannot work saying what", "[launch]") {
  MpirunSpec s = lab();
  s.np = 5;
  CHECK(mpirun_argv(s).status().message() == "--np 5 is more than the 4 slots of lab.hosts");
  s = lab();
  s.args = {};
  CHECK_THAT(mpirun_argv(s).status().message(), Catch::Contains("no shoal subcommand after --"));
  s = lab();
  s.args = {"run", "--nodes", "a:1"};
  CHECK_THAT(mpirun_argv(s).status().message(), Catch::Contains("--nodes does not go with mpirun"));
  s = lab();
  s.net_device = "eth0;rm";
  CHECK_THAT(mpirun_argv(s).status().message(), Catch::Contains("--net-device 'eth0;rm'"));
  s = lab();
  s.hosts = {};
  CHECK_FALSE(mpirun_argv(s).ok());
}

TEST_CASE("coordinator line and hosts and model templates and build ids", "[launch]") {
  auto a = coordinator_argv("/usr/bin/shoal", {"run", "--ids", "1 2"}, "/m", {"h1:7070", "h2:7070"}, ".shoal/t");
  REQUIRE(a.ok());
  CHECK(shell_join(*a) == "/usr/bin/shoal run --ids '1 2' --model /m --nodes h1:7070,h2:7070 --token-file .shoal/t");
  CHECK_THAT(coordinator_argv("s", {"run", "--token-file=x"}, "/m", {"h:1"}, "t").status().message(),
             Catch::Contains("--token-file is given by the launcher"));
  CHECK_THAT(coordinator_argv("s", {}, "/m", {"h:1"}, "t").status().message(), Catch::Contains("no coordinator command"));
  CHECK(host_address("me@pc2.lan") == "pc2.lan");
  CHECK(host_address("pc3") == "pc3");
  CHECK(node_model_dir("/d/rank-{rank}/x{rank}", 2) == "/d/rank-2/x2");
  CHECK(node_model_dir("/d/full", 2) == "/d/full");
  CHECK(build_id_from_version("shoal 0.1.0 (abc123def), cpu only") == "0.1.0+abc123def");
  CHECK(build_id_from_version("shoal 0.1.0 (unknown), cuda") == "0.1.0+unknown");
  CHECK(build_id_from_version("bash: shoal: command not found") == "");
  CHECK(shell_join(ssh_argv({"ssh", "-F", "c"}, "h2", "echo hi")) == "ssh -F c h2 'echo hi'");
}

TEST_CASE("the remote check script run by sh reads back as what is there", "[launch]") {
  shoal::test::TempDir t;
  const auto model = t.path / "my model";  // a space: the script must quote it
  std::filesystem::create_directories(model);
  std::ofstream(model / "config.json") << "{}";
  std::ofstream(model / "a.safetensors") << std::string(123, 'x');
  std::ofstream(model / "model.safetensors.index.json") << "{}\n";
  const auto fake = t.path / "shoal";
  std::ofstream(fake) << "#!/bin/sh\necho 'shoal 9.9.9 (feedbeef), cpu only'\n";
  std::filesystem::permissions(fake, std::filesystem::perms::owner_all);
  int status = -1;
  const std::string out = run_command("sh -c " + shell_quote(remote_check_command(fake.string(), model.string())), &status);
  INFO(out);
  CHECK(status == 0);
  auto c = parse_check_output("Welcome to pc2\n" + out);
  REQUIRE(c.ok());
  CHECK(c->shoal_found);
  CHECK(c->version == "shoal 9.9.9 (feedbeef), cpu only");
  CHECK(c->config_found);
  CHECK(c->files == std::map<std::string, int64_t>{{"a.safetensors", 123}, {"model.safetensors.index.json", 3}});
  // MemAvailable as /proc/meminfo says it here (read again: others' load moves it a little).
  std::ifstream mi("/proc/meminfo");
  std::string key;
  int64_t kb = -1;
  while (mi >> key && key != "MemAvailable:") mi.ignore(1 << 10, '\n');
  mi >> kb;
  REQUIRE(kb > 0);
  CHECK(std::abs(c->mem_available - kb * 1024) < (int64_t{1} << 30));

  const std::string missing = run_command("sh -c " + shell_quote(remote_check_command("/no/shoal", (t.path / "none").string())), &status);
  auto m = parse_check_output(missing);
  REQUIRE(m.ok());
  CHECK_FALSE(m->shoal_found);
  CHECK_FALSE(m->config_found);
  CHECK(m->files.empty());
  CHECK_THAT(parse_check_output("shoal-check: config\n").status().message(), Catch::Contains("did not run to its end"));
}

TEST_CASE("the remote token and node scripts run by sh", "[launch]") {
  shoal::test::TempDir t;
  const auto file = t.path / "sub dir" / "token";
  int status = -1;
  run_command("echo s3cret | sh -c " + shell_quote(remote_token_command(file.string())), &status);
  CHECK(status == 0);
  std::ifstream in(file);
  std::string token;
  in >> token;
  CHECK(token == "s3cret");
  CHECK((std::filesystem::status(file).permissions() & std::filesystem::perms::all) ==
        (std::filesystem::perms::owner_read | std::filesystem::perms::owner_write));

  // A stand-in for shoal that prints its arguments and then lives until killed: the script
  // reports its pid, and closing stdin ends it with SIGTERM's status.
  const auto fake = t.path / "shoal";
  std::ofstream(fake) << "#!/bin/sh\necho \"args: $*\"\ntrap 'kill $s; exit 143' TERM\nsleep 30 & s=$!\nwait\n";
  std::filesystem::permissions(fake, std::filesystem::perms::owner_all);
  const std::string cmd = remote_node_command({fake.string(), "0.0.0.0:7070", ".shoal/t", "/data/rank 1"});
  const auto t0 = std::chrono::steady_clock::now();
  const std::string out = run_command("sleep 0.5 | sh -c " + shell_quote(cmd), &status);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  INFO(out);
  CHECK(took < 10);
  CHECK_THAT(out, Catch::Contains("args: node --listen 0.0.0.0:7070 --token-file .shoal/t --model /data/rank 1"));
  CHECK_THAT(out, Catch::Matches("(.|\n)*shoal-launch: pid [0-9]+\n(.|\n)*"));
  CHECK_THAT(out, Catch::Contains("shoal-launch: node exited with status 143"));
  CHECK(WEXITSTATUS(status) == 143);
  CHECK(remote_kill_command(4242) == "kill -TERM 4242 2>/dev/null; true");
}

TEST_CASE("shoal launch mpirun runs the line on a localhost hostfile with UCX and with TCP", "[launch][mpi]") {
  shoal::test::TempDir t;
  std::ofstream(t.path / "hosts") << "localhost slots=3\n";
  const std::string shoal = SHOAL_BINARY;
  const std::string model = std::string(SHOAL_FIXTURES) + "/tiny-v3-bf16";
  const std::string args = " -- run --ids '1 2 3 4' --max-tokens 4";
  int status = -1;
  const std::string single = run_command(shoal + " run --model " + model + " --ids '1 2 3 4' --max-tokens 4 2>/dev/null", &status);
  REQUIRE(status == 0);
  const std::string want = single.substr(0, single.find('\n'));
  REQUIRE(want.rfind("generated: ", 0) == 0);
  for (const std::string mode : {"--ucx", "--tcp"}) {
    INFO(mode);
    const std::string launch = shoal + " launch mpirun --hostfile " + (t.path / "hosts").string() + " " + mode +
                               " --net-device lo --model " + model;
    const std::string dry = run_command(launch + " --dry-run" + args, &status);
    CHECK(status == 0);
    CHECK_THAT(dry, Catch::Contains(" -np 3 --map-by slot --bind-to none --mca pml " + std::string(mode == "--ucx" ? "ucx" : "ob1")));
    const std::string out = run_command("timeout -k 5 120 " + launch + args + " 2>&1", &status);
    INFO(out);
    CHECK(status == 0);
    CHECK_THAT(out, Catch::Contains(want) && Catch::Contains(mode == "--ucx" ? "3 ranks over MPI (pml ucx)" : "3 ranks over MPI (pml ob1)"));
  }
  const std::string bad = run_command(shoal + " launch mpirun --hostfile " + (t.path / "none").string() + " -- run 2>&1", &status);
  CHECK(WEXITSTATUS(status) == 1);
  CHECK_THAT(bad, Catch::Contains("--hostfile " + (t.path / "none").string() + ": cannot read it"));
  std::ofstream(t.path / "hosts") << "localhost slots=2\n";
  const std::string over = run_command(shoal + " launch mpirun --hostfile " + (t.path / "hosts").string() + " --np 3 --dry-run" + args + " 2>&1", &status);
  CHECK(WEXITSTATUS(status) == 1);
  CHECK_THAT(over, Catch::Contains("--np 3 is more than the 2 slots of"));
}

TEST_CASE("shoal launch ssh --dry-run prints the commands it would run", "[launch]") {
  const std::string shoal = SHOAL_BINARY;
  int status = -1;
  const std::string out = run_command(shoal + " launch ssh --hosts me@pc1,pc2 --model /m --node-model '/s/rank-{rank}' --port 7100 " +
                                          "--ssh 'ssh -p 2222' --shoal /opt/shoal --token-file /t/tok --dry-run -- run --ids '1 2' 2>&1",
                                      &status);
  INFO(out);
  CHECK(status == 0);
  const std::string node2 = remote_node_command({"/opt/shoal", "0.0.0.0:7100", "/t/tok", "/s/rank-2"});
  CHECK_THAT(out, Catch::Contains("# me@pc1 (rank 1)\nssh -p 2222 me@pc1 " + shell_quote(remote_token_command("/t/tok"))));
  CHECK_THAT(out, Catch::Contains("# pc2 (rank 2)\nssh -p 2222 pc2 " + shell_quote(remote_token_command("/t/tok")) +
                                  "\nssh -p 2222 pc2 " + shell_quote(node2) + "\n"));
  CHECK_THAT(out, Catch::Contains(" run --ids '1 2' --model /m --nodes pc1:7100,pc2:7100 --token-file /t/tok\n"));
  const std::string bad = run_command(shoal + " launch ssh --hosts , --model /m -- run 2>&1", &status);
  CHECK(WEXITSTATUS(status) == 1);
  CHECK_THAT(bad, Catch::Contains("--hosts names no host"));
  const std::string nodes = run_command(shoal + " launch ssh --hosts a --model /m -- run --nodes x:1 2>&1", &status);
  CHECK(WEXITSTATUS(status) == 1);
  CHECK_THAT(nodes, Catch::Contains("--nodes is given by the launcher"));
}
