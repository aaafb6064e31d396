#include "comm/tcp/tcp_transport.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "comm/mailbox.h"
#include "comm/poison.h"
#include "comm/tcp/frame.h"
#include "comm/tcp/mesh.h"
#include "common/check.h"

namespace shoal::comm {
namespace {

namespace asio = boost::asio;
using boost::system::error_code;
using tcp::FrameHeader;

std::vector<std::byte> make_frame(uint32_t tag, std::span<const std::byte> payload) {
  std::vector<std::byte> frame(sizeof(FrameHeader) + payload.size());
  const FrameHeader header{tcp::kFrameMagic, tag, payload.size()};
  std::memcpy(frame.data(), &header, sizeof header);
  std::copy(payload.begin(), payload.end(), frame.begin() + sizeof header);
  return frame;
}

// Threads: send() and recv() run on callers' threads; every socket operation runs on the io
// thread. mu_ guards the send queues and the gone status of each link; the mailbox has its own.
class TcpTransport final : public Transport {
 public:
  TcpTransport(int rank, std::vector<PeerAddress> peers, std::unique_ptr<TcpListener::Impl> listener,
               tcp::Sockets sockets, TcpOptions options)
      : rank_(rank), peers_(std::move(peers)), options_(options), listener_(std::move(listener)),
        links_(peers_.size()), mailbox_(rank, names(peers_)), work_(listener_->io.get_executor()) {
    for (size_t r = 0; r < links_.size(); ++r) {
      links_[r].socket = std::move(sockets[r]);
      if (links_[r].socket) asio::post(io(), [this, r] { read_header(int(r)); });
    }
    io_thread_ = std::thread([this] { io().run(); });
  }

  // Closing without losing what was sent: flush the queues, send FIN after the last byte, wait
  // for the peers' FIN (closing a socket with unread input would send a reset instead), close.
  ~TcpTransport() override {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, options_.close_timeout, [this] { return flushed_locked(); });
    lock.unlock();
    asio::post(io(), [this] { half_close_all(); });
    lock.lock();
    cv_.wait_for(lock, options_.close_timeout, [this] { return inputs_ended_locked(); });
    lock.unlock();
    asio::post(io(), [this] { close_all(); });
    work_.reset();
    io_thread_.join();
  }

  int rank() const override { return rank_; }
  int size() const override { return int(peers_.size()); }
  std::string peer_name(int rank) const override { return tcp::peer_name(rank, peers_); }

  Status send(int dst, uint32_t tag, std::span<const std::byte> payload, Deadline deadline) override {
    SHOAL_CHECK(dst >= 0 && dst < size());
    SHOAL_CHECK_LE(tag, kMaxTag);
    SHOAL_CHECK_LE(payload.size(), kMaxMessageBytes);
    SHOAL_RETURN_IF_ERROR(poison_.get());
    if (dst == rank_) {
      mailbox_.push(rank_, tag, {payload.begin(), payload.end()});
      return {};
    }
    std::vector<std::byte> frame = make_frame(tag, payload);
    std::unique_lock<std::mutex> lock(mu_);
    Link& link = links_[size_t(dst)];
    const auto has_room = [&] {
      return !link.gone.ok() || link.out_bytes == 0 || link.out_bytes + frame.size() <= options_.max_queued_bytes;
    };
    if (!cv_.wait_until(lock, deadline, has_room)) {
      const size_t queued = link.out_bytes;
      lock.unlock();
      return poison_.set({Code::kDeadlineExceeded, "rank " + std::to_string(rank_) + ": send to " + peer_name(dst) +
                                                       " with tag " + std::to_string(tag) + ": " + std::to_string(queued) +
                                                       " bytes still queued for it at the deadline"});
    }
    if (!link.gone.ok()) {
      Status gone = link.gone;
      lock.unlock();
      return poison_.set(gone);
    }
    link.out_bytes += frame.size();
    link.out.push_back(std::move(frame));
    if (!link.writing) {
      link.writing = true;
      asio::post(io(), [this, dst] { write_front(dst); });
    }
    return {};
  }

  StatusOr<Message> recv(int src, uint32_t tag, Deadline deadline) override {
    SHOAL_CHECK(src == kAnySource || (src >= 0 && src < size()));
    SHOAL_CHECK_LE(tag, kMaxTag);
    SHOAL_RETURN_IF_ERROR(poison_.get());
    StatusOr<Message> m = mailbox_.pop(src, tag, deadline);
    if (!m.ok() && m.status().code() != Code::kDeadlineExceeded) return poison_.set(m.status());
    return m;
  }

 private:
  struct Link {
    std::shared_ptr<tcp::Socket> socket;  // null at the own rank
    FrameHeader in_header;                // io thread only
    std::vector<std::byte> in_payload;    // io thread only
    std::deque<std::vector<std::byte>> out;  // frames to write; the front one is being written
    size_t out_bytes = 0;
    bool writing = false;
    bool input_ended = false;  // EOF or error on the read side, or the socket closed
    Status gone;  // ok while the connection is up
  };

  static std::vector<std::string> names(const std::vector<PeerAddress>& peers) {
    std::vector<std::string> n;
    for (size_t r = 0; r < peers.size(); ++r) n.push_back(tcp::peer_name(int(r), peers));
    return n;
  }

  asio::io_context& io() { return listener_->io; }

  bool flushed_locked() const {
    for (const Link& link : links_)
      if (!link.out.empty() && link.gone.ok()) return false;
    return true;
  }

  bool inputs_ended_locked() const {
    for (const Link& link : links_)
      if (link.socket && !link.input_ended) return false;
    return true;
  }

  void read_header(int peer) {
    Link& link = links_[size_t(peer)];
    asio::async_read(*link.socket, asio::buffer(&link.in_header, sizeof(FrameHeader)), [this, peer](error_code ec, size_t) {
      if (ec) return read_failed(peer, ec);
      const FrameHeader& h = links_[size_t(peer)].in_header;
      if (h.magic != tcp::kFrameMagic) return link_failed(peer, "protocol error: bad frame magic");
      if (h.tag > kMaxTag) return link_failed(peer, "protocol error: tag " + std::to_string(h.tag) + " out of range");
      if (h.length > kMaxMessageBytes) return link_failed(peer, "protocol error: frame of " + std::to_string(h.length) + " bytes");
      links_[size_t(peer)].in_payload = std::vector<std::byte>(h.length);
      read_payload(peer);
    });
  }

  void read_payload(int peer) {
    Link& link = links_[size_t(peer)];
    asio::async_read(*link.socket, asio::buffer(link.in_payload), [this, peer](error_code ec, size_t) {
      if (ec) return read_failed(peer, ec);
      Link& link = links_[size_t(peer)];
      mailbox_.push(peer, link.in_header.tag, std::move(link.in_payload));
      read_header(peer);
    });
  }

  void read_failed(int peer, error_code ec) {
    if (closing_) return end_input(peer);
    link_failed(peer, ec == asio::error::eof ? "connection closed" : "connection lost: " + ec.message());
  }

  void write_front(int peer) {
    std::lock_guard<std::mutex> lock(mu_);
    Link& link = links_[size_t(peer)];
    asio::async_write(*link.socket, asio::buffer(link.out.front()), [this, peer](error_code ec, size_t) { written(peer, ec); });
  }

  void written(int peer, error_code ec) {
    std::unique_lock<std::mutex> lock(mu_);
    Link& link = links_[size_t(peer)];
    if (ec) {
      link.out.clear();
      link.out_bytes = 0;
      link.writing = false;
      cv_.notify_all();
      lock.unlock();
      if (!closing_) link_failed(peer, "send failed: " + ec.message());
      return;
    }
    link.out_bytes -= link.out.front().size();
    link.out.pop_front();
    cv_.notify_all();
    const bool more = !link.out.empty();
    link.writing = more;
    lock.unlock();
    if (more) write_front(peer);
  }

  // The peer is gone for good: senders and receivers waiting for it fail; the socket closes,
  // which cancels a write in flight (written() then drops the queue).
  void link_failed(int peer, const std::string& what) {
    Link& link = links_[size_t(peer)];
    const Status status(Code::kUnavailable, peer_name(peer) + ": " + what);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!link.gone.ok()) return;
      link.gone = status;
    }
    cv_.notify_all();
    mailbox_.mark_gone(peer, status);
    error_code ignored;
    link.socket->close(ignored);
    end_input(peer);
  }

  void end_input(int peer) {
    std::lock_guard<std::mutex> lock(mu_);
    links_[size_t(peer)].input_ended = true;
    cv_.notify_all();
  }

  void half_close_all() {
    closing_ = true;
    for (Link& link : links_) {
      error_code ignored;
      if (link.socket) link.socket->shutdown(asio::socket_base::shutdown_send, ignored);
    }
  }

  void close_all() {
    for (Link& link : links_) {
      error_code ignored;
      if (link.socket) link.socket->close(ignored);
    }
  }

  const int rank_;
  const std::vector<PeerAddress> peers_;  // [size]
  const TcpOptions options_;
  std::unique_ptr<TcpListener::Impl> listener_;  // owns the io_context: declared before the sockets
  std::vector<Link> links_;                      // [size]
  std::mutex mu_;
  std::condition_variable cv_;  // a queue shrank or a link went
  Mailbox mailbox_;
  Poison poison_;
  bool closing_ = false;  // io thread only: the destructor has begun to close
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::thread io_thread_;
};

}  // namespace

std::string to_string(const PeerAddress& address) { return address.host + ":" + std::to_string(address.port); }

TcpListener::TcpListener(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TcpListener::TcpListener(TcpListener&&) noexcept = default;
TcpListener& TcpListener::operator=(TcpListener&&) noexcept = default;
TcpListener::~TcpListener() = default;

std::unique_ptr<TcpListener::Impl> TcpListener::release() { return std::move(impl_); }

uint16_t TcpListener::port() const {
  error_code ec;
  return impl_->acceptor.local_endpoint(ec).port();
}

StatusOr<TcpListener> TcpListener::bind(const std::string& host, uint16_t port) {
  auto impl = std::make_unique<Impl>();
  const std::string where = host + ":" + std::to_string(port);
  error_code ec;
  boost::asio::ip::tcp::resolver resolver(impl->io);
  auto found = resolver.resolve(host, std::to_string(port), boost::asio::ip::tcp::resolver::passive, ec);
  if (ec || found.empty()) return Status(Code::kInvalidArgument, "cannot listen on " + where + ": " + ec.message());
  const auto endpoint = found.begin()->endpoint();
  auto& acceptor = impl->acceptor;
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(boost::asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(boost::asio::socket_base::max_listen_connections, ec);
  if (ec) return Status(Code::kUnavailable, "cannot listen on " + where + ": " + ec.message());
  return TcpListener(std::move(impl));
}

StatusOr<std::unique_ptr<Transport>> connect_tcp(int rank, std::vector<PeerAddress> peers, TcpListener listener,
                                                 Deadline deadline, TcpOptions options) {
  SHOAL_CHECK(rank >= 0 && rank < int(peers.size()));
  std::unique_ptr<TcpListener::Impl> impl = listener.release();
  SHOAL_CHECK(impl != nullptr);
  StatusOr<tcp::Sockets> sockets = tcp::build_mesh(*impl, rank, peers, deadline);
  if (!sockets.ok()) return sockets.status();
  return std::unique_ptr<Transport>(
      new TcpTransport(rank, std::move(peers), std::move(impl), std::move(*sockets), options));
}

}  // namespace shoal::comm
