// A node's side of one session with a coordinator (rank 0), the same for every way of starting:
// wait for the Hello, check protocol, build and the weights' fingerprint (refusing a mismatch
// with both sides named), load the units the plan gives this rank, answer Loaded, then serve
// micro-batches and expert requests and send heartbeats until the coordinator says Shutdown or
// the transport fails.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>

#include "comm/transport.h"
#include "model/checkpoint.h"
#include "model/lora.h"
#include "node/worker.h"

namespace shoal {



// What a node keeps between sessions: the open checkpoint (so a new plan re-reads only the
// units it did not host before: their pages stay mapped), and how it was started.
struct NodeState {
  std::filesystem::path model_dir;  // --model of `shoal node`; empty: the Hello's
  std::vector<LoraSpec> loras;      // --lora of `shoal node`: its copies of the adapters (by name; one unnamed:
                                    // the coordinator's only adapter); others: the Hello's path
  std::string build_id;             // this binary's build id (tests may override it)
  std::unique_ptr<Checkpoint> ck;
  std::vector<std::unique_ptr<LoraAdapter>> adapters;  // the session's adapters (Hello.adapters), by id
  std::chrono::milliseconds hello_timeout{std::chrono::minutes(10)};
  // The last session's units, kept for the next coordinator: a Hello that asks for exactly the
  // same (plan, rank, sizes, weights, adapters, numerics) reuses them instead of loading again
  // (a cluster healing after another node was lost). `worker_key` says what they are.
  std::unique_ptr<Worker> worker;
  std::string worker_key;
  int sessions_reused = 0;  // sessions that reused the units
};

struct SessionEnd {
  bool exit_process = false;  // the coordinator asked the node to exit
};

// Serves one session on t as rank t.rank() >= 1. A refused Hello is an error (after the
// coordinator was told why); so is a transport failure.
StatusOr<SessionEnd> serve_session(comm::Transport& t, NodeState& state);

// This machine's host name ("?" when it cannot be read): how hellos and errors name a side.
std::string host_name();

// This build's id: "<version>+<git commit>" (SHOAL_TEST_BUILD_ID overrides it, for tests).
std::string build_id();

}  // namespace shoal
