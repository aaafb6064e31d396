// Transport: the one narrow, tagged point-to-point interface every transport implements
// (inproc/: ranks as threads; tcp/: Boost.Asio; mpi/: Open MPI, UCX underneath). Collectives
// and the MoE expert exchange are free functions on top (collectives.h, expert_exchange.h),
// written once and tested on every transport. docs/comm.md has the long form.
//
// Contract
// - Ranks are 0..size()-1. send() addresses one rank with a tag in [0, kMaxTag]; recv() matches
//   (src, tag), src may be kAnySource. Sending to oneself is allowed.
// - Order: messages from one sender to one receiver with one tag arrive in the order they were
//   sent (sends issued from one thread). Nothing is promised across tags or across senders;
//   recv(kAnySource) takes the earliest arrival among the senders.
// - send() copies the payload and returns once the transport owns the copy; delivery is
//   asynchronous and never waits for the receiver to call recv(), so every rank may send to
//   all and then receive from all. send() waits only for room, when more than a transport's
//   limit of bytes is still queued towards that peer, and then only until its deadline.
// - Every wait has a deadline (steady clock). Nothing blocks forever:
//   * a silent peer: recv() returns kDeadlineExceeded naming the rank, host and tag;
//   * a peer that is gone (connection closed, rank killed, MPI error): kUnavailable naming
//     "rank N (host)". Messages that arrived from it before it went are still delivered; the
//     error comes when a recv() would have to wait for it or a send() goes to it. recv(kAnySource)
//     fails once any peer is gone and no queued message matches.
// - Poisoning: a recv() deadline that expires before a matching message began to arrive leaves
//   the transport usable (nothing was consumed; a later recv() gets the message). Every other
//   error poisons the transport: that call and every later call return the first error at
//   once. The caller rebuilds the transport (gloo's rule).
// - Bugs are not statuses: a rank or tag out of range, or a payload over kMaxMessageBytes,
//   fails a SHOAL_CHECK.
// - All methods may be called from several threads at once.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"

namespace shoal::comm {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

inline Deadline deadline_after(std::chrono::milliseconds timeout) { return Clock::now() + timeout; }

constexpr int kAnySource = -1;
// The smallest tag bound among our transports: Open MPI's pml ucx has MPI_TAG_UB = 2^23 - 1.
constexpr uint32_t kMaxTag = (1u << 23) - 1;
// MPI counts are int; bigger payloads are split by the caller.
constexpr size_t kMaxMessageBytes = (size_t{1} << 31) - 1;

struct Message {
  int src = -1;
  uint32_t tag = 0;
  std::vector<std::byte> payload;
};

class Transport {
 public:
  virtual ~Transport() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Queues a copy of payload for dst; see the contract above for when it waits.
  virtual Status send(int dst, uint32_t tag, std::span<const std::byte> payload,
                      Deadline deadline) = 0;

  // The next message from src (or any rank) with this tag, waiting at most until deadline.
  virtual StatusOr<Message> recv(int src, uint32_t tag, Deadline deadline) = 0;

  // "rank N (host:port)" or "rank N (host)": how errors name a peer.
  virtual std::string peer_name(int rank) const = 0;
};

// Byte views of plain arrays, for send().
template <typename T>
std::span<const std::byte> as_bytes_of(std::span<const T> values) {
  return std::as_bytes(values);
}
inline std::span<const std::byte> as_bytes_of(const std::string& text) {
  return std::as_bytes(std::span<const char>(text.data(), text.size()));
}

}  // namespace shoal::comm
