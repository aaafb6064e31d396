// The coordinator's side of the distributed runtime (rank 0): it plans, says Hello to every
// rank (which loads its own units and answers Loaded), hosts rank 0's own units, and then sends
// micro-batches to the embedding's rank and takes token ids back from the head's rank. Hidden
// states travel from rank to rank along the pipeline, never through here. Nodes send a
// heartbeat every second; one that falls silent for heartbeat_timeout, or whose connection
// drops, fails every wait with an error naming its rank and host.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "cluster/plan.h"
#include "comm/transport.h"
#include "comm/wire/wire.pb.h"
#include "comm/wire/wire_io.h"
#include "coordinator/executor.h"
#include "model/checkpoint.h"
#include "model/lora.h"
#include "model/layers.h"

namespace shoal {

class Worker;

struct ClusterOptions {
  std::filesystem::path model_dir;
  int64_t n_slots = 1;
  int64_t max_seq_len = 0;  // 0: min(max_position_embeddings, 4096)
  int64_t kv_memory = 0;    // bytes of each rank's paged KV pool (for the rank with the most layers); 0: static slots;
                            // kDefaultKvMemory: as large as 8 x 4096 float32 positions
  double kv_memory_fraction = 0;  // > 0 (at most 1): the pool instead that share of what each host has left
                                  // after weights and workspace (kv_pool_blocks_of_fraction); kv_memory unused
  DType kv_dtype = DType::kF32;
  AttnImpl attn_impl = AttnImpl::kAuto;
  std::filesystem::path plan_file;  // empty: the default planner
  bool expert_scatter = false;      // default planner: spread experts over the ranks
  bool exact = false;               // GGUF block types: exact numerics (default fast; kernels::Numerics)
  bool copy_weights = false;        // --no-mmap: every rank copies its units into anonymous memory
  wire::WireDtype wire_dtype = wire::WireDtype::kF32;  // hidden rows between ranks (--wire-dtype)
  std::vector<LoraSpec> loras;      // LoRA adapters served (--lora); each rank reads its own modules
  bool merge_lora = false;          // --merge-lora: the one adapter folded into the weights at load
  MergeInto merge_into = MergeInto::kF32;  // --merge-into: float32 copies or the stored dtype
  bool coordinator_hosts = true;    // default planner: rank 0 hosts units too
  bool nodes_exit = true;           // at the end, nodes exit (false: TCP nodes wait for the next coordinator)
  std::string build_id;             // sent in the Hello; empty: this build's
  std::chrono::milliseconds load_timeout{std::chrono::minutes(30)};
  std::chrono::milliseconds step_timeout{std::chrono::minutes(10)};
  std::chrono::milliseconds heartbeat_timeout{std::chrono::seconds(5)};
};

class Cluster : public Executor {
 public:
  // t is rank 0 of the world; every other rank must be serving a session (serve_session).
  static StatusOr<std::unique_ptr<Cluster>> start(std::unique_ptr<comm::Transport> t, const ClusterOptions& o);
  ~Cluster() override;

  const ModelConfig& config() const override { return ck_->config(); }
  int64_t max_seq_len() const override { return max_seq_len_; }
  int64_t n_slots() const override { return options_.n_slots; }
  int64_t kv_blocks() const override { return kv_blocks_; }
  DType kv_dtype() const override { return options_.kv_dtype; }
  int64_t pipeline_depth() const override;
  std::vector<std::string> adapter_names() const override { return lora_names(loras_); }
  StatusOr<uint64_t> submit(const Batch& batch, const std::vector<int64_t>& rows, bool want_logits,
                            const std::vector<RowSampler>& samplers = {}) override;
  bool chains_decode() const override { return true; }
  StatusOr<uint64_t> submit_chain(const Batch& batch, const std::vector<int64_t>& rows, bool want_logits,
                                  int64_t more_steps, const std::vector<int32_t>& stop_ids) override;
  StatusOr<StepResult> next_result() override;

  const cluster::Plan& plan() const { return plan_; }
  // Each rank's Loaded answer (rank 0's filled in locally).
  const std::vector<wire::Loaded>& loaded() const { return loaded_; }
  comm::Transport& transport() { return *t_; }
  // Each rank's latest heartbeat (memory, traffic); rank 0's read now. Nodes report every second.
  std::vector<wire::Heartbeat> rank_stats() const;

  // Tells every node to end the session (and exit, if nodes_exit); idempotent.
  Status shutdown();
  // Runs at the end of shutdown(): joins node threads of --local-nodes.
  void on_shutdown(std::function<void()> f) { after_shutdown_ = std::move(f); }

 private:
  StatusOr<uint64_t> send_micro_batch(const Batch& batch, const std::vector<int64_t>& rows, bool want_logits,
                                      const std::vector<RowSampler>& samplers, int64_t more_steps,
                                      const std::vector<int32_t>& stop_ids);
  Cluster() = default;
  Status hello_all();
  Status collect_loaded(const std::string& asked, const std::string& refused, comm::Clock::time_point deadline);
  Status size_pool_by_fraction();
  void heartbeat_loop();
  Status silent_rank() const;

  ClusterOptions options_;
  std::unique_ptr<comm::Transport> t_;
  std::unique_ptr<Checkpoint> ck_;
  std::vector<std::unique_ptr<LoraAdapter>> loras_;
  cluster::Plan plan_;
  int64_t max_seq_len_ = 0;
  int64_t kv_blocks_ = 0;
  std::vector<wire::Loaded> loaded_;
  std::unique_ptr<Worker> local_;  // rank 0's own units
  uint64_t next_id_ = 1;
  struct Pending {
    bool logits = false;   // logits asked
    bool sampled = false;  // samplers given: picks (and logprobs) come back
  };
  std::map<uint64_t, Pending> in_flight_;

  std::thread heartbeats_;
  std::atomic<bool> stopping_{false};
  mutable std::mutex mu_;
  std::vector<comm::Clock::time_point> last_heard_;  // per rank
  std::vector<wire::Heartbeat> last_beat_;           // per rank
  Status heartbeat_error_;
  bool shut_down_ = false;
  std::function<void()> after_shutdown_;
};

}  // namespace shoal
