#include "serve/metrics.h"

#include <cstdio>
#include <cstdlib>

namespace shoal::server {
namespace {

// The shortest text that reads back as x ("0.025", not "0.025000000000000001").
std::string num(double x) {
  char buf[64];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, x);
    if (std::strtod(buf, nullptr) == x) break;
  }
  return buf;
}

void header(std::string& out, const std::string& name, const std::string& help, const char* type) {
  out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

void line(std::string& out, const std::string& name, const std::string& labels, double value) {
  out += name;
  if (!labels.empty()) out += "{" + labels + "}";
  out += " " + num(value) + "\n";
}

void gauge(std::string& out, const std::string& name, const std::string& help, double value) {
  header(out, name, help, "gauge");
  line(out, name, "", value);
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double x) {
  size_t i = 0;
  while (i < bounds_.size() && x > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += x;
  ++count_;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& help) const {
  header(out, name, help, "histogram");
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    line(out, name + "_bucket", "le=\"" + num(bounds_[i]) + "\"", double(cumulative));
  }
  line(out, name + "_bucket", "le=\"+Inf\"", double(count_));
  line(out, name + "_sum", "", sum_);
  line(out, name + "_count", "", double(count_));
}

Metrics::Metrics()
    : ttft_({0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}),
      itl_({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}),
      duration_({0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}) {}

void Metrics::request(const std::string& endpoint, int status) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[{endpoint, status}];
}

void Metrics::tokens(int64_t prompt, int64_t completion) {
  std::lock_guard<std::mutex> lock(mu_);
  prompt_tokens_ += uint64_t(prompt);
  completion_tokens_ += uint64_t(completion);
}

void Metrics::time_to_first_token(double s) {
  std::lock_guard<std::mutex> lock(mu_);
  ttft_.observe(s);
}

void Metrics::inter_token_latency(double s) {
  std::lock_guard<std::mutex> lock(mu_);
  itl_.observe(s);
}

void Metrics::request_duration(double s) {
  std::lock_guard<std::mutex> lock(mu_);
  duration_.observe(s);
}

void Metrics::client_disconnected() {
  std::lock_guard<std::mutex> lock(mu_);
  ++disconnects_;
}

void Metrics::finished(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  ++finished_[reason];
}

std::string Metrics::render(const Gauges& g) const {
  std::string out;
  std::lock_guard<std::mutex> lock(mu_);
  header(out, "shoal_http_requests_total", "HTTP requests answered, by endpoint and status code.", "counter");
  for (const auto& [key, n] : requests_)
    line(out, "shoal_http_requests_total", "endpoint=\"" + key.first + "\",status=\"" + std::to_string(key.second) + "\"",
         double(n));
  header(out, "shoal_generations_finished_total", "Generations ended, by finish reason.", "counter");
  for (const auto& [reason, n] : finished_) line(out, "shoal_generations_finished_total", "reason=\"" + reason + "\"", double(n));
  header(out, "shoal_prompt_tokens_total", "Prompt tokens of generation requests accepted.", "counter");
  line(out, "shoal_prompt_tokens_total", "", double(prompt_tokens_));
  header(out, "shoal_completion_tokens_total", "Tokens generated.", "counter");
  line(out, "shoal_completion_tokens_total", "", double(completion_tokens_));
  header(out, "shoal_client_disconnects_total", "Generations cancelled because the client went away.", "counter");
  line(out, "shoal_client_disconnects_total", "", double(disconnects_));
  ttft_.render(out, "shoal_time_to_first_token_seconds", "Seconds from a request's arrival to its first token.");
  itl_.render(out, "shoal_inter_token_latency_seconds", "Seconds between consecutive tokens of a request.");
  duration_.render(out, "shoal_request_duration_seconds", "Seconds from a generation request's arrival to its end.");
  gauge(out, "shoal_requests_waiting", "Requests queued for a KV slot.", double(g.waiting));
  gauge(out, "shoal_requests_running", "Requests holding a KV slot (prefilling or decoding).", double(g.running));
  gauge(out, "shoal_kv_slots_total", "KV cache slots (sequences at once).", double(g.slots_total));
  gauge(out, "shoal_kv_slots_in_use", "KV cache slots held by running requests.", double(g.slots_in_use));
  gauge(out, "shoal_kv_blocks_total", "Blocks of 64 positions in the paged KV pool (0: a fixed cache per slot).",
        double(g.kv_blocks));
  gauge(out, "shoal_kv_blocks_held", "KV blocks held by running requests.", double(g.kv_blocks_held));
  gauge(out, "shoal_kv_blocks_cached", "KV blocks that keep a prompt prefix for reuse (held or not).",
        double(g.kv_blocks_cached));
  header(out, "shoal_kv_prompt_tokens_total", "Prompt tokens of admitted requests, and those found in the prefix cache.",
         "counter");
  line(out, "shoal_kv_prompt_tokens_total", "kind=\"all\"", double(g.prompt_tokens_admitted));
  line(out, "shoal_kv_prompt_tokens_total", "kind=\"cached\"", double(g.prompt_tokens_cached));
  gauge(out, "shoal_kv_prefix_hit_ratio", "Share of admitted prompt tokens found in the prefix cache.",
        g.prompt_tokens_admitted ? double(g.prompt_tokens_cached) / double(g.prompt_tokens_admitted) : 0.0);
  header(out, "shoal_kv_preemptions_total", "Requests preempted because the KV pool ran out (computed again later).",
         "counter");
  line(out, "shoal_kv_preemptions_total", "", double(g.preemptions));
  gauge(out, "shoal_healthy", "1 while the executor works, 0 once a rank failed.", g.healthy ? 1 : 0);
  header(out, "shoal_rank_rss_bytes", "Resident memory of each rank's process (latest heartbeat).", "gauge");
  for (const auto& r : g.ranks) line(out, "shoal_rank_rss_bytes", "rank=\"" + std::to_string(r.rank) + "\"", double(r.rss_bytes));
  header(out, "shoal_rank_sent_bytes_total", "Bytes each rank sent since the session began, by traffic kind.", "counter");
  for (const auto& r : g.ranks) {
    line(out, "shoal_rank_sent_bytes_total", "rank=\"" + std::to_string(r.rank) + "\",kind=\"hidden\"", double(r.hidden_bytes));
    line(out, "shoal_rank_sent_bytes_total", "rank=\"" + std::to_string(r.rank) + "\",kind=\"expert\"", double(r.expert_bytes));
  }
  header(out, "shoal_rank_sent_messages_total", "Messages each rank sent since the session began, by traffic kind.",
         "counter");
  for (const auto& r : g.ranks) {
    line(out, "shoal_rank_sent_messages_total", "rank=\"" + std::to_string(r.rank) + "\",kind=\"hidden\"",
         double(r.hidden_messages));
    line(out, "shoal_rank_sent_messages_total", "rank=\"" + std::to_string(r.rank) + "\",kind=\"expert\"",
         double(r.expert_messages));
  }
  return out;
}

}  // namespace shoal::server
