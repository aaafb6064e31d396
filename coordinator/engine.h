// The engine of one process: embedding, one stage holding every layer, and the head.
// The distributed runtime splits exactly these three parts over ranks.
#pragma once

#include <deque>
#include <functional>
#include <filesystem>
#include <memory>
#include <vector>

#include "coordinator/executor.h"
#include "model/checkpoint.h"
#include "node/stage.h"

namespace shoal {

struct EngineOptions {
  int64_t n_slots = 1;       // sequences in flight
  int64_t max_seq_len = 0;   // 0: max_position_embeddings, capped at kDefaultMaxSeqLen
  int64_t kv_memory = 0;     // bytes of a paged KV pool (node/kv_cache.h); 0: each slot its own max_seq_len
  DType kv_dtype = DType::kF32;
  AttnImpl attn_impl = AttnImpl::kAuto;
  bool exact = false;  // GGUF block types: exact numerics (default fast; kernels::Numerics)
  std::vector<LoraSpec> loras;  // LoRA adapters served (docs/lora.md); one unnamed: every sequence's
  bool merge_lora = false;      // fold the one adapter into the weights instead
  MergeInto merge_into = MergeInto::kF32;  // into float32 copies or the stored dtype
};

inline constexpr int64_t kDefaultMaxSeqLen = 4096;

class Engine : public Executor {
 public:
  static StatusOr<std::unique_ptr<Engine>> open(const std::filesystem::path& model_dir, const EngineOptions& opts);

  const ModelConfig& config() const override { return ck_->config(); }
  int64_t max_seq_len() const override { return stage_->max_seq_len(); }
  int64_t n_slots() const override { return stage_->n_slots(); }
  int64_t kv_blocks() const override { return stage_->cache().paged() ? stage_->cache().n_blocks() : 0; }
  DType kv_dtype() const override { return stage_->cache().dtype(); }
  std::vector<std::string> adapter_names() const override { return lora_names(loras_); }
  // Runs the micro-batch at once; next_result() hands the results out in order.
  StatusOr<uint64_t> submit(const Batch& batch, const std::vector<int64_t>& rows, bool want_logits,
                            const std::vector<RowSampler>& samplers = {}) override;
  StatusOr<StepResult> next_result() override;

  // Runs one batch through every layer; returns logits [logit_rows.size(), vocab] of the given
  // token rows. Token ids, positions and slots are checked: bad ones are an error, not a crash.
  StatusOr<std::vector<float>> forward(const Batch& batch, const std::vector<int64_t>& logit_rows);

 private:
  std::unique_ptr<Checkpoint> ck_;
  std::vector<std::unique_ptr<LoraAdapter>> loras_;
  kernels::Matrix embed_;
  HeadWeights head_;
  std::unique_ptr<Stage> stage_;
  kernels::Context ctx_;
  std::deque<StepResult> done_;
  uint64_t next_id_ = 1;
};

struct GreedyResult {
  std::vector<std::vector<std::vector<float>>> prompt_logits;  // [seq][position][vocab] if asked
  std::vector<std::vector<int32_t>> ids;                       // [seq][step]
  std::vector<std::vector<std::vector<float>>> step_logits;    // [seq][step][vocab] if asked
  double prefill_seconds = 0, decode_seconds = 0;
  int64_t prefill_tokens = 0, decode_tokens = 0;
};

// Prefills every prompt (slot b for prompt b), then decodes up to `steps` greedy tokens for all
// of them. Step 0's token is the argmax after the prompt. A sequence that generates one of
// `stop_ids` stops there (that id is its last). The prompts go in prefill_chunk_tokens() pieces
// (a prompt's pieces in order); for decode the sequences are split into
// executor.pipeline_depth() groups, each its own micro-batch, all in flight at once, a group's
// first step as soon as its prompts are in.
// on_token(seq, id), when given, sees every token as it is chosen.
// adapters: each prompt's LoRA adapter id (empty: the base model, or the one unnamed adapter).
StatusOr<GreedyResult> generate_greedy(Executor& executor, const std::vector<std::vector<int32_t>>& prompts,
                                       int64_t steps, bool want_prompt_logits, bool want_step_logits,
                                       const std::vector<int32_t>& stop_ids = {},
                                       const std::function<void(int64_t, int32_t)>& on_token = {},
                                       const std::vector<int32_t>& adapters = {}, int64_t prefill_micro_batches = 0);

}  // namespace shoal
