// TCP transport (Boost.Asio): a full mesh of connections between the ranks of a peer table.
// Rank i connects to every lower rank and accepts every higher one; each connection starts
// with a Hello exchange (tcp/frame.h). A background io thread reads every connection eagerly
// into the rank's mailbox and writes the per-peer send queues, so send() never waits for the
// receiver to call recv(). A closed or broken connection marks that peer gone: kUnavailable
// "rank N (host:port): ...".
//
// Bootstrap (who listens where) is apart: it binds a TcpListener on every rank (port 0 for an
// ephemeral port), publishes the ports, and hands the resulting table to connect_tcp().
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/transport.h"

namespace shoal::comm {

struct PeerAddress {
  std::string host;  // a name or a numeric address
  uint16_t port = 0;
};
std::string to_string(const PeerAddress& address);  // "host:port"

// A bound, listening socket, made before the peer table exists so that port 0 works.
class TcpListener {
 public:
  // host "127.0.0.1" or "0.0.0.0" or a local address; port 0 picks a free one.
  static StatusOr<TcpListener> bind(const std::string& host, uint16_t port);
  TcpListener(TcpListener&&) noexcept;
  TcpListener& operator=(TcpListener&&) noexcept;
  ~TcpListener();

  uint16_t port() const;

  struct Impl;
  std::unique_ptr<Impl> release();

 private:
  explicit TcpListener(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct TcpOptions {
  // Bytes queued towards one peer before send() waits for room (until its deadline).
  size_t max_queued_bytes = size_t{256} << 20;
  // Destruction waits up to this long for queued sends to reach the sockets, and again up to
  // this long for the peers to close their side after ours is half-closed.
  std::chrono::milliseconds close_timeout{5000};
};

// Connects rank `rank` of peers.size() ranks into the full mesh. peers[r] is where rank r
// listens (peers[rank] is this rank's own listener, used only in names). Fails with
// kDeadlineExceeded naming the ranks not reached by the deadline, kInvalidArgument when a
// peer answers with another rank or world size than the table says.
StatusOr<std::unique_ptr<Transport>> connect_tcp(int rank, std::vector<PeerAddress> peers,
                                                 TcpListener listener, Deadline deadline,
                                                 TcpOptions options = {});

}  // namespace shoal::comm
