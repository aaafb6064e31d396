// The server's Prometheus metrics (text exposition format 0.0.4): counters and histograms
// updated from any thread, gauges read when /metrics is scraped. docs/serving.md lists them.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace shoal::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double x);
  // "# TYPE name histogram" and its _bucket/_sum/_count lines.
  void render(std::string& out, const std::string& name, const std::string& help) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bound, not cumulative; the last is +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

// Values read at scrape time.
struct Gauges {
  int64_t waiting = 0, running = 0;
  int64_t slots_total = 0, slots_in_use = 0;
  bool healthy = true;
  // The paged KV pool (docs/serving.md): blocks in all, held by requests, cached for reuse
  // (held or not); prompt tokens admitted and found cached; preemptions.
  int64_t kv_blocks = 0, kv_blocks_held = 0, kv_blocks_cached = 0;
  int64_t prompt_tokens_admitted = 0, prompt_tokens_cached = 0, preemptions = 0;
  struct Rank {
    int rank = 0;
    int64_t rss_bytes = 0;
    int64_t hidden_bytes = 0, hidden_messages = 0;
    int64_t expert_bytes = 0, expert_messages = 0;
  };
  std::vector<Rank> ranks;
};

class Metrics {
 public:
  Metrics();
  void request(const std::string& endpoint, int status);
  void tokens(int64_t prompt, int64_t completion);
  void time_to_first_token(double seconds);
  void inter_token_latency(double seconds);
  void request_duration(double seconds);
  void client_disconnected();
  void finished(const std::string& reason);  // finish reasons: stop, length, cancelled, error
  std::string render(const Gauges& g) const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  std::map<std::string, uint64_t> finished_;
  uint64_t prompt_tokens_ = 0, completion_tokens_ = 0, disconnects_ = 0;
  Histogram ttft_, itl_, duration_;
};

}  // namespace shoal::server
