#include "coordinator/healing_cluster.h"

namespace shoal {

StatusOr<std::unique_ptr<HealingCluster>> HealingCluster::start(Open open) {
  std::unique_ptr<HealingCluster> h(new HealingCluster());
  SHOAL_ASSIGN_OR_RETURN(std::unique_ptr<Cluster> first, open());
  h->open_ = std::move(open);
  h->config_ = first->config();
  h->max_seq_len_ = first->max_seq_len();
  h->n_slots_ = first->n_slots();
  h->kv_blocks_ = first->kv_blocks();
  h->kv_dtype_ = first->kv_dtype();
  h->depth_ = first->pipeline_depth();
  h->adapters_ = first->adapter_names();
  h->current_ = std::move(first);
  return h;
}

HealingCluster::~HealingCluster() { (void)shutdown(); }

std::shared_ptr<Cluster> HealingCluster::current() const {
  std::lock_guard<std::mutex> lock(mu_);
  return current_;
}

StatusOr<uint64_t> HealingCluster::submit(const Batch& batch, const std::vector<int64_t>& rows, bool want_logits,
                                          const std::vector<RowSampler>& samplers) {
  std::shared_ptr<Cluster> c = current();
  if (!c) return Status(Code::kUnavailable, "the cluster is healing: a rank was lost and is not back yet");
  return c->submit(batch, rows, want_logits, samplers);
}

StatusOr<StepResult> HealingCluster::next_result() {
  std::shared_ptr<Cluster> c = current();
  if (!c) return Status(Code::kUnavailable, "the cluster is healing: a rank was lost and is not back yet");
  return c->next_result();
}

Status HealingCluster::heal() {
  std::shared_ptr<Cluster> broken;
  {
    std::lock_guard<std::mutex> lock(mu_);
    broken.swap(current_);
  }
  if (broken) {
    (void)broken->shutdown();  // the survivors end the session and wait for a coordinator
    broken.reset();            // the connections close
  }
  SHOAL_ASSIGN_OR_RETURN(std::unique_ptr<Cluster> next, open_());
  if (next->max_seq_len() != max_seq_len_ || next->n_slots() != n_slots_ || next->kv_blocks() != kv_blocks_ || next->pipeline_depth() != depth_ ||
      next->adapter_names() != adapters_ || next->config().vocab_size != config_.vocab_size ||
      next->config().n_layers != config_.n_layers) {
    (void)next->shutdown();
    return Status(Code::kUnavailable, "the cluster came back with another shape (slots, context, plan or adapters)");
  }
  std::lock_guard<std::mutex> lock(mu_);
  current_ = std::move(next);
  ++heals_;
  return {};
}

Status HealingCluster::shutdown() {
  std::shared_ptr<Cluster> c;
  {
    std::lock_guard<std::mutex> lock(mu_);
    c.swap(current_);
  }
  return c ? c->shutdown() : Status{};
}

}  // namespace shoal
