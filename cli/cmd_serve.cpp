// shoal serve: the OpenAI-compatible HTTP server (docs/serving.md) over the ranks the cluster
// flags ask for (one process, --local-nodes, --nodes, mpirun).
#include <pthread.h>
#include <signal.h>

#include <condition_variable>
#include <csignal>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <mutex>
#include <thread>

#include "cli/cluster_flags.h"
#include "cli/commands.h"
#include "serve/server.h"

namespace shoal::cli {
namespace {

namespace fs = std::filesystem;

struct Options {
  std::string model, tokenizer, served_model_name, api_key_file;
  std::string host = "127.0.0.1";
  int port = 8000;
  int64_t max_seq_len = 0;
  int64_t slots = 64;
  int64_t max_batch_tokens = 512;
  double generation_timeout_s = 900;
  double read_timeout_s = 30;
  int io_threads = 2;
  ClusterFlags cluster;
};

// The model's name for clients: the folder's name ("DeepSeek-V3" for /models/DeepSeek-V3/).
std::string folder_name(const std::string& dir) {
  fs::path p = fs::absolute(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

bool loopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host == "[::1]" || host.rfind("127.", 0) == 0;
}

// SIGINT/SIGTERM: one thread waits for them from the start. Before the server is up they end
// the process at once (a long load can be interrupted); afterwards they stop it cleanly.
class Signals {
 public:
  Signals() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);  // every thread started from here on inherits it
    std::signal(SIGPIPE, SIG_IGN);
    thread_ = std::thread([this] {
      int sig = 0;
      sigwait(&set_, &sig);
      std::unique_lock<std::mutex> lock(mu_);
      if (exiting_) return;
      if (!serving_) {
        std::fprintf(stderr, "shoal serve: %s before the server was up; exiting\n", strsignal(sig));
        std::_Exit(128 + sig);
      }
      got_ = sig;
      cv_.notify_all();
    });
  }
  ~Signals() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!got_) {
        exiting_ = true;
        pthread_kill(thread_.native_handle(), SIGTERM);  // wakes the sigwait
      }
    }
    thread_.join();
  }
  void serving() {
    std::lock_guard<std::mutex> lock(mu_);
    serving_ = true;
  }
  int wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return got_ != 0; });
    return got_;
  }

 private:
  sigset_t set_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool serving_ = false, exiting_ = false;
  int got_ = 0;
};

int serve(const Options& o, bool host_given) {
  Signals signals;
  std::vector<std::string> keys;
  if (!o.api_key_file.empty()) {
    auto k = server::read_api_key_file(o.api_key_file);
    if (!k.ok()) return fail(k.status());
    keys = std::move(k).value();
  }
  const std::string host = host_given ? o.host : "127.0.0.1";
  if (!loopback(host) && keys.empty())
    std::fprintf(stderr, "shoal serve: warning: listening on %s without --api-key-file: anyone who reaches it can use it\n",
                 host.c_str());
  auto tok = Tokenizer::load(o.tokenizer.empty() ? o.model : o.tokenizer);
  if (!tok.ok()) return fail(tok.status().with_context("serve needs the tokenizer"));

  ClusterOptions co;
  co.model_dir = o.model;
  co.n_slots = o.slots;
  co.max_seq_len = o.max_seq_len;
  // Over TCP nodes the cluster heals: a lost node, restarted, is taken back without a restart
  // of the server (coordinator/healing_cluster.h). Other modes lose the whole job with a rank.
  auto cluster = ServingCluster::open(o.cluster, co);
  if (!cluster.ok()) return fail(cluster.status());
  Executor& ex = cluster->executor();
  auto shutdown = [&] { return cluster->shutdown(); };
  (*tok)->set_vocab_limit(ex.config().vocab_size);

  server::ServerOptions so;
  so.host = host;
  so.port = uint16_t(o.port);
  so.model_id = o.served_model_name.empty() ? folder_name(o.model) : o.served_model_name;
  so.api_keys = keys;
  so.generation_timeout = std::chrono::milliseconds(int64_t(o.generation_timeout_s * 1000));
  so.read_timeout = std::chrono::milliseconds(int64_t(o.read_timeout_s * 1000));
  so.io_threads = o.io_threads;
  so.scheduler.max_batch_tokens = o.max_batch_tokens;
  auto srv = server::Server::start(ex, **tok, so);
  if (!srv.ok()) {
    (void)shutdown();
    return fail(srv.status());
  }
  const std::string kv = ex.kv_blocks() > 0 ? ", a KV pool of " + std::to_string(ex.kv_blocks() * kKvBlockTokens) +
                                                  " positions (" + kv_dtype_name(ex.kv_dtype()) + ")"
                                            : "";
  std::fprintf(stderr, "shoal serve: model %s, %d rank(s), %lld sequences at once of up to %lld positions%s%s%s\n",
               so.model_id.c_str(), cluster->world_size(), (long long)ex.n_slots(), (long long)ex.max_seq_len(),
               kv.c_str(), keys.empty() ? "" : ", API keys required", cluster->heals() ? ", heals a lost node" : "");
  std::printf("shoal serve: listening on http://%s:%u\n", (*srv)->host().c_str(), unsigned((*srv)->port()));
  std::fflush(stdout);
  signals.serving();
  const int sig = signals.wait();
  std::fprintf(stderr, "shoal serve: %s: stopping\n", strsignal(sig));
  (*srv)->stop();
  srv->reset();
  if (Status s = shutdown(); !s.ok()) return fail(s);
  return 0;
}

}  // namespace

void add_serve(CLI::App& app, int& rc) {
  auto o = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand("serve", "Serve the model over an OpenAI-compatible HTTP API (docs/serving.md)");
  sub->add_option("--model", o->model, "Checkpoint folder (config.json, safetensors, tokenizer files)")->required();
  CLI::Option* host = sub->add_option("--host", o->host, "Address to listen on (default 127.0.0.1)");
  sub->add_option("--port", o->port, "Port to listen on; 0: any free one (printed)")->check(CLI::Range(0, 65535));
  sub->add_option("--api-key-file", o->api_key_file, "File of API keys, one per line: /v1/* then need 'Authorization: Bearer KEY'");
  sub->add_option("--max-seq-len", o->max_seq_len, "Context: positions per sequence (default: the model's, as far as the KV pool holds)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--slots", o->slots,
                  "Sequences generated at once (default 64); with the paged KV pool each holds only the blocks it uses")->check(CLI::Range(1, 4096));
  sub->add_option("--tokenizer", o->tokenizer, "Folder with tokenizer.json, or a GGUF (default: --model)");
  sub->add_option("--served-model-name", o->served_model_name, "The model's name in the API (default: the folder's name)");
  sub->add_option("--max-batch-tokens", o->max_batch_tokens, "Tokens per micro-batch: prefill chunks + decodes (default 512)")
      ->check(CLI::Range(1, 1 << 20));
  sub->add_option("--generation-timeout", o->generation_timeout_s,
                  "Seconds a request may go without a token before it fails (default 900)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--read-timeout", o->read_timeout_s,
                  "Seconds a client may take to send a request, and keep an idle connection open (default 30)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--io-threads", o->io_threads, "HTTP threads (default 2)")->check(CLI::Range(1, 64));
  add_cluster_flags(sub, o->cluster);
  o->cluster.paged_by_default = true;  // the KV pool (docs/serving.md)
  sub->callback([o, host, &rc] { rc = serve(*o, host->count() > 0); });
}

}  // namespace shoal::cli
