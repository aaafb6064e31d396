#include "coordinator/service.h"

namespace shoal {

GenerationService::GenerationService(Executor& executor, SchedulerOptions options)
    : ex_(executor), options_(options), scheduler_(std::make_unique<Scheduler>(executor, options)) {
  kv_stats_ = scheduler_->kv_stats();
  thread_ = std::thread([this] { loop(); });
}

GenerationService::~GenerationService() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

StatusOr<uint64_t> GenerationService::submit(GenerationRequest request, Callbacks callbacks) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!failed_.ok()) return failed_;
  const int64_t need = int64_t(request.prompt.size()) + request.max_tokens;
  if (request.prompt.empty()) return invalid_argument("the prompt is empty");
  if (request.max_tokens < 1) return invalid_argument("max_tokens must be at least 1");
  if (need > ex_.max_seq_len())
    return Status(Code::kResourceExhausted, "the request needs " + std::to_string(need) + " positions (prompt " +
                                                std::to_string(request.prompt.size()) + " + max_tokens " +
                                                std::to_string(request.max_tokens) + ") but the context holds " +
                                                std::to_string(ex_.max_seq_len()));
  request.id = next_id_++;
  const uint64_t id = request.id;
  incoming_.push_back({std::move(request), std::move(callbacks)});
  cv_.notify_all();
  return id;
}

void GenerationService::cancel(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  cancels_.push_back(id);
  cv_.notify_all();
}

Status GenerationService::health() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failed_;
}

int GenerationService::heals() const {
  std::lock_guard<std::mutex> lock(mu_);
  return heals_;
}

// After a failure: one heal attempt after another (each bounded by the executor), 250 ms
// apart, until one works or the service stops. Then a fresh scheduler over empty slots.
void GenerationService::heal_until_stopped(const Status& failure) {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (stop_) return;
    }
    Status h = ex_.heal();
    std::unique_lock<std::mutex> lock(mu_);
    if (h.ok()) {
      scheduler_ = std::make_unique<Scheduler>(ex_, options_);
      kv_stats_ = scheduler_->kv_stats();
      failed_ = Status();
      ++heals_;
      waiting_ = running_ = 0;
      return;
    }
    failed_ = Status(failure.code(), failure.message() + "; healing: " + h.message());
    cv_.wait_for(lock, std::chrono::milliseconds(250), [&] { return stop_; });
  }
}

size_t GenerationService::waiting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return waiting_;
}

size_t GenerationService::running() const {
  std::lock_guard<std::mutex> lock(mu_);
  return running_;
}

KvStats GenerationService::kv_stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return kv_stats_;
}

void GenerationService::loop() {
  while (true) {
    std::vector<Pending> incoming;
    std::vector<uint64_t> cancels;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !incoming_.empty() || !cancels_.empty() || !scheduler_->idle(); });
      if (stop_) return;
      incoming.swap(incoming_);
      cancels.swap(cancels_);
    }
    for (Pending& p : incoming) {
      const uint64_t id = p.request.id;
      if (Status s = scheduler_->add(std::move(p.request)); !s.ok()) {
        if (p.callbacks.on_error) p.callbacks.on_error(s);
        continue;
      }
      std::lock_guard<std::mutex> lock(mu_);
      callbacks_[id] = std::move(p.callbacks);
    }
    for (uint64_t id : cancels) {  // a cancelled request gets no more events
      scheduler_->cancel(id);
      std::lock_guard<std::mutex> lock(mu_);
      callbacks_.erase(id);
    }
    auto events = scheduler_->step();
    std::map<uint64_t, Callbacks> lost;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!events.ok()) {
        failed_ = events.status();
        lost.swap(callbacks_);
      }
      waiting_ = scheduler_->waiting();
      running_ = scheduler_->running();
      kv_stats_ = scheduler_->kv_stats();
    }
    if (!events.ok()) {
      for (auto& [id, cb] : lost)
        if (cb.on_error) cb.on_error(events.status());
      if (ex_.can_heal()) {
        // Requests that arrived meanwhile were refused (failed_); those queued before fail too.
        std::vector<Pending> queued;
        {
          std::lock_guard<std::mutex> lock(mu_);
          queued.swap(incoming_);
          cancels_.clear();
        }
        for (Pending& p : queued)
          if (p.callbacks.on_error) p.callbacks.on_error(events.status());
        heal_until_stopped(events.status());
        continue;
      }
      std::unique_lock<std::mutex> lock(mu_);  // failed: refuse everything from now on
      cv_.wait(lock, [&] { return stop_; });
      return;
    }
    for (const TokenEvent& e : *events) {
      Callbacks cb;
      {
        std::lock_guard<std::mutex> lock(mu_);
        auto it = callbacks_.find(e.request);
        if (it == callbacks_.end()) continue;
        cb = it->second;
        if (e.finish != FinishReason::kNone) callbacks_.erase(it);
      }
      if (cb.on_event) cb.on_event(e);
    }
  }
}

}  // namespace shoal
