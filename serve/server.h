// `shoal serve`'s HTTP server (docs/serving.md): an OpenAI-compatible API over a
// GenerationService, with Boost.Beast on Asio. One acceptor and a few io threads; each
// connection is one coroutine on its own strand (keep-alive, size limits, read and write
// timeouts); token callbacks from the service thread are posted to the connection's strand and
// never block it. A client that goes away cancels its request at once.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "coordinator/executor.h"
#include "coordinator/scheduler.h"
#include "text/tokenizer/tokenizer.h"

namespace shoal::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8000;               // 0: any free port (port() says which)
  std::string model_id;               // the one name clients give as "model"
  std::vector<std::string> api_keys;  // empty: no authentication
  size_t max_body_bytes = 8u << 20;   // larger bodies: 413
  size_t max_header_bytes = 64u << 10;
  std::chrono::milliseconds read_timeout{std::chrono::seconds(30)};   // a whole request; keep-alive idle
  std::chrono::milliseconds write_timeout{std::chrono::seconds(60)};  // one write to a client
  // A request that gets no token (or end) for this long fails with 504 and is cancelled.
  std::chrono::milliseconds generation_timeout{std::chrono::minutes(15)};
  int io_threads = 2;
  SchedulerOptions scheduler;
};

class Server {
 public:
  // Starts a GenerationService over `executor` and listens. `executor` and `tok` must outlive
  // the server. When the executor is a Cluster, /health and /metrics report its ranks.
  static StatusOr<std::unique_ptr<Server>> start(Executor& executor, const Tokenizer& tok, ServerOptions options);
  ~Server();  // stop()

  const std::string& host() const;
  uint16_t port() const;
  // Stops accepting, drops every connection and request, joins the threads. Idempotent.
  void stop();

  struct Impl;

 private:
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// API keys, one per line; blank lines and lines starting with '#' are skipped. No key at all is
// an error (a file meant to protect the server must not silently leave it open).
StatusOr<std::vector<std::string>> read_api_key_file(const std::filesystem::path& file);

}  // namespace shoal::server
