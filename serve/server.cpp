#include "serve/server.h"

#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <deque>
#include <fstream>
#include <optional>
#include <thread>
#include <utility>  // before Asio: Boost 1.74's awaitable.hpp uses std::exchange

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "coordinator/cluster.h"
#include "coordinator/healing_cluster.h"
#include "coordinator/service.h"
#include "serve/metrics.h"
#include "serve/openai.h"

namespace shoal::server {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using Request = http::request<http::string_body>;

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// What the service thread hands a connection: token events and the end, touched only on the
// connection's strand (the callbacks post there). The timer is the coroutine's wake-up.
struct Feed {
  explicit Feed(const net::any_io_executor& ex) : timer(ex) {}
  net::steady_timer timer;
  std::deque<std::pair<TokenEvent, Clock::time_point>> events;
  std::optional<Status> error;
  bool client_gone = false;
  bool ended = false;  // the connection is done with this request
};

bool constant_time_equal(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

struct Server::Impl {
  Impl(Executor& e, const Tokenizer& t, ServerOptions o) : ex(e), tok(t), opt(std::move(o)), grammars(t) {}
  ~Impl() { stop(); }

  Executor& ex;
  const Tokenizer& tok;
  ServerOptions opt;
  OutputGrammars grammars;  // response_format and forced tool calls, compiled over tok's vocabulary
  // The cluster serving now (null: one process, or healing), for /health and /metrics.
  std::function<std::shared_ptr<Cluster>()> cluster_now;
  int32_t eos_id = -1;
  int64_t created = 0;
  Metrics metrics;
  // Declared before the io_context: stop() resets it, and the connections' coroutines, destroyed
  // with the io_context, still find it (empty) when they unwind.
  std::unique_ptr<GenerationService> service;
  net::io_context ioc;
  tcp::acceptor acceptor{ioc};
  std::vector<std::thread> threads;
  std::string host;
  uint16_t port = 0;
  bool stopped = false;

  Status listen();
  void stop();

  net::awaitable<void> accept_loop();
  net::awaitable<void> session(tcp::socket socket);
  net::awaitable<bool> handle(beast::tcp_stream& stream, const Request& req);
  // (Labels and content types are string_views: GCC 12 cannot keep a string literal bound to a
  // std::string parameter alive across a co_await.)
  net::awaitable<bool> generate(beast::tcp_stream& stream, const Request& req, Endpoint ep, std::string_view label);
  net::awaitable<bool> send(beast::tcp_stream& stream, const Request& req, int status, const std::string& body,
                            std::string_view label, std::string_view content_type = "application/json");
  net::awaitable<bool> send_error(beast::tcp_stream& stream, const Request& req, const ApiError& e,
                                  std::string_view label) {
    co_return co_await send(stream, req, e.status, dump(error_body(e)), label);
  }
  void watch_for_close(tcp::socket& socket, const std::shared_ptr<Feed>& feed);

  std::pair<int, json> health();
  // The names clients give as "model": the base, then each named LoRA adapter by id (an unnamed
  // adapter applies to every request under the base's name).
  std::vector<std::string> model_ids() const {
    std::vector<std::string> ids{opt.model_id};
    for (const std::string& a : ex.adapter_names())
      if (!a.empty()) ids.push_back(a);
    return ids;
  }
  Gauges gauges();
  bool authorized(const Request& req) const;
};

// ---- lifetime ----

Status Server::Impl::listen() {
  beast::error_code ec;
  tcp::resolver resolver(ioc);
  auto results = resolver.resolve(opt.host, std::to_string(opt.port), tcp::resolver::passive, ec);
  if (ec || results.empty())
    return Status(Code::kInvalidArgument, "--host " + opt.host + ": cannot resolve: " + ec.message());
  const tcp::endpoint at = results.begin()->endpoint();
  acceptor.open(at.protocol(), ec);
  if (!ec) acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(at, ec);
  if (!ec) acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec) return Status(Code::kUnavailable, "cannot listen on " + opt.host + ":" + std::to_string(opt.port) + ": " + ec.message());
  const tcp::endpoint bound = acceptor.local_endpoint(ec);
  port = bound.port();
  host = bound.address().is_v6() ? "[" + bound.address().to_string() + "]" : bound.address().to_string();
  return {};
}

void Server::Impl::stop() {
  if (stopped) return;
  stopped = true;
  ioc.stop();
  for (std::thread& t : threads) t.join();
  threads.clear();
  // No io thread runs now: the service goes (its thread joins); the connections' coroutines
  // and posted callbacks go with the io_context after it.
  service.reset();
}

StatusOr<std::unique_ptr<Server>> Server::start(Executor& executor, const Tokenizer& tok, ServerOptions options) {
  if (options.model_id.empty()) return invalid_argument("the served model needs a name");
  auto impl = std::make_unique<Impl>(executor, tok, std::move(options));
  if (auto* h = dynamic_cast<HealingCluster*>(&executor))
    impl->cluster_now = [h] { return h->current(); };
  else if (auto* c = dynamic_cast<Cluster*>(&executor))
    impl->cluster_now = [c] { return std::shared_ptr<Cluster>(std::shared_ptr<Cluster>(), c); };  // not owned
  impl->eos_id = tok.eos_id() >= 0 ? tok.eos_id() : int32_t(executor.config().eos_token_id);
  impl->created = int64_t(std::time(nullptr));
  SHOAL_RETURN_IF_ERROR(impl->listen());
  impl->service = std::make_unique<GenerationService>(executor, impl->opt.scheduler);
  Impl* p = impl.get();
  net::co_spawn(impl->ioc, p->accept_loop(), net::detached);
  for (int i = 0; i < std::max(1, impl->opt.io_threads); ++i)
    impl->threads.emplace_back([p] {
      for (;;) {
        try {
          p->ioc.run();
          return;
        } catch (const std::exception& e) {  // a bug in a handler: log it and keep serving
          std::fprintf(stderr, "shoal serve: error in a connection: %s\n", e.what());
        }
      }
    });
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() = default;
const std::string& Server::host() const { return impl_->host; }
uint16_t Server::port() const { return impl_->port; }
void Server::stop() { impl_->stop(); }

// ---- connections ----

net::awaitable<void> Server::Impl::accept_loop() {
  for (;;) {
    beast::error_code ec;
    tcp::socket socket = co_await acceptor.async_accept(net::any_io_executor(net::make_strand(ioc)),
                                                        net::redirect_error(net::use_awaitable, ec));
    if (ec) {
      if (ec == net::error::operation_aborted || !acceptor.is_open()) co_return;
      // Out of descriptors or the like: wait a little instead of spinning.
      net::steady_timer pause(co_await net::this_coro::executor, std::chrono::milliseconds(100));
      co_await pause.async_wait(net::redirect_error(net::use_awaitable, ec));
      continue;
    }
    socket.set_option(tcp::no_delay(true), ec);
    const net::any_io_executor where = socket.get_executor();
    net::co_spawn(where, session(std::move(socket)), [](std::exception_ptr e) {
      if (!e) return;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& x) {
        std::fprintf(stderr, "shoal serve: a connection failed: %s\n", x.what());
      }
    });
  }
}

net::awaitable<void> Server::Impl::session(tcp::socket socket) {
  beast::tcp_stream stream(std::move(socket));
  beast::flat_buffer buffer;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(uint32_t(opt.max_header_bytes));
    parser.body_limit(opt.max_body_bytes);
    beast::error_code ec;
    stream.expires_after(opt.read_timeout);  // idle keep-alive, headers and body together
    co_await http::async_read_header(stream, buffer, parser, net::redirect_error(net::use_awaitable, ec));
    Request dummy;
    dummy.version(11);
    dummy.keep_alive(false);
    if (!ec && parser.get()[http::field::expect] == "100-continue" && !parser.is_done()) {
      // curl asks before sending a large body; say yes rather than make it wait.
      if (parser.content_length() && *parser.content_length() > opt.max_body_bytes) {
        ec = http::error::body_limit;
      } else {
        http::response<http::empty_body> cont{http::status::continue_, 11};
        co_await http::async_write(stream, cont, net::redirect_error(net::use_awaitable, ec));
      }
    }
    if (!ec && !parser.is_done())
      co_await http::async_read(stream, buffer, parser, net::redirect_error(net::use_awaitable, ec));
    if (ec == http::error::end_of_stream || ec == net::error::eof || ec == beast::error::timeout ||
        ec == net::error::connection_reset || ec == net::error::operation_aborted)
      break;
    if (ec == http::error::body_limit) {
      ApiError e{413, "The request body is larger than the limit of " + std::to_string(opt.max_body_bytes) + " bytes.",
                 "invalid_request_error", "", "request_too_large"};
      co_await send_error(stream, dummy, e, "other");
      break;
    }
    if (ec == http::error::header_limit) {
      ApiError e{431, "The request headers are larger than the limit of " + std::to_string(opt.max_header_bytes) +
                          " bytes.",
                 "invalid_request_error", "", "headers_too_large"};
      co_await send_error(stream, dummy, e, "other");
      break;
    }
    if (ec) {
      if (ec.category() == http::make_error_code(http::error::bad_version).category())  // not HTTP
        co_await send_error(stream, dummy, bad_request("Malformed HTTP request: " + ec.message()), "other");
      break;
    }
    const Request req = parser.release();
    if (!co_await handle(stream, req)) break;
  }
  beast::error_code ec;
  stream.socket().shutdown(tcp::socket::shutdown_send, ec);
  stream.socket().close(ec);
}

net::awaitable<bool> Server::Impl::send(beast::tcp_stream& stream, const Request& req, int status,
                                        const std::string& body, std::string_view label,
                                        std::string_view content_type) {
  http::response<http::string_body> res{http::status(status), req.version() ? req.version() : 11};
  res.set(http::field::server, "shoal");
  res.set(http::field::content_type, std::string(content_type));
  if (status == 401) res.set(http::field::www_authenticate, "Bearer");
  // Unavailable while the cluster heals (or for good, without --nodes): when to ask again.
  if (status == 503 && service && !service->health().ok() && ex.can_heal())
    res.set(http::field::retry_after, "5");
  res.keep_alive(req.keep_alive() && status != 413 && status != 431);
  res.body() = body;
  res.prepare_payload();
  metrics.request(std::string(label), status);
  stream.expires_after(opt.write_timeout);
  beast::error_code ec;
  co_await http::async_write(stream, res, net::redirect_error(net::use_awaitable, ec));
  co_return !ec && res.keep_alive();
}

bool Server::Impl::authorized(const Request& req) const {
  if (opt.api_keys.empty()) return true;
  const auto it = req.find(http::field::authorization);
  if (it == req.end()) return false;
  const std::string value(it->value());
  constexpr std::string_view kBearer = "Bearer ";
  if (value.size() <= kBearer.size() || !std::equal(kBearer.begin(), kBearer.end(), value.begin(), [](char a, char b) {
        return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
      }))
    return false;
  const std::string key = value.substr(kBearer.size());
  bool ok = false;
  for (const std::string& k : opt.api_keys) ok |= constant_time_equal(k, key);
  return ok;
}

std::pair<int, json> Server::Impl::health() {
  const Status h = service->health();
  if (!h.ok()) {
    ApiError e{503, h.to_string(), "server_error", "", "service_unavailable"};
    json j = error_body(e);
    j["status"] = ex.can_heal() ? "healing" : "unavailable";
    j["model"] = opt.model_id;
    j["heals"] = service->heals();
    return {503, j};
  }
  const int64_t running = int64_t(service->running());
  json j = {{"status", "ok"},
            {"model", opt.model_id},
            {"max_seq_len", ex.max_seq_len()},
            {"slots", {{"total", ex.n_slots()}, {"in_use", running}}},
            {"waiting", int64_t(service->waiting())},
            {"running", running},
            {"heals", service->heals()}};
  if (const KvStats kv = service->kv_stats(); kv.blocks > 0)
    j["kv_pool"] = {{"block_positions", kKvBlockTokens}, {"blocks", kv.blocks},   {"held", kv.held},
                    {"cached", kv.cached},                {"available", kv.available}, {"preemptions", kv.preemptions},
                    {"dtype", kv_dtype_name(ex.kv_dtype())}};
  const std::shared_ptr<Cluster> cluster = cluster_now ? cluster_now() : nullptr;
  if (!cluster) {
    j["ranks"] = 1;
    return {200, j};
  }
  const cluster::Plan& plan = cluster->plan();
  j["ranks"] = plan.world_size;
  json per_rank = json::array();
  for (int r = 0; r < plan.world_size; ++r) {
    int64_t experts = 0;
    for (const auto& layer : plan.experts)
      for (int owner : layer) experts += owner == r;
    per_rank.push_back({{"rank", r},
                        {"embed", plan.embed == r},
                        {"head", plan.head == r},
                        {"attn_layers", plan.attn_layers(r)},
                        {"experts", experts}});
  }
  j["plan"] = {{"world_size", plan.world_size}, {"embed", plan.embed}, {"head", plan.head}, {"ranks", per_rank}};
  json loaded = json::array();
  const auto& l = cluster->loaded();
  for (size_t r = 0; r < l.size(); ++r)
    loaded.push_back({{"rank", r},
                      {"host", l[r].host()},
                      {"weight_bytes", l[r].weight_bytes()},
                      {"mapped_bytes", l[r].mapped_bytes()},
                      {"kv_bytes", l[r].kv_bytes()},
                      {"rss_bytes", l[r].rss_bytes()},
                      {"memory_capacity_bytes", l[r].memory_capacity_bytes()}});
  j["loaded"] = loaded;
  json stats = json::array();
  const auto beats = cluster->rank_stats();
  for (size_t r = 0; r < beats.size(); ++r)
    stats.push_back({{"rank", r},
                     {"rss_bytes", beats[r].rss_bytes()},
                     {"hidden_bytes_sent", beats[r].stats().hidden_bytes()},
                     {"expert_bytes_sent", beats[r].stats().expert_bytes()}});
  j["rank_stats"] = stats;
  return {200, j};
}

Gauges Server::Impl::gauges() {
  Gauges g;
  g.waiting = int64_t(service->waiting());
  g.running = int64_t(service->running());
  g.slots_total = ex.n_slots();
  g.slots_in_use = g.running;
  g.healthy = service->health().ok();
  const KvStats kv = service->kv_stats();
  g.kv_blocks = kv.blocks;
  g.kv_blocks_held = kv.held;
  g.kv_blocks_cached = kv.cached;
  g.prompt_tokens_admitted = kv.prompt_tokens;
  g.prompt_tokens_cached = kv.cached_prompt_tokens;
  g.preemptions = kv.preemptions;
  if (const std::shared_ptr<Cluster> cluster = cluster_now ? cluster_now() : nullptr) {
    const auto beats = cluster->rank_stats();
    for (size_t r = 0; r < beats.size(); ++r) {
      Gauges::Rank rank;
      rank.rank = int(r);
      rank.rss_bytes = beats[r].rss_bytes();
      rank.hidden_bytes = beats[r].stats().hidden_bytes();
      rank.hidden_messages = beats[r].stats().hidden_messages();
      rank.expert_bytes = beats[r].stats().expert_bytes();
      rank.expert_messages = beats[r].stats().expert_messages();
      g.ranks.push_back(rank);
    }
  }
  return g;
}

net::awaitable<bool> Server::Impl::handle(beast::tcp_stream& stream, const Request& req) {
  std::string target(req.target());
  if (const size_t q = target.find('?'); q != std::string::npos) target.resize(q);
  const bool get = req.method() == http::verb::get;
  const bool post = req.method() == http::verb::post;
  auto wrong_method = [&](const char* allowed) {
    ApiError e{405, "Method " + std::string(req.method_string()) + " is not allowed on " + target + " (use " + allowed + ").",
               "invalid_request_error", "", "method_not_allowed"};
    return e;
  };

  if (target == "/health") {
    if (!get) co_return co_await send_error(stream, req, wrong_method("GET"), "/health");
    auto [status, body] = health();
    co_return co_await send(stream, req, status, dump(body), "/health");
  }
  if (target == "/metrics") {
    if (!get) co_return co_await send_error(stream, req, wrong_method("GET"), "/metrics");
    co_return co_await send(stream, req, 200, metrics.render(gauges()), "/metrics", "text/plain; version=0.0.4");
  }
  const bool v1 = target.rfind("/v1/", 0) == 0;
  const std::string label = target == "/v1/chat/completions" || target == "/v1/completions" || target == "/v1/models"
                                ? target
                                : (target.rfind("/v1/models/", 0) == 0 ? "/v1/models/{model}" : "other");
  if (v1 && !authorized(req)) {
    ApiError e{401,
               req.find(http::field::authorization) == req.end()
                   ? "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'."
                   : "Incorrect API key provided.",
               "invalid_request_error", "", "invalid_api_key"};
    co_return co_await send_error(stream, req, e, label);
  }
  if (target == "/v1/chat/completions" || target == "/v1/completions") {
    if (!post) co_return co_await send_error(stream, req, wrong_method("POST"), label);
    co_return co_await generate(stream, req, target == "/v1/chat/completions" ? Endpoint::kChat : Endpoint::kCompletions,
                                label);
  }
  // The base model, then each LoRA adapter as vLLM lists them (its parent: the base).
  const std::vector<std::string> ids = model_ids();
  auto model = [&](size_t i) {
    json m = {{"id", ids[i]}, {"object", "model"}, {"created", created}, {"owned_by", "shoal"},
              {"max_model_len", ex.max_seq_len()}};
    m["root"] = ids[i];
    m["parent"] = i == 0 ? json(nullptr) : json(ids[0]);
    return m;
  };
  if (target == "/v1/models") {
    if (!get) co_return co_await send_error(stream, req, wrong_method("GET"), label);
    json list = json::object();
    list["object"] = "list";
    list["data"] = json::array();
    for (size_t i = 0; i < ids.size(); ++i) list["data"].push_back(model(i));
    const std::string text = dump(list);
    co_return co_await send(stream, req, 200, text, label);
  }
  if (target.rfind("/v1/models/", 0) == 0) {
    if (!get) co_return co_await send_error(stream, req, wrong_method("GET"), label);
    const auto it = std::find(ids.begin(), ids.end(), target.substr(std::strlen("/v1/models/")));
    if (it != ids.end()) co_return co_await send(stream, req, 200, dump(model(size_t(it - ids.begin()))), label);
    ApiError e{404, "The model `" + target.substr(std::strlen("/v1/models/")) + "` does not exist.",
               "invalid_request_error", "model", "model_not_found"};
    co_return co_await send_error(stream, req, e, label);
  }
  ApiError e{404, "Unknown path " + target + ".", "invalid_request_error", "", "not_found"};
  co_return co_await send_error(stream, req, e, "other");
}

// Watches the request's socket while it generates: a client that closes (EOF or reset) is
// gone, and its request is cancelled at once, even between tokens. Bytes from the client (a
// pipelined request) end the watch: a failed write still tells.
void Server::Impl::watch_for_close(tcp::socket& socket, const std::shared_ptr<Feed>& feed) {
  socket.async_wait(tcp::socket::wait_read, [this, &socket, feed](beast::error_code ec) {
    if (ec || feed->ended) return;  // cancelled: the request is over (the socket may be gone)
    char c;
    const ssize_t n = ::recv(socket.native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      watch_for_close(socket, feed);
      return;
    }
    if (n > 0) return;
    feed->client_gone = true;
    feed->timer.cancel();
  });
}

net::awaitable<bool> Server::Impl::generate(beast::tcp_stream& stream, const Request& req, Endpoint ep,
                                            std::string_view label) {
  const Clock::time_point t0 = Clock::now();
  CompletionRequest cr;
  if (auto e = parse_request(req.body(), ep, model_ids(), cr)) co_return co_await send_error(stream, req, *e, label);
  Prepared p;
  if (auto e = prepare_request(cr, tok, ex.max_seq_len(), ex.config().vocab_size, eos_id, p, &grammars))
    co_return co_await send_error(stream, req, *e, label);
  const bool chat = ep == Endpoint::kChat;
  // One answer per choice (n), each its own request in the scheduler; choices after the first
  // share the first one's prompt in the cache and draw from seeds seed + index.
  struct Choice {
    uint64_t id = 0;
    Completion answer;
    TextStream::Delta total;
    std::string finish;
  };
  std::vector<Choice> choices;
  for (int64_t i = 0; i < cr.n; ++i) choices.push_back({0, Completion(tok, p, cr), {}, {}});

  const net::any_io_executor strand = co_await net::this_coro::executor;
  // Owned by this coroutine; the service's callbacks only reach it while it is alive.
  std::shared_ptr<Feed> feed(new Feed(strand));
  const std::weak_ptr<Feed> weak = feed;
  auto callbacks = [&] {
    GenerationService::Callbacks callbacks;
    // On the service thread: never block there, only post to this connection's strand.
    callbacks.on_event = [weak, strand](const TokenEvent& e) {
      net::post(strand, [weak, e, at = Clock::now()] {
        if (auto f = weak.lock()) {
          f->events.emplace_back(e, at);
          f->timer.cancel();
        }
      });
    };
    callbacks.on_error = [weak, strand](const Status& s) {
      net::post(strand, [weak, s] {
        if (auto f = weak.lock()) {
          f->error = s;
          f->timer.cancel();
        }
      });
    };
    return callbacks;
  };
  // No seed given: one of our own, so the draw is still a function of the request alone.
  if (!cr.sampling.seed) p.generation.seed = random_u64();
  // However this coroutine ends (error, disconnect, shutdown), its requests end with it.
  struct Release {
    Impl* impl;
    std::shared_ptr<Feed> feed;
    std::vector<uint64_t> ids;
    bool finished = false;
    ~Release() {
      feed->ended = true;
      if (!finished && impl->service)
        for (uint64_t id : ids) impl->service->cancel(id);
    }
  } release{this, feed, {}};
  for (size_t i = 0; i < choices.size(); ++i) {
    GenerationRequest g = p.generation;
    if (i > 0) {
      g.shares_prompt_of = choices[0].id;
      if (g.sampling && g.sampling->seed) g.sampling->seed = *g.sampling->seed + i;
      g.seed = p.generation.seed + i;
      if (g.constraint) g.constraint = g.constraint->fresh();
    }
    auto submitted = service->submit(std::move(g), callbacks());
    if (!submitted.ok()) {
      const Status& s = submitted.status();
      ApiError e = s.code() == Code::kResourceExhausted || s.code() == Code::kInvalidArgument
                       ? bad_request(s.message(), "max_tokens", "context_length_exceeded")
                       : ApiError{503, s.to_string(), "server_error", "", "service_unavailable"};
      metrics.finished("error");
      co_return co_await send_error(stream, req, e, label);  // ~Release cancels the choices sent
    }
    choices[i].id = *submitted;
    release.ids.push_back(*submitted);
  }
  watch_for_close(stream.socket(), feed);

  const std::string id = new_response_id(ep);
  const int64_t created_at = int64_t(std::time(nullptr));
  const bool streaming = cr.stream;
  const bool chunked = req.version() >= 11;
  std::optional<http::response<http::empty_body>> head;
  std::optional<http::response_serializer<http::empty_body>> serializer;
  std::string out;  // SSE events not yet written
  auto event = [&](const json& j) { out += "data: " + dump(j) + "\n\n"; };
  beast::error_code ec;
  bool gone = false;

  // Writes `out` (as one chunk); false when the client is gone.
  auto flush = [&]() -> net::awaitable<bool> {
    if (out.empty()) co_return true;
    stream.expires_after(opt.write_timeout);
    beast::error_code wec;
    if (chunked)
      co_await net::async_write(stream, http::make_chunk(net::buffer(out)), net::redirect_error(net::use_awaitable, wec));
    else
      co_await net::async_write(stream, net::buffer(out), net::redirect_error(net::use_awaitable, wec));
    out.clear();
    co_return !wec;
  };

  auto chunk = [&](size_t index, const json& delta, const std::string& finish, json logprobs) {
    json c = stream_chunk(ep, id, created_at, cr.model, delta, finish, cr.include_usage, std::move(logprobs));
    c["choices"][0]["index"] = index;
    event(c);
  };
  if (streaming) {
    head.emplace(http::status::ok, req.version());
    head->set(http::field::server, "shoal");
    head->set(http::field::content_type, "text/event-stream");
    head->set(http::field::cache_control, "no-cache");
    head->keep_alive(chunked && req.keep_alive());
    if (chunked) head->chunked(true);
    serializer.emplace(*head);
    stream.expires_after(opt.write_timeout);
    co_await http::async_write_header(stream, *serializer, net::redirect_error(net::use_awaitable, ec));
    gone = bool(ec);
    if (chat)
      for (size_t i = 0; i < choices.size(); ++i) chunk(i, {{"role", "assistant"}, {"content", ""}}, "", nullptr);
  }

  // A stream's logprobs ride on the next chunk of that choice that carries text (or on its last).
  auto emit = [&](size_t i, const TextStream::Delta& d) {
    Choice& c = choices[i];
    if (!streaming) {
      c.total.append(d);
      return;
    }
    if (!d.reasoning.empty())
      chunk(i, {{"reasoning_content", d.reasoning}}, "", d.content.empty() ? c.answer.take_logprobs() : json(nullptr));
    if (!d.content.empty())
      chunk(i, {{"content", d.content}}, "", d.tool_calls.empty() ? c.answer.take_logprobs() : json(nullptr));
    if (!d.tool_calls.empty()) chunk(i, {{"tool_calls", tool_calls_json(d.tool_calls, true)}}, "", c.answer.take_logprobs());
  };
  auto finished = [&] {
    return std::all_of(choices.begin(), choices.end(), [](const Choice& c) { return !c.finish.empty(); });
  };

  std::optional<ApiError> failure;
  std::optional<Clock::time_point> last_token;
  while (!gone) {
    while (!feed->events.empty() && !finished()) {
      const auto [e, at] = feed->events.front();
      feed->events.pop_front();
      const auto c = std::find_if(choices.begin(), choices.end(), [&](const Choice& x) { return x.id == e.request; });
      if (c == choices.end() || !c->finish.empty()) continue;
      if (e.token >= 0) {
        if (!last_token) metrics.time_to_first_token(seconds_between(t0, at));
        else metrics.inter_token_latency(seconds_between(*last_token, at));
        last_token = at;
      }
      const size_t index = size_t(c - choices.begin());
      emit(index, c->answer.push(e));
      c->finish = c->answer.finish();
      if (c->answer.stopped_by_string()) service->cancel(c->id);  // a stop string: this answer ends here
      if (e.finish == FinishReason::kCancelled) c->finish = "stop";
      if (streaming && !c->finish.empty())
        chunk(index, json::object(), c->finish, c->answer.has_logprobs() ? c->answer.take_logprobs() : json(nullptr));
    }
    if (!finished() && feed->error)
      failure = ApiError{503, "generation failed: " + feed->error->to_string(), "server_error", "", "service_unavailable"};
    if (!finished() && feed->client_gone) gone = true;
    if (streaming && !gone && !co_await flush()) gone = true;
    if (gone || finished() || failure) break;
    if (feed->events.empty() && !feed->error && !feed->client_gone) {
      feed->timer.expires_after(opt.generation_timeout);
      co_await feed->timer.async_wait(net::redirect_error(net::use_awaitable, ec));
      if (!ec && feed->events.empty() && !feed->error && !feed->client_gone)
        failure = ApiError{504,
                           "no token for " + std::to_string(opt.generation_timeout.count() / 1000) +
                               " s: the request was cancelled",
                           "server_error", "", "timeout"};
    }
  }
  feed->ended = true;
  {
    beast::error_code cec;
    stream.socket().cancel(cec);  // the watch
  }
  release.finished = finished() || (feed->error.has_value() && failure);
  // Usage: the prompt once, every choice's completion tokens.
  Usage usage;
  usage.prompt_tokens = choices[0].answer.usage().prompt_tokens;
  usage.cached_tokens = choices[0].answer.usage().cached_tokens;
  for (const Choice& c : choices) usage.completion_tokens += c.answer.usage().completion_tokens;
  metrics.tokens(usage.prompt_tokens, usage.completion_tokens);
  metrics.request_duration(seconds_between(t0, Clock::now()));

  if (gone) {
    metrics.client_disconnected();
    metrics.finished("cancelled");
    metrics.request(std::string(label), 499);  // nginx's "client closed request"
    co_return false;              // ~Release cancels the requests
  }
  if (failure) {
    metrics.finished("error");
    if (!streaming) co_return co_await send_error(stream, req, *failure, label);
    event(error_body(*failure));
  } else {
    metrics.finished(choices[0].finish);  // per request: the first choice's reason
    if (!streaming) {
      json body;
      for (size_t i = 0; i < choices.size(); ++i) {
        json one = full_response(ep, id, created_at, cr.model, choices[i].total, p.reasoning, choices[i].finish, usage,
                                 choices[i].answer.take_logprobs());
        one["choices"][0]["index"] = i;
        if (i == 0) body = std::move(one);
        else body["choices"].push_back(std::move(one["choices"][0]));
      }
      co_return co_await send(stream, req, 200, dump(body), label);
    }
    if (cr.include_usage) event(usage_chunk(ep, id, created_at, cr.model, usage));
  }
  out += "data: [DONE]\n\n";
  metrics.request(std::string(label), 200);
  if (!co_await flush()) co_return false;
  if (chunked) {
    stream.expires_after(opt.write_timeout);
    co_await net::async_write(stream, http::make_chunk_last(), net::redirect_error(net::use_awaitable, ec));
    if (ec) co_return false;
  }
  co_return head->keep_alive();
}

StatusOr<std::vector<std::string>> read_api_key_file(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) return not_found("--api-key-file " + file.string() + ": cannot read it");
  std::vector<std::string> keys;
  std::string line;
  while (std::getline(in, line)) {
    const size_t a = line.find_first_not_of(" \t\r");
    if (a == std::string::npos || line[a] == '#') continue;
    const size_t b = line.find_last_not_of(" \t\r");
    keys.push_back(line.substr(a, b - a + 1));
  }
  if (keys.empty()) return invalid_argument("--api-key-file " + file.string() + " holds no key (one key per line)");
  return keys;
}

}  // namespace shoal::server
