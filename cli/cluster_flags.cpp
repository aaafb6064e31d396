#include "cli/cluster_flags.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include "comm/tcp/admission.h"
#include "comm/wire/tags.h"
#include "coordinator/local_cluster.h"
#include "node/session.h"
#ifdef SHOAL_HAVE_MPI
#include "comm/mpi/mpi_transport.h"
#endif

namespace shoal::cli {
namespace {

using namespace std::chrono;

milliseconds ms(double seconds) { return milliseconds(int64_t(seconds * 1000)); }

StatusOr<std::vector<comm::PeerAddress>> parse_nodes(const std::string& text) {
  std::vector<comm::PeerAddress> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    const size_t colon = item.rfind(':');
    int port = 0;
    try { port = colon == std::string::npos ? 0 : std::stoi(item.substr(colon + 1)); } catch (...) { port = 0; }
    if (colon == std::string::npos || colon == 0 || port <= 0 || port > 65535)
      return invalid_argument("--nodes: '" + item + "' is not HOST:PORT");
    out.push_back({item.substr(0, colon), uint16_t(port)});
  }
  if (out.empty()) return invalid_argument("--nodes names no node");
  return out;
}

// Whether something accepts a TCP connection at `a` within `timeout`.
bool reachable(const comm::PeerAddress& a, milliseconds timeout) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(a.host.c_str(), std::to_string(a.port).c_str(), &hints, &found) != 0) return false;
  bool ok = false;
  for (addrinfo* p = found; p && !ok; p = p->ai_next) {
    const int fd = socket(p->ai_family, p->ai_socktype | SOCK_NONBLOCK, p->ai_protocol);
    if (fd < 0) continue;
    if (connect(fd, p->ai_addr, p->ai_addrlen) == 0) {
      ok = true;
    } else if (errno == EINPROGRESS) {
      pollfd w{fd, POLLOUT, 0};
      int err = 0;
      socklen_t len = sizeof err;
      ok = poll(&w, 1, int(timeout.count())) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0;
    }
    close(fd);
  }
  freeaddrinfo(found);
  return ok;
}

std::string join(const std::vector<comm::PeerAddress>& v) {
  std::string out;
  for (const auto& a : v) out += (out.empty() ? "" : ",") + to_string(a);
  return out;
}

}  // namespace

StatusOr<std::unique_ptr<Cluster>> open_cluster_with_spares(ClusterFlags& flags, const ClusterOptions& base) {
  auto c = open_cluster(flags, base);
  if (c.ok() || flags.spares.empty() || flags.nodes.empty()) return c;
  SHOAL_ASSIGN_OR_RETURN(std::vector<comm::PeerAddress> nodes, parse_nodes(flags.nodes));
  SHOAL_ASSIGN_OR_RETURN(std::vector<comm::PeerAddress> spares, parse_nodes(flags.spares));
  bool replaced = false;
  for (size_t i = 0; i < nodes.size() && !spares.empty(); ++i) {
    if (reachable(nodes[i], seconds(1))) continue;
    std::fprintf(stderr, "shoal: node %zu (%s) does not answer; the spare %s takes its place\n", i + 1,
                 to_string(nodes[i]).c_str(), to_string(spares.front()).c_str());
    nodes[i] = spares.front();
    spares.erase(spares.begin());
    replaced = true;
  }
  if (!replaced) return c;
  flags.nodes = join(nodes);
  flags.spares = join(spares);
  return open_cluster(flags, base);
}

StatusOr<ServingCluster> ServingCluster::open(const ClusterFlags& flags, const ClusterOptions& base) {
  ServingCluster s;
  if (!flags.nodes.empty()) {
    SHOAL_ASSIGN_OR_RETURN(s.healing_, HealingCluster::start([f = flags, base]() mutable {
                             return open_cluster_with_spares(f, base);
                           }));
  } else {
    SHOAL_ASSIGN_OR_RETURN(s.fixed_, open_cluster(flags, base));
  }
  return s;
}

void add_cluster_flags(CLI::App* sub, ClusterFlags& f) {
  sub->add_option("--local-nodes", f.local_nodes, "Run N ranks as threads of this process")->check(CLI::Range(1, 256));
  sub->add_option("--nodes", f.nodes, "`shoal node` addresses HOST:PORT,... to run on (TCP)");
  sub->add_option("--spare", f.spares,
                  "serve, batch: spare `shoal node` addresses HOST:PORT,... (each with its own copy of the shard) "
                  "that take the place of a node that is lost and does not answer")
      ->needs(sub->get_option("--nodes"));
  sub->add_option("--token-file", f.token_file, "File with the cluster token the nodes were started with");
  sub->add_option("--plan", f.plan, "Placement plan file (JSON, docs/distributed.md); default: planned here");
  sub->add_flag("--expert-scatter", f.expert_scatter, "Default plan: spread each layer's experts over the ranks");
  sub->add_flag("--no-mmap", f.no_mmap,
                "Copy each rank's weights into its own memory (transparent huge pages) instead of reading them "
                "through the mapped files: faster on virtual machines that back file pages with small pages "
                "(docs/performance.md, \"Mapped or copied weights\"); ranks of one machine no longer share pages");
  sub->add_flag("--exact", f.exact,
                "GGUF: dequantize weights exactly against float32 activations (default for GGUF: fast, "
                "activations quantized per block and integer dot products, as llama.cpp)");
  sub->add_option("--lora", f.lora,
                  "A LoRA adapter (PEFT folder or GGUF file), unmerged in float32: NAME=DIR (repeatable; requests "
                  "name it as their model) or DIR alone (every sequence; docs/lora.md)");
  sub->add_option("--merge-lora", f.merge_lora,
                  "A LoRA adapter folded into the weights it adapts at load, for every sequence (no adapter products "
                  "per token; --merge-into says where)")
      ->excludes(sub->get_option("--lora"));
  sub->add_option("--merge-into", f.merge_into,
                  "Where --merge-lora folds: f32 (default; float32 copies, within the golden tolerance, 4 bytes per "
                  "adapted weight) or stored (the weights' BF16/F16/FP8 dtype: the base's size and speed, rounded "
                  "once more; docs/lora.md)")
      ->check(CLI::IsMember({"f32", "stored"}))
      ->needs(sub->get_option("--merge-lora"));
  sub->add_option("--wire-dtype", f.wire_dtype,
                  "Hidden rows between ranks: f32 (default; the single process's logits bit for bit) or bf16 "
                  "(half the bytes, rounded at each hop; docs/distributed.md gives its measured deviation)")
      ->check(CLI::IsMember({"f32", "bf16"}));
  sub->add_option("--kv-dtype", f.kv_dtype,
                  "KV cache values: f32 (default; exact), bf16 (half the memory, rounded once as stored) or fp8 "
                  "(e4m3 with a scale per row: about a quarter; docs/serving.md gives both deviations)")
      ->check(CLI::IsMember({"f32", "bf16", "fp8"}));
  sub->add_option("--kv-memory", f.kv_memory,
                  "Bytes of each rank's paged KV pool, e.g. 16GiB, or a share of the memory each host has left after "
                  "weights and workspace, e.g. 90% or 0.9 (docs/serving.md, \"The KV pool\"); 0: a fixed "
                  "cache of --max-seq-len per sequence. Default: serve and batch a pool as large as 8 x 4096 float32 "
                  "positions, other commands 0");
  sub->add_option("--step-timeout", f.step_timeout_s, "Seconds to wait for one step's result")->check(CLI::PositiveNumber);
  sub->add_option("--heartbeat-timeout", f.heartbeat_timeout_s, "Seconds of node silence that count as a failure")
      ->check(CLI::PositiveNumber);
}

bool under_mpi() { return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMIX_RANK") || std::getenv("PMI_RANK"); }

int mpi_rank_from_env() {
  for (const char* name : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"})
    if (const char* v = std::getenv(name)) return std::atoi(v);
  return 0;
}

// srun started this process as one of several tasks of a step, but without PMI (srun without
// --mpi=pmix where Slurm's MpiDefault is none): the tasks cannot form one MPI job and each would
// run the whole command on its own.
static Status check_not_a_lone_srun_task() {
  const char* tasks = std::getenv("SLURM_STEP_NUM_TASKS");
  const char* id = std::getenv("SLURM_PROCID");
  if (under_mpi() || !tasks || !id || std::atoi(tasks) <= 1) return {};
  return invalid_argument(std::string("this is task ") + id + " of " + tasks +
                          " that srun started without PMI, so they cannot form one shoal job: start them with "
                          "`srun --mpi=pmix` (or mpirun inside the allocation), or run one task");
}

StatusOr<int64_t> parse_bytes(const std::string& text, const std::string& flag) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  std::string unit = end ? std::string(end) : "";
  double scale = 1;
  const std::vector<std::pair<std::string, double>> units = {
      {"", 1}, {"B", 1}, {"K", 0x1p10}, {"KiB", 0x1p10}, {"KB", 1e3}, {"M", 0x1p20}, {"MiB", 0x1p20}, {"MB", 1e6},
      {"G", 0x1p30}, {"GiB", 0x1p30}, {"GB", 1e9}, {"T", 0x1p40}, {"TiB", 0x1p40}, {"TB", 1e12}};
  bool known = false;
  for (const auto& [name, s] : units)
    if (unit == name) known = true, scale = s;
  if (text.empty() || end == text.c_str() || !known || !(v >= 0) || v * scale > 0x1p62)
    return invalid_argument(flag + " '" + text + "' is not a size in bytes (e.g. 16GiB, 512MiB, 2e9)");
  return int64_t(v * scale);
}

StatusOr<KvMemory> parse_kv_memory(const std::string& text) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  const bool percent = end && end != text.c_str() && std::string(end) == "%";
  if (percent || (end && end != text.c_str() && *end == '\0' && v > 0 && v < 1)) {
    const double f = percent ? v / 100 : v;
    if (!(f > 0 && f <= 1))
      return invalid_argument("--kv-memory '" + text + "': a share of the memory left must be above 0% and at most 100%");
    return KvMemory{0, f};
  }
  SHOAL_ASSIGN_OR_RETURN(int64_t bytes, parse_bytes(text, "--kv-memory"));
  return KvMemory{bytes, 0};
}

StatusOr<std::unique_ptr<Cluster>> open_cluster(const ClusterFlags& f, ClusterOptions o) {
  SHOAL_RETURN_IF_ERROR(check_not_a_lone_srun_task());
  o.kv_dtype = *parse_kv_dtype(f.kv_dtype);
  if (f.kv_memory.empty()) {
    o.kv_memory = f.paged_by_default ? kDefaultKvMemory : 0;
  } else {
    SHOAL_ASSIGN_OR_RETURN(KvMemory m, parse_kv_memory(f.kv_memory));
    o.kv_memory = m.bytes;
    o.kv_memory_fraction = m.fraction;
  }
  o.plan_file = f.plan;
  o.expert_scatter = f.expert_scatter;
  o.exact = f.exact;
  o.copy_weights = f.no_mmap;
  o.wire_dtype = f.wire_dtype == "bf16" ? wire::WireDtype::kBF16 : wire::WireDtype::kF32;
  SHOAL_ASSIGN_OR_RETURN(o.loras, parse_lora_specs(f.merge_lora.empty() ? f.lora : std::vector<std::string>{f.merge_lora}));
  o.merge_lora = !f.merge_lora.empty();
  o.merge_into = f.merge_into == "stored" ? MergeInto::kStored : MergeInto::kF32;
  if (o.merge_lora) o.loras[0].name.clear();  // folded into the weights: it is the model
  if (f.one_model && o.loras.size() > 1)
    return invalid_argument("this command runs one model: give one --lora (several are for serve, batch and bench)");
  if (f.one_model && o.loras.size() == 1) o.loras[0].name.clear();
  o.step_timeout = ms(f.step_timeout_s);
  o.heartbeat_timeout = ms(f.heartbeat_timeout_s);
  const int modes = int(f.local_nodes > 0) + int(!f.nodes.empty()) + int(under_mpi());
  if (modes > 1) return invalid_argument("give at most one of --local-nodes, --nodes and mpirun");
  if (under_mpi()) {
#ifdef SHOAL_HAVE_MPI
    SHOAL_ASSIGN_OR_RETURN(std::unique_ptr<comm::Transport> t, comm::make_mpi_transport(nullptr, nullptr));
    const std::string pml = comm::open_mpi_pml();
    std::fprintf(stderr, "shoal: %d ranks over MPI (pml %s)\n", t->size(), pml.empty() ? "unknown" : pml.c_str());
    return Cluster::start(std::move(t), o);
#else
    return invalid_argument("this shoal was built without MPI (SHOAL_MPI=OFF) but runs under mpirun");
#endif
  }
  if (!f.nodes.empty()) {
    if (f.token_file.empty()) return invalid_argument("--nodes needs --token-file (the nodes' cluster token)");
    SHOAL_ASSIGN_OR_RETURN(std::vector<comm::PeerAddress> peers, parse_nodes(f.nodes));
    SHOAL_ASSIGN_OR_RETURN(std::string token, comm::read_token_file(f.token_file));
    const comm::AdmissionInfo mine{wire::kWireVersion, build_id()};
    SHOAL_ASSIGN_OR_RETURN(std::unique_ptr<comm::Transport> t,
                           comm::connect_nodes(peers, token, mine, comm::deadline_after(seconds(30))));
    std::string ranks;
    for (size_t i = 0; i < peers.size(); ++i) ranks += ", rank " + std::to_string(i + 1) + " = " + to_string(peers[i]);
    std::fprintf(stderr, "shoal: %zu nodes over TCP%s\n", peers.size(), ranks.c_str());
    o.coordinator_hosts = false;
    o.nodes_exit = false;
    return Cluster::start(std::move(t), o);
  }
  return start_local_cluster(std::max(f.local_nodes, 1), o);
}

int run_mpi_node() {
#ifdef SHOAL_HAVE_MPI
  auto t = comm::make_mpi_transport(nullptr, nullptr);
  if (!t.ok()) {
    std::fprintf(stderr, "shoal: rank %d: %s\n", mpi_rank_from_env(), t.status().to_string().c_str());
    return 1;
  }
  NodeState st;
  st.build_id = build_id();
  while (true) {
    auto end = serve_session(**t, st);
    if (!end.ok()) {
      std::fprintf(stderr, "shoal: error: %s\n", end.status().to_string().c_str());
      return 1;
    }
    if (end->exit_process) return 0;
  }
#else
  std::fprintf(stderr, "shoal: error: this shoal was built without MPI (SHOAL_MPI=OFF)\n");
  return 1;
#endif
}

}  // namespace shoal::cli
