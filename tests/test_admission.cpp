// TCP admission (comm/tcp/admission.h): a coordinator and `shoal node` listeners as threads of
// this process on 127.0.0.1 with ephemeral ports. A world that forms and really carries
// messages between every pair of ranks; every refusal (token, build id, protocol version)
// named on both sides; garbage, silence and missing listeners bounded and named; the node's
// listener serving the next coordinator after each failure; token files.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <latch>
#include <optional>
#include <random>
#include <thread>

#include "comm/tcp/admission.h"

namespace shoal::comm {
namespace {

using namespace std::chrono_literals;
using TransportOr = StatusOr<std::unique_ptr<Transport>>;

// Generous but bounded: a loaded 2-core VM.
constexpr std::chrono::milliseconds kTimeout = 20s;

struct Side {
  std::string token = "cluster-secret-4f1e";
  AdmissionInfo info{7, "abc"};
};

bool has(const Status& s, const std::string& text) { return s.message().find(text) != std::string::npos; }
std::string node_name(int i, uint16_t port) { return "node " + std::to_string(i) + " (127.0.0.1:" + std::to_string(port) + ")"; }
long ms_since(Clock::time_point start) {
  return long(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count());
}

std::vector<NodeListener> bind_nodes(int n) {
  std::vector<NodeListener> listeners;
  for (int i = 0; i < n; ++i) {
    StatusOr<NodeListener> l = NodeListener::bind("127.0.0.1", 0);
    REQUIRE(l.ok());
    listeners.push_back(std::move(*l));
  }
  return listeners;
}

std::vector<PeerAddress> addresses(const std::vector<NodeListener>& listeners) {
  std::vector<PeerAddress> peers;
  for (const NodeListener& l : listeners) peers.push_back({"127.0.0.1", l.port()});
  return peers;
}

struct Outcome {
  std::optional<TransportOr> coordinator;
  std::vector<std::optional<TransportOr>> nodes;
};

// Every node accepts once (as a thread) while this thread runs the coordinator.
Outcome admit(std::vector<NodeListener>& listeners, const std::vector<Side>& node_sides, const Side& coordinator,
              std::chrono::milliseconds coordinator_timeout = kTimeout,
              std::chrono::milliseconds handshake_timeout = 5s) {
  Outcome out;
  out.nodes.resize(listeners.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < listeners.size(); ++i) {
    threads.emplace_back([&, i] {
      out.nodes[i].emplace(listeners[i].accept_coordinator(node_sides[i].token, node_sides[i].info,
                                                           deadline_after(kTimeout), handshake_timeout));
    });
  }
  out.coordinator.emplace(connect_nodes(addresses(listeners), coordinator.token, coordinator.info,
                                        deadline_after(coordinator_timeout)));
  for (std::thread& t : threads) t.join();
  return out;
}

// Every rank sends a distinct message to every rank (itself included) and checks what it gets.
Status exchange_all(Transport& t) {
  const Deadline deadline = deadline_after(kTimeout);
  const auto text = [](int from, int to) { return "from rank " + std::to_string(from) + " to rank " + std::to_string(to); };
  for (int dst = 0; dst < t.size(); ++dst) SHOAL_RETURN_IF_ERROR(t.send(dst, 5, as_bytes_of(text(t.rank(), dst)), deadline));
  for (int src = 0; src < t.size(); ++src) {
    StatusOr<Message> m = t.recv(src, 5, deadline);
    if (!m.ok()) return m.status();
    const std::string got(reinterpret_cast<const char*>(m->payload.data()), m->payload.size());
    if (got != text(src, t.rank())) return internal_error("rank " + std::to_string(t.rank()) + " got '" + got + "'");
  }
  return {};
}

// Runs exchange_all on every rank at once; each transport is closed only when all are done.
void check_world(Outcome& out) {
  REQUIRE(out.coordinator.has_value());
  INFO("coordinator: " << out.coordinator->status().to_string());
  REQUIRE(out.coordinator->ok());
  std::vector<std::unique_ptr<Transport>> world;
  world.push_back(std::move(**out.coordinator));
  for (size_t i = 0; i < out.nodes.size(); ++i) {
    INFO("node " << i + 1 << ": " << out.nodes[i]->status().to_string());
    REQUIRE(out.nodes[i]->ok());
    world.push_back(std::move(**out.nodes[i]));
  }
  for (size_t r = 0; r < world.size(); ++r) {
    CHECK(world[r]->rank() == int(r));
    CHECK(world[r]->size() == int(world.size()));
  }
  std::vector<Status> results(world.size());
  std::latch done(ptrdiff_t(world.size()));
  std::vector<std::thread> threads;
  for (size_t r = 0; r < world.size(); ++r) {
    threads.emplace_back([&, r] {
      results[r] = exchange_all(*world[r]);
      done.arrive_and_wait();
      world[r].reset();
    });
  }
  for (std::thread& t : threads) t.join();
  for (size_t r = 0; r < results.size(); ++r) {
    INFO("rank " << r << ": " << results[r].to_string());
    CHECK(results[r].ok());
  }
}

// ---- raw sockets, to play a misbehaving peer ----------------------------------------------

struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

void set_receive_timeout(int fd, std::chrono::milliseconds timeout) {
  timeval tv{};
  tv.tv_sec = long(timeout.count() / 1000);
  tv.tv_usec = long(timeout.count() % 1000) * 1000;
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

sockaddr_in loopback(uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

int connect_raw(uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  const sockaddr_in a = loopback(port);
  REQUIRE(::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0);
  set_receive_timeout(fd, 5s);
  return fd;
}

// A listening socket that accepts nothing by itself.
int listen_raw(uint16_t& port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a = loopback(0);
  REQUIRE(::bind(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(fd, 8) == 0);
  socklen_t len = sizeof a;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  port = ntohs(a.sin_port);
  set_receive_timeout(fd, 5s);
  return fd;
}

void send_raw(int fd, const std::string& bytes) { (void)::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL); }

// Everything until EOF, an error (reset) or the receive timeout.
std::string read_rest(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return out;
    out.append(buf, size_t(n));
  }
}

bool read_exact(int fd, std::string& out, size_t n) {
  out.resize(n);
  for (size_t got = 0; got < n;) {
    const ssize_t k = ::recv(fd, out.data() + got, n - got, 0);
    if (k <= 0) return false;
    got += size_t(k);
  }
  return true;
}

template <typename T>
std::string le(T value) {
  std::string s(sizeof value, '\0');
  std::memcpy(s.data(), &value, sizeof value);
  return s;
}
std::string frame(const std::string& body) { return le(uint32_t(body.size())) + body; }
const std::string kMagic = le(uint32_t{0x44414853});  // "SHAD"

// ---- the world forms ----------------------------------------------------------------------

TEST_CASE("admission: three nodes and a coordinator form one world that carries messages", "[admission]") {
  std::vector<NodeListener> listeners = bind_nodes(3);
  const auto start = Clock::now();
  Outcome out = admit(listeners, {Side{}, Side{}, Side{}}, Side{});
  INFO("admission took " << ms_since(start) << " ms");
  check_world(out);
  CHECK(ms_since(start) < 15000);
}

// ---- refusals -----------------------------------------------------------------------------

TEST_CASE("admission: a wrong token is refused on both sides, then the node admits the right one", "[admission]") {
  std::vector<NodeListener> listeners = bind_nodes(1);
  const std::string node1 = node_name(1, listeners[0].port());
  Side wrong;
  wrong.token = "not-the-secret-99";
  Outcome out = admit(listeners, {Side{}}, wrong);

  const Status& c = out.coordinator->status();
  const Status& n = out.nodes[0]->status();
  INFO("coordinator: " << c.to_string() << "\nnode: " << n.to_string());
  CHECK(c.code() == Code::kInvalidArgument);
  CHECK(has(c, node1 + ": refused: wrong cluster token"));
  CHECK(n.code() == Code::kInvalidArgument);
  CHECK(has(n, "refused coordinator 127.0.0.1:"));
  CHECK(has(n, "wrong cluster token"));
  for (const Status* s : {&c, &n}) {  // the tokens never show
    CHECK(!has(*s, Side{}.token));
    CHECK(!has(*s, wrong.token));
  }

  Outcome again = admit(listeners, {Side{}}, Side{});
  check_world(again);
}

TEST_CASE("admission: another build id is refused naming both ids", "[admission]") {
  std::vector<NodeListener> listeners = bind_nodes(1);
  Side node;
  node.info.build_id = "def";
  Outcome out = admit(listeners, {node}, Side{});
  const Status& c = out.coordinator->status();
  const Status& n = out.nodes[0]->status();
  INFO("coordinator: " << c.to_string() << "\nnode: " << n.to_string());
  CHECK(c.code() == Code::kInvalidArgument);
  CHECK(has(c, node_name(1, listeners[0].port()) + ": refused: build id abc on the coordinator, def on the node"));
  CHECK(n.code() == Code::kInvalidArgument);
  CHECK(has(n, "build id abc on the coordinator, def on the node"));
  CHECK(has(n, "coordinator 127.0.0.1:"));
}

TEST_CASE("admission: another protocol version is refused naming both versions", "[admission]") {
  std::vector<NodeListener> listeners = bind_nodes(1);
  Side node, coordinator;
  node.info.protocol_version = 1;
  coordinator.info.protocol_version = 2;
  Outcome out = admit(listeners, {node}, coordinator);
  const Status& c = out.coordinator->status();
  const Status& n = out.nodes[0]->status();
  INFO("coordinator: " << c.to_string() << "\nnode: " << n.to_string());
  CHECK(c.code() == Code::kUnimplemented);
  CHECK(has(c, node_name(1, listeners[0].port()) + ": refused: protocol version 2 on the coordinator, 1 on the node"));
  CHECK(n.code() == Code::kUnimplemented);
  CHECK(has(n, "protocol version 2 on the coordinator, 1 on the node"));
}

TEST_CASE("admission: one refusing node aborts the others, which say why", "[admission]") {
  std::vector<NodeListener> listeners = bind_nodes(3);
  Side odd;
  odd.info.build_id = "zzz";
  const auto start = Clock::now();
  Outcome out = admit(listeners, {Side{}, odd, Side{}}, Side{});
  CHECK(ms_since(start) < 5000);
  const Status& c = out.coordinator->status();
  INFO("coordinator: " << c.to_string());
  CHECK(has(c, node_name(2, listeners[1].port()) + ": refused: build id abc on the coordinator, zzz on the node"));
  for (size_t i : {size_t{0}, size_t{2}}) {
    const Status& n = out.nodes[i]->status();
    INFO("node " << i + 1 << ": " << n.to_string());
    CHECK(n.code() == Code::kUnavailable);
    CHECK(has(n, "coordinator 127.0.0.1:"));
  }
  Outcome again = admit(listeners, {Side{}, Side{}, Side{}}, Side{});
  check_world(again);
}

// ---- garbage and silence ------------------------------------------------------------------

// The node calls accept_coordinator again after each failure, as `shoal node` does, until one
// succeeds; the clients queue up in the listen backlog meanwhile.
struct ServingNode {
  NodeListener listener;
  std::vector<Status> failures;
  std::optional<TransportOr> admitted;
  std::thread thread;

  ServingNode(NodeListener l, std::chrono::milliseconds handshake_timeout) : listener(std::move(l)) {
    thread = std::thread([this, handshake_timeout] {
      const Deadline give_up = deadline_after(kTimeout);
      while (Clock::now() < give_up) {
        TransportOr t = listener.accept_coordinator(Side{}.token, Side{}.info, give_up, handshake_timeout);
        if (t.ok()) {
          admitted.emplace(std::move(t));
          return;
        }
        failures.push_back(t.status());
      }
    });
  }
};

TEST_CASE("admission: garbage clients are refused and the node keeps serving", "[admission]") {
  std::vector<NodeListener> listeners = bind_nodes(1);
  const uint16_t port = listeners[0].port();

  std::mt19937 rng(12345);
  std::string random(1000, '\0');
  for (char& c : random) c = char(rng());
  const std::vector<std::pair<const char*, std::string>> garbage = {
      {"a huge length", le(uint32_t{0xffffffffu}) + "xyz"},
      {"a zero length", le(uint32_t{0})},
      {"a frame with a bad magic", frame(std::string(64, 'G'))},
      {"an unknown type", frame(kMagic + "\x09" + "abc")},
      {"a truncated coordinator hello", frame(kMagic + "\x02" + le(uint32_t{7}))},
      {"a node hello where a coordinator hello belongs", frame(kMagic + "\x01" + le(uint32_t{7}) + le(uint16_t{3}) + "abc" + std::string(32, '\0'))},
      {"a build id longer than allowed", frame(kMagic + "\x02" + le(uint32_t{7}) + le(uint16_t{60000}) + std::string(100, 'b'))},
  };
  for (const auto& [what, bytes] : garbage) {
    DYNAMIC_SECTION(what) {
      Fd client(connect_raw(port));
      send_raw(client.fd, bytes);
      const auto start = Clock::now();
      TransportOr t = listeners[0].accept_coordinator(Side{}.token, Side{}.info, deadline_after(kTimeout), 5s);
      INFO(what << ": " << t.status().to_string());
      CHECK(ms_since(start) < 3000);
      CHECK(t.status().code() == Code::kInvalidArgument);
      CHECK(has(t.status(), "refused coordinator 127.0.0.1:"));
      CHECK(has(t.status(), "malformed admission message"));
      const std::string answer = read_rest(client.fd);  // our hello, then the refusal
      CHECK(answer.find("malformed admission message") != std::string::npos);
    }
  }
  SECTION("random bytes, then a real coordinator") {
    Fd client(connect_raw(port));
    send_raw(client.fd, random);
    ServingNode node(std::move(listeners[0]), 1s);
    Outcome out;
    out.coordinator.emplace(connect_nodes({{"127.0.0.1", port}}, Side{}.token, Side{}.info, deadline_after(kTimeout)));
    node.thread.join();
    REQUIRE(node.admitted.has_value());
    REQUIRE(node.failures.size() == 1);
    INFO(node.failures[0].to_string());
    CHECK(has(node.failures[0], "coordinator 127.0.0.1:"));
    out.nodes.push_back(std::move(node.admitted));
    check_world(out);
  }
}

TEST_CASE("admission: a silent client times out within the handshake timeout", "[admission]") {
  std::vector<NodeListener> listeners = bind_nodes(1);
  const uint16_t port = listeners[0].port();
  Fd silent(connect_raw(port));
  auto start = Clock::now();
  TransportOr t = listeners[0].accept_coordinator(Side{}.token, Side{}.info, deadline_after(kTimeout), 300ms);
  const long took = ms_since(start);
  INFO(t.status().to_string() << " after " << took << " ms");
  CHECK(took >= 250);
  CHECK(took < 2000);
  CHECK(t.status().code() == Code::kUnavailable);
  CHECK(has(t.status(), "coordinator 127.0.0.1:"));
  CHECK(has(t.status(), "said nothing within the handshake timeout (300 ms)"));
  CHECK(read_rest(silent.fd).find("handshake timeout") != std::string::npos);

  // A silent client ahead of a real coordinator delays it by one handshake timeout only.
  Fd silent2(connect_raw(port));
  ServingNode node(std::move(listeners[0]), 300ms);
  start = Clock::now();
  Outcome out;
  out.coordinator.emplace(connect_nodes({{"127.0.0.1", port}}, Side{}.token, Side{}.info, deadline_after(kTimeout)));
  node.thread.join();
  INFO("took " << ms_since(start) << " ms");
  CHECK(ms_since(start) < 5000);
  REQUIRE(node.admitted.has_value());
  CHECK(node.failures.size() == 1);
  out.nodes.push_back(std::move(node.admitted));
  check_world(out);
}

TEST_CASE("admission: a node waits for a coordinator only until its deadline", "[admission]") {
  std::vector<NodeListener> listeners = bind_nodes(1);
  const auto start = Clock::now();
  TransportOr t = listeners[0].accept_coordinator(Side{}.token, Side{}.info, deadline_after(200ms));
  INFO(t.status().to_string());
  CHECK(t.status().code() == Code::kDeadlineExceeded);
  CHECK(has(t.status(), "no coordinator came"));
  CHECK(ms_since(start) < 2000);
  Outcome later = admit(listeners, {Side{}}, Side{});  // and still serves
  check_world(later);
}

// ---- the coordinator's bounds -------------------------------------------------------------

TEST_CASE("admission: a node address where nothing listens fails fast, naming the node", "[admission]") {
  uint16_t closed_port = 0;
  {
    StatusOr<TcpListener> l = TcpListener::bind("127.0.0.1", 0);
    REQUIRE(l.ok());
    closed_port = l->port();
  }
  std::vector<NodeListener> listeners = bind_nodes(1);
  std::optional<TransportOr> node;
  std::thread node_thread([&] {
    node.emplace(listeners[0].accept_coordinator(Side{}.token, Side{}.info, deadline_after(kTimeout), 5s));
  });
  const auto start = Clock::now();
  TransportOr c = connect_nodes({{"127.0.0.1", listeners[0].port()}, {"127.0.0.1", closed_port}}, Side{}.token, Side{}.info,
                                deadline_after(kTimeout));
  node_thread.join();
  INFO("coordinator: " << c.status().to_string() << "\nnode 1: " << node->status().to_string());
  CHECK(ms_since(start) < 3000);
  CHECK(c.status().code() == Code::kUnavailable);
  CHECK(has(c.status(), node_name(2, closed_port) + ": not reachable"));
  CHECK(node->status().code() == Code::kUnavailable);  // the coordinator hung up on node 1
  CHECK(has(node->status(), "127.0.0.1:"));
}

TEST_CASE("admission: the coordinator's deadline bounds a node that never answers", "[admission]") {
  std::vector<NodeListener> listeners = bind_nodes(2);  // node 2 listens but never accepts
  std::optional<TransportOr> node;
  std::thread node_thread([&] {
    node.emplace(listeners[0].accept_coordinator(Side{}.token, Side{}.info, deadline_after(kTimeout), 5s));
  });
  const auto start = Clock::now();
  TransportOr c = connect_nodes(addresses(listeners), Side{}.token, Side{}.info, deadline_after(500ms));
  const long took = ms_since(start);
  node_thread.join();
  INFO("coordinator: " << c.status().to_string() << " after " << took << " ms\nnode 1: " << node->status().to_string());
  CHECK(took >= 450);
  CHECK(took < 2000);
  CHECK(c.status().code() == Code::kDeadlineExceeded);
  CHECK(has(c.status(), node_name(2, listeners[1].port()) + ": said nothing by the deadline"));
  CHECK(!has(c.status(), node_name(1, listeners[0].port())));
  CHECK(node->status().code() == Code::kUnavailable);
  CHECK(ms_since(start) < 3000);
}

TEST_CASE("admission: the coordinator refuses a node that sends garbage or a wrong proof", "[admission]") {
  uint16_t port = 0;
  Fd server(listen_raw(port));
  std::string heard;
  std::string reply;
  SECTION("a huge length") { reply = le(uint32_t{0x7fffffff}); }
  SECTION("a node hello, then an accept with a wrong proof") {
    reply = frame(kMagic + "\x01" + le(uint32_t{7}) + le(uint16_t{3}) + "abc" + std::string(32, 'n'));
  }
  std::thread fake([&] {
    Fd conn(::accept(server.fd, nullptr, nullptr));
    if (conn.fd < 0) return;
    set_receive_timeout(conn.fd, 5s);
    send_raw(conn.fd, reply);
    std::string length, body;
    if (reply.size() > 4 && read_exact(conn.fd, length, 4)) {  // the coordinator's hello
      uint32_t n = 0;
      std::memcpy(&n, length.data(), 4);
      if (n < 65536 && read_exact(conn.fd, body, n))
        send_raw(conn.fd, frame(kMagic + "\x03" + le(uint16_t{4242}) + std::string(32, 'p')));
    }
    heard = read_rest(conn.fd);
  });
  const auto start = Clock::now();
  TransportOr c = connect_nodes({{"127.0.0.1", port}}, Side{}.token, Side{}.info, deadline_after(kTimeout));
  fake.join();
  INFO(c.status().to_string());
  CHECK(ms_since(start) < 3000);
  CHECK(c.status().code() == Code::kInvalidArgument);
  CHECK(has(c.status(), node_name(1, port) + ": "));
  if (reply.size() == 4) {
    CHECK(has(c.status(), "malformed admission message: a frame of 2147483647 bytes"));
  } else {
    CHECK(has(c.status(), "refused by the coordinator: wrong cluster token"));
    CHECK(heard.find("wrong cluster token") != std::string::npos);  // the refusal reached the fake node
  }
}

TEST_CASE("admission: bad arguments", "[admission]") {
  CHECK(connect_nodes({}, "t", {}, deadline_after(1s)).status().code() == Code::kInvalidArgument);
  CHECK(connect_nodes({{"127.0.0.1", 1}}, "", {}, deadline_after(1s)).status().code() == Code::kInvalidArgument);
  TransportOr twice = connect_nodes({{"127.0.0.1", 1}, {"127.0.0.1", 1}}, "t", {}, deadline_after(1s));
  INFO(twice.status().to_string());
  CHECK(has(twice.status(), "listed twice"));
  std::vector<NodeListener> listeners = bind_nodes(1);
  CHECK(listeners[0].accept_coordinator("", {}, deadline_after(1s)).status().code() == Code::kInvalidArgument);
}

// ---- token files --------------------------------------------------------------------------

TEST_CASE("admission: token files", "[admission]") {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("shoal_admission_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto write = [&](const char* name, const std::string& text) {
    std::ofstream(dir / name, std::ios::binary) << text;
    return dir / name;
  };

  StatusOr<std::string> token = read_token_file(write("good", "s3cret token\n \r\n\t"));
  REQUIRE(token.ok());
  CHECK(*token == "s3cret token");
  token = read_token_file(write("bare", "abc"));
  REQUIRE(token.ok());
  CHECK(*token == "abc");

  StatusOr<std::string> missing = read_token_file(dir / "missing");
  INFO(missing.status().to_string());
  CHECK(missing.status().code() == Code::kNotFound);
  CHECK(has(missing.status(), (dir / "missing").string()));

  for (const char* text : {"", "\n", "  \n\t\r\n"}) {
    StatusOr<std::string> empty = read_token_file(write("empty", text));
    INFO(empty.status().to_string());
    CHECK(empty.status().code() == Code::kInvalidArgument);
    CHECK(has(empty.status(), (dir / "empty").string() + ": is empty"));
  }
  CHECK(!read_token_file(dir).ok());
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace shoal::comm
