// In-process transport: N ranks as threads of one process (`--local-nodes N`, and the tests).
// A send copies the payload into the receiver's mailbox; recv waits on a condition variable
// with the deadline. Ranks are named "rank N (inproc)".
#pragma once

#include <memory>

#include "comm/transport.h"

namespace shoal::comm {

class InprocWorld {
 public:
  explicit InprocWorld(int size);
  ~InprocWorld();
  InprocWorld(const InprocWorld&) = delete;
  InprocWorld& operator=(const InprocWorld&) = delete;

  int size() const;

  // The transport of one rank; call once per rank. It may outlive the world.
  std::unique_ptr<Transport> transport(int rank);

  // Test hook: `rank` dies. Every other rank sees it as gone (kUnavailable "rank N (inproc):
  // killed"); its own transport fails every call from now on. Destroying a rank's transport
  // has the same effect for the others, with "transport closed".
  void kill(int rank);

  struct State;

 private:
  std::shared_ptr<State> state_;
};

}  // namespace shoal::comm
