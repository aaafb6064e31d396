// Admission: how a coordinator takes a set of `shoal node --listen HOST:PORT --token-file F`
// processes into one TCP transport world (docs/comm.md, "TCP admission (shoal node)").
//
// Each node keeps a NodeListener open across coordinators. A coordinator dials every node
// (connect_nodes); on each control connection the two sides run a challenge-response
// handshake over a shared cluster token (HMAC-SHA256; the token never travels), compare
// protocol versions and build ids, and the node reports the port of a fresh data listener.
// When every node has said yes, the coordinator sends each node the peer table and all ranks
// build the data mesh with connect_tcp(). The coordinator is rank 0; the N-th node of its
// list ("node N") becomes rank N.
//
// Every wait is bounded: the node by its accept deadline, the handshake timeout, and the
// deadline the coordinator announces; the coordinator by its one deadline.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "comm/tcp/tcp_transport.h"
#include "comm/transport.h"

namespace shoal::comm {

struct AdmissionInfo {
  uint32_t protocol_version = 0;  // the caller's wire protocol version
  std::string build_id;           // e.g. git commit of the build (at most 256 bytes)
};

// Node side. One call of accept_coordinator() at a time (not thread-safe).
class NodeListener {
 public:
  // Listens on host:port (port 0: ephemeral, for tests). The socket stays open across
  // coordinators, for the life of the NodeListener.
  static StatusOr<NodeListener> bind(const std::string& host, uint16_t port);
  NodeListener(NodeListener&&) noexcept;
  NodeListener& operator=(NodeListener&&) noexcept;
  ~NodeListener();

  uint16_t port() const;

  // Waits until `deadline` for the next coordinator, runs the admission with it, then joins the
  // data mesh and returns this node's Transport (rank >= 1; rank 0 is the coordinator).
  // Status codes:
  // - kDeadlineExceeded: nobody came by `deadline`, and only that. The caller calls again.
  // - kInvalidArgument: the coordinator was refused: wrong cluster token, another build id,
  //   a malformed message; kUnimplemented: another protocol version. The coordinator was told
  //   why (both sides' values, never the token) and disconnected.
  // - kUnavailable: the coordinator went silent for more than handshake_timeout, closed the
  //   connection, aborted the admission (another node failed), or the data mesh failed.
  // Messages name the coordinator's address. The listener keeps working after any of them:
  // log the status and call again. Connections are served one at a time, so a client that
  // connects and says nothing holds the node for up to handshake_timeout.
  StatusOr<std::unique_ptr<Transport>> accept_coordinator(
      const std::string& token, const AdmissionInfo& mine, Deadline deadline,
      std::chrono::milliseconds handshake_timeout = std::chrono::seconds(10));

  struct Impl;

 private:
  explicit NodeListener(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Coordinator side: connects to every node (nodes[i] becomes rank i + 1, "node i+1"; this
// process is rank 0), runs the admission with each, and builds the full mesh among all ranks.
// Errors name the node: "node 2 (127.0.0.1:7001): refused: wrong cluster token",
// "node 1 (...): refused: build id abc on the coordinator, def on the node",
// "node 3 (...): not reachable: Connection refused". Codes: kInvalidArgument (refused,
// malformed, bad arguments), kUnimplemented (another protocol version), kUnavailable
// (unreachable, connection closed), kDeadlineExceeded (no answer by `deadline`). Every wait
// is bounded by `deadline`; the first failure ends the admission at once.
StatusOr<std::unique_ptr<Transport>> connect_nodes(const std::vector<PeerAddress>& nodes,
                                                   const std::string& token, const AdmissionInfo& mine,
                                                   Deadline deadline);

// Reads a cluster token file: the whole file, trailing whitespace (newline) stripped. An
// unreadable file is kNotFound, an empty one kInvalidArgument, naming the file. The mode of the
// file is not checked; it should be 600 (readable by its owner only).
StatusOr<std::string> read_token_file(const std::filesystem::path& file);

}  // namespace shoal::comm
