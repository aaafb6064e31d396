// Connection set-up of the TCP transport: the listener's state and the full-mesh builder.
// Internal to comm/tcp/.
#pragma once

#include <memory>
#include <utility>  // before Asio: Boost 1.74's awaitable.hpp uses std::exchange without it
#include <vector>

#include <boost/asio.hpp>

#include "comm/tcp/tcp_transport.h"

namespace shoal::comm {

struct TcpListener::Impl {
  boost::asio::io_context io;
  boost::asio::ip::tcp::acceptor acceptor{io};
};

namespace tcp {

using Socket = boost::asio::ip::tcp::socket;
using Sockets = std::vector<std::shared_ptr<Socket>>;  // [size] null at the own rank

// Runs `io` on the calling thread until every peer is connected and has answered the Hello,
// or the deadline passes. Leaves no operation pending on `io` and closes the acceptor.
StatusOr<Sockets> build_mesh(TcpListener::Impl& listener, int rank,
                             const std::vector<PeerAddress>& peers, Deadline deadline);

std::string peer_name(int rank, const std::vector<PeerAddress>& peers);

}  // namespace tcp
}  // namespace shoal::comm
