// Collectives as free functions over any Transport, written once and tested on every
// transport (STYLE 8). Every rank calls the same collective in the same order with the same
// tag; one deadline bounds the whole call. Errors are the transport's: kDeadlineExceeded or
// kUnavailable naming the rank that was waited for. A tag in use by a collective must not
// carry other traffic between the same ranks at the same time.
//
// Shapes are star-shaped (the root talks to every rank): right for the tens of ranks shoal
// pools; a tree is a local change here if that ever matters.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "comm/transport.h"

namespace shoal::comm {

using Blob = std::vector<std::byte>;

// Returns on every rank once every rank has entered.
Status barrier(Transport& t, uint32_t tag, Deadline deadline);

// root's data on every rank (data is read on the root only).
StatusOr<Blob> broadcast(Transport& t, int root, std::span<const std::byte> data, uint32_t tag,
                         Deadline deadline);

// Every rank's data, indexed by rank, on the root; an empty vector elsewhere.
StatusOr<std::vector<Blob>> gather(Transport& t, int root, std::span<const std::byte> data,
                                   uint32_t tag, Deadline deadline);

// Every rank's data, indexed by rank, on every rank.
StatusOr<std::vector<Blob>> allgather(Transport& t, std::span<const std::byte> data, uint32_t tag,
                                      Deadline deadline);

}  // namespace shoal::comm
