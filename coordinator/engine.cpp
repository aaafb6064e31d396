#include "coordinator/engine.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>

namespace shoal {

StatusOr<std::unique_ptr<Engine>> Engine::open(const std::filesystem::path& dir, const EngineOptions& opts) {
  std::unique_ptr<Engine> e(new Engine());
  SHOAL_ASSIGN_OR_RETURN(e->ck_, Checkpoint::open(dir));
  if (opts.exact) e->ck_->set_numerics(kernels::Numerics::kExact);
  if (!e->ck_->has_weights()) return not_found(dir.string() + ": no *.safetensors weights (only a config)");
  const ModelConfig& c = e->ck_->config();
  SHOAL_ASSIGN_OR_RETURN(e->embed_, load_embedding(*e->ck_));
  SHOAL_ASSIGN_OR_RETURN(e->head_, load_head(*e->ck_));
  StageOptions so;
  so.n_slots = opts.n_slots;
  so.max_seq_len = opts.max_seq_len > 0 ? opts.max_seq_len
                   : opts.kv_memory != 0 ? c.max_position_embeddings  // a pool: as far as the model and the pool reach
                                         : std::min(c.max_position_embeddings, kDefaultMaxSeqLen);
  so.attn_impl = opts.attn_impl;
  so.kv_dtype = opts.kv_dtype;
  SHOAL_ASSIGN_OR_RETURN(so.kv_blocks, kv_pool_blocks(c, c.n_layers, opts.kv_memory, opts.kv_dtype));
  if (so.kv_blocks > 0) so.max_seq_len = std::min(so.max_seq_len, so.kv_blocks * kKvBlockTokens);  // what it can hold
  SHOAL_ASSIGN_OR_RETURN(e->loras_, load_loras(opts.loras, c, opts.merge_lora, opts.merge_into));
  so.lora = lora_views(e->loras_);
  SHOAL_ASSIGN_OR_RETURN(e->stage_, Stage::load(*e->ck_, so));
  return e;
}

StatusOr<int64_t> kv_pool_blocks(const ModelConfig& c, int64_t layers, int64_t bytes, DType dtype) {
  if (bytes == kDefaultKvMemory) bytes = 8 * 4096 * kv_token_bytes(c, layers, DType::kF32);
  if (bytes <= 0 || layers <= 0) return int64_t(0);
  const int64_t block = kv_block_bytes(c, layers, dtype), blocks = bytes / block;
  if (blocks < 1)
    return invalid_argument("a KV pool of " + std::to_string(bytes) + " bytes cannot hold one block of " +
                            std::to_string(kKvBlockTokens) + " positions (" + std::to_string(block) + " bytes in " +
                            kv_dtype_name(dtype) + " over " + std::to_string(layers) + " layers)");
  return blocks;
}

StatusOr<int64_t> kv_pool_blocks_of_fraction(const ModelConfig& c, const std::vector<KvRoom>& ranks, double fraction,
                                             DType dtype) {
  if (!(fraction > 0 && fraction <= 1)) return invalid_argument("a KV pool's fraction of memory must be in (0, 1]");
  struct Host {
    int64_t capacity = 0, used = 0, block_bytes = 0;
    std::string ranks;
  };
  std::map<std::string, Host> hosts;
  for (const KvRoom& r : ranks) {
    Host& h = hosts[r.host];
    h.capacity = std::max(h.capacity, r.capacity_bytes);
    h.used += r.weight_bytes + r.workspace_bytes;
    if (r.layers > 0) h.block_bytes += kv_block_bytes(c, r.layers, dtype);
    h.ranks += (h.ranks.empty() ? "" : ", ") + std::to_string(r.rank);
  }
  auto gib = [](int64_t b) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f GiB", double(b) / double(int64_t(1) << 30));
    return std::string(buf);
  };
  char pct[32];
  std::snprintf(pct, sizeof pct, "%g%%", fraction * 100);
  int64_t blocks = -1;
  for (const auto& [name, h] : hosts) {
    if (h.block_bytes == 0) continue;  // no attention layers there
    const std::string where = "host " + name + " (rank" + (h.ranks.find(',') != std::string::npos ? "s " : " ") + h.ranks +
                              ") has " + gib(h.capacity) + " of memory, " + gib(h.used) + " of it for weights and workspace";
    const int64_t room = h.capacity - h.used;
    if (room <= 0) return invalid_argument("--kv-memory as a fraction: " + where + ": no room left for a KV pool");
    const int64_t here = int64_t(fraction * double(room)) / h.block_bytes;
    if (here < 1)
      return invalid_argument("--kv-memory as a fraction: " + where + "; " + pct + " of the " +
                              gib(room) + " left cannot hold one block of " + std::to_string(kKvBlockTokens) +
                              " positions (" + std::to_string(h.block_bytes) + " bytes over its ranks' layers)");
    blocks = blocks < 0 ? here : std::min(blocks, here);
  }
  return blocks < 0 ? int64_t(0) : blocks;
}

Batch with_served_adapters(const Batch& b, const std::vector<std::string>& adapter_names) {
  Batch out = b;
  if (adapter_names.size() == 1 && adapter_names[0].empty())
    for (SeqRange& s : out.seqs) s.adapter = 1;
  return out;
}

Status check_batch(const Batch& b, const ModelConfig& c, int64_t n_slots, int64_t max_seq_len,
                   const std::vector<std::string>& adapter_names, int64_t kv_blocks) {
  for (const TableEdit& e : b.tables) {
    if (kv_blocks == 0) return invalid_argument("a KV block table edit, but the KV cache is not paged");
    if (e.slot < 0 || e.slot >= n_slots || e.keep < 0 ||
        e.keep + int64_t(e.blocks.size()) > kv_blocks_for(max_seq_len))
      return invalid_argument("a KV block table edit (slot " + std::to_string(e.slot) + ", keep " +
                              std::to_string(e.keep) + ", " + std::to_string(e.blocks.size()) + " blocks) does not fit " +
                              std::to_string(n_slots) + " slots of " + std::to_string(max_seq_len) + " positions");
    for (int32_t id : e.blocks)
      if (id < 0 || id >= kv_blocks)
        return invalid_argument("KV block " + std::to_string(id) + " is outside the pool of " + std::to_string(kv_blocks));
  }
  for (size_t si = 0; si < b.seqs.size(); ++si) {
    const SeqRange& s = b.seqs[si];
    if (s.adapter < 0 || size_t(s.adapter) > adapter_names.size())
      return invalid_argument("sequence " + std::to_string(si) + " asks for LoRA adapter " + std::to_string(s.adapter) +
                              " but " + std::to_string(adapter_names.size()) + " are served");
    if (s.slot < 0 || s.slot >= n_slots)
      return invalid_argument("sequence " + std::to_string(si) + " uses slot " + std::to_string(s.slot) +
                              " but the engine has " + std::to_string(n_slots));
    for (int64_t t = s.begin; t < s.begin + s.count; ++t) {
      const int32_t id = b.tokens[size_t(t)], pos = b.positions[size_t(t)];
      if (id < 0 || id >= c.vocab_size)
        return invalid_argument("token id " + std::to_string(id) + " at position " + std::to_string(pos) +
                                " of sequence " + std::to_string(si) + " is outside the vocabulary [0, " +
                                std::to_string(c.vocab_size) + ")");
      if (pos < 0 || pos >= max_seq_len)
        return Status(Code::kResourceExhausted, "sequence " + std::to_string(si) + " reaches position " +
                                                    std::to_string(pos) + " but the context holds " +
                                                    std::to_string(max_seq_len) + " tokens");
    }
  }
  for (const SlotCopy& c : b.copies)
    if (c.from < 0 || c.from >= n_slots || c.to < 0 || c.to >= n_slots || c.from == c.to || c.positions < 0 ||
        c.positions > max_seq_len)
      return invalid_argument("a KV copy of " + std::to_string(c.positions) + " positions from slot " +
                              std::to_string(c.from) + " to slot " + std::to_string(c.to) + " does not fit " +
                              std::to_string(n_slots) + " slots of " + std::to_string(max_seq_len));
  return {};
}

StatusOr<std::vector<float>> Engine::forward(const Batch& asked, const std::vector<int64_t>& logit_rows) {
  const std::vector<std::string> adapters = adapter_names();
  SHOAL_RETURN_IF_ERROR(check_batch(asked, config(), n_slots(), max_seq_len(), adapters, kv_blocks()));
  const Batch batch = with_served_adapters(asked, adapters);
  const ModelConfig& c = config();
  const int64_t n = batch.n_tokens(), dim = c.dim, m = int64_t(logit_rows.size());
  std::vector<float> x(static_cast<size_t>(n * dim));
  kernels::embedding(x.data(), batch.tokens.data(), embed_, n, ctx_);
  SHOAL_RETURN_IF_ERROR(stage_->forward(x.data(), batch));
  if (m == 0) return std::vector<float>{};  // a prefill chunk that chooses no token
  std::vector<float> h(static_cast<size_t>(m * dim));
  for (int64_t r = 0; r < m; ++r) std::copy_n(x.data() + logit_rows[size_t(r)] * dim, dim, h.data() + r * dim);
  kernels::rms_norm(h.data(), h.data(), head_.norm, m, float(c.rms_norm_eps), ctx_);
  std::vector<float> logits(static_cast<size_t>(m * c.vocab_size));
  kernels::linear(logits.data(), h.data(), head_.lm_head, m, ctx_);
  return logits;
}

StatusOr<uint64_t> Engine::submit(const Batch& batch, const std::vector<int64_t>& rows, bool want_logits,
                                  const std::vector<RowSampler>& samplers) {
  if (!samplers.empty() && samplers.size() != rows.size())
    return invalid_argument(std::to_string(samplers.size()) + " samplers for " + std::to_string(rows.size()) + " rows");
  SHOAL_ASSIGN_OR_RETURN(std::vector<float> logits, forward(batch, rows));
  StepResult r;
  r.id = next_id_++;
  std::vector<SampleResult> picks = choose_tokens(logits.data(), int64_t(rows.size()), config().vocab_size, samplers);
  for (const SampleResult& p : picks) r.ids.push_back(p.id);
  if (!samplers.empty()) r.picks = std::move(picks);
  if (want_logits) r.logits = std::move(logits);
  done_.push_back(std::move(r));
  return done_.back().id;
}

StatusOr<StepResult> Engine::next_result() {
  if (done_.empty()) return internal_error("next_result() without a submitted micro-batch");
  StepResult r = std::move(done_.front());
  done_.pop_front();
  return r;
}

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// A piece of one prompt in a prefill micro-batch: positions [begin, begin + count).
struct Piece {
  int64_t seq = 0, begin = 0, count = 0;
  bool last = false;  // the prompt's last piece: its last row chooses the first token
};

// A micro-batch in flight: pieces of prompts (prefill), or one decode step of a group.
struct InFlight {
  bool prefill = false;
  std::vector<Piece> pieces;  // prefill
  int64_t group = -1;         // decode: the group and its sequences, one row each
  std::vector<int64_t> seqs;
};

}  // namespace

int64_t prefill_chunk_tokens(int64_t depth, int64_t prompt_tokens, int64_t micro_batches) {
  const int64_t tokens = std::max<int64_t>(prompt_tokens, 1);
  if (micro_batches > 0) return (tokens + micro_batches - 1) / micro_batches;
  if (depth <= 1) return tokens;
  const int64_t k = kPrefillMicroBatchesPerStage * depth;
  return std::max((tokens + k - 1) / k, kMinPrefillChunk);
}

StatusOr<GreedyResult> generate_greedy(Executor& ex, const std::vector<std::vector<int32_t>>& prompts,
                                       int64_t steps, bool want_prompt_logits, bool want_step_logits,
                                       const std::vector<int32_t>& stop_ids,
                                       const std::function<void(int64_t, int32_t)>& on_token,
                                       const std::vector<int32_t>& adapters, int64_t prefill_micro_batches) {
  const int64_t V = ex.config().vocab_size, B = int64_t(prompts.size());
  if (B > ex.n_slots())
    return invalid_argument(std::to_string(B) + " prompts but only " + std::to_string(ex.n_slots()) + " KV slots");
  for (int64_t b = 0; b < B; ++b)
    if (prompts[size_t(b)].empty()) return invalid_argument("prompt " + std::to_string(b) + " is empty");
  if (!adapters.empty() && int64_t(adapters.size()) != B)
    return invalid_argument(std::to_string(adapters.size()) + " adapter ids for " + std::to_string(B) + " prompts");
  auto adapter_of = [&](int64_t b) { return adapters.empty() ? 0 : adapters[size_t(b)]; };
  GreedyResult r;
  r.prompt_logits.resize(size_t(B));
  r.ids.resize(size_t(B));
  r.step_logits.resize(size_t(B));
  // A paged pool: each prompt its own blocks for all it will reach, given with its prefill.
  std::vector<TableEdit> tables;
  if (ex.kv_blocks() > 0) {
    int32_t next = 0;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t blocks = kv_blocks_for(std::min<int64_t>(int64_t(prompts[size_t(b)].size()) + steps, ex.max_seq_len()));
      if (next + blocks > ex.kv_blocks())
        return Status(Code::kResourceExhausted, std::to_string(B) + " prompts of up to " + std::to_string(steps) +
                                                    " steps need more than the KV pool's " +
                                                    std::to_string(ex.kv_blocks()) + " blocks");
      TableEdit e{int32_t(b), 0, {}};
      for (int64_t k = 0; k < blocks; ++k) e.blocks.push_back(next++);
      tables.push_back(std::move(e));
    }
  }
  // Decode groups: sequence b in group b * G / B, each group one micro-batch per step.
  const int64_t G = std::clamp<int64_t>(ex.pipeline_depth(), 1, std::max<int64_t>(B, 1));
  std::vector<std::vector<int64_t>> group(static_cast<size_t>(G));
  std::vector<int64_t> group_of(prompts.size(), 0), group_ready(size_t(G), 0);  // its prompts that are in
  for (int64_t g = 0; g < G; ++g)
    for (int64_t b = g * B / G; b < (g + 1) * B / G; ++b) group_of[size_t(b)] = g, group[size_t(g)].push_back(b);
  std::vector<bool> stopped(size_t(B), false);
  if (want_prompt_logits)
    for (int64_t b = 0; b < B; ++b) r.prompt_logits[size_t(b)].resize(prompts[size_t(b)].size());

  std::map<uint64_t, InFlight> pending;
  auto submit = [&](InFlight f, const Batch& batch, const std::vector<int64_t>& rows, bool logits) -> Status {
    SHOAL_ASSIGN_OR_RETURN(uint64_t id, ex.submit(batch, rows, logits));
    pending.emplace(id, std::move(f));
    return {};
  };
  // The sequences of `seqs` that go on.
  auto going_on = [&](const std::vector<int64_t>& seqs) {
    std::vector<int64_t> out;
    for (int64_t b : seqs)
      if (!stopped[size_t(b)]) out.push_back(b);
    return out;
  };
  // One decode step of group g: its sequences that go on, each its last token. Over ranks it
  // starts a chain: the head sends the group's later steps on by itself (Executor::submit_chain).
  auto submit_decode = [&](int64_t g, const std::vector<int64_t>& seqs) -> Status {
    Batch next;
    InFlight f{false, {}, g, going_on(seqs)};
    if (f.seqs.empty()) return {};
    for (int64_t b : f.seqs) {
      const auto& ids = r.ids[size_t(b)];
      next.add_sequence(int32_t(b), int32_t(prompts[size_t(b)].size() + ids.size() - 1), {ids.back()}, adapter_of(b));
    }
    std::vector<int64_t> rows(f.seqs.size());
    for (size_t i = 0; i < rows.size(); ++i) rows[i] = int64_t(i);
    if (!ex.chains_decode()) return submit(std::move(f), next, rows, want_step_logits);
    // Every sequence of a group has as many tokens: the steps left after this one.
    const int64_t more = std::max<int64_t>(steps - int64_t(r.ids[size_t(f.seqs[0])].size()) - 1, 0);
    SHOAL_ASSIGN_OR_RETURN(uint64_t id, ex.submit_chain(next, rows, want_step_logits, more, stop_ids));
    pending.emplace(id, std::move(f));
    return {};
  };
  // A sequence's token at step ids.size(): recorded, shown, and whether it goes on.
  auto take = [&](int64_t b, int32_t id, const float* logits) {
    if (int64_t(r.ids[size_t(b)].size()) >= steps) {
      stopped[size_t(b)] = true;
      return;
    }
    r.ids[size_t(b)].push_back(id);
    if (want_step_logits) r.step_logits[size_t(b)].emplace_back(logits, logits + V);
    if (on_token) on_token(b, id);
    const bool stop = std::find(stop_ids.begin(), stop_ids.end(), id) != stop_ids.end();
    if (stop || int64_t(r.ids[size_t(b)].size()) >= steps) stopped[size_t(b)] = true;
  };

  // Prefill: the prompts cut into pieces of `chunk` tokens, packed in order into micro-batches
  // that follow each other through the stages (a prompt's pieces in order, so each stage has its
  // earlier positions' cache when the next piece arrives).
  const auto t0 = std::chrono::steady_clock::now();
  int64_t total = 0;
  for (const auto& p : prompts) total += int64_t(p.size());
  const int64_t chunk = prefill_chunk_tokens(ex.pipeline_depth(), total, prefill_micro_batches);
  int64_t prefills_left = 0;
  {
    Batch batch;
    std::vector<int64_t> rows;
    InFlight f{true, {}, -1, {}};
    auto flush = [&]() -> Status {
      if (f.pieces.empty()) return {};
      r.prefill_tokens += batch.n_tokens();
      ++prefills_left;
      SHOAL_RETURN_IF_ERROR(submit(std::move(f), batch, rows, want_prompt_logits || want_step_logits));
      batch = Batch();
      rows.clear();
      f = InFlight{true, {}, -1, {}};
      return {};
    };
    for (int64_t b = 0; b < B; ++b) {
      const auto& prompt = prompts[size_t(b)];
      for (int64_t begin = 0; begin < int64_t(prompt.size());) {
        const int64_t count = std::min(int64_t(prompt.size()) - begin, chunk - batch.n_tokens());
        if (begin == 0 && !tables.empty()) batch.tables.push_back(tables[size_t(b)]);
        batch.add_sequence(int32_t(b), int32_t(begin),
                           std::vector<int32_t>(prompt.begin() + begin, prompt.begin() + begin + count), adapter_of(b));
        const bool last = begin + count == int64_t(prompt.size());
        const SeqRange& s = batch.seqs.back();
        if (want_prompt_logits)
          for (int64_t t = s.begin; t < s.begin + s.count; ++t) rows.push_back(t);
        else if (last)
          rows.push_back(s.begin + s.count - 1);
        f.pieces.push_back({b, begin, count, last});
        begin += count;
        if (batch.n_tokens() >= chunk) SHOAL_RETURN_IF_ERROR(flush());
      }
    }
    SHOAL_RETURN_IF_ERROR(flush());
  }

  auto t_decode = t0;
  while (!pending.empty()) {
    SHOAL_ASSIGN_OR_RETURN(StepResult res, ex.next_result());
    auto it = pending.find(res.id);
    if (it == pending.end()) return internal_error("a result for unknown micro-batch " + std::to_string(res.id));
    const InFlight f = std::move(it->second);
    pending.erase(it);
    auto row_logits = [&](int64_t k) { return res.logits.empty() ? nullptr : res.logits.data() + k * V; };
    if (!f.prefill) {
      r.decode_tokens += int64_t(f.seqs.size());
      for (size_t i = 0; i < f.seqs.size(); ++i) take(f.seqs[i], res.ids[i], row_logits(int64_t(i)));
      if (res.continued)  // the head sent the next step on: the same sequences, those that go on
        pending.emplace(res.id + 1, InFlight{false, {}, f.group, going_on(f.seqs)});
      else
        SHOAL_RETURN_IF_ERROR(submit_decode(f.group, f.seqs));
      continue;
    }
    int64_t row = 0;
    for (const Piece& p : f.pieces) {
      if (want_prompt_logits) {
        for (int64_t k = 0; k < p.count; ++k)
          r.prompt_logits[size_t(p.seq)][size_t(p.begin + k)].assign(row_logits(row + k), row_logits(row + k) + V);
        row += p.count;
      } else if (p.last) {
        ++row;
      }
      if (!p.last) continue;
      take(p.seq, res.ids[size_t(row - 1)], row_logits(row - 1));
      const int64_t g = group_of[size_t(p.seq)];
      if (++group_ready[size_t(g)] == int64_t(group[size_t(g)].size())) SHOAL_RETURN_IF_ERROR(submit_decode(g, group[size_t(g)]));
    }
    if (--prefills_left == 0) {
      r.prefill_seconds = seconds_since(t0);
      t_decode = std::chrono::steady_clock::now();
    }
  }
  r.decode_seconds = seconds_since(t_decode);
  return r;
}

}  // namespace shoal
