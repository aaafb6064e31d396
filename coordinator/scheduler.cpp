#include "coordinator/scheduler.h"

#include <algorithm>

#include "model/layers.h"

namespace shoal {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kNone: return "";
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
  }
  return "";
}

Scheduler::Scheduler(Executor& executor, SchedulerOptions options) : ex_(executor), options_(options) {
  for (int64_t s = ex_.n_slots() - 1; s >= 0; --s) free_slots_.push_back(int32_t(s));
  if (ex_.kv_blocks() > 0) pool_.emplace(ex_.kv_blocks());
}

Status Scheduler::add(GenerationRequest r) {
  const int64_t need = int64_t(r.prompt.size()) + r.max_tokens, context = ex_.max_seq_len();
  if (r.prompt.empty()) return invalid_argument("request " + std::to_string(r.id) + " has an empty prompt");
  if (r.max_tokens < 1) return invalid_argument("request " + std::to_string(r.id) + ": max_tokens must be at least 1");
  if (need > context)
    return Status(Code::kResourceExhausted,
                  "request " + std::to_string(r.id) + " needs " + std::to_string(need) + " positions (prompt " +
                      std::to_string(r.prompt.size()) + " + max_tokens " + std::to_string(r.max_tokens) +
                      ") but the context holds " + std::to_string(context));
  const bool known = running_.count(r.id) ||
                     std::any_of(waiting_.begin(), waiting_.end(), [&](const auto& w) { return w.id == r.id; });
  if (known) return invalid_argument("request " + std::to_string(r.id) + " is already queued");
  waiting_.push_back(std::move(r));
  return {};
}

void Scheduler::cancel(uint64_t id) {
  auto w = std::find_if(waiting_.begin(), waiting_.end(), [&](const auto& r) { return r.id == id; });
  if (w != waiting_.end()) {
    waiting_.erase(w);
    return;
  }
  auto p = std::find_if(preempted_.begin(), preempted_.end(), [&](const auto& s) { return s.request.id == id; });
  if (p != preempted_.end()) {
    preempted_.erase(p);
    return;
  }
  auto it = running_.find(id);
  if (it == running_.end()) return;
  if (it->second.flights > 0) {
    it->second.cancelled = true;  // freed when its micro-batches come back
    return;
  }
  release_blocks(it->second);
  free_slots_.push_back(it->second.slot);
  running_.erase(it);
}

// A request that shares another's prompt waits while that one is queued or still prefilling.
bool Scheduler::can_admit(const GenerationRequest& r) const {
  if (r.shares_prompt_of == 0) return true;
  if (std::any_of(waiting_.begin(), waiting_.end(), [&](const auto& w) { return w.id == r.shares_prompt_of; }))
    return false;
  auto it = running_.find(r.shares_prompt_of);
  return it == running_.end() || it->second.cached >= int64_t(it->second.request.prompt.size());
}

// Preempted sequences come back first (oldest first), then new requests in arrival order; with a
// paged pool each needs its blocks free, and the first that cannot have them stops the rest.
void Scheduler::admit() {
  while (!preempted_.empty() && !free_slots_.empty()) {
    Sequence& s = preempted_.front();
    if (paged() && !admit_one(s)) return;
    s.slot = free_slots_.back();
    free_slots_.pop_back();
    const uint64_t id = s.request.id;
    running_.emplace(id, std::move(s));
    preempted_.pop_front();
  }
  for (auto w = waiting_.begin(); w != waiting_.end() && !free_slots_.empty();) {
    if (!can_admit(*w)) {
      ++w;
      continue;
    }
    Sequence s;
    s.request = std::move(*w);
    const int64_t prompt = int64_t(s.request.prompt.size());
    s.prompt_attn = use_naive(ex_.config(), prompt, AttnImpl::kAuto) ? AttnImpl::kNaive : AttnImpl::kAbsorb;
    // The shared prompt, all but its last token, copied from the other request's slot (if that
    // one is still running: else this one prefills on its own). The copy rides on the next
    // micro-batch, ahead of its tokens at every layer, so a slot freed meanwhile cannot be
    // overwritten first.
    auto src = running_.find(s.request.shares_prompt_of);
    const bool copy = src != running_.end() && src->second.request.prompt == s.request.prompt && prompt > 1;
    if (copy) s.cached = prompt - 1;
    if (paged() && !admit_one(s)) {
      *w = std::move(s.request);
      return;
    }
    w = waiting_.erase(w);
    s.order = next_order_++;
    s.slot = free_slots_.back();
    free_slots_.pop_back();
    if (copy) pending_copies_.push_back({src->second.slot, s.slot, int32_t(s.cached)});
    const uint64_t id = s.request.id;
    running_.emplace(id, std::move(s));
  }
}

// Blocks for what the sequence computes first (its prompt; after a preemption, up to its next
// decode), less the full prompt blocks found cached. At least one prompt token is always computed,
// so the last one's logits choose the first token.
bool Scheduler::admit_one(Sequence& s) {
  const int64_t prompt = int64_t(s.request.prompt.size()), n = int64_t(s.output.size());
  const int64_t positions = n == 0 ? prompt : prompt + n;
  std::vector<int32_t> hits;
  if (options_.prefix_cache && s.cached == 0) {
    if (s.keys.empty()) {
      const uint64_t salt = (uint64_t(uint32_t(s.request.adapter)) << 8) | uint64_t(uint8_t(s.prompt_attn));
      s.keys = block_keys(s.request.prompt, kKvBlockTokens, salt);
    }
    const size_t most = size_t((n == 0 ? prompt - 1 : prompt) / kKvBlockTokens);
    for (size_t k = 0; k < std::min(most, s.keys.size()); ++k) {
      const std::optional<int32_t> b = pool_->find(s.keys[k]);
      if (!b) break;
      hits.push_back(*b);
    }
  }
  for (int32_t b : hits) pool_->retain(b);
  const int64_t need = kv_blocks_for(positions) - int64_t(hits.size());
  if (pool_->available() < need) {
    for (int32_t b : hits) pool_->release(b);
    return false;
  }
  s.blocks = hits;
  for (int64_t k = 0; k < need; ++k) s.blocks.push_back(*pool_->take());
  if (s.cached == 0) s.cached = int64_t(hits.size()) * kKvBlockTokens;
  s.published = hits.size();
  s.sent = 0;
  s.reset = true;
  if (s.cached_tokens < 0) {  // its first admission
    s.cached_tokens = int64_t(hits.size()) * kKvBlockTokens;
    prompt_tokens_ += prompt;
    cached_prompt_tokens_ += s.cached_tokens;
  }
  return true;
}

// Blocks until position `end` for sequence `id`. When the pool is dry, the youngest sequence not
// in flight gives its blocks back (it may be this one); false when this one must wait (or was
// preempted).
bool Scheduler::grow(uint64_t id, int64_t end) {
  while (true) {
    Sequence& s = running_.at(id);
    if (int64_t(s.blocks.size()) * kKvBlockTokens >= end) return true;
    if (std::optional<int32_t> b = pool_->take()) {
      s.blocks.push_back(*b);
      continue;
    }
    auto pinned = [&](const Sequence& v) {  // a KV copy not yet sent reads or writes its slot
      return std::any_of(pending_copies_.begin(), pending_copies_.end(),
                         [&](const SlotCopy& c) { return c.from == v.slot || c.to == v.slot; });
    };
    const Sequence* victim = nullptr;
    for (const auto& [vid, v] : running_)
      if (vid != id && v.flights == 0 && !pinned(v) && (!victim || v.order > victim->order)) victim = &v;
    if (!victim) return false;  // the others are in flight: wait for them
    if (victim->order < s.order) {
      if (pinned(s) || s.flights > 0) return false;  // its chunks in flight: wait for them
      preempt(id);
      return false;
    }
    preempt(victim->request.id);
  }
}

void Scheduler::preempt(uint64_t id) {
  auto it = running_.find(id);
  Sequence s = std::move(it->second);
  running_.erase(it);
  release_blocks(s);
  free_slots_.push_back(s.slot);
  s.slot = -1;
  s.cached = 0;
  ++preemptions_;
  auto at = std::find_if(preempted_.begin(), preempted_.end(), [&](const Sequence& o) { return o.order > s.order; });
  preempted_.insert(at, std::move(s));
}

void Scheduler::release_blocks(Sequence& s) {
  if (!paged()) return;
  for (int32_t b : s.blocks) pool_->release(b);
  s.blocks.clear();
  s.sent = 0;
  s.reset = true;
  s.published = 0;
}

// The full prompt blocks now in the cache, published for later prompts.
void Scheduler::publish_blocks(Sequence& s) {
  if (!paged() || !options_.prefix_cache) return;
  while (s.published < s.keys.size() && int64_t(s.published + 1) * kKvBlockTokens <= s.cached) {
    pool_->publish(s.blocks[s.published], s.keys[s.published]);
    ++s.published;
  }
}

int32_t Scheduler::token_at(const Sequence& s, int64_t pos) const {
  const int64_t prompt = int64_t(s.request.prompt.size());
  return pos < prompt ? s.request.prompt[size_t(pos)] : s.output[size_t(pos - prompt)];
}

KvStats Scheduler::kv_stats() const {
  KvStats k;
  if (!pool_) return k;
  k.blocks = pool_->n_blocks();
  k.held = pool_->held();
  k.cached = pool_->cached();
  k.available = pool_->available();
  k.prompt_tokens = prompt_tokens_;
  k.cached_prompt_tokens = cached_prompt_tokens_;
  k.preemptions = preemptions_;
  return k;
}

RowSampler Scheduler::row_sampler(const Sequence& s) const {
  RowSampler r;
  r.params.temperature = 0.0f;  // greedy unless the request samples
  if (const auto& c = s.request.constraint) {
    bool may_end = false;
    c->allowed(r.allowed, may_end);
    const int64_t vocab = ex_.config().vocab_size;
    r.allowed.resize(size_t((vocab + 63) / 64), 0);
    for (int32_t id : s.request.stop_ids)
      if (may_end && id >= 0 && id < vocab) r.allowed[size_t(id) >> 6] |= uint64_t(1) << (id & 63);
    if (std::all_of(r.allowed.begin(), r.allowed.end(), [](uint64_t w) { return w == 0; })) r.allowed.clear();
  }
  if (!s.request.sampling) return r;
  r.params = *s.request.sampling;
  r.seed = s.request.seed;
  r.step = int64_t(s.output.size());
  if (needs_history(r.params)) {
    r.history = s.request.prompt;
    r.history.insert(r.history.end(), s.output.begin(), s.output.end());
    r.n_prompt = s.request.prompt.size();
  }
  return r;
}

// Each sequence with a part ready brings it: a chunk of its prompt, after a preemption a chunk of
// the outputs it had (computed again, one path for all, as they were decoded), or the decode of
// its last token. Every part of a prompt takes the prompt's MLA path. A sequence whose chunk is in
// flight may send its next chunk behind it (each rank keeps the order of its micro-batches), but
// not a part whose token is still being chosen.
Status Scheduler::submit_ready() {
  const int64_t depth = std::max<int64_t>(ex_.pipeline_depth(), 1);
  // Over a pipeline, a micro-batch carries at most `chunk` tokens of prompts (decodes apart).
  const int64_t chunk = depth > 1 ? prefill_chunk_tokens(depth, options_.max_batch_tokens) : options_.max_batch_tokens;
  while (int64_t(in_flight_.size()) < depth) {
    // The sequences with a part ready: the micro-batches still free share them.
    std::vector<uint64_t> ids;
    for (const auto& [id, s] : running_)
      if (!s.cancelled && s.cached + s.submitted < int64_t(s.request.prompt.size() + s.output.size())) ids.push_back(id);
    const int64_t free_batches = depth - int64_t(in_flight_.size());
    const int64_t share = (int64_t(ids.size()) + free_batches - 1) / free_batches;
    Batch batch;
    std::vector<int64_t> rows;
    std::vector<RowSampler> samplers;  // one per row once any row samples
    bool sampling = false;
    std::vector<Part> parts;
    int64_t budget = options_.max_batch_tokens, chunk_budget = chunk;
    for (uint64_t id : ids) {
      auto it = running_.find(id);
      if (it == running_.end()) continue;  // preempted meanwhile
      if (budget == 0 || int64_t(parts.size()) == share) break;
      const Sequence& s = it->second;
      const int64_t prompt = int64_t(s.request.prompt.size()), n = int64_t(s.output.size());
      const int64_t begin = s.cached + s.submitted;
      int64_t count = 1;
      bool wants = true;
      const bool chunked = begin < prompt + std::max<int64_t>(n - 1, 0);  // not the decode of its last token
      if (chunked && chunk_budget == 0) continue;
      AttnImpl attn = AttnImpl::kAbsorb;
      if (begin < prompt) {
        count = std::min({prompt - begin, budget, chunk_budget});
        wants = begin + count == prompt && n == 0;
        attn = s.prompt_attn;
      } else if (begin < prompt + n - 1) {
        count = std::min({prompt + n - 1 - begin, budget, chunk_budget});
        wants = false;
      }
      if (paged() && !grow(id, begin + count)) continue;
      Sequence& seq = running_.at(id);
      std::vector<int32_t> tokens;
      for (int64_t p = begin; p < begin + count; ++p) tokens.push_back(token_at(seq, p));
      batch.add_sequence(seq.slot, int32_t(begin), tokens, seq.request.adapter);
      batch.seqs.back().attn = attn;
      budget -= count;
      if (chunked) chunk_budget -= count;
      if (wants) {
        rows.push_back(batch.n_tokens() - 1);
        samplers.push_back(row_sampler(seq));
        sampling = sampling || seq.request.sampling.has_value() || seq.request.constraint;
      }
      ++seq.flights;
      seq.submitted += count;
      parts.push_back({id, count, wants});
    }
    if (parts.empty()) return {};
    for (auto& [id, s] : running_) {  // the block tables that changed, sequences in flight or not
      if (!paged() || (!s.reset && s.sent == s.blocks.size())) continue;
      const size_t keep = s.reset ? 0 : s.sent;
      batch.tables.push_back({s.slot, int32_t(keep), std::vector<int32_t>(s.blocks.begin() + keep, s.blocks.end())});
      s.sent = s.blocks.size();
      s.reset = false;
    }
    batch.copies = std::move(pending_copies_);
    pending_copies_.clear();
    if (!sampling) samplers.clear();  // every row greedy: the head takes the argmax
    SHOAL_ASSIGN_OR_RETURN(uint64_t mb, ex_.submit(batch, rows, /*want_logits=*/false, samplers));
    in_flight_.emplace(mb, std::move(parts));
  }
  return {};
}

void Scheduler::finish(uint64_t id, FinishReason reason, std::vector<TokenEvent>& events) {
  auto it = running_.find(id);
  if (!events.empty() && events.back().request == id && events.back().finish == FinishReason::kNone)
    events.back().finish = reason;
  else
    events.push_back({id, -1, -1, reason});
  release_blocks(it->second);
  free_slots_.push_back(it->second.slot);
  running_.erase(it);
}

StatusOr<std::vector<TokenEvent>> Scheduler::step() {
  admit();
  SHOAL_RETURN_IF_ERROR(submit_ready());
  std::vector<TokenEvent> events;
  if (in_flight_.empty()) return events;
  SHOAL_ASSIGN_OR_RETURN(StepResult result, ex_.next_result());
  auto mb = in_flight_.find(result.id);
  if (mb == in_flight_.end()) return internal_error("a result for unknown micro-batch " + std::to_string(result.id));
  const std::vector<Part> parts = std::move(mb->second);
  in_flight_.erase(mb);
  size_t row = 0;
  for (const Part& part : parts) {
    Sequence& s = running_.at(part.request);
    --s.flights;
    s.submitted -= part.tokens;
    const int64_t pick = part.wants_token ? int64_t(row++) : -1;
    const int32_t token = pick >= 0 ? result.ids.at(size_t(pick)) : -1;
    if (s.cancelled) {
      if (s.flights == 0) finish(part.request, FinishReason::kCancelled, events);
      continue;
    }
    s.cached += part.tokens;
    publish_blocks(s);
    if (!part.wants_token) continue;
    s.output.push_back(token);
    TokenEvent event{part.request, s.output.size() == 1 ? std::max<int64_t>(s.cached_tokens, 0) : -1, token,
                     FinishReason::kNone};
    if (size_t(pick) < result.picks.size()) {
      event.logprob = result.picks[size_t(pick)].logprob;
      event.top = std::move(result.picks[size_t(pick)].top);
    }
    events.push_back(std::move(event));
    const auto& stops = s.request.stop_ids;
    const bool stop_id = std::find(stops.begin(), stops.end(), token) != stops.end();
    const auto& constraint = s.request.constraint;
    if (stop_id) finish(part.request, FinishReason::kStop, events);
    else if (constraint && (!constraint->accept(token) || constraint->finished()))
      finish(part.request, FinishReason::kStop, events);
    else if (int64_t(s.output.size()) >= s.request.max_tokens) finish(part.request, FinishReason::kLength, events);
  }
  admit();
  SHOAL_RETURN_IF_ERROR(submit_ready());  // keep the pipeline full while the caller handles events
  return events;
}

}  // namespace shoal
