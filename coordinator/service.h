// The generation service: one thread runs the Scheduler over an Executor; callers on any
// thread submit requests and get their tokens through a callback (the HTTP server and the
// batch runner both sit on this). A failure of the executor (a rank lost) fails every request
// in flight with that error and the service stays up for /health to report it; new requests
// are refused with it. An executor that can heal (HealingCluster) is then healed, one attempt
// after another, and the service takes requests again once it is back.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "coordinator/scheduler.h"

namespace shoal {

class GenerationService {
 public:
  // on_event sees every token of the request and then its end (finish != kNone, or error set).
  struct Callbacks {
    std::function<void(const TokenEvent& event)> on_event;
    std::function<void(const Status& error)> on_error;  // the request failed; no more events
  };

  GenerationService(Executor& executor, SchedulerOptions options = {});
  ~GenerationService();

  // Queues a request (refused at once when it can never fit); returns its id.
  StatusOr<uint64_t> submit(GenerationRequest request, Callbacks callbacks);
  // Ends a request; its callbacks see nothing more from it.
  void cancel(uint64_t id);

  // The executor's failure, while it is failed (then every submit is refused with it).
  Status health() const;
  // Times the executor was healed after a failure.
  int heals() const;
  size_t waiting() const;
  size_t running() const;
  KvStats kv_stats() const;  // the paged KV pool's (as of the last step)
  Executor& executor() { return ex_; }

 private:
  void loop();
  struct Pending {
    GenerationRequest request;
    Callbacks callbacks;
  };

  void heal_until_stopped(const Status& failure);

  Executor& ex_;
  SchedulerOptions options_;
  std::unique_ptr<Scheduler> scheduler_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Pending> incoming_;
  std::vector<uint64_t> cancels_;
  std::map<uint64_t, Callbacks> callbacks_;
  uint64_t next_id_ = 1;
  Status failed_;
  int heals_ = 0;
  size_t waiting_ = 0, running_ = 0;
  KvStats kv_stats_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace shoal
