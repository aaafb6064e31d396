// The per-rank bodies of the comm tests, one table shared by test_comm.cpp (ranks as threads
// over the in-process and TCP transports) and test_comm_mpi.cpp (ranks as MPI processes under
// mpirun). A body runs on every rank at once and returns ok, or what went wrong on that rank;
// it never asserts, so it is safe on any thread and the harness reports per rank.
#pragma once

#include <chrono>
#include <functional>
#include <span>
#include <string>

#include "comm/transport.h"

namespace shoal::comm::testing {

// Generous but bounded: the machine may be a loaded 2-core VM running 5 ranks.
constexpr std::chrono::seconds kTimeout{20};

struct CommCase {
  const char* name;
  Status (*body)(Transport& t);
};

// Every case that runs on any transport and any number of ranks >= 2.
std::span<const CommCase> comm_cases();

// A peer dies mid-run: rank size-1 calls die() (the transport's kill hook, or closing its
// transport) and must not touch t afterwards; the others must see kUnavailable naming it,
// within seconds, and then fail fast with the same error (the transport is poisoned).
Status dead_peer_body(Transport& t, const std::function<void()>& die);

}  // namespace shoal::comm::testing
