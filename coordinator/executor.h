// Where micro-batches run: one process (Engine) or a cluster of ranks (Cluster). The
// generation loop and, later, the scheduler talk only to this.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "model/batch.h"
#include "model/config.h"
#include "model/kv_layout.h"
#include "node/sampling.h"

namespace shoal {

struct StepResult {
  uint64_t id = 0;
  std::vector<int32_t> ids;   // the chosen token of each asked row (argmax without samplers)
  std::vector<SampleResult> picks;  // [rows] with the ids and logprobs when the submit had samplers
  std::vector<float> logits;  // [rows, vocab] when asked
  bool continued = false;     // a decode chain's next step (id + 1) is in flight (submit_chain)
};

// Prefill over a pipeline of G > 1 stages (docs/distributed.md, "The pipeline schedule"): the
// prompts are cut into about kPrefillMicroBatchesPerStage x G micro-batches of at least
// kMinPrefillChunk tokens, which follow each other through the stages, so that the other stages
// wait for one small micro-batch, not for half of the prefill. One stage: one micro-batch.
// (Measured on dist-2048 over 2 one-core ranks: 32-token pieces beat 16, 64, 128 and 256.)
inline constexpr int64_t kPrefillMicroBatchesPerStage = 8;
inline constexpr int64_t kMinPrefillChunk = 32;
// Tokens per prefill micro-batch for `prompt_tokens` over `depth` stages; micro_batches > 0 asks
// for that many instead (`shoal bench --prefill-micro-batches`).
int64_t prefill_chunk_tokens(int64_t depth, int64_t prompt_tokens, int64_t micro_batches = 0);

class Executor {
 public:
  virtual ~Executor() = default;
  virtual const ModelConfig& config() const = 0;
  virtual int64_t max_seq_len() const = 0;
  virtual int64_t n_slots() const = 0;
  // A paged KV pool's blocks of kKvBlockTokens positions (model/kv_layout.h), the same number on
  // every rank: the scheduler then gives each slot its blocks (Batch::tables). 0: a static cache,
  // each slot holding max_seq_len() positions of its own.
  virtual int64_t kv_blocks() const { return 0; }
  virtual DType kv_dtype() const { return DType::kF32; }
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
  // A greedy decode chain (docs/distributed.md, "The pipeline schedule"): `batch` holds one token
  // per sequence and `rows` each one's row; after it the head itself runs up to `more_steps`
  // further steps of the sequences whose token is not one of `stop_ids` (results id + 1, id + 2,
  // ...; StepResult::continued says another follows), with no round trip through the caller.
  // Executors whose steps cost no round trip (one process) do not chain.
  virtual bool chains_decode() const { return false; }
  virtual StatusOr<uint64_t> submit_chain(const Batch& batch, const std::vector<int64_t>& rows, bool want_logits,
                                          int64_t more_steps, const std::vector<int32_t>& stop_ids) {
    (void)batch, (void)rows, (void)want_logits, (void)more_steps, (void)stop_ids;
    return unimplemented("this executor does not chain decode steps");
  }
  // After a failure (a rank lost): whether heal() may bring the executor back, and one attempt
  // at it (bounded in time; ok when it can take micro-batches again, with empty KV slots).
  virtual bool can_heal() const { return false; }
  virtual Status heal() { return Status(Code::kUnimplemented, "this executor cannot recover from a lost rank"); }
  // The next finished micro-batch, in any order; an error when a rank failed or went silent.
  virtual StatusOr<StepResult> next_result() = 0;
};

// A paged pool's default size: as many bytes as 8 slots of 4096 float32 positions (the static
// cache's default) of the same layers.
inline constexpr int64_t kDefaultKvMemory = -1;

// Blocks of a paged KV pool of `bytes` for `layers` layers (0 bytes: 0, a static cache;
// kDefaultKvMemory: the default size); an error when it could not hold one block.
StatusOr<int64_t> kv_pool_blocks(const ModelConfig& c, int64_t layers, int64_t bytes, DType dtype);

// --kv-memory as a fraction f (0 < f <= 1) of what each host has left (docs/serving.md, "The KV
// pool"): one rank's part of the sum. Ranks on one host (the same `host`) share its memory.
struct KvRoom {
  int rank = 0;
  std::string host;
  int64_t capacity_bytes = 0;   // the host's memory (memory_capacity_bytes() there)
  int64_t weight_bytes = 0;     // its units
  int64_t workspace_bytes = 0;  // cluster::cpu_workspace_bytes
  int64_t layers = 0;           // attention layers: their KV rows are in the pool
};
// The most blocks each rank can hold with every host's pools within f x (capacity - weights -
// workspace of its ranks): the least over hosts of that over the host's bytes per block. An error
// names a host with no room left or too little for one block.
StatusOr<int64_t> kv_pool_blocks_of_fraction(const ModelConfig& c, const std::vector<KvRoom>& ranks, double fraction,
                                             DType dtype);

// Checks a batch against the vocabulary, the slots, the context and the adapters (shared by executors).
Status check_batch(const Batch& b, const ModelConfig& c, int64_t n_slots, int64_t max_seq_len,
                   const std::vector<std::string>& adapter_names = {}, int64_t kv_blocks = 0);
// The batch as the ranks run it: with one unnamed adapter, every sequence's adapter is 1.
Batch with_served_adapters(const Batch& b, const std::vector<std::string>& adapter_names);

}  // namespace shoal
