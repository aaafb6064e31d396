#include "comm/tcp/mesh.h"

#include "comm/tcp/frame.h"
#include "common/check.h"

namespace shoal::comm {
namespace tcp {
namespace {

namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;

constexpr std::chrono::milliseconds kRetryDelay{50};

// The state of one mesh build. Every handler runs on the thread inside run(), so no locks.
class MeshBuilder {
 public:
  MeshBuilder(TcpListener::Impl& listener, int rank, const std::vector<PeerAddress>& peers)
      : io_(listener.io), acceptor_(listener.acceptor), rank_(rank), peers_(peers),
        sockets_(peers.size()), endpoints_(peers.size()) {
    missing_ = int(peers.size()) - 1;
    for (size_t r = 0; r < peers.size(); ++r) timers_.push_back(std::make_unique<asio::steady_timer>(io_));
  }

  StatusOr<Sockets> run(Deadline deadline) {
    SHOAL_RETURN_IF_ERROR(resolve_lower_ranks());
    if (rank_ + 1 < size()) accept_next();
    for (int peer = 0; peer < rank_; ++peer) connect(peer);
    while (!finished() && Clock::now() < deadline)
      if (io_.run_one_until(deadline) == 0) break;
    const Status result = !error_.ok() ? error_ : missing_ != 0 ? missing_status() : Status{};
    stop();
    if (!result.ok()) return result;
    return std::move(sockets_);
  }

 private:
  int size() const { return int(peers_.size()); }
  bool finished() const { return done_ || !error_.ok() || missing_ == 0; }
  std::string me() const { return "rank " + std::to_string(rank_); }

  Status resolve_lower_ranks() {
    tcp::resolver resolver(io_);
    for (int peer = 0; peer < rank_; ++peer) {
      error_code ec;
      const PeerAddress& a = peers_[size_t(peer)];
      endpoints_[size_t(peer)] = resolver.resolve(a.host, std::to_string(a.port), ec);
      if (ec) return {Code::kUnavailable, me() + ": cannot resolve " + peer_name(peer, peers_) + ": " + ec.message()};
    }
    return {};
  }

  void accept_next() {
    auto socket = std::make_shared<Socket>(io_);
    pending_.push_back(socket);
    acceptor_.async_accept(*socket, [this, socket](error_code ec) {
      if (finished()) return;
      if (!ec) answer_hello(socket);
      accept_next();
    });
  }

  // Accepting side: read the peer's Hello, answer with ours, check theirs, wait for the ack.
  // The ack drops stale connections (a peer that dialled and gave up) that left a Hello behind.
  void answer_hello(std::shared_ptr<Socket> socket) {
    auto theirs = std::make_shared<Hello>();
    asio::async_read(*socket, asio::buffer(theirs.get(), sizeof(Hello)), [this, socket, theirs](error_code ec, size_t) {
      if (finished() || ec || theirs->magic != kHelloMagic) return;  // not one of ours: ignore it
      auto ours = std::make_shared<Hello>(Hello{kHelloMagic, kProtocolVersion, rank_, size()});
      asio::async_write(*socket, asio::buffer(ours.get(), sizeof(Hello)), [this, socket, theirs, ours](error_code ec, size_t) {
        if (finished() || ec) return;
        const std::string where = socket->remote_endpoint(ec).address().to_string();
        if (Status s = check_hello(*theirs, -1, where); !s.ok()) return fail(s);
        read_ack(theirs->rank, socket);
      });
    });
  }

  void read_ack(int peer, std::shared_ptr<Socket> socket) {
    auto ack = std::make_shared<uint32_t>(0);
    asio::async_read(*socket, asio::buffer(ack.get(), sizeof(uint32_t)), [this, peer, socket, ack](error_code ec, size_t) {
      if (finished() || ec || *ack != kAckMagic) return;  // the dialler gave up: it will dial again
      established(peer, socket);
    });
  }

  // Connecting side: connect (retrying until the peer listens), send our Hello, read theirs.
  void connect(int peer) {
    auto socket = std::make_shared<Socket>(io_);
    pending_.push_back(socket);
    asio::async_connect(*socket, endpoints_[size_t(peer)], [this, peer, socket](error_code ec, const tcp::endpoint&) {
      if (finished()) return;
      if (ec) return retry(peer, socket);
      auto ours = std::make_shared<Hello>(Hello{kHelloMagic, kProtocolVersion, rank_, size()});
      asio::async_write(*socket, asio::buffer(ours.get(), sizeof(Hello)), [this, peer, socket, ours](error_code ec, size_t) {
        if (finished()) return;
        if (ec) return retry(peer, socket);
        read_answer(peer, socket);
      });
    });
  }

  void read_answer(int peer, std::shared_ptr<Socket> socket) {
    auto theirs = std::make_shared<Hello>();
    asio::async_read(*socket, asio::buffer(theirs.get(), sizeof(Hello)), [this, peer, socket, theirs](error_code ec, size_t) {
      if (finished()) return;
      if (ec) return retry(peer, socket);
      if (Status s = check_hello(*theirs, peer, to_string(peers_[size_t(peer)])); !s.ok()) return fail(s);
      auto ack = std::make_shared<uint32_t>(kAckMagic);
      asio::async_write(*socket, asio::buffer(ack.get(), sizeof(uint32_t)), [this, peer, socket, ack](error_code ec, size_t) {
        if (finished()) return;
        if (ec) return retry(peer, socket);
        established(peer, socket);
      });
    });
  }

  // The peer is not listening yet (or went away mid-Hello): try again shortly.
  void retry(int peer, const std::shared_ptr<Socket>& failed) {
    error_code ignored;
    failed->close(ignored);
    asio::steady_timer& timer = *timers_[size_t(peer)];
    timer.expires_after(kRetryDelay);
    timer.async_wait([this, peer](error_code ec) {
      if (!finished() && !ec) connect(peer);
    });
  }

  // expected: the rank we dialled, or -1 when accepting (then any higher rank will do).
  Status check_hello(const Hello& h, int expected, const std::string& where) const {
    const std::string who = where + " (hello: rank " + std::to_string(h.rank) + " of " + std::to_string(h.size) + ")";
    if (h.magic != kHelloMagic || h.version != kProtocolVersion)
      return {Code::kInvalidArgument, me() + ": " + where + " speaks another protocol version (" + std::to_string(h.version) + ", this build " + std::to_string(kProtocolVersion) + ")"};
    if (h.size != size())
      return {Code::kInvalidArgument, me() + ": " + who + " has another world size than this rank's " + std::to_string(size())};
    if (expected >= 0 && h.rank != expected)
      return {Code::kInvalidArgument, me() + ": " + who + " is not rank " + std::to_string(expected) + " as the peer table says"};
    if (expected < 0 && (h.rank <= rank_ || h.rank >= size()))
      return {Code::kInvalidArgument, me() + ": " + who + " should have been accepted by it, not dialled"};
    return {};
  }

  void established(int peer, std::shared_ptr<Socket> socket) {
    if (sockets_[size_t(peer)]) return;  // a duplicate Hello: keep the first connection
    error_code ignored;
    socket->set_option(tcp::no_delay(true), ignored);
    sockets_[size_t(peer)] = std::move(socket);
    --missing_;
  }

  void fail(Status s) {
    if (error_.ok()) error_ = std::move(s);
  }

  Status missing_status() const {
    std::string names;
    for (int r = 0; r < size(); ++r)
      if (r != rank_ && !sockets_[size_t(r)]) names += (names.empty() ? "" : ", ") + peer_name(r, peers_);
    return {Code::kDeadlineExceeded, me() + ": TCP mesh not complete by the deadline: no connection with " + names};
  }

  // Cancels what is left and runs the cancelled handlers, which see finished() or an error.
  void stop() {
    done_ = true;
    error_code ignored;
    acceptor_.close(ignored);
    for (auto& timer : timers_) timer->cancel();
    for (auto& socket : pending_)
      if (!is_established(socket)) socket->close(ignored);
    io_.restart();
    io_.run();
    io_.restart();
  }

  bool is_established(const std::shared_ptr<Socket>& socket) const {
    for (const auto& s : sockets_)
      if (s == socket) return true;
    return false;
  }

  asio::io_context& io_;
  tcp::acceptor& acceptor_;
  const int rank_;
  const std::vector<PeerAddress>& peers_;
  Sockets sockets_;                                  // [size] established connections
  std::vector<tcp::resolver::results_type> endpoints_;  // [size] resolved for lower ranks
  std::vector<std::unique_ptr<asio::steady_timer>> timers_;  // [size] connect retries
  std::vector<std::shared_ptr<Socket>> pending_;     // every socket made, to close on stop
  int missing_ = 0;
  Status error_;
  bool done_ = false;  // set by stop(): every handler after it sees finished()
};

}  // namespace

std::string peer_name(int rank, const std::vector<PeerAddress>& peers) {
  return "rank " + std::to_string(rank) + " (" + to_string(peers[size_t(rank)]) + ")";
}

StatusOr<Sockets> build_mesh(TcpListener::Impl& listener, int rank,
                             const std::vector<PeerAddress>& peers, Deadline deadline) {
  SHOAL_CHECK(rank >= 0 && rank < int(peers.size()));
  MeshBuilder builder(listener, rank, peers);
  return builder.run(deadline);
}

}  // namespace tcp
}  // namespace shoal::comm
