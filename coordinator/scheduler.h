// Continuous batching over an Executor (docs/serving.md, "Scheduler"): requests join and leave
// between steps; a long prompt is prefilled in chunks so it does not stall the decodes around
// it; each running sequence holds one KV slot; up to pipeline_depth() micro-batches are in flight,
// so every pipeline stage has work: the sequences ready to go are shared among the micro-batches
// still free, and over a pipeline a prompt goes in chunks of prefill_chunk_tokens(depth,
// max_batch_tokens) that follow each other through the stages (a sequence may have several chunks
// in flight, never a part that needs a token not yet chosen).
//
// With a paged KV pool (Executor::kv_blocks() > 0; docs/serving.md, "The KV pool") a slot holds
// only the blocks its positions need: a request is admitted when its prompt's blocks are free,
// takes one more block every kKvBlockTokens positions, and gives them back when it ends. When the
// pool runs dry mid-generation the youngest sequence not in flight is preempted: its blocks go
// back and it is computed again later, up to where it was, with the same attention path, so its
// tokens are those of an uninterrupted run. Full prompt blocks stay cached after their request
// ends and a later prompt with the same prefix reuses them (SchedulerOptions::prefix_cache).
//
// Tokens are chosen on the head rank: the argmax for requests without sampling parameters,
// sample() with them (node/sampling.h; the micro-batch carries each row's parameters, seed and
// step, and the history only when a penalty needs it). Stops: the request's stop ids (EOS),
// max_tokens, the context.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "coordinator/executor.h"
#include "coordinator/kv_blocks.h"

namespace shoal {

enum class FinishReason { kNone, kStop, kLength, kCancelled };
const char* finish_reason_name(FinishReason r);  // "stop", "length", "cancelled"

// What a request may generate next, decided as it goes (constrained decoding: a JSON schema, a
// forced tool call). The scheduler asks it before each token and tells it the token chosen.
class TokenConstraint {
 public:
  virtual ~TokenConstraint() = default;
  // The tokens allowed next, as bits over the vocabulary (bit i of word i / 64), and whether the
  // output may end here (the request's stop ids are then allowed too).
  virtual void allowed(std::vector<uint64_t>& mask, bool& may_end) = 0;
  // The token chosen (never a stop id). False: it was not allowed (the request then stops).
  virtual bool accept(int32_t token) = 0;
  // Nothing may follow what was accepted: the request ends there ("stop").
  virtual bool finished() const = 0;
  // The same constraint from its start, for another choice of the request.
  virtual std::shared_ptr<TokenConstraint> fresh() const = 0;
};

struct GenerationRequest {
  uint64_t id = 0;
  std::vector<int32_t> prompt;
  int64_t max_tokens = 16;
  std::vector<int32_t> stop_ids;
  std::optional<SamplingParams> sampling;  // none: greedy (argmax) and no logprobs
  uint64_t seed = 0;                       // used when sampling->seed is empty
  int32_t adapter = 0;                     // its LoRA adapter id (Executor::adapter_names); 0: the base
  std::shared_ptr<TokenConstraint> constraint;  // none: any token
  // Another request with the same prompt (an earlier choice of an n > 1 request): once its
  // prompt is in the cache, this one copies that prefix into its own slot and computes only
  // the prompt's last token (whose logits are bitwise those of a whole prefill). 0: none.
  uint64_t shares_prompt_of = 0;
};

// One generated token, or the end of a request (token < 0 when it ends without one).
struct TokenEvent {
  uint64_t request = 0;
  int64_t cached_tokens = -1;  // on a request's first token: its prompt tokens found in the prefix cache
  int32_t token = -1;
  FinishReason finish = FinishReason::kNone;
  std::optional<float> logprob;     // when the request asked for logprobs
  std::vector<TokenLogprob> top;    // its top_logprobs alternatives, best first
};

struct SchedulerOptions {
  int64_t max_batch_tokens = 512;  // tokens per micro-batch (prefill chunks + decodes)
  bool prefix_cache = true;        // paged pool: reuse cached blocks of earlier prompts
};

// What the paged pool has done (all zero with a static cache).
struct KvStats {
  int64_t blocks = 0, held = 0, cached = 0, available = 0;
  int64_t prompt_tokens = 0, cached_prompt_tokens = 0;  // of admitted requests: all, found cached
  int64_t preemptions = 0;
};

class Scheduler {
 public:
  Scheduler(Executor& executor, SchedulerOptions options = {});

  // Queues a request. One that can never fit (prompt + max_tokens beyond the context, an empty
  // prompt, a duplicate id) is refused with the numbers; one that cannot fit now waits.
  Status add(GenerationRequest request);
  // Ends a request now: its slot is freed once no micro-batch of it is in flight. Unknown ids: no-op.
  void cancel(uint64_t id);

  // Submits what is ready, waits for one micro-batch, and returns its events (possibly none).
  StatusOr<std::vector<TokenEvent>> step();
  bool idle() const { return waiting_.empty() && running_.empty() && preempted_.empty(); }
  size_t waiting() const { return waiting_.size() + preempted_.size(); }
  size_t running() const { return running_.size(); }
  KvStats kv_stats() const;
  const KvBlockPool* pool() const { return pool_ ? &*pool_ : nullptr; }

 private:
  struct Sequence {
    GenerationRequest request;
    int32_t slot = -1;
    int64_t cached = 0;             // positions in the cache: the prompt, then (after a preemption) outputs
    std::vector<int32_t> output;
    int32_t flights = 0;            // micro-batches in flight with a part of it
    int64_t submitted = 0;          // positions after `cached` that are in flight
    bool cancelled = false;
    uint64_t order = 0;             // admission order (the youngest is preempted first)
    AttnImpl prompt_attn = AttnImpl::kAuto;  // its prompt's MLA path, fixed for every chunk
    // Paged pool: its blocks in position order, how many the ranks know (sent), whether they must
    // forget the slot's old table first, its prompt's full-block keys and how many are published.
    std::vector<int32_t> blocks;
    size_t sent = 0;
    bool reset = true;
    std::vector<BlockKey> keys;
    size_t published = 0;
    int64_t cached_tokens = -1;     // prompt tokens found cached at its (first) admission
  };
  bool can_admit(const GenerationRequest& r) const;
  bool paged() const { return pool_.has_value(); }
  bool admit_one(Sequence& s);          // paged: takes its blocks; false when the pool cannot
  bool grow(uint64_t id, int64_t end);  // paged: blocks up to position `end`, preempting if needed
  void preempt(uint64_t id);
  void release_blocks(Sequence& s);
  void publish_blocks(Sequence& s);
  int32_t token_at(const Sequence& s, int64_t pos) const;
  struct Part {                      // a sequence's share of an in-flight micro-batch
    uint64_t request;
    int64_t tokens;
    bool wants_token;               // its last token chooses the next one
  };

  RowSampler row_sampler(const Sequence& s) const;
  void admit();
  Status submit_ready();
  void finish(uint64_t id, FinishReason reason, std::vector<TokenEvent>& events);

  Executor& ex_;
  SchedulerOptions options_;
  std::deque<GenerationRequest> waiting_;
  std::deque<Sequence> preempted_;   // waiting to be computed again, oldest first
  std::map<uint64_t, Sequence> running_;
  std::optional<KvBlockPool> pool_;
  uint64_t next_order_ = 0;
  int64_t prompt_tokens_ = 0, cached_prompt_tokens_ = 0, preemptions_ = 0;
  std::vector<int32_t> free_slots_;
  std::map<uint64_t, std::vector<Part>> in_flight_;  // micro-batch id -> parts
  std::vector<SlotCopy> pending_copies_;             // for the next micro-batch
};

}  // namespace shoal
