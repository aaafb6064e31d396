#include "coordinator/engine.h"

#include <algorithm>
#include <chrono>

namespace shoal {

StatusOr<std::unique_ptr<Engine>> Engine::open(const std::filesystem::path& dir, const EngineOptions& opts) {
  std::unique_ptr<Engine> e(new Engine());
  SHOAL_ASSIGN_OR_RETURN(e->ck_, Checkpoint::open(dir));
  if (!e->ck_->has_weights()) return not_found(dir.string() + ": no *.safetensors weights (only a config)");
  const ModelConfig& c = e->ck_->config();
  SHOAL_ASSIGN_OR_RETURN(e->embed_, load_embedding(*e->ck_));
  SHOAL_ASSIGN_OR_RETURN(e->head_, load_head(*e->ck_));
  StageOptions so;
  so.n_slots = opts.n_slots;
  so.max_seq_len = opts.max_seq_len > 0 ? opts.max_seq_len : std::min(c.max_position_embeddings, kDefaultMaxSeqLen);
  so.attn_impl = opts.attn_impl;
  SHOAL_ASSIGN_OR_RETURN(e->stage_, Stage::load(*e->ck_, so));
  return e;
}

Status Engine::check(const Batch& b) const {
  const ModelConfig& c = config();
  for (size_t si = 0; si < b.seqs.size(); ++si) {
    const SeqRange& s = b.seqs[si];
    if (s.slot < 0 || s.slot >= stage_->n_slots())
      return invalid_argument("sequence " + std::to_string(si) + " uses slot " + std::to_string(s.slot) +
                              " but the engine has " + std::to_string(stage_->n_slots()));
    for (int64_t t = s.begin; t < s.begin + s.count; ++t) {
      const int32_t id = b.tokens[size_t(t)], pos = b.positions[size_t(t)];
      if (id < 0 || id >= c.vocab_size)
        return invalid_argument("token id " + std::to_string(id) + " at position " + std::to_string(pos) +
                                " of sequence " + std::to_string(si) + " is outside the vocabulary [0, " +
                                std::to_string(c.vocab_size) + ")");
      if (pos < 0 || pos >= stage_->max_seq_len())
        return Status(Code::kResourceExhausted, "sequence " + std::to_string(si) + " reaches position " +
                                                    std::to_string(pos) + " but the context holds " +
                                                    std::to_string(stage_->max_seq_len()) + " tokens");
    }
  }
  return {};
}

StatusOr<std::vector<float>> Engine::forward(const Batch& batch, const std::vector<int64_t>& logit_rows) {
  SHOAL_RETURN_IF_ERROR(check(batch));
  const ModelConfig& c = config();
  const int64_t n = batch.n_tokens(), dim = c.dim, m = int64_t(logit_rows.size());
  std::vector<float> x(static_cast<size_t>(n * dim));
  kernels::embedding(x.data(), batch.tokens.data(), embed_, n, ctx_);
  stage_->forward(x.data(), batch);
  std::vector<float> h(static_cast<size_t>(m * dim));
  for (int64_t r = 0; r < m; ++r) std::copy_n(x.data() + logit_rows[size_t(r)] * dim, dim, h.data() + r * dim);
  kernels::rms_norm(h.data(), h.data(), head_.norm, m, float(c.rms_norm_eps), ctx_);
  std::vector<float> logits(static_cast<size_t>(m * c.vocab_size));
  kernels::linear(logits.data(), h.data(), head_.lm_head, m, ctx_);
  return logits;
}

namespace {

int32_t argmax(const float* v, int64_t n) { return int32_t(std::max_element(v, v + n) - v); }

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

StatusOr<GreedyResult> generate_greedy(Engine& engine, const std::vector<std::vector<int32_t>>& prompts,
                                       int64_t steps, bool want_prompt_logits, bool want_step_logits,
                                       const std::vector<int32_t>& stop_ids) {
  const int64_t V = engine.config().vocab_size, B = int64_t(prompts.size());
  GreedyResult r;
  r.prompt_logits.resize(size_t(B));
  r.ids.resize(size_t(B));
  r.step_logits.resize(size_t(B));
  Batch prefill;
  std::vector<int64_t> rows;
  for (int64_t b = 0; b < B; ++b) {
    if (prompts[size_t(b)].empty()) return invalid_argument("prompt " + std::to_string(b) + " is empty");
    prefill.add_sequence(int32_t(b), 0, prompts[size_t(b)]);
    const SeqRange& s = prefill.seqs.back();
    if (want_prompt_logits)
      for (int64_t t = s.begin; t < s.begin + s.count; ++t) rows.push_back(t);
    else
      rows.push_back(s.begin + s.count - 1);
  }
  auto t0 = std::chrono::steady_clock::now();
  SHOAL_ASSIGN_OR_RETURN(std::vector<float> logits, engine.forward(prefill, rows));
  r.prefill_seconds = seconds_since(t0);
  r.prefill_tokens = prefill.n_tokens();
  // last[b]: the logits that choose sequence b's next token (the last prompt row for step 0).
  std::vector<const float*> last(static_cast<size_t>(B));
  int64_t row = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t count = want_prompt_logits ? int64_t(prompts[size_t(b)].size()) : 1;
    for (int64_t p = 0; p < count && want_prompt_logits; ++p)
      r.prompt_logits[size_t(b)].emplace_back(logits.begin() + (row + p) * V, logits.begin() + (row + p + 1) * V);
    last[size_t(b)] = logits.data() + (row + count - 1) * V;
    row += count;
  }
  std::vector<float> step = std::move(logits);
  std::vector<bool> done(size_t(B), false);
  t0 = std::chrono::steady_clock::now();
  for (int64_t k = 0; k < steps; ++k) {
    Batch decode;
    std::vector<int64_t> live;
    for (int64_t b = 0; b < B; ++b) {
      if (done[size_t(b)]) continue;
      const float* l = last[size_t(b)];
      const int32_t id = argmax(l, V);
      r.ids[size_t(b)].push_back(id);
      if (want_step_logits) r.step_logits[size_t(b)].emplace_back(l, l + V);
      if (std::find(stop_ids.begin(), stop_ids.end(), id) != stop_ids.end()) {
        done[size_t(b)] = true;
        continue;
      }
      decode.add_sequence(int32_t(b), int32_t(prompts[size_t(b)].size() + size_t(k)), {id});
      live.push_back(b);
    }
    if (k + 1 == steps || live.empty()) break;  // the last chosen tokens need no forward pass
    std::vector<int64_t> decode_rows(live.size());
    for (size_t i = 0; i < live.size(); ++i) decode_rows[i] = int64_t(i);
    SHOAL_ASSIGN_OR_RETURN(step, engine.forward(decode, decode_rows));
    r.decode_tokens += int64_t(live.size());
    for (size_t i = 0; i < live.size(); ++i) last[size_t(live[i])] = step.data() + int64_t(i) * V;
  }
  r.decode_seconds = seconds_since(t0);
  return r;
}

}  // namespace shoal
