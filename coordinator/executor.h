// Where micro-batches run: one process (Engine) or a cluster of ranks (Cluster). The
// generation loop and, later, the scheduler talk only to this.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "model/batch.h"
#include "model/config.h"
#include "node/sampling.h"

namespace shoal {

struct StepResult {
  uint64_t id = 0;
  std::vector<int32_t> ids;   // the chosen token of each asked row (argmax without samplers)
  std::vector<SampleResult> picks;  // [rows] with the ids and logprobs when the submit had samplers
  std::vector<float> logits;  // [rows, vocab] when asked
};

class Executor {
 public:
  virtual ~Executor() = default;
  virtual const ModelConfig& config() const = 0;
  virtual int64_t max_seq_len() const = 0;
  virtual int64_t n_slots() const = 0;
  // Micro-batches worth keeping in flight so every pipeline stage has work.
  virtual int64_t pipeline_depth() const { return 1; }
  // The LoRA adapters served, by id (names[k - 1] is adapter id k; docs/lora.md): a sequence picks
  // one with SeqRange::adapter. One unnamed adapter ("") applies to every sequence whatever it asks.
  virtual std::vector<std::string> adapter_names() const { return {}; }

  // Queues a micro-batch; `rows` are the token rows whose next token (and logits, when asked)
  // come back. `samplers`: empty (each row's argmax) or one per row, chosen on the head.
  // Token ids, positions and slots are checked first: bad ones are an error.
  virtual StatusOr<uint64_t> submit(const Batch& batch, const std::vector<int64_t>& rows, bool want_logits,
                                    const std::vector<RowSampler>& samplers = {}) = 0;
  // After a failure (a rank lost): whether heal() may bring the executor back, and one attempt
  // at it (bounded in time; ok when it can take micro-batches again, with empty KV slots).
  virtual bool can_heal() const { return false; }
  virtual Status heal() { return Status(Code::kUnimplemented, "this executor cannot recover from a lost rank"); }
  // The next finished micro-batch, in any order; an error when a rank failed or went silent.
  virtual StatusOr<StepResult> next_result() = 0;
};

// Checks a batch against the vocabulary, the slots, the context and the adapters (shared by executors).
Status check_batch(const Batch& b, const ModelConfig& c, int64_t n_slots, int64_t max_seq_len,
                   const std::vector<std::string>& adapter_names = {});
// The batch as the ranks run it: with one unnamed adapter, every sequence's adapter is 1.
Batch with_served_adapters(const Batch& b, const std::vector<std::string>& adapter_names);

}  // namespace shoal
