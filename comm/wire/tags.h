// Tags and version of the runtime's wire protocol (wire.proto has the messages). Each tag is
// one kind of traffic, so a rank's threads can wait on their own tag without seeing the others'.
#pragma once

#include <cstdint>

namespace shoal::wire {

constexpr uint32_t kWireVersion = 10;

enum Tag : uint32_t {
  kControl = 1,        // Control: Hello, Loaded, Shutdown
  kHeartbeat = 2,      // Heartbeat, node -> coordinator
  kHidden = 3,         // MicroBatch along the pipeline
  kResult = 4,         // Result, head -> coordinator
  kExpertRequest = 5,  // ExpertRequest, attention rank -> expert owner
  kExpertReply = 6,    // ExpertReply, expert owner -> attention rank
};

}  // namespace shoal::wire
