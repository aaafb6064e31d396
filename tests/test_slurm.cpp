// Slurm (docs/deploy-slurm.md). Part 1: the job scripts `shoal launch slurm` writes, compared as
// strings (the header written out here, the body the checked-in scripts/slurm/*.sbatch's), every
// bad parameter refused with its name, values with spaces and quotes surviving the shell.
// Part 2: a real single-node Slurm (munge + slurmctld + slurmd, tests/support/slurm-local-up.sh,
// root only) runs the generated script with 2 tasks (srun --mpi=pmix, 2 MPI ranks): the output
// equals a direct single-process `shoal batch` run; a second job is scancel'ed mid-run and its
// resubmission completes it exactly once; a third gets the time-limit warning (USR1) mid-run,
// stops, requeues itself and completes exactly once; a serving job answers a completion as the
// batch did; `srun` without PMI is refused with the fix named. Slurm is torn down whatever happens.
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <sstream>
#include <thread>

#include "cluster/slurm_script.h"
#include "support/batch_records.h"
#include "support/files.h"
#include "support/process.h"

namespace fs = std::filesystem;
using shoal::test::TempDir;
using shoal::test::comparable;
using shoal::test::count_lines;
using shoal::test::exit_code;
using shoal::test::read_file;
using json = nlohmann::json;
using shoal::cluster::SlurmJob;
using shoal::cluster::SlurmJobKind;
using shoal::test::run_command;
using namespace std::chrono_literals;

namespace {

const std::string kShoal = SHOAL_BINARY;
const std::string kSource = SHOAL_SOURCE_DIR;
const std::string kTokenizer = std::string(SHOAL_FIXTURES) + "/tokenizer-deepseek-v3";

// The body of a checked-in script: from its "# ---- body:" line to the end.
std::string body_of_file(const std::string& path) {
  const std::string text = read_file(path);
  const size_t at = text.find("\n# ---- body:");
  REQUIRE(at != std::string::npos);
  return text.substr(at + 1);
}

// What the shell makes of `word` (as the generated script writes it) after assignment.
std::string through_bash(const std::string& word) {
  TempDir dir;
  { std::ofstream(dir / "s.sh") << "X=" << word << "\nprintf '%s' \"$X\"\n"; }
  int status = -1;
  const std::string out = run_command("bash " + dir / "s.sh", &status);
  REQUIRE(exit_code(status) == 0);
  return out;
}

}  // namespace

// ---- part 1: the scripts as strings ---------------------------------------------------------

TEST_CASE("slurm: a batch job script is the header of its parameters and the body of scripts/slurm/shoal.sbatch",
          "[slurm][script]") {
  SlurmJob j;
  j.shoal = "/opt/shoal/bin/shoal";
  j.model = "/models/DeepSeek-V3";
  j.input = "/data/requests.jsonl";
  j.output = "/data/results.jsonl";
  j.nodes = 12;
  j.ntasks = 24;
  j.cpus_per_task = 16;
  j.gpus_per_node = 2;
  j.mem = "200G";
  j.partition = "gpu";
  j.account = "lab42";
  j.time = "1-00:00:00";
  j.grace_s = 600;
  j.drain_timeout_s = 25;
  j.log = "/logs/shoal-%j.out";
  j.args = "--slots 32 --max-seq-len 8192";
  auto s = shoal::cluster::slurm_script(j);
  REQUIRE(s.ok());
  const std::string want_header =
      "#!/bin/bash\n"
      "# Written by `shoal launch slurm --batch`: shoal batch over /data/requests.jsonl into /data/results.jsonl,\n"
      "# 24 shoal ranks (one per Slurm task), resumable. Submit: sbatch THIS_FILE.\n"
      "# The job log /logs/shoal-%j.out says how it goes. docs/deploy-slurm.md.\n"
      "#SBATCH --job-name=shoal-batch\n"
      "#SBATCH --nodes=12\n"
      "#SBATCH --ntasks=24\n"
      "#SBATCH --cpus-per-task=16\n"
      "#SBATCH --gpus-per-node=2\n"
      "#SBATCH --mem=200G\n"
      "#SBATCH --partition=gpu\n"
      "#SBATCH --account=lab42\n"
      "#SBATCH --time=1-00:00:00\n"
      "#SBATCH --requeue\n"
      "#SBATCH --signal=B:USR1@600\n"
      "#SBATCH --open-mode=append\n"
      "#SBATCH --output=/logs/shoal-%j.out\n"
      "\n"
      "SHOAL_BIN=/opt/shoal/bin/shoal\n"
      "SHOAL_MODEL=/models/DeepSeek-V3\n"
      "SHOAL_INPUT=/data/requests.jsonl\n"
      "SHOAL_OUTPUT=/data/results.jsonl\n"
      "SHOAL_LAUNCHER=srun\n"
      "SHOAL_DRAIN_TIMEOUT=25\n"
      "SHOAL_ARGS='--slots 32 --max-seq-len 8192'\n"
      "\n";
  const std::string body = body_of_file(kSource + "/scripts/slurm/shoal.sbatch");
  CHECK(*s == want_header + body);
  // The body is the whole job: it starts the ranks with srun --mpi=pmix and requeues on USR1.
  CHECK_THAT(body, Catch::Contains("srun --mpi=pmix --kill-on-bad-exit=1") && Catch::Contains("scontrol requeue") &&
                       Catch::Contains("trap on_usr1 USR1"));
  CHECK(shoal::cluster::slurm_body(SlurmJobKind::kBatch) == body);

  // Defaults: one task per node, nothing asked that was not given.
  SlurmJob d;
  d.shoal = "/usr/local/bin/shoal";
  d.model = "/m";
  d.input = "/in.jsonl";
  d.output = "/out.jsonl";
  d.nodes = 2;
  d.launcher = "mpirun";
  auto ds = shoal::cluster::slurm_script(d);
  REQUIRE(ds.ok());
  CHECK(*ds ==
        "#!/bin/bash\n"
        "# Written by `shoal launch slurm --batch`: shoal batch over /in.jsonl into /out.jsonl,\n"
        "# 2 shoal ranks (one per Slurm task), resumable. Submit: sbatch THIS_FILE.\n"
        "# The job log shoal-batch-%j.out says how it goes. docs/deploy-slurm.md.\n"
        "#SBATCH --job-name=shoal-batch\n"
        "#SBATCH --nodes=2\n"
        "#SBATCH --ntasks=2\n"
        "#SBATCH --requeue\n"
        "#SBATCH --signal=B:USR1@300\n"
        "#SBATCH --open-mode=append\n"
        "#SBATCH --output=shoal-batch-%j.out\n"
        "\n"
        "SHOAL_BIN=/usr/local/bin/shoal\n"
        "SHOAL_MODEL=/m\n"
        "SHOAL_INPUT=/in.jsonl\n"
        "SHOAL_OUTPUT=/out.jsonl\n"
        "SHOAL_LAUNCHER=mpirun\n"
        "SHOAL_DRAIN_TIMEOUT=20\n"
        "SHOAL_ARGS=''\n"
        "\n" +
            body);
}

TEST_CASE("slurm: a serving job script is the header of its parameters and the body of scripts/slurm/shoal-serve.sbatch",
          "[slurm][script]") {
  SlurmJob j;
  j.kind = SlurmJobKind::kServe;
  j.shoal = "/opt/shoal";
  j.model = "/models/DeepSeek-R1";
  j.nodes = 3;
  j.partition = "long";
  j.time = "7-0";
  j.port = 9000;
  j.job_name = "r1";
  j.args = "--api-key-file /etc/shoal/keys";
  auto s = shoal::cluster::slurm_script(j);
  REQUIRE(s.ok());
  const std::string body = body_of_file(kSource + "/scripts/slurm/shoal-serve.sbatch");
  CHECK(*s ==
        "#!/bin/bash\n"
        "# Written by `shoal launch slurm --serve`: shoal serve of /models/DeepSeek-R1,\n"
        "# 3 shoal ranks (one per Slurm task). Submit: sbatch THIS_FILE.\n"
        "# The job log shoal-serve-%j.out says how it goes. docs/deploy-slurm.md.\n"
        "#SBATCH --job-name=r1\n"
        "#SBATCH --nodes=3\n"
        "#SBATCH --ntasks=3\n"
        "#SBATCH --partition=long\n"
        "#SBATCH --time=7-0\n"
        "#SBATCH --output=shoal-serve-%j.out\n"
        "\n"
        "SHOAL_BIN=/opt/shoal\n"
        "SHOAL_MODEL=/models/DeepSeek-R1\n"
        "SHOAL_LAUNCHER=srun\n"
        "SHOAL_HOST=0.0.0.0\n"
        "SHOAL_PORT=9000\n"
        "SHOAL_ARGS='--api-key-file /etc/shoal/keys'\n"
        "\n" +
            body);
  CHECK_THAT(body, Catch::Contains("serving on http://$head:$SHOAL_PORT/v1"));
}

TEST_CASE("slurm: paths with spaces, quotes and dollars reach the script's variables unchanged", "[slurm][script]") {
  for (const std::string v : {"/data/my model", "it's", "$HOME/x", "a\"b", "`id`", "tab\there", "*", "", "plain/path-1.0"}) {
    INFO(v << " -> " << shoal::cluster::sh_word(v));
    CHECK(through_bash(shoal::cluster::sh_word(v)) == v);
  }
  CHECK(shoal::cluster::sh_word("/a/b_c.d") == "/a/b_c.d");
  CHECK(shoal::cluster::sh_word("a b") == "'a b'");
  CHECK(shoal::cluster::sh_word("it's") == "'it'\\''s'");
}

TEST_CASE("slurm: Slurm time limits in every format Slurm takes, others refused", "[slurm][script]") {
  using shoal::cluster::slurm_time_seconds;
  CHECK(slurm_time_seconds("10") == 600);
  CHECK(slurm_time_seconds("10:30") == 630);
  CHECK(slurm_time_seconds("1:00:00") == 3600);
  CHECK(slurm_time_seconds("12:34:56") == 12 * 3600 + 34 * 60 + 56);
  CHECK(slurm_time_seconds("2-0") == 2 * 86400);
  CHECK(slurm_time_seconds("1-2:03") == 86400 + 2 * 3600 + 3 * 60);
  CHECK(slurm_time_seconds("1-02:03:04") == 86400 + 2 * 3600 + 3 * 60 + 4);
  for (const std::string bad : {"", "abc", "1h", "-1", "1:2:3:4", "1-", "1-2-3", " 10", "99999999999999999999999"})
    CHECK(slurm_time_seconds(bad) == -1);
}

TEST_CASE("slurm: every bad parameter is refused with an error naming it", "[slurm][script]") {
  SlurmJob ok;
  ok.shoal = "/bin/shoal";
  ok.model = "/m";
  ok.input = "/in";
  ok.output = "/out";
  ok.time = "60";
  REQUIRE(shoal::cluster::slurm_script(ok).ok());
  struct Case {
    const char* what;
    std::function<void(SlurmJob&)> edit;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"no model", [](SlurmJob& j) { j.model.clear(); }, "--model is required"},
      {"no shoal", [](SlurmJob& j) { j.shoal.clear(); }, "--shoal"},
      {"no input", [](SlurmJob& j) { j.input.clear(); }, "-i/--input"},
      {"no output", [](SlurmJob& j) { j.output.clear(); }, "-o/--output"},
      {"output is input", [](SlurmJob& j) { j.output = j.input; }, "is the input file"},
      {"serve with input", [](SlurmJob& j) { j.kind = SlurmJobKind::kServe; j.output.clear(); }, "are for --batch jobs"},
      {"0 nodes", [](SlurmJob& j) { j.nodes = 0; }, "--nodes 0"},
      {"fewer tasks than nodes", [](SlurmJob& j) { j.nodes = 3; j.ntasks = 2; }, "--ntasks 2 is fewer than --nodes 3"},
      {"negative cpus", [](SlurmJob& j) { j.cpus_per_task = -1; }, "--cpus-per-task -1"},
      {"negative gpus", [](SlurmJob& j) { j.gpus_per_node = -2; }, "--gpus-per-node -2"},
      {"launcher", [](SlurmJob& j) { j.launcher = "pdsh"; }, "--launcher 'pdsh'"},
      {"none with 2 tasks", [](SlurmJob& j) { j.launcher = "none"; j.ntasks = 2; }, "--launcher none runs one process"},
      {"partition with a space", [](SlurmJob& j) { j.partition = "gpu long"; }, "--partition 'gpu long'"},
      {"account with a quote", [](SlurmJob& j) { j.account = "a'b"; }, "--account"},
      {"log with a space", [](SlurmJob& j) { j.log = "/my logs/x.out"; }, "--log"},
      {"job name with a newline", [](SlurmJob& j) { j.job_name = "a\nb"; }, "--job-name"},
      {"bad time", [](SlurmJob& j) { j.time = "2h"; }, "--time '2h' is not a Slurm time limit"},
      {"zero time", [](SlurmJob& j) { j.time = "0"; }, "--time '0'"},
      {"grace 0", [](SlurmJob& j) { j.grace_s = 0; }, "--grace 0"},
      {"grace over the limit", [](SlurmJob& j) { j.time = "5"; j.grace_s = 300; }, "--grace 300 s is not below --time 5 (300 s)"},
      {"drain over grace", [](SlurmJob& j) { j.grace_s = 30; j.drain_timeout_s = 30; }, "--drain-timeout 30 s is not below --grace 30"},
      {"negative drain", [](SlurmJob& j) { j.drain_timeout_s = -1; }, "--drain-timeout -1"},
      {"model with a newline", [](SlurmJob& j) { j.model = "/m\nrm -rf /"; }, "--model"},
      {"args with a newline", [](SlurmJob& j) { j.args = "--slots 4\nreboot"; }, "--args"},
      {"serve port", [](SlurmJob& j) { j.kind = SlurmJobKind::kServe; j.input.clear(); j.output.clear(); j.port = 70000; },
       "--port 70000"},
      {"serve host", [](SlurmJob& j) { j.kind = SlurmJobKind::kServe; j.input.clear(); j.output.clear(); j.host = ""; },
       "--host is empty"},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    SlurmJob j = ok;
    c.edit(j);
    auto s = shoal::cluster::slurm_script(j);
    REQUIRE(!s.ok());
    CHECK_THAT(s.status().message(), Catch::Contains(c.message));
  }
}

TEST_CASE("slurm: shoal launch slurm prints or writes the script, makes paths absolute and refuses bad flags",
          "[slurm][script][cli]") {
  TempDir dir;
  fs::create_directories(dir / "model");
  const std::string base = kShoal + " launch slurm --model " + dir / "model" + " -i in.jsonl -o " + dir / "out.jsonl" +
                           " --ntasks 2 --time 30 --grace 120 --shoal /opt/shoal";
  int status = -1;
  const std::string printed = run_command("cd " + dir / "" + " && " + base + " 2>" + dir / "err", &status);
  INFO(read_file(dir / "err"));
  REQUIRE(exit_code(status) == 0);
  CHECK_THAT(printed, Catch::StartsWith("#!/bin/bash\n") && Catch::Contains("SHOAL_INPUT=" + dir / "in.jsonl" + "\n") &&
                          Catch::Contains("#SBATCH --ntasks=2\n") && Catch::Contains("#SBATCH --signal=B:USR1@120\n") &&
                          Catch::Contains("SHOAL_BIN=/opt/shoal\n"));
  run_command("cd " + dir / "" + " && " + base + " --out " + dir / "job.sbatch" + " 2>" + dir / "err", &status);
  REQUIRE(exit_code(status) == 0);
  CHECK(read_file(dir / "job.sbatch") == printed);
  CHECK_THAT(read_file(dir / "err"), Catch::Contains("sbatch " + dir / "job.sbatch"));
  CHECK((fs::status(dir / "job.sbatch").permissions() & fs::perms::owner_exec) != fs::perms::none);
  run_command("bash -n " + dir / "job.sbatch" + " 2>" + dir / "err", &status);  // valid bash
  INFO(read_file(dir / "err"));
  CHECK(exit_code(status) == 0);

  // The default shoal is this binary.
  const std::string self = run_command(kShoal + " launch slurm --serve --model " + dir / "model" + " 2>/dev/null", &status);
  REQUIRE(exit_code(status) == 0);
  CHECK_THAT(self, Catch::Contains("SHOAL_BIN=" + fs::canonical(kShoal).string() + "\n"));
  run_command("bash -n -c " + shoal::cluster::sh_word(self), &status);
  CHECK(exit_code(status) == 0);

  struct Bad {
    std::string args, message;
  };
  for (const Bad& b : std::vector<Bad>{
           {" --batch --serve --model m -i a -o b", "give one of --batch and --serve"},
           {" --serve --model m -i a", "are for --batch jobs"},
           {" --model m -i a -o b --time 1h", "--time '1h'"},
           {" --model m -i a -o b --submit", "--submit needs --out"},
           {" --model m -i a -o b --out /nonexistent-dir/x.sbatch", "--out /nonexistent-dir/x.sbatch: cannot write it"},
           {" -i a -o b", "--model is required"}}) {
    INFO(b.args);
    run_command(kShoal + " launch slurm" + b.args + " >/dev/null 2>" + dir / "err", &status);
    CHECK(exit_code(status) != 0);
    CHECK_THAT(read_file(dir / "err"), Catch::Contains(b.message));
  }
}

TEST_CASE("slurm: --cluster spec.json gives the nodes, one task per rank and the GPUs per node", "[slurm][script][cli]") {
  TempDir dir;
  fs::create_directories(dir / "model");
  {
    std::ofstream(dir / "gpu.json") << R"({"nodes": [{"name": "a", "gpus_gib": [24, 24], "ram_gib": 64, "link_gbps": 25},
                                               {"name": "b", "gpus_gib": [24, 24], "ram_gib": 64, "link_gbps": 25},
                                               {"name": "c", "gpus_gib": [24, 24], "ram_gib": 64, "link_gbps": 25}]})";
    std::ofstream(dir / "mixed.json") << R"({"nodes": [{"name": "a", "gpus_gib": [24, 24], "ram_gib": 64, "link_gbps": 25},
                                                 {"name": "cpu1", "ram_gib": 128, "link_gbps": 25}]})";
  }
  const std::string base = kShoal + " launch slurm --model " + dir / "model" + " -i in -o out --shoal /s";
  int status = -1;
  const std::string s = run_command(base + " --cluster " + dir / "gpu.json" + " 2>" + dir / "err", &status);
  INFO(read_file(dir / "err"));
  REQUIRE(exit_code(status) == 0);
  CHECK_THAT(s, Catch::Contains("#SBATCH --nodes=3\n#SBATCH --ntasks=6\n#SBATCH --gpus-per-node=2\n"));
  run_command(base + " --cluster " + dir / "mixed.json" + " >/dev/null 2>" + dir / "err", &status);
  CHECK(exit_code(status) == 1);
  CHECK_THAT(read_file(dir / "err"), Catch::Contains("node cpu1 has 0 GPUs and 1 ranks, node a 2 GPUs and 2 ranks"));
  run_command(base + " --cluster " + dir / "gpu.json" + " --nodes 2 >/dev/null 2>" + dir / "err", &status);
  CHECK(exit_code(status) == 1);
  CHECK_THAT(read_file(dir / "err"), Catch::Contains("--cluster sets --nodes"));
  run_command(base + " --cluster " + dir / "missing.json" + " >/dev/null 2>" + dir / "err", &status);
  CHECK(exit_code(status) == 1);
  CHECK_THAT(read_file(dir / "err"), Catch::Contains("missing.json"));
}

// ---- part 2: a real Slurm -----------------------------------------------------------------

namespace {

// DeepSeek-V3's architecture at hidden 64 (as tests/test_batch.cpp): 2 layers, 8 routed experts.
const char* kConfig = R"({
  "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
  "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32,
  "num_hidden_layers": 2, "first_k_dense_replace": 1, "moe_layer_freq": 1,
  "num_attention_heads": 4, "num_key_value_heads": 4,
  "q_lora_rank": 48, "kv_lora_rank": 32, "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32,
  "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 4, "topk_group": 2,
  "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": true, "routed_scaling_factor": 2.5,
  "hidden_act": "silu", "rms_norm_eps": 1e-06, "max_position_embeddings": 512,
  "rope_theta": 10000, "rope_scaling": {"type": "yarn", "factor": 8, "original_max_position_embeddings": 64,
    "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
  "tie_word_embeddings": false, "num_nextn_predict_layers": 0, "vocab_size": 129280,
  "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "bfloat16"
})";

const char* kWords[] = {"the", "sky", "is", "blue", "why", "does", "water", "boil", "at", "100", "Paris",
                        "tell", "me", "a", "story", "about", "你好", "世界", "cats", "and", "dogs", "\n", "?"};

// n requests, chat and completions, custom_ids job-0..; every one runs (no error records).
std::string make_input(int n) {
  std::mt19937 rng(77);
  auto words = [&](int k) {
    std::string s;
    for (int i = 0; i < k; ++i) s += (i ? " " : "") + std::string(kWords[rng() % std::size(kWords)]);
    return s;
  };
  std::string in;
  for (int i = 0; i < n; ++i) {
    json body;
    std::string url;
    if (i % 2 == 0) {
      url = "/v1/chat/completions";
      body = {{"messages", {{{"role", "user"}, {"content", words(2 + rng() % 8)}}}}};
    } else {
      url = "/v1/completions";
      body = {{"prompt", words(1 + rng() % 12)}};
    }
    body["max_tokens"] = 2 + int(rng() % 4);
    body["temperature"] = 0;  // greedy, whatever a server's default sampling is
    in += json{{"custom_id", "job-" + std::to_string(i)}, {"method", "POST"}, {"url", url}, {"body", body}}.dump() + "\n";
  }
  return in;
}

// A results file: whole lines, each custom_id once. custom_id -> record.
std::map<std::string, json> read_results(const std::string& path) {
  const std::string text = read_file(path);
  INFO(path);
  REQUIRE((text.empty() || text.back() == '\n'));
  std::map<std::string, json> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    INFO(line);
    const json r = json::parse(line);
    const std::string id = r.at("custom_id");
    INFO("custom_id " << id);
    REQUIRE(out.count(id) == 0);  // exactly once
    out[id] = r;
  }
  return out;
}

void check_same_results(const std::map<std::string, json>& want, const std::map<std::string, json>& got) {
  CHECK(got.size() == want.size());
  for (const auto& [id, w] : want) {
    INFO("custom_id " << id);
    REQUIRE(got.count(id) == 1);
    CHECK(comparable(got.at(id)) == comparable(w));
  }
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// The local Slurm of tests/support/slurm-local-up.sh, down again when this goes out of scope.
// One at a time on a machine (its state folder and ports are fixed): a lock file says whose.
class LocalSlurm {
 public:
  // Empty `skip` and up() true: running. Non-empty `skip`: why this machine cannot run it.
  bool up(std::string& skip, std::string& log) {
    if (::geteuid() != 0) {
      skip = "not root (uid " + std::to_string(::geteuid()) + "): slurmd and munged must be started as root";
      return false;
    }
    lock_fd_ = ::open("/run/shoal-slurm-test.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    REQUIRE(lock_fd_ >= 0);
    const auto deadline = std::chrono::steady_clock::now() + 300s;
    while (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
      INFO("another test_slurm holds /run/shoal-slurm-test.lock for more than 300 s");
      REQUIRE(std::chrono::steady_clock::now() < deadline);
      std::this_thread::sleep_for(500ms);
    }
    started_ = true;
    int status = -1;
    log = run_command("SLURM_LOCAL_NO_INSTALL=1 timeout 180 " + kSource + "/tests/support/slurm-local-up.sh 2>&1", &status);
    if (exit_code(status) == 3) {  // an environmental reason, named on stderr
      skip = trim(log.substr(log.rfind("slurm-local-up: ") == std::string::npos ? 0 : log.rfind("slurm-local-up: ")));
      return false;
    }
    return exit_code(status) == 0;
  }
  ~LocalSlurm() {
    if (started_) {
      int status = -1;
      run_command("timeout 60 " + kSource + "/tests/support/slurm-local-down.sh >/dev/null 2>&1", &status);
    }
    if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the lock
  }

 private:
  int lock_fd_ = -1;
  bool started_ = false;
};

// The job's state as squeue prints it, "" once the job has ended (not listed, or already purged:
// "Invalid job id"). A failed squeue (slurmctld busy on a loaded machine) is asked again, never
// taken for "ended": that once let a running job look finished.
std::string job_state(const std::string& job) {
  std::string out;
  for (int attempt = 0; attempt < 20; ++attempt) {
    int status = -1;
    out = trim(run_command("timeout 10 squeue -h -j " + job + " -o %T 2>&1", &status));
    if (exit_code(status) == 0) return out;
    if (out.find("Invalid job id") != std::string::npos) return "";
    std::this_thread::sleep_for(500ms);
  }
  FAIL("squeue -j " << job << " kept failing: " << out);
  return out;
}

// Waits until `done` or the deadline; false at the deadline.
template <typename Done>
bool wait_for(Done done, std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(100ms);
  }
  return true;
}

std::string hostname() {
  int status = -1;
  return trim(run_command("hostname -s", &status));
}

// Whether a file whose path starts with `prefix` exists.
bool socket_left(const std::string& prefix) {
  const fs::path p(prefix);
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(p.parent_path(), ec))
    if (e.path().string().rfind(prefix, 0) == 0) return true;
  return false;
}

// A slurmstepd of the job still running (its title is "slurmstepd: [JOB.STEP]"), or a step
// socket of it left in the spool (NODE_JOB.STEP): the previous run of a requeued job has not
// finished tearing down.
bool stepd_left(const std::string& job, const std::string& spool) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    std::ifstream in(e.path() / "cmdline");
    std::string cmdline;
    std::getline(in, cmdline, '\0');
    if (cmdline.rfind("slurmstepd: [" + job + ".", 0) == 0) return true;
  }
  return socket_left(spool + "/" + hostname() + "_" + job + ".");
}

std::string submit(const std::string& script) {
  int status = -1;
  const std::string out = run_command("timeout 30 sbatch --parsable " + script + " 2>&1", &status);
  INFO(out);
  REQUIRE(exit_code(status) == 0);
  return trim(out);
}

}  // namespace

TEST_CASE("slurm: the generated script runs shoal batch with 2 tasks on a real Slurm, scancel or the time-limit "
          "warning mid-run and then a resubmission or the requeue complete it exactly once, a serving job answers",
          "[slurm][real]") {
#ifndef SHOAL_HAVE_MPI
  WARN("skipped: shoal was built without MPI (SHOAL_MPI=OFF), and its ranks under srun form an MPI job");
  return;
#endif
  TempDir dir;
  LocalSlurm slurm;
  std::string skip, up_log;
  const auto t_up = std::chrono::steady_clock::now();
  const bool up = slurm.up(skip, up_log);
  if (!skip.empty()) {
    WARN("skipped: no local Slurm on this machine: " << skip);
    return;
  }
  INFO(up_log);
  REQUIRE(up);
  WARN("slurm up in " << std::chrono::duration<double>(std::chrono::steady_clock::now() - t_up).count() << " s");
  const std::string conf = "/run/shoal-slurm-test/slurm.conf";
  ::setenv("SLURM_CONF", conf.c_str(), 1);  // sbatch, squeue, ... and the jobs (sbatch passes the environment on)
  // Open MPI as root, on loopback, ranks yielding on the 2 shared cores (docs/deploy-slurm.md).
  ::setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
  ::setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  ::setenv("OMPI_MCA_mpi_yield_when_idle", "1", 1);
  ::setenv("OMPI_MCA_btl_tcp_if_include", "lo", 1);
  ::setenv("OMPI_MCA_oob_tcp_if_include", "lo", 1);

  // The model, the requests, and the reference: one process, no Slurm.
  { std::ofstream(dir / "config.json") << kConfig; }
  int status = -1;
  std::string out = run_command("timeout 120 " + kShoal + " synth --config " + dir / "config.json" + " --tokenizer " +
                                    kTokenizer + " --out " + dir / "model" + " 2>&1",
                                &status);
  INFO(out);
  REQUIRE(exit_code(status) == 0);
  // Enough work that a signal sent once 6 records are out lands mid-run even on a quiet machine
  // (24 requests took 0.2 s there: the job ended before the USR1 drain could requeue it).
  constexpr int kRequests = 240;
  { std::ofstream(dir / "in.jsonl") << make_input(kRequests); }
  const std::string flags = "--max-seq-len 128 --slots 4";
  const auto t_ref = std::chrono::steady_clock::now();
  out = run_command("timeout 120 " + kShoal + " batch --model " + dir / "model" + " -i " + dir / "in.jsonl" + " -o " +
                        dir / "ref.jsonl " + flags + " 2>&1",
                    &status);
  INFO(out);
  REQUIRE(exit_code(status) == 0);
  const auto ref = read_results(dir / "ref.jsonl");
  REQUIRE(ref.size() == size_t(kRequests));
  WARN("reference run (one process): " << std::chrono::duration<double>(std::chrono::steady_clock::now() - t_ref).count()
                                       << " s");

  {  // srun without PMI starts lone processes, each of which would run the whole command: refused
    out = run_command("timeout 60 srun -n 2 " + kShoal + " run --model " + dir / "model" +
                          " --ids '1 2 3' --max-tokens 2 2>&1",
                      &status);
    INFO(out);
    CHECK(exit_code(status) != 0);
    CHECK_THAT(out, Catch::Contains("of 2 that srun started without PMI") && Catch::Contains("srun --mpi=pmix"));
  }

  // The script for an output file, written by shoal launch slurm.
  auto make_script = [&](const std::string& name, const std::string& extra) {
    int st = -1;
    const std::string err = run_command(kShoal + " launch slurm --batch --model " + dir / "model" + " -i " + dir / "in.jsonl" +
                                            " -o " + dir / (name + ".jsonl") + " --nodes 1 --ntasks 2 --time 10 --grace 60" +
                                            " --drain-timeout 3 --log " + dir / (name + "-%j.log") + " --args '" + flags +
                                            "' --out " + dir / (name + ".sbatch") + extra + " 2>&1",
                                        &st);
    INFO(err);
    REQUIRE(exit_code(st) == 0);
    return dir / (name + ".sbatch");
  };
  auto logs = [&](const std::string& name) {
    std::string all;
    for (const auto& e : fs::directory_iterator(fs::path(dir / ""))) {
      const std::string f = e.path().filename().string();
      if (f.rfind(name + "-", 0) == 0 && e.path().extension() == ".log") all += "== " + f + "\n" + read_file(e.path());
    }
    return all;
  };

  {  // one job runs it through
    const std::string script = make_script("whole", "");
    const auto t0 = std::chrono::steady_clock::now();
    out = run_command("timeout 180 sbatch --wait " + script + " 2>&1", &status);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    INFO(out << logs("whole"));
    REQUIRE(exit_code(status) == 0);
    CHECK_THAT(logs("whole"), Catch::Contains("2 ranks over MPI") && Catch::Contains("done: every line"));
    check_same_results(ref, read_results(dir / "whole.jsonl"));
    WARN("sbatch --wait, 2 tasks (srun --mpi=pmix): " << s << " s");
  }

  // Submits `name`'s script and waits until its output holds at least `records` lines while the
  // job still runs. Returns the job id.
  auto start_and_wait_records = [&](const std::string& script, const std::string& name, size_t records) {
    const std::string job = submit(script);
    const bool reached = wait_for(
        [&] { return count_lines(dir / (name + ".jsonl")) >= records || job_state(job).empty(); }, 120s);
    INFO(logs(name));
    REQUIRE(reached);
    REQUIRE(job_state(job) == "RUNNING");
    REQUIRE(count_lines(dir / (name + ".jsonl")) < size_t(kRequests));  // mid-run
    return job;
  };

  {  // scancel mid-run, then the resubmitted job completes it exactly once
    const std::string script = make_script("cancel", "");
    const std::string job = start_and_wait_records(script, "cancel", 6);
    out = run_command("timeout 10 scancel " + job + " 2>&1", &status);
    INFO(out);
    REQUIRE(exit_code(status) == 0);
    const bool gone = wait_for([&] { return job_state(job).empty(); }, 60s);
    INFO(logs("cancel"));
    REQUIRE(gone);
    const auto partial = read_results(dir / "cancel.jsonl");  // whole lines, each custom_id once
    CHECK(partial.size() < size_t(kRequests));
    for (const auto& [id, r] : partial) CHECK(comparable(r) == comparable(ref.at(id)));
    // Rank 0 drained (SIGTERM) while rank 1 kept serving it.
    CHECK_THAT(logs("cancel"), Catch::Contains("stopped by a signal"));

    const auto t0 = std::chrono::steady_clock::now();
    out = run_command("timeout 180 sbatch --wait " + script + " 2>&1", &status);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    INFO(out << logs("cancel"));
    REQUIRE(exit_code(status) == 0);
    CHECK_THAT(logs("cancel"), Catch::Contains("resuming: " + std::to_string(partial.size()) + " of "));
    check_same_results(ref, read_results(dir / "cancel.jsonl"));
    WARN("after scancel at " << partial.size() << " records, the resubmission took " << s << " s");
  }

  {  // the time-limit warning mid-run: the job stops, requeues itself and completes it exactly once
    // USR1 to the batch shell is what --signal=B:USR1@GRACE sends GRACE seconds before the limit.
    const std::string script = make_script("requeue", " --launcher srun");
    const std::string job = start_and_wait_records(script, "requeue", 6);
    out = run_command("timeout 10 scancel --batch --signal=USR1 " + job + " 2>&1", &status);
    INFO(out);
    REQUIRE(exit_code(status) == 0);
    // Requeued: pending again. Slurm holds a requeued job back about 2 minutes; start it now.
    const bool pending = wait_for([&] { return job_state(job) == "PENDING"; }, 60s);
    INFO(logs("requeue"));
    REQUIRE(pending);
    const size_t at = read_results(dir / "requeue.jsonl").size();
    CHECK(at < size_t(kRequests));
    CHECK_THAT(logs("requeue"), Catch::Contains("requeueing job " + job));
    // The old step's slurmstepd may still be cleaning up; a new step 0 of the same job id
    // cannot bind its PMIx socket until it has (with Slurm's own delay it always has).
    const std::string sockets = "/run/shoal-slurm-test/spool/" + hostname() + "/stepd.slurm.pmix." + job + ".";
    CHECK(wait_for([&] { return !socket_left(sockets); }, 60s));
    // Nor may the new run start while the old run's batch step still tears down: launched on top
    // of it, the second run failed at once (exit 1, no output; seen under load in CI).
    CHECK(wait_for([&] { return !stepd_left(job, "/run/shoal-slurm-test/spool/" + hostname()); }, 60s));
    out = run_command("timeout 10 scontrol update JobId=" + job + " StartTime=now 2>&1", &status);
    INFO(out);
    REQUIRE(exit_code(status) == 0);
    const auto t0 = std::chrono::steady_clock::now();
    // The states squeue gave on the way, and Slurm's record as the job left squeue: what a
    // failure below needs to say (once, under load, the job left without a second run).
    std::string states, record;
    const bool done = wait_for(
        [&] {
          const std::string st = job_state(job);
          const std::string shown = st.empty() ? "(gone)" : st;
          if (states.size() < shown.size() || states.compare(states.size() - shown.size(), shown.size(), shown) != 0)
            states += " " + shown;
          if (st.empty()) record = run_command("timeout 10 scontrol show job " + job + " 2>&1", &status);
          return st.empty();
        },
        150s);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    INFO("states after StartTime=now:" << states << "\nscontrol show job " << job << ":\n" << record);
    INFO(logs("requeue"));
    REQUIRE(done);
    CHECK_THAT(logs("requeue"), Catch::Contains("(restart 1)") && Catch::Contains("resuming: ") &&
                                    Catch::Contains("done: every line"));
    check_same_results(ref, read_results(dir / "requeue.jsonl"));
    WARN("after the warning at " << at << " records, the requeued run took " << s << " s");
  }

  {  // a serving job: shoal serve with 2 ranks answers as shoal batch did; scancel ends it
    int st = -1;
    out = run_command(kShoal + " launch slurm --serve --model " + dir / "model" + " --ntasks 2 --port 0 --log " +
                          dir / "serve-%j.log" + " --args '--max-seq-len 128' --out " + dir / "serve.sbatch" + " 2>&1",
                      &st);
    INFO(out);
    REQUIRE(exit_code(st) == 0);
    const std::string job = submit(dir / "serve.sbatch");
    std::smatch m;
    const std::regex listening("listening on http://[^:\\s]+:([0-9]+)");
    const bool listens = wait_for(
        [&] {
          const std::string log = logs("serve");
          return std::regex_search(log, m, listening) || job_state(job).empty();
        },
        90s);
    INFO(logs("serve"));
    REQUIRE(listens);
    REQUIRE(m.size() == 2);
    const std::string port = m[1];
    CHECK_THAT(logs("serve"), Catch::Contains("serving on " + hostname()) && Catch::Contains("2 ranks over MPI"));
    // job-1 is a completions request: the server's text is the batch's.
    std::string line;
    {
      std::istringstream in(read_file(dir / "in.jsonl"));
      std::getline(in, line);
      std::getline(in, line);
    }
    const json request = json::parse(line);
    REQUIRE(request["custom_id"] == "job-1");
    json body = request["body"];
    body["model"] = "model";  // the API wants it: the folder's name
    { std::ofstream(dir / "body.json") << body.dump(); }
    const std::string reply = run_command("curl -s -m 60 -H 'Content-Type: application/json' --data-binary @" +
                                              dir / "body.json" + " http://127.0.0.1:" + port + "/v1/completions",
                                          &st);
    INFO(reply);
    REQUIRE(exit_code(st) == 0);
    const json got = json::parse(reply);
    const json& want = ref.at("job-1")["response"]["body"];
    CHECK(got["choices"][0]["text"] == want["choices"][0]["text"]);
    CHECK(got["usage"] == want["usage"]);
    out = run_command("timeout 10 scancel " + job + " 2>&1", &st);
    REQUIRE(exit_code(st) == 0);
    CHECK(wait_for([&] { return job_state(job).empty(); }, 60s));
    CHECK_THAT(logs("serve"), Catch::Contains("shoal serve ended with status"));
  }
}
