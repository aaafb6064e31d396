#include "coordinator/scheduler.h"

#include <algorithm>

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
  auto it = running_.find(id);
  if (it == running_.end()) return;
  if (it->second.in_flight) {
    it->second.cancelled = true;  // freed when its micro-batch comes back
    return;
  }
  free_slots_.push_back(it->second.slot);
  running_.erase(it);
}

// A request that shares another's prompt waits while that one is queued or still prefilling.
bool Scheduler::can_admit(const GenerationRequest& r) const {
  if (r.shares_prompt_of == 0) return true;
  if (std::any_of(waiting_.begin(), waiting_.end(), [&](const auto& w) { return w.id == r.shares_prompt_of; }))
    return false;
  auto it = running_.find(r.shares_prompt_of);
  return it == running_.end() || it->second.prefilled >= int64_t(it->second.request.prompt.size());
}

void Scheduler::admit() {
  for (auto w = waiting_.begin(); w != waiting_.end() && !free_slots_.empty();) {
    if (!can_admit(*w)) {
      ++w;
      continue;
    }
    Sequence s;
    s.request = std::move(*w);
    w = waiting_.erase(w);
    s.slot = free_slots_.back();
    free_slots_.pop_back();
    // The shared prompt, all but its last token, copied from the other request's slot (if that
    // one is still running: else this one prefills on its own). The copy rides on the next
    // micro-batch, ahead of its tokens at every layer, so a slot freed meanwhile cannot be
    // overwritten first.
    if (auto src = running_.find(s.request.shares_prompt_of);
        src != running_.end() && src->second.request.prompt == s.request.prompt && s.request.prompt.size() > 1) {
      s.prefilled = int64_t(s.request.prompt.size()) - 1;
      pending_copies_.push_back({src->second.slot, s.slot, int32_t(s.prefilled)});
    }
    const uint64_t id = s.request.id;
    running_.emplace(id, std::move(s));
  }
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

Status Scheduler::submit_ready() {
  while (int64_t(in_flight_.size()) < ex_.pipeline_depth()) {
    Batch batch;
    std::vector<int64_t> rows;
    std::vector<RowSampler> samplers;  // one per row once any row samples
    bool sampling = false;
    std::vector<Part> parts;
    int64_t budget = options_.max_batch_tokens;
    for (auto& [id, s] : running_) {
      if (s.in_flight || s.cancelled || budget == 0) continue;
      const int64_t prompt = int64_t(s.request.prompt.size());
      Part part{id, 0, true};
      if (s.prefilled < prompt) {  // the next chunk of the prompt
        const int64_t chunk = std::min(prompt - s.prefilled, budget);
        const std::vector<int32_t> ids(s.request.prompt.begin() + s.prefilled,
                                       s.request.prompt.begin() + s.prefilled + chunk);
        batch.add_sequence(s.slot, int32_t(s.prefilled), ids, s.request.adapter);
        part.tokens = chunk;
        part.wants_token = s.prefilled + chunk == prompt;
      } else {  // decode: the last chosen token
        batch.add_sequence(s.slot, int32_t(prompt + int64_t(s.output.size()) - 1), {s.output.back()},
                           s.request.adapter);
        part.tokens = 1;
      }
      budget -= part.tokens;
      if (part.wants_token) {
        rows.push_back(batch.n_tokens() - 1);
        samplers.push_back(row_sampler(s));
        sampling = sampling || s.request.sampling.has_value() || s.request.constraint;
      }
      s.in_flight = true;
      parts.push_back(part);
    }
    if (parts.empty()) return {};
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
    events.push_back({id, -1, reason});
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
    s.in_flight = false;
    const int64_t pick = part.wants_token ? int64_t(row++) : -1;
    const int32_t token = pick >= 0 ? result.ids.at(size_t(pick)) : -1;
    if (s.cancelled) {
      finish(part.request, FinishReason::kCancelled, events);
      continue;
    }
    if (s.prefilled < int64_t(s.request.prompt.size())) s.prefilled += part.tokens;
    if (!part.wants_token) continue;
    s.output.push_back(token);
    TokenEvent event{part.request, token, FinishReason::kNone};
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
