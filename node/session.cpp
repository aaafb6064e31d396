#include "node/session.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "cluster/plan.h"
#include "cluster/shard.h"
#include "comm/wire/wire_io.h"
#include "node/units.h"
#include "node/worker.h"

namespace shoal {
namespace {

using comm::Clock;
constexpr std::chrono::milliseconds kHeartbeatEvery{1000};

Status open_checkpoint(NodeState& st, const std::filesystem::path& dir) {
  if (st.ck && st.ck->dir() == dir) return {};
  st.ck.reset();
  SHOAL_ASSIGN_OR_RETURN(st.ck, Checkpoint::open(dir));
  return {};
}

Status check_shard(const std::filesystem::path& dir, int rank, const std::vector<std::string>& names) {
  SHOAL_ASSIGN_OR_RETURN(std::optional<cluster::ShardManifest> m, cluster::read_shard_manifest(dir));
  if (!m) return {};
  SHOAL_RETURN_IF_ERROR(cluster::check_shard_tensors(dir, *m, rank, names));
  return cluster::verify_shard(dir, *m);
}

}  // namespace

std::string host_name() {
  char buf[256] = {};
  return ::gethostname(buf, sizeof buf - 1) == 0 ? std::string(buf) : std::string("?");
}

std::string build_id() {
  if (const char* id = std::getenv("SHOAL_TEST_BUILD_ID"); id && *id) return id;  // tests of the refusal
  return std::string(SHOAL_VERSION) + "+" + SHOAL_GIT_COMMIT;
}

static StatusOr<SessionEnd> run_session(comm::Transport& t, NodeState& st, wire::Control& reply,
                                        Clock::time_point answer_deadline, bool pool_by_fraction);

StatusOr<SessionEnd> serve_session(comm::Transport& t, NodeState& st) {
  const int rank = t.rank();
  const std::string me = "rank " + std::to_string(rank) + " (" + host_name() + ")";
  SHOAL_ASSIGN_OR_RETURN(wire::Control ctl, wire::recv<wire::Control>(t, 0, wire::kControl, Clock::now() + st.hello_timeout));
  if (ctl.has_shutdown()) return SessionEnd{ctl.shutdown().exit_process()};  // the coordinator gave up first
  if (!ctl.has_hello()) return internal_error(t.peer_name(0) + " opened the session without a Hello");
  const wire::Hello& hello = ctl.hello();
  const auto answer_deadline = Clock::now() + std::chrono::seconds(30);

  wire::Control reply;
  wire::Loaded* loaded = reply.mutable_loaded();
  loaded->set_protocol_version(wire::kWireVersion);
  loaded->set_build_id(st.build_id);
  loaded->set_host(host_name());
  const std::filesystem::path dir = st.model_dir.empty() ? std::filesystem::path(hello.model_dir()) : st.model_dir;
  loaded->set_model_dir(dir.string());
  auto refuse = [&](const std::string& why) -> StatusOr<SessionEnd> {
    loaded->set_ok(false);
    loaded->set_error(why);
    (void)wire::send(t, 0, wire::kControl, reply, answer_deadline);
    return invalid_argument("refused the coordinator " + t.peer_name(0) + ": " + why);
  };
  if (hello.protocol_version() != wire::kWireVersion)
    return refuse("protocol version " + std::to_string(hello.protocol_version()) + " on the coordinator (" +
                  hello.coordinator_host() + "), " + std::to_string(wire::kWireVersion) + " on " + me);
  if (hello.build_id() != st.build_id)
    return refuse("build " + hello.build_id() + " on the coordinator (" + hello.coordinator_host() + "), build " +
                  st.build_id + " on " + me + ": run the same shoal binary everywhere");
  if (Status s = open_checkpoint(st, dir); !s.ok()) return refuse(me + " cannot open the model: " + s.to_string());
  const auto plan_json = nlohmann::json::parse(hello.plan_json(), nullptr, false);
  auto plan = cluster::plan_from_json(plan_json, st.ck->config(), t.size());
  if (!plan.ok()) return refuse(me + ": " + plan.status().to_string());
  const std::vector<std::string> names = hosted_tensors(*st.ck, *plan, rank);
  // A shard folder (shoal shard): exactly this rank's tensors, every file as its manifest hashed it.
  if (Status s = check_shard(dir, rank, names); !s.ok()) return refuse(me + ": " + s.to_string());
  auto fingerprint = weights_fingerprint(*st.ck, names);
  if (!fingerprint.ok()) return refuse(me + ": " + fingerprint.status().to_string());
  loaded->set_weights_fingerprint(*fingerprint);
  if (*fingerprint != hello.weights_fingerprint())
    return refuse("the weights differ: " + me + " has " + dir.string() + " (fingerprint " + fingerprint->substr(0, 16) +
                  "), the coordinator (" + hello.coordinator_host() + ") has " + hello.model_dir() + " (fingerprint " +
                  hello.weights_fingerprint().substr(0, 16) + ")");
  const double fraction = hello.kv_memory_fraction();
  if (!(fraction >= 0 && fraction <= 1))
    return refuse(me + ": the coordinator asked for a KV pool of " + std::to_string(fraction) +
                  " of the memory (a fraction in (0, 1])");
  const bool pool_by_fraction = fraction > 0;
  // What the units are: a later Hello asking for the same gets the same units back.
  std::string key = hello.plan_json() + "|" + std::to_string(rank) + "/" + std::to_string(t.size()) + "|" +
                    std::to_string(hello.n_slots()) + "|" + std::to_string(hello.max_seq_len()) + "|" +
                    std::to_string(hello.kv_blocks()) + "|" + std::to_string(hello.kv_dtype()) + "|" +
                    std::to_string(hello.attn_impl()) + "|" + std::to_string(hello.wire_dtype()) + "|" +
                    std::to_string(hello.exact_numerics()) + "|" + std::to_string(hello.copy_weights()) + "|" + std::to_string(hello.merge_lora()) + "|" +
                    std::to_string(hello.merge_into()) + "|" + std::to_string(hello.kv_memory_fraction()) + "|" +
                    dir.string() + "|" + *fingerprint;
  for (const wire::LoraSpec& spec : hello.adapters()) key += "|" + spec.name() + "=" + spec.dir() + "#" + spec.fingerprint();
  if (st.worker && st.worker_key == key) {
    st.worker->reset();
    ++st.sessions_reused;
    std::fprintf(stderr, "shoal node: the coordinator asks for the units of the last session: kept, not loaded again\n");
    return run_session(t, st, reply, answer_deadline, pool_by_fraction);
  }
  st.worker.reset();  // another shape: its memory goes before the new units load
  st.worker_key.clear();
  if (st.ck->copy_weights()) {  // the last units' copies go with them
    st.ck.reset();
    if (Status s = open_checkpoint(st, dir); !s.ok()) return refuse(me + ": " + s.to_string());
  }
  st.ck->set_copy_weights(hello.copy_weights());
  WorkerOptions wo;
  wo.n_slots = hello.n_slots();
  wo.max_seq_len = hello.max_seq_len();
  if (hello.kv_blocks() < 0 || hello.kv_dtype() < 0 || hello.kv_dtype() > 2)
    return refuse(me + ": the coordinator asked for a KV pool of " + std::to_string(hello.kv_blocks()) +
                  " blocks in dtype " + std::to_string(hello.kv_dtype()) + " (0 f32, 1 bf16, 2 fp8)");
  wo.kv_blocks = hello.kv_blocks();
  wo.kv_deferred = pool_by_fraction;  // sized by the coordinator once every rank has loaded
  wo.kv_dtype = hello.kv_dtype() == 1 ? DType::kBF16 : hello.kv_dtype() == 2 ? DType::kF8E4M3 : DType::kF32;
  wo.attn_impl = AttnImpl(hello.attn_impl());
  if (hello.wire_dtype() != 0 && hello.wire_dtype() != 1)
    return refuse(me + ": the coordinator asked for wire dtype " + std::to_string(hello.wire_dtype()) + " (0 f32, 1 bf16)");
  wo.wire_dtype = wire::WireDtype(hello.wire_dtype());
  st.adapters.clear();
  for (const wire::LoraSpec& spec : hello.adapters()) {
    std::filesystem::path dir = spec.dir();  // this node's own copy when it was given one
    for (const LoraSpec& mine : st.loras)
      if (mine.name == spec.name() || (mine.name.empty() && st.loras.size() == 1 && hello.adapters_size() == 1))
        dir = mine.dir;
    const std::string label = spec.name().empty() ? std::string("the LoRA adapter") : "LoRA adapter " + spec.name();
    auto lora = load_lora(dir, &st.ck->config());
    if (!lora.ok()) return refuse(me + " cannot use " + label + ": " + lora.status().to_string());
    (*lora)->name = spec.name();
    (*lora)->merge = hello.merge_lora();
    (*lora)->merge_into = hello.merge_into() == 1 ? MergeInto::kStored : MergeInto::kF32;
    auto lfp = lora_fingerprint(**lora, names);
    if (!lfp.ok()) return refuse(me + ": " + lfp.status().to_string());
    if (*lfp != spec.fingerprint())
      return refuse("the LoRA adapters differ (" + label + "): " + me + " has " + dir.string() + " (fingerprint " +
                    lfp->substr(0, 16) + "), the coordinator (" + hello.coordinator_host() + ") has " + spec.dir() +
                    " (fingerprint " + spec.fingerprint().substr(0, 16) + ")");
    st.adapters.push_back(std::move(*lora));
  }
  wo.lora = lora_views(st.adapters);
  st.ck->set_numerics(hello.exact_numerics() ? kernels::Numerics::kExact : st.ck->default_numerics());
  auto worker = Worker::load(*st.ck, *plan, rank, wo);
  if (!worker.ok()) return refuse(me + ": " + worker.status().to_string());
  st.worker = std::move(worker).value();
  st.worker_key = key;
  return run_session(t, st, reply, answer_deadline, pool_by_fraction);
}

// Answers the Hello with what is loaded, runs the worker, and beats until the session ends.
static StatusOr<SessionEnd> run_session(comm::Transport& t, NodeState& st, wire::Control& reply,
                                        Clock::time_point answer_deadline, bool pool_by_fraction) {
  Worker& worker = *st.worker;
  wire::Loaded* loaded = reply.mutable_loaded();
  loaded->set_ok(true);
  loaded->set_weight_bytes(worker.weight_bytes());
  loaded->set_kv_bytes(worker.kv_bytes());
  loaded->set_mapped_bytes(resident_checkpoint_bytes());
  loaded->set_rss_bytes(resident_bytes());
  const int64_t capacity = memory_capacity_bytes();
  loaded->set_memory_capacity_bytes(capacity);
  SHOAL_RETURN_IF_ERROR(wire::send(t, 0, wire::kControl, reply, answer_deadline));
  if (pool_by_fraction) {  // the coordinator sizes the pool once every rank has loaded: wait as for a Hello
    SHOAL_ASSIGN_OR_RETURN(wire::Control ctl, wire::recv<wire::Control>(t, 0, wire::kControl, Clock::now() + st.hello_timeout));
    if (ctl.has_shutdown()) return SessionEnd{ctl.shutdown().exit_process()};
    if (!ctl.has_kv_pool()) return internal_error(t.peer_name(0) + " answered Loaded with something other than a KvPool");
    const wire::KvPool& pool = ctl.kv_pool();
    // Only what this node's memory could hold: a bad number is refused, not allocated.
    if (pool.blocks() < 1 || pool.max_seq_len() < 1 || pool.max_seq_len() > pool.blocks() * kKvBlockTokens ||
        pool.blocks() > capacity / std::max<int64_t>(worker.kv_block_bytes(), 1)) {
      loaded->set_ok(false);
      loaded->set_error("rank " + std::to_string(t.rank()) + " (" + host_name() + "): a KV pool of " +
                        std::to_string(pool.blocks()) + " blocks for sequences of " + std::to_string(pool.max_seq_len()) +
                        " positions does not fit its memory of " + std::to_string(capacity) + " bytes");
      (void)wire::send(t, 0, wire::kControl, reply, Clock::now() + std::chrono::seconds(30));
      return invalid_argument(loaded->error());
    }
    worker.make_kv_pool(pool.blocks(), pool.max_seq_len());
    loaded->set_kv_bytes(worker.kv_bytes());
    loaded->set_rss_bytes(resident_bytes());
    SHOAL_RETURN_IF_ERROR(wire::send(t, 0, wire::kControl, reply, Clock::now() + std::chrono::seconds(30)));
  }

  worker.start(t);
  wire::Heartbeat beat;
  while (true) {
    beat.set_sequence(beat.sequence() + 1);
    beat.set_rss_bytes(resident_bytes());
    *beat.mutable_stats() = worker.stats();
    if (Status s = wire::send(t, 0, wire::kHeartbeat, beat, Clock::now() + kHeartbeatEvery); !s.ok()) {
      (void)worker.stop();
      return s;
    }
    auto m = wire::recv<wire::Control>(t, 0, wire::kControl, Clock::now() + kHeartbeatEvery);
    if (m.ok() && m->has_shutdown()) {
      (void)worker.stop();  // peers may already be gone: the session is over either way
      return SessionEnd{m->shutdown().exit_process()};
    }
    if (!m.ok() && m.status().code() != Code::kDeadlineExceeded) {
      (void)worker.stop();
      return m.status();
    }
    if (Status s = worker.error(); !s.ok()) {
      (void)worker.stop();
      return s;
    }
  }
}

}  // namespace shoal
