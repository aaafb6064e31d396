// shoal: one executable, one subcommand per job (see docs/architecture.md).
#include <malloc.h>
#include <unistd.h>

#include <cstdlib>
#include <cstdio>

#include "cli/cluster_flags.h"
#include "cli/commands.h"
#include "kernels/kernels.h"

namespace shoal::cli {

int fail(const Status& s) {
  std::fprintf(stderr, "shoal: error: %s\n", s.to_string().c_str());
  return 1;
}

StatusOr<std::vector<int32_t>> parse_ids(const std::string& text) {
  std::vector<int32_t> ids;
  std::string word;
  auto flush = [&]() -> Status {
    if (word.empty()) return {};
    size_t used = 0;
    long long v = -1;
    try { v = std::stoll(word, &used); } catch (...) { used = 0; }
    if (used != word.size() || v < 0 || v > INT32_MAX)
      return invalid_argument("'" + word + "' in --ids is not a token id (a non-negative integer)");
    ids.push_back(int32_t(v));
    word.clear();
    return {};
  };
  for (char ch : text) {
    if (ch == ' ' || ch == ',' || ch == '\t' || ch == '\n') SHOAL_RETURN_IF_ERROR(flush());
    else word += ch;
  }
  SHOAL_RETURN_IF_ERROR(flush());
  if (ids.empty()) return invalid_argument("--ids '" + text + "' holds no token ids");
  return ids;
}

}  // namespace shoal::cli

namespace {
// OpenMP threads that wait for work spin for a bounded time (GOMP_SPINCOUNT=30000, tens of
// microseconds) and then sleep, unless the user chose (OMP_WAIT_POLICY or GOMP_SPINCOUNT): on a
// machine shared with other jobs, libgomp's default (300,000 spins per wait) made decode 7x
// slower under two busy processes; bounded, 2.7x (docs/performance.md, "Threads"). libgomp reads
// its settings when it loads, before main, so the process re-executes itself once with them.
void bound_openmp_spinning(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT")) return;
  ::setenv("GOMP_SPINCOUNT", "30000", 1);
  ::execv("/proc/self/exe", argv);  // returns only on failure: then run with libgomp's default
}
}  // namespace

int main(int argc, char** argv) {
  bound_openmp_spinning(argv);
  // Activation buffers of a step (tens of MB in prefill) come back from the heap at the next
  // step instead of fresh zeroed pages from the kernel each time (10% of a prefill's time).
  ::mallopt(M_MMAP_THRESHOLD, 64 << 20);
  ::mallopt(M_TRIM_THRESHOLD, 128 << 20);
  // Under mpirun, rank 0 runs the command and every other rank serves it.
  if (shoal::cli::under_mpi() && shoal::cli::mpi_rank_from_env() != 0) return shoal::cli::run_mpi_node();
  CLI::App app{"shoal: DeepSeek-V3/R1-class MoE models on the machines you already have"};
  app.require_subcommand(1);
  std::string version = std::string("shoal ") + SHOAL_VERSION + " (" + SHOAL_GIT_COMMIT + ")" +
                        (shoal::kernels::cuda_built() ? ", cuda" : ", cpu only");
  app.set_version_flag("--version", version);
  int rc = 0;
  shoal::cli::add_run(app, rc);
  shoal::cli::add_logits(app, rc);
  shoal::cli::add_synth(app, rc);
  shoal::cli::add_inspect(app, rc);
  shoal::cli::add_tokenize(app, rc);
  shoal::cli::add_node(app, rc);
  shoal::cli::add_bench(app, rc);
  shoal::cli::add_serve(app, rc);
  shoal::cli::add_batch(app, rc);
  shoal::cli::add_plan(app, rc);
  shoal::cli::add_launch(app, rc);
  shoal::cli::add_shard(app, rc);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  return rc;
}
