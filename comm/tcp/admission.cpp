#include "comm/tcp/admission.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string_view>

#include "comm/bytes.h"
#include "comm/tcp/mesh.h"
#include "common/check.h"

namespace shoal::comm {

struct NodeListener::Impl {
  std::unique_ptr<TcpListener::Impl> control;  // io_context and acceptor, reused by every call
};

namespace {

namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;
using Bytes = std::vector<std::byte>;
using Nonce = std::array<uint8_t, 32>;
using Digest = std::array<uint8_t, 32>;  // HMAC-SHA256

// Wire format (docs/comm.md, "TCP admission"): every message is a frame of a u32 body length
// (1..kMaxFrameBytes) and the body; every body starts with kMagic and a u8 type. Integers are
// little-endian (frame.h checks the host order); strings are a u16 length and the bytes.
// A change to this format changes the magic.
constexpr uint32_t kMagic = 0x44414853;  // "SHAD"
constexpr uint32_t kMaxFrameBytes = 64 * 1024;
constexpr size_t kMaxBuildId = 256;
constexpr size_t kMaxReason = 2048;
constexpr size_t kMaxHost = 255;
constexpr int kMaxWorld = 1024;
// The node waits for the peer table until the deadline the coordinator announced (capped),
// plus this, so that the coordinator's own abort message arrives before the node gives up.
constexpr std::chrono::milliseconds kMaxAnnounced = std::chrono::hours(1);
constexpr std::chrono::milliseconds kTableSlack{1000};
// A refusal or abort written on the way out gets this long.
constexpr std::chrono::milliseconds kFarewellTime{250};
// How long cancelled operations get to finish before their sockets are closed.
constexpr std::chrono::milliseconds kCancelGrace{100};

constexpr std::string_view kCoordinatorLabel = "shoal admission v1: coordinator proof";
constexpr std::string_view kNodeLabel = "shoal admission v1: node proof";

enum class Type : uint8_t {
  kNodeHello = 1,         // node -> coordinator: u32 version, str build_id, u8[32] node_nonce
  kCoordinatorHello = 2,  // coordinator -> node: u32 version, str build_id, u8[32] proof,
                          //   u8[32] coordinator_nonce, i32 rank, i32 size, u32 deadline_ms
  kAccept = 3,            // node -> coordinator: u16 data_port, u8[32] proof
  kRefuse = 4,            // either way: u8 refusal, str reason
  kPeers = 5,             // coordinator -> node: u32 n, n x (str host, u16 port)
  kAbort = 6,             // coordinator -> node: str reason
};

enum class Refusal : uint8_t {
  kWrongToken = 1,
  kProtocolVersion = 2,
  kBuildId = 3,
  kMalformed = 4,
  kTimeout = 5,
  kNodeFailure = 6,  // the node could not go on (e.g. no port for the data mesh)
};

Code code_of(Refusal refusal) {
  switch (refusal) {
    case Refusal::kProtocolVersion: return Code::kUnimplemented;
    case Refusal::kTimeout:
    case Refusal::kNodeFailure: return Code::kUnavailable;
    default: return Code::kInvalidArgument;
  }
}

const char* type_name(Type type) {
  switch (type) {
    case Type::kNodeHello: return "node hello";
    case Type::kCoordinatorHello: return "coordinator hello";
    case Type::kAccept: return "accept";
    case Type::kRefuse: return "refusal";
    case Type::kPeers: return "peer table";
    case Type::kAbort: return "abort";
  }
  return "unknown message";
}

// Text from the other side, safe to print: control bytes become '?', capped.
std::string printable(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, kMaxReason)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  return out;
}
std::string shown_id(std::string_view id) { return id.empty() ? "(empty)" : printable(id); }
std::string ms_of(std::chrono::nanoseconds d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + " ms";
}

Status malformed(const std::string& detail) { return invalid_argument("malformed admission message: " + detail); }

// ---- messages ------------------------------------------------------------------------------

// Every field of every type, flat: decode() fills those of its type.
struct Message {
  Type type{};
  uint32_t version = 0;
  std::string build_id;
  Nonce nonce{};
  Digest proof{};
  int32_t rank = 0;
  int32_t size = 0;
  uint32_t deadline_ms = 0;
  uint16_t data_port = 0;
  uint8_t refusal = 0;
  std::string reason;
  std::vector<PeerAddress> peers;
};

void put_string(ByteWriter& w, std::string_view s) {
  w.put(uint16_t(s.size()));
  w.put_array(std::span<const char>(s.data(), s.size()));
}
template <size_t N>
void put_bytes(ByteWriter& w, const std::array<uint8_t, N>& a) {
  w.put_array(std::span<const uint8_t>(a.data(), a.size()));
}

Bytes frame_of(const ByteWriter& body) {
  const std::span<const std::byte> b = body.bytes();
  SHOAL_CHECK_LE(b.size(), size_t{kMaxFrameBytes});
  Bytes out(sizeof(uint32_t) + b.size());
  const uint32_t length = uint32_t(b.size());
  std::memcpy(out.data(), &length, sizeof length);
  std::copy(b.begin(), b.end(), out.begin() + sizeof length);
  return out;
}

ByteWriter body_of(Type type) {
  ByteWriter w;
  w.put(kMagic);
  w.put(uint8_t(type));
  return w;
}

Bytes encode_node_hello(const AdmissionInfo& mine, const Nonce& nonce) {
  ByteWriter w = body_of(Type::kNodeHello);
  w.put(mine.protocol_version);
  put_string(w, mine.build_id);
  put_bytes(w, nonce);
  return frame_of(w);
}

Bytes encode_coordinator_hello(const AdmissionInfo& mine, const Digest& proof, const Nonce& nonce, int32_t rank,
                               int32_t size, uint32_t deadline_ms) {
  ByteWriter w = body_of(Type::kCoordinatorHello);
  w.put(mine.protocol_version);
  put_string(w, mine.build_id);
  put_bytes(w, proof);
  put_bytes(w, nonce);
  w.put(rank);
  w.put(size);
  w.put(deadline_ms);
  return frame_of(w);
}

Bytes encode_accept(uint16_t data_port, const Digest& proof) {
  ByteWriter w = body_of(Type::kAccept);
  w.put(data_port);
  put_bytes(w, proof);
  return frame_of(w);
}

Bytes encode_refuse(Refusal refusal, std::string_view reason) {
  ByteWriter w = body_of(Type::kRefuse);
  w.put(uint8_t(refusal));
  put_string(w, reason.substr(0, kMaxReason));
  return frame_of(w);
}

Bytes encode_abort(std::string_view reason) {
  ByteWriter w = body_of(Type::kAbort);
  put_string(w, reason.substr(0, kMaxReason));
  return frame_of(w);
}

StatusOr<Bytes> encode_peers(const std::vector<PeerAddress>& peers) {
  ByteWriter w = body_of(Type::kPeers);
  w.put(uint32_t(peers.size()));
  for (const PeerAddress& p : peers) {
    put_string(w, p.host);
    w.put(p.port);
  }
  if (w.bytes().size() > kMaxFrameBytes)
    return invalid_argument("the peer table of " + std::to_string(peers.size()) + " ranks does not fit in " +
                            std::to_string(kMaxFrameBytes) + " bytes");
  return frame_of(w);
}

// Never reads past the body; anything short, long, oversized or unknown is kInvalidArgument.
StatusOr<Message> decode(std::span<const std::byte> body) {
  ByteReader r(body);
  const auto magic = r.get<uint32_t>();
  const auto type = r.get<uint8_t>();
  if (!r.ok()) return malformed("a " + std::to_string(body.size()) + "-byte frame is too short for a header");
  if (magic != kMagic) {
    std::ostringstream hex;
    hex << std::hex << "0x" << magic;
    return malformed("bad magic " + hex.str() + ", not a shoal admission message");
  }
  Message m;
  m.type = Type(type);
  std::string error;
  const auto get_string = [&](std::string& out, size_t max, const char* what) {
    const auto n = r.get<uint16_t>();
    if (!r.ok() || !error.empty()) return;
    if (n > max) {
      error = std::string(what) + " of " + std::to_string(n) + " bytes (at most " + std::to_string(max) + ")";
      return;
    }
    out.resize(n);
    r.get_array(std::span<char>(out.data(), out.size()));
  };
  const auto get_bytes = [&](auto& a) { r.get_array(std::span<uint8_t>(a.data(), a.size())); };
  switch (m.type) {
    case Type::kNodeHello:
      m.version = r.get<uint32_t>();
      get_string(m.build_id, kMaxBuildId, "build id");
      get_bytes(m.nonce);
      break;
    case Type::kCoordinatorHello:
      m.version = r.get<uint32_t>();
      get_string(m.build_id, kMaxBuildId, "build id");
      get_bytes(m.proof);
      get_bytes(m.nonce);
      m.rank = r.get<int32_t>();
      m.size = r.get<int32_t>();
      m.deadline_ms = r.get<uint32_t>();
      break;
    case Type::kAccept:
      m.data_port = r.get<uint16_t>();
      get_bytes(m.proof);
      break;
    case Type::kRefuse:
      m.refusal = r.get<uint8_t>();
      get_string(m.reason, kMaxReason, "reason");
      break;
    case Type::kPeers: {
      const auto n = r.get<uint32_t>();
      if (r.ok() && (n == 0 || n > uint32_t(kMaxWorld)))
        error = "a peer table of " + std::to_string(n) + " ranks (1 to " + std::to_string(kMaxWorld) + ")";
      for (uint32_t i = 0; i < n && r.ok() && error.empty(); ++i) {
        PeerAddress p;
        get_string(p.host, kMaxHost, "host name");
        p.port = r.get<uint16_t>();
        m.peers.push_back(std::move(p));
      }
      break;
    }
    case Type::kAbort:
      get_string(m.reason, kMaxReason, "reason");
      break;
    default:
      return malformed("unknown message type " + std::to_string(type));
  }
  if (!error.empty()) return malformed(error);
  if (!r.at_end())
    return malformed(std::string(r.ok() ? "trailing bytes after a " : "truncated ") + type_name(m.type));
  return m;
}

// ---- proofs -------------------------------------------------------------------------------

Status random_nonce(Nonce& out) {
  if (RAND_bytes(out.data(), int(out.size())) != 1) return internal_error("OpenSSL RAND_bytes failed");
  return {};
}

// HMAC-SHA256(token, label || first || second). The labels keep a coordinator's proof from
// ever passing as a node's and back.
Digest prove(const std::string& token, std::string_view label, const Nonce& first, const Nonce& second) {
  std::vector<uint8_t> text(label.begin(), label.end());
  text.insert(text.end(), first.begin(), first.end());
  text.insert(text.end(), second.begin(), second.end());
  Digest out{};
  unsigned int n = 0;
  const unsigned char* done =
      HMAC(EVP_sha256(), token.data(), int(token.size()), text.data(), text.size(), out.data(), &n);
  SHOAL_CHECK(done != nullptr && n == out.size());
  return out;
}

bool same(const Digest& a, const Digest& b) { return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0; }

// ---- control connections ------------------------------------------------------------------

asio::ip::address plain(const asio::ip::address& a) {
  if (a.is_v6() && a.to_v6().is_v4_mapped()) return asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
  return a;
}
std::string endpoint_string(const tcp::endpoint& e) {
  return plain(e.address()).to_string() + ":" + std::to_string(e.port());
}

Status socket_error(const error_code& ec) {
  if (ec == asio::error::eof) return {Code::kUnavailable, "closed the connection"};
  return {Code::kUnavailable, "connection lost: " + ec.message()};
}

// One control connection and its one operation in flight. Every handler runs on the thread
// inside run_phase(), so there are no locks.
struct Channel {
  Channel(asio::io_context& io, std::string name) : socket(io), name(std::move(name)) {}
  tcp::socket socket;
  std::string name;  // "node 2 (127.0.0.1:7001)", "coordinator 127.0.0.1:40000"
  bool busy = false;
  bool cancelled = false;  // set by run_phase: a handler starts no further step
  Status status;      // of the last operation
  Message message;    // the last one read
  uint32_t length = 0;
  Bytes in, out;

  void begin() {
    busy = true;
    cancelled = false;
    status = {};
  }
  void finish(Status s) {
    busy = false;
    status = std::move(s);
  }
};

void start_connect(Channel& c, const tcp::resolver::results_type& endpoints) {
  c.begin();
  asio::async_connect(c.socket, endpoints, [&c](error_code ec, const tcp::endpoint&) {
    c.finish(ec ? Status(Code::kUnavailable, "not reachable: " + ec.message()) : Status{});
  });
}

void start_write(Channel& c, Bytes frame) {
  c.begin();
  c.out = std::move(frame);
  asio::async_write(c.socket, asio::buffer(c.out), [&c](error_code ec, size_t) {
    c.finish(ec ? socket_error(ec) : Status{});
  });
}

// Reads one frame, decodes it into c.message and finishes with check(c.message).
using Check = std::function<Status(const Message&)>;
void start_read(Channel& c, Check check) {
  c.begin();
  asio::async_read(c.socket, asio::buffer(&c.length, sizeof c.length), [&c, check](error_code ec, size_t) {
    if (ec) return c.finish(socket_error(ec));
    if (c.cancelled) return c.finish({Code::kUnavailable, "cancelled"});
    if (c.length == 0 || c.length > kMaxFrameBytes)
      return c.finish(malformed("a frame of " + std::to_string(c.length) + " bytes (1 to " +
                                std::to_string(kMaxFrameBytes) + ")"));
    c.in.resize(c.length);
    asio::async_read(c.socket, asio::buffer(c.in), [&c, check](error_code ec, size_t) {
      if (ec) return c.finish(socket_error(ec));
      StatusOr<Message> m = decode(c.in);
      if (!m.ok()) return c.finish(m.status());
      c.message = std::move(*m);
      c.finish(check(c.message));
    });
  });
}

struct PhaseResult {
  Status status;              // the first failure, unnamed; or ok
  Channel* failed = nullptr;  // whose it is
  std::vector<Channel*> late; // on a timeout: those still busy
  bool ok() const { return status.ok(); }
  // "node 2 (...): refused: ..." or "node 1 (...), node 3 (...): said nothing by the deadline"
  Status named() const {
    if (ok()) return {};
    std::string names;
    if (failed) names = failed->name;
    for (const Channel* c : late) names += (names.empty() ? "" : ", ") + c->name;
    return {status.code(), names + ": " + status.message()};
  }
};

// Runs io until every channel's operation is done, one has failed, or the deadline. Then
// cancels what is still in flight (the sockets stay open, for a farewell) and runs the
// cancelled handlers, so nothing is left pending on io.
PhaseResult run_phase(asio::io_context& io, const std::vector<Channel*>& channels, Deadline deadline,
                      const Status& on_timeout) {
  const auto busy = [&] { return std::any_of(channels.begin(), channels.end(), [](Channel* c) { return c->busy; }); };
  const auto failed = [&]() -> Channel* {
    for (Channel* c : channels)
      if (!c->busy && !c->status.ok()) return c;
    return nullptr;
  };
  io.restart();
  while (busy() && failed() == nullptr)
    if (io.run_one_until(deadline) == 0) break;
  PhaseResult result;
  if (Channel* c = failed()) {
    result.status = c->status;
    result.failed = c;
  } else if (busy()) {
    result.status = on_timeout;
    for (Channel* c : channels)
      if (c->busy) result.late.push_back(c);
  }
  if (busy()) {
    // Cancel keeps the socket for a farewell; a composed operation that was between two steps
    // may start another one regardless, so whatever is still busy after a moment is closed.
    error_code ignored;
    for (Channel* c : channels) {
      if (!c->busy) continue;
      c->cancelled = true;
      c->socket.cancel(ignored);
    }
    io.restart();
    const Deadline grace = Clock::now() + kCancelGrace;
    while (busy())
      if (io.run_one_until(grace) == 0) break;
    for (Channel* c : channels)
      if (c->busy) c->socket.close(ignored);
    io.restart();
    io.run();
  }
  io.restart();
  return result;
}

// FIN after the last byte; nothing is left unread on a well-behaved connection, so no reset.
void close_gracefully(Channel& c) {
  error_code ignored;
  c.socket.shutdown(tcp::socket::shutdown_send, ignored);
  c.socket.close(ignored);
}

// Writes a last message (refusal or abort) to each channel, briefly and best effort, and closes.
void farewell(asio::io_context& io, const std::vector<std::pair<Channel*, Bytes>>& messages) {
  std::vector<Channel*> channels;
  for (const auto& [c, frame] : messages) {
    start_write(*c, frame);
    channels.push_back(c);
  }
  (void)run_phase(io, channels, Clock::now() + kFarewellTime, {Code::kDeadlineExceeded, "farewell"});
  for (Channel* c : channels) close_gracefully(*c);
}

// ---- node side ----------------------------------------------------------------------------

class NodeAdmission {
 public:
  NodeAdmission(asio::io_context& io, Channel& c, const std::string& token, const AdmissionInfo& mine,
                std::chrono::milliseconds handshake_timeout)
      : io_(io), c_(c), token_(token), mine_(mine), handshake_timeout_(handshake_timeout) {}

  StatusOr<std::unique_ptr<Transport>> run() {
    const Deadline handshake_deadline = Clock::now() + handshake_timeout_;
    const Status silent(Code::kUnavailable, "said nothing within the handshake timeout (" + ms_of(handshake_timeout_) + ")");

    Nonce node_nonce;
    SHOAL_RETURN_IF_ERROR(random_nonce(node_nonce));
    start_write(c_, encode_node_hello(mine_, node_nonce));
    if (PhaseResult r = run_phase(io_, {&c_}, handshake_deadline, silent); !r.ok()) return give_up(r);

    start_read(c_, [](const Message& m) {
      return m.type == Type::kCoordinatorHello ? Status{}
                                               : malformed(std::string("expected a coordinator hello, got a ") + type_name(m.type));
    });
    if (PhaseResult r = run_phase(io_, {&c_}, handshake_deadline, silent); !r.ok()) return give_up(r);
    const Deadline hello_time = Clock::now();
    const Message hello = c_.message;

    // Version first (another version may prove differently), then the token, then the build.
    if (hello.version != mine_.protocol_version)
      return refuse(Refusal::kProtocolVersion, "protocol version " + std::to_string(hello.version) + " on the coordinator, " +
                                                   std::to_string(mine_.protocol_version) + " on the node");
    if (!same(hello.proof, prove(token_, kCoordinatorLabel, node_nonce, hello.nonce)))
      return refuse(Refusal::kWrongToken, "wrong cluster token", " (the coordinator's proof does not match this node's token)");
    if (hello.build_id != mine_.build_id)
      return refuse(Refusal::kBuildId, "build id " + shown_id(hello.build_id) + " on the coordinator, " +
                                           shown_id(mine_.build_id) + " on the node");
    if (hello.size < 2 || hello.size > kMaxWorld || hello.rank < 1 || hello.rank >= hello.size)
      return refuse(Refusal::kMalformed, "malformed admission message: rank " + std::to_string(hello.rank) +
                                             " of a world of " + std::to_string(hello.size));

    // The data listener goes on the address the coordinator reached us on.
    error_code ec;
    const tcp::endpoint local = c_.socket.local_endpoint(ec);
    if (ec) return named(socket_error(ec));
    StatusOr<TcpListener> data = TcpListener::bind(plain(local.address()).to_string(), 0);
    if (!data.ok()) return refuse(Refusal::kNodeFailure, "the node cannot listen for the data mesh: " + data.status().message());

    start_write(c_, encode_accept(data->port(), prove(token_, kNodeLabel, hello.nonce, node_nonce)));
    if (PhaseResult r = run_phase(io_, {&c_}, handshake_deadline, silent); !r.ok()) return give_up(r);

    // The coordinator sends the table when every node has accepted: wait as long as it said it would.
    const auto announced = std::min<std::chrono::milliseconds>(std::chrono::milliseconds(hello.deadline_ms), kMaxAnnounced);
    const Deadline mesh_deadline = hello_time + announced + kTableSlack;
    start_read(c_, [](const Message& m) {
      if (m.type == Type::kPeers || m.type == Type::kAbort || m.type == Type::kRefuse) return Status{};
      return malformed(std::string("expected a peer table, got a ") + type_name(m.type));
    });
    const Status no_table(Code::kUnavailable, "sent no peer table by its announced deadline (waited " +
                                                  ms_of(mesh_deadline - hello_time) + ")");
    if (PhaseResult r = run_phase(io_, {&c_}, mesh_deadline, no_table); !r.ok()) {
      close_gracefully(c_);
      if (r.status.message() == "closed the connection")
        return named({Code::kUnavailable, "closed the connection before sending the peer table (it failed to admit another node?)"});
      return named(r.status);
    }
    close_gracefully(c_);
    const Message& m = c_.message;
    if (m.type == Type::kAbort)
      return Status(Code::kUnavailable, c_.name + " aborted the admission: " + printable(m.reason));
    if (m.type == Type::kRefuse)
      return Status(code_of(Refusal(m.refusal)), c_.name + " refused this node: " + printable(m.reason));
    if (int(m.peers.size()) != hello.size || m.peers[size_t(hello.rank)].port != data->port())
      return named(invalid_argument("a peer table of " + std::to_string(m.peers.size()) + " ranks that does not match the hello"));
    for (const PeerAddress& p : m.peers)
      if (p.host.empty() || p.port == 0) return named(invalid_argument("an empty address in the peer table"));

    StatusOr<std::unique_ptr<Transport>> t = connect_tcp(hello.rank, m.peers, std::move(*data), mesh_deadline);
    if (!t.ok()) {
      // kDeadlineExceeded is kept for "nobody came".
      const Code code = t.status().code() == Code::kDeadlineExceeded ? Code::kUnavailable : t.status().code();
      return Status(code, c_.name + ": data mesh: " + t.status().message());
    }
    return t;
  }

 private:
  Status named(const Status& s) const { return {s.code(), c_.name + ": " + s.message()}; }

  // A failed phase: the coordinator gets a refusal for garbage and for silence.
  Status give_up(const PhaseResult& r) {
    if (r.status.code() == Code::kInvalidArgument) return refuse(Refusal::kMalformed, r.status.message());
    if (!r.late.empty()) {
      farewell(io_, {{&c_, encode_refuse(Refusal::kTimeout, "the node's handshake timeout (" + ms_of(handshake_timeout_) +
                                                                 ") passed without an answer")}});
    } else {
      close_gracefully(c_);
    }
    return named(r.status);
  }

  Status refuse(Refusal refusal, const std::string& reason, const std::string& local_detail = "") {
    farewell(io_, {{&c_, encode_refuse(refusal, reason)}});
    return {code_of(refusal), "refused " + c_.name + ": " + reason + local_detail};
  }

  asio::io_context& io_;
  Channel& c_;
  const std::string& token_;
  const AdmissionInfo& mine_;
  const std::chrono::milliseconds handshake_timeout_;
};

// ---- coordinator side ---------------------------------------------------------------------

class CoordinatorAdmission {
 public:
  CoordinatorAdmission(const std::vector<PeerAddress>& nodes, const std::string& token, const AdmissionInfo& mine,
                       Deadline deadline)
      : nodes_(nodes), token_(token), mine_(mine), deadline_(deadline), start_(Clock::now()) {
    for (size_t i = 0; i < nodes.size(); ++i) {
      owned_.push_back(std::make_unique<Channel>(io_, "node " + std::to_string(i + 1) + " (" + to_string(nodes[i]) + ")"));
      all_.push_back(owned_.back().get());
    }
    node_nonces_.resize(nodes.size());
    coordinator_nonces_.resize(nodes.size());
    admitted_.assign(nodes.size(), false);
    data_ports_.assign(nodes.size(), 0);
  }

  StatusOr<std::unique_ptr<Transport>> run() {
    const size_t n = nodes_.size();
    tcp::resolver resolver(io_);
    std::vector<tcp::resolver::results_type> endpoints(n);
    for (size_t i = 0; i < n; ++i) {
      error_code ec;
      endpoints[i] = resolver.resolve(nodes_[i].host, std::to_string(nodes_[i].port), ec);
      if (ec) return Status(Code::kUnavailable, all_[i]->name + ": cannot resolve " + nodes_[i].host + ": " + ec.message());
    }
    for (size_t i = 0; i < n; ++i) start_connect(*all_[i], endpoints[i]);
    SHOAL_RETURN_IF_ERROR(phase({Code::kDeadlineExceeded, "not reachable by the deadline"}));

    for (size_t i = 0; i < n; ++i)
      start_read(*all_[i], [](const Message& m) {
        return m.type == Type::kNodeHello ? Status{}
                                          : malformed(std::string("expected a node hello, got a ") + type_name(m.type));
      });
    SHOAL_RETURN_IF_ERROR(phase({Code::kDeadlineExceeded, "said nothing by the deadline"},
                                "a node serves one client at a time"));

    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - Clock::now());
    const uint32_t deadline_ms = uint32_t(std::clamp<int64_t>(left.count(), 0, int64_t{UINT32_MAX}));
    for (size_t i = 0; i < n; ++i) {
      node_nonces_[i] = all_[i]->message.nonce;
      hellos_.push_back(all_[i]->message);
      SHOAL_RETURN_IF_ERROR(random_nonce(coordinator_nonces_[i]));
      const Digest proof = prove(token_, kCoordinatorLabel, node_nonces_[i], coordinator_nonces_[i]);
      start_write(*all_[i], encode_coordinator_hello(mine_, proof, coordinator_nonces_[i], int32_t(i + 1),
                                                      int32_t(n + 1), deadline_ms));
    }
    SHOAL_RETURN_IF_ERROR(phase({Code::kDeadlineExceeded, "took the hello too slowly for the deadline"}));

    refusals_.resize(n);
    for (size_t i = 0; i < n; ++i) start_read(*all_[i], [this, i](const Message& m) { return check_answer(i, m); });
    SHOAL_RETURN_IF_ERROR(phase({Code::kDeadlineExceeded, "did not answer the hello by the deadline"}));

    // Every node said yes: the coordinator's data listener, then the peer tables.
    std::vector<asio::ip::address> locals(n), remotes(n);
    for (size_t i = 0; i < n; ++i) {
      error_code ec, ec2;
      locals[i] = plain(all_[i]->socket.local_endpoint(ec).address());
      remotes[i] = plain(all_[i]->socket.remote_endpoint(ec2).address());
      if (ec || ec2) return abort_all({Code::kUnavailable, all_[i]->name + ": " + socket_error(ec ? ec : ec2).message()});
    }
    const bool one_address = std::all_of(locals.begin(), locals.end(), [&](const auto& a) { return a == locals[0]; });
    const bool all_v4 = std::all_of(locals.begin(), locals.end(), [](const auto& a) { return a.is_v4(); });
    const std::string bind_host = one_address ? locals[0].to_string() : all_v4 ? "0.0.0.0" : "::";
    StatusOr<TcpListener> listener = TcpListener::bind(bind_host, 0);
    if (!listener.ok()) return abort_all(listener.status().with_context("coordinator: data listener"));

    std::vector<PeerAddress> peers(n + 1);
    peers[0] = {locals[0].to_string(), listener->port()};
    for (size_t i = 0; i < n; ++i) peers[i + 1] = {remotes[i].to_string(), data_ports_[i]};
    for (size_t i = 0; i < n; ++i) {
      std::vector<PeerAddress> table = peers;
      table[0].host = locals[i].to_string();  // the address node i reached the coordinator on
      StatusOr<Bytes> frame = encode_peers(table);
      if (!frame.ok()) return abort_all(frame.status());
      start_write(*all_[i], std::move(*frame));
    }
    SHOAL_RETURN_IF_ERROR(phase({Code::kDeadlineExceeded, "did not take the peer table by the deadline"}));
    for (Channel* c : all_) close_gracefully(*c);

    return connect_tcp(0, std::move(peers), std::move(*listener), deadline_);
  }

 private:
  Status check_answer(size_t i, const Message& m) {
    if (m.type == Type::kRefuse) return Status(code_of(Refusal(m.refusal)), "refused: " + printable(m.reason));
    if (m.type != Type::kAccept) return malformed(std::string("expected an accept or a refusal, got a ") + type_name(m.type));
    const Message& hello = hellos_[i];
    // The node checks all of this first; a node that accepts anyway is refused here.
    if (!same(m.proof, prove(token_, kNodeLabel, coordinator_nonces_[i], node_nonces_[i])))
      return refuse_later(i, Refusal::kWrongToken, "wrong cluster token",
                          " (the node's proof does not match the coordinator's token)");
    if (hello.version != mine_.protocol_version)
      return refuse_later(i, Refusal::kProtocolVersion,
                          "protocol version " + std::to_string(mine_.protocol_version) + " on the coordinator, " +
                              std::to_string(hello.version) + " on the node");
    if (hello.build_id != mine_.build_id)
      return refuse_later(i, Refusal::kBuildId, "build id " + shown_id(mine_.build_id) + " on the coordinator, " +
                                                     shown_id(hello.build_id) + " on the node");
    if (m.data_port == 0) return refuse_later(i, Refusal::kMalformed, "malformed admission message: data port 0");
    admitted_[i] = true;
    data_ports_[i] = m.data_port;
    return {};
  }

  Status refuse_later(size_t i, Refusal refusal, const std::string& reason, const std::string& local_detail = "") {
    refusals_[i] = encode_refuse(refusal, reason);
    return {code_of(refusal), "refused by the coordinator: " + reason + local_detail};
  }

  // Runs one phase over every channel; on failure tells the admitted nodes and returns why.
  // A timeout says how long the admission waited, and the hint.
  Status phase(const Status& on_timeout, const std::string& hint = "") {
    const PhaseResult r = run_phase(io_, all_, deadline_, on_timeout);
    if (r.ok()) return {};
    Status s = r.named();
    if (!r.late.empty())
      s = {s.code(), s.message() + " (waited " + ms_of(Clock::now() - start_) + (hint.empty() ? "" : "; " + hint) + ")"};
    return abort_all(s);
  }

  // Admitted nodes wait for a table: they get an abort with the reason. A node refused here
  // gets its refusal. The others are closed.
  Status abort_all(const Status& why) {
    std::vector<std::pair<Channel*, Bytes>> messages;
    for (size_t i = 0; i < all_.size(); ++i) {
      if (i < refusals_.size() && !refusals_[i].empty()) messages.emplace_back(all_[i], refusals_[i]);
      else if (admitted_[i]) messages.emplace_back(all_[i], encode_abort(why.message()));
      else close_gracefully(*all_[i]);
    }
    farewell(io_, messages);
    return why;
  }

  asio::io_context io_;  // before the channels, whose sockets use it
  const std::vector<PeerAddress>& nodes_;
  const std::string& token_;
  const AdmissionInfo& mine_;
  const Deadline deadline_;
  const Deadline start_;
  std::vector<std::unique_ptr<Channel>> owned_;
  std::vector<Channel*> all_;
  std::vector<Message> hellos_;
  std::vector<Nonce> node_nonces_, coordinator_nonces_;
  std::vector<Bytes> refusals_;  // [n] a refusal to send, or empty
  std::vector<bool> admitted_;
  std::vector<uint16_t> data_ports_;
};

Status check_info(const AdmissionInfo& mine, const std::string& token) {
  if (token.empty()) return invalid_argument("the cluster token is empty");
  if (mine.build_id.size() > kMaxBuildId)
    return invalid_argument("build id of " + std::to_string(mine.build_id.size()) + " bytes (at most " +
                            std::to_string(kMaxBuildId) + ")");
  return {};
}

}  // namespace

// ---- NodeListener -------------------------------------------------------------------------

NodeListener::NodeListener(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
NodeListener::NodeListener(NodeListener&&) noexcept = default;
NodeListener& NodeListener::operator=(NodeListener&&) noexcept = default;
NodeListener::~NodeListener() = default;

StatusOr<NodeListener> NodeListener::bind(const std::string& host, uint16_t port) {
  StatusOr<TcpListener> control = TcpListener::bind(host, port);
  if (!control.ok()) return control.status();
  auto impl = std::make_unique<Impl>();
  impl->control = control->release();
  return NodeListener(std::move(impl));
}

uint16_t NodeListener::port() const {
  error_code ec;
  return impl_->control->acceptor.local_endpoint(ec).port();
}

StatusOr<std::unique_ptr<Transport>> NodeListener::accept_coordinator(const std::string& token, const AdmissionInfo& mine,
                                                                      Deadline deadline,
                                                                      std::chrono::milliseconds handshake_timeout) {
  SHOAL_CHECK(impl_ != nullptr);
  SHOAL_RETURN_IF_ERROR(check_info(mine, token));
  asio::io_context& io = impl_->control->io;
  boost::asio::ip::tcp::acceptor& acceptor = impl_->control->acceptor;
  error_code ec;
  const std::string where = endpoint_string(acceptor.local_endpoint(ec));

  Channel c(io, "coordinator");
  bool accepted = false;
  error_code accept_error;
  io.restart();
  acceptor.async_accept(c.socket, [&](error_code e) {
    accepted = true;
    accept_error = e;
  });
  while (!accepted)
    if (io.run_one_until(deadline) == 0) break;
  if (!accepted) {
    acceptor.cancel(ec);
    io.restart();
    io.run();  // the cancelled accept's handler (or one that completed just now)
  }
  io.restart();
  if (!accepted || accept_error == asio::error::operation_aborted)
    return Status(Code::kDeadlineExceeded, "node " + where + ": no coordinator came by the deadline");
  if (accept_error) return Status(Code::kUnavailable, "node " + where + ": accept failed: " + accept_error.message());

  const boost::asio::ip::tcp::endpoint remote = c.socket.remote_endpoint(ec);
  if (ec) return Status(Code::kUnavailable, "node " + where + ": a client connected and went away: " + ec.message());
  c.name = "coordinator " + endpoint_string(remote);
  NodeAdmission admission(io, c, token, mine, handshake_timeout);
  return admission.run();
}

// ---- coordinator --------------------------------------------------------------------------

StatusOr<std::unique_ptr<Transport>> connect_nodes(const std::vector<PeerAddress>& nodes, const std::string& token,
                                                   const AdmissionInfo& mine, Deadline deadline) {
  SHOAL_RETURN_IF_ERROR(check_info(mine, token));
  if (nodes.empty()) return invalid_argument("no nodes to connect");
  if (nodes.size() >= size_t(kMaxWorld))
    return invalid_argument(std::to_string(nodes.size()) + " nodes (at most " + std::to_string(kMaxWorld - 1) + ")");
  for (size_t i = 0; i < nodes.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (nodes[i].host == nodes[j].host && nodes[i].port == nodes[j].port)
        return invalid_argument("node " + std::to_string(i + 1) + " (" + to_string(nodes[i]) + ") is listed twice (also node " +
                                std::to_string(j + 1) + ")");
  CoordinatorAdmission admission(nodes, token, mine, deadline);
  return admission.run();
}

// ---- token file ---------------------------------------------------------------------------

StatusOr<std::string> read_token_file(const std::filesystem::path& file) {
  const std::string name = "token file " + file.string();
  std::error_code fs_error;
  if (std::filesystem::is_directory(file, fs_error)) return invalid_argument(name + ": is a directory");
  std::ifstream in(file, std::ios::binary);
  if (!in) return not_found(name + ": cannot read it: " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return not_found(name + ": read error: " + std::strerror(errno));
  std::string token = text.str();
  const size_t end = token.find_last_not_of(" \t\r\n\v\f");
  token.erase(end == std::string::npos ? 0 : end + 1);
  if (token.empty()) return invalid_argument(name + ": is empty");
  return token;
}

}  // namespace shoal::comm
