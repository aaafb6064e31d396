// A cluster of TCP nodes that heals (docs/distributed.md, "Loss and recovery"): when a rank is
// lost, the current Cluster fails (its requests fail within the heartbeat timeout) and the
// GenerationService calls heal() until it is back: the broken session is ended (the surviving
// nodes go back to waiting for a coordinator, keeping their checkpoint open), and a new Cluster
// is started with the same flags, which connects to every node again, the restarted one
// included (or a spare in its place), each proving the same token, build and weights. Serving
// then resumes in the same process; nothing is reloaded on the coordinator.
#pragma once

#include <functional>
#include <memory>
#include <mutex>

#include "coordinator/cluster.h"

namespace shoal {

class HealingCluster : public Executor {
 public:
  // `open` starts a cluster (bounded in time); it is called once now and again by heal().
  using Open = std::function<StatusOr<std::unique_ptr<Cluster>>()>;
  static StatusOr<std::unique_ptr<HealingCluster>> start(Open open);
  ~HealingCluster() override;

  const ModelConfig& config() const override { return config_; }
  int64_t max_seq_len() const override { return max_seq_len_; }
  int64_t n_slots() const override { return n_slots_; }
  int64_t kv_blocks() const override { return kv_blocks_; }
  DType kv_dtype() const override { return kv_dtype_; }
  int64_t pipeline_depth() const override { return depth_; }
  std::vector<std::string> adapter_names() const override { return adapters_; }
  StatusOr<uint64_t> submit(const Batch& batch, const std::vector<int64_t>& rows, bool want_logits,
                            const std::vector<RowSampler>& samplers = {}) override;
  StatusOr<StepResult> next_result() override;

  bool can_heal() const override { return true; }
  // Ends the broken session and tries once to start a new cluster. A new one must have the
  // shape of the first (slots, context, pipeline depth, adapters): a node that comes back with
  // something else is refused, and healing goes on.
  Status heal() override;

  // The cluster serving now (null while healing), for /health and /metrics.
  std::shared_ptr<Cluster> current() const;
  // Ends the session for good (nodes go back to waiting, or exit as the flags said).
  Status shutdown();
  int heals() const { return heals_; }

 private:
  HealingCluster() = default;
  Open open_;
  mutable std::mutex mu_;
  std::shared_ptr<Cluster> current_;
  ModelConfig config_;
  int64_t max_seq_len_ = 0, n_slots_ = 0, depth_ = 1, kv_blocks_ = 0;
  DType kv_dtype_ = DType::kF32;
  std::vector<std::string> adapters_;
  int heals_ = 0;
};

}  // namespace shoal
