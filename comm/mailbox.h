// Mailbox: the received messages of one rank, matched by (src, tag). The in-process and TCP
// transports deliver into it; recv() waits on it with a deadline. Thread-safe.
//
// Messages from one src with one tag leave in arrival order; kAnySource takes the earliest
// arrival among all sources. A source marked gone still delivers what arrived before; only a
// pop that would have to wait for it fails, with the status given to mark_gone().
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "comm/transport.h"

namespace shoal::comm {

class Mailbox {
 public:
  // peer_names[r] is how errors name rank r ("rank 2 (127.0.0.1:4000)").
  Mailbox(int rank, std::vector<std::string> peer_names);

  void push(int src, uint32_t tag, std::vector<std::byte> payload);
  // src is gone: waiters for it, and for kAnySource, fail with `why` once nothing matches.
  void mark_gone(int src, Status why);
  // The owner stopped (killed or destroyed): every pending and later pop fails with `why`.
  void close(Status why);

  // The next message from src (or kAnySource) with tag; kDeadlineExceeded when none arrived by
  // the deadline, the source's status when it is gone.
  StatusOr<Message> pop(int src, uint32_t tag, Deadline deadline);

 private:
  struct Entry {
    uint64_t seq;  // arrival order, to pick the earliest for kAnySource
    std::vector<std::byte> payload;
  };
  using Key = std::pair<uint32_t, int>;  // (tag, src): all sources of a tag are adjacent

  std::optional<Message> take_locked(int src, uint32_t tag);
  Status failure_locked(int src) const;
  Status deadline_status(int src, uint32_t tag, Clock::time_point start) const;

  const int rank_;
  const std::vector<std::string> peer_names_;  // [size]
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<Key, std::deque<Entry>> queues_;
  std::vector<Status> gone_;  // [size] ok while the peer is there
  Status closed_;
  uint64_t next_seq_ = 0;
};

}  // namespace shoal::comm
