// The node side of the distributed runtime: the units one rank hosts under a plan (embedding,
// attention blocks with their KV cache, routed experts, head) and the two threads that serve
// them over a Transport:
//   pipeline: takes a MicroBatch (tag kHidden), embeds it if it hosts the embedding, runs every
//             consecutive layer it hosts (Block.forward; MoE layers exchange rows with the
//             experts' owners), and hands the hidden states straight to the rank of the next
//             layer, or, past the last layer, runs the head and sends token ids to rank 0;
//   experts:  answers ExpertRequests (tag kExpertRequest) for the routed experts it owns.
// docs/distributed.md has the protocol.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <thread>

#include "cluster/plan.h"
#include "comm/transport.h"
#include "comm/wire/wire.pb.h"
#include "comm/wire/wire_io.h"
#include "model/checkpoint.h"
#include "model/expert_combine.h"
#include "model/layers.h"
#include "node/kv_cache.h"
#include "node/sampling.h"

namespace shoal {

struct WorkerOptions {
  int64_t n_slots = 1;
  int64_t max_seq_len = 4096;
  int64_t kv_blocks = 0;         // paged KV pool (node/kv_cache.h); 0: static slots
  bool kv_deferred = false;      // no KV cache until make_kv_pool (--kv-memory as a fraction)
  DType kv_dtype = DType::kF32;
  AttnImpl attn_impl = AttnImpl::kAuto;
  // How long the pipeline waits for an expert owner's answer (a gone peer fails at once).
  std::chrono::milliseconds peer_timeout{120000};
  // Hidden rows to other ranks (pipeline hops and expert requests/partials).
  wire::WireDtype wire_dtype = wire::WireDtype::kF32;
  LoraAdapters lora;  // the adapters served, by id (model/lora.h; they must outlive the worker)
};

class Worker {
 public:
  // Takes views of `rank`'s units in ck and reads them into memory (prefault); ck must outlive it.
  static StatusOr<std::unique_ptr<Worker>> load(Checkpoint& ck, const cluster::Plan& plan, int rank,
                                                const WorkerOptions& options);
  ~Worker();

  // Starts the threads on t (which must outlive stop()).
  void start(comm::Transport& t);
  // Stops and joins the threads; returns the first error they met (OK if none).
  Status stop();
  // After stop(): ready for start() in a new session (error and counters cleared; the KV cache
  // is not: a sequence writes each position before it reads it).
  void reset();
  // The first error met so far, without stopping.
  Status error() const;

  int64_t weight_bytes() const { return weight_bytes_; }
  // Traffic this rank sent since start() (counted as sent, payload bytes).
  wire::WorkerStats stats() const;
  int64_t kv_bytes() const { return cache_ ? cache_->bytes() : 0; }
  int64_t kv_blocks() const { return cache_ ? cache_->n_blocks() : 0; }
  // One block of 64 positions over this rank's attention layers (0 without any).
  int64_t kv_block_bytes() const;
  // Before start(): a paged pool of `blocks` for this rank's layers in place of the cache it has
  // (none, with kv_deferred; kept when it is that pool already), sequences of up to max_seq_len positions.
  void make_kv_pool(int64_t blocks, int64_t max_seq_len);

 private:
  Worker(const ModelConfig& c, const cluster::Plan& plan, int rank, const WorkerOptions& o);
  void pipeline_loop();
  void expert_loop();
  Status advance(const std::vector<std::byte>& payload);
  Status layer_forward(float* x, const Batch& b, int64_t layer, uint64_t batch_id);
  Status routed_experts(float* routed, const float* h, RowAdapters adapters, const std::vector<int32_t>& idx,
                        const std::vector<float>& weight,
                        int64_t n,
                        int64_t layer, uint64_t batch_id);
  Status serve_expert_request(const comm::Message& m);
  // The head: final norm, lm_head, the token of each logit row (sampled when the micro-batch
  // carries samplers), and the Result to rank 0.
  Status head(const float* x, const Batch& b, const std::vector<int64_t>& rows, const wire::MicroBatch& mb);
  // A decode chain's next step after `mb` (wire.proto, MicroBatch.more_steps): the sequences whose
  // chosen token is not a stop id, each at its next position; none when every one stopped.
  StatusOr<std::optional<wire::MicroBatch>> next_chain_step(const wire::MicroBatch& mb, const Batch& b,
                                                            const std::vector<int64_t>& rows,
                                                            const std::vector<SampleResult>& picks) const;
  void record(const Status& s);

  ModelConfig config_;
  cluster::Plan plan_;
  int rank_;
  WorkerOptions options_;
  RopeTable rope_;
  LayerContext lc_;
  std::optional<kernels::Matrix> embed_;
  std::optional<HeadWeights> head_;
  std::map<int64_t, LayerWeights> layers_;  // attention layers hosted (with the experts owned there)
  std::map<int64_t, std::vector<std::optional<MlpWeights>>> experts_;  // routed experts owned, per layer
  std::map<int64_t, int64_t> cache_index_;  // layer -> index in cache_
  // layer -> rank -> the maximal combine-tree nodes of the experts that rank owns there
  // (model/expert_combine.h): what a partial sum in an expert reply stands for.
  std::map<int64_t, std::map<int, std::vector<CombineNode>>> combine_nodes_;
  std::unique_ptr<KvCache> cache_;
  int64_t weight_bytes_ = 0;

  // Counted by tag (WorkerStats), except a decode chain's step (chain_step), which carries token
  // ids, not hidden states: it counts with the head's Results.
  Status send(int dst, uint32_t tag, const google::protobuf::MessageLite& m, int64_t tokens, bool chain_step = false);

  comm::Transport* t_ = nullptr;
  std::atomic<int64_t> hidden_messages_{0}, hidden_bytes_{0}, hidden_tokens_{0}, expert_messages_{0}, expert_bytes_{0},
      result_messages_{0}, result_bytes_{0};
  std::atomic<bool> stopping_{false};
  std::thread pipeline_, experts_thread_;
  mutable std::mutex mu_;
  Status error_;
};

}  // namespace shoal
