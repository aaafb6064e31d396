// The MoE expert exchange over any Transport (DeepEP's dispatch/combine, written once):
//
//   dispatch: every rank sends each of its token rows, once per destination, to the ranks that
//             own an expert the token chose, with the token index and those expert ids;
//   (each rank runs its experts on what it received: ExpertWork.tasks, outputs in task order)
//   combine:  owners send the outputs back; each rank computes, per token,
//             out[t] = sum over the token's experts in ascending expert id of weight * y,
//             so the result does not depend on placement or arrival order. (The runtime's
//             workers use the combine tree of model/expert_combine.h instead.)
//
// Every rank calls both, with the same tags, even with no tokens: each rank sends exactly one
// message to every rank (itself included) per call, so the receiver knows when it has all.
// A malformed message from a peer is kInternal naming the rank; transport errors pass through.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "comm/transport.h"

namespace shoal::comm {

// The gate's decision for the tokens of this rank, and where each expert lives.
struct Routing {
  int64_t n_tokens = 0;
  int64_t topk = 0;
  std::span<const int32_t> idx;           // [n_tokens, topk] expert ids, distinct per token
  std::span<const float> weight;          // [n_tokens, topk] their combine weights
  std::span<const int32_t> expert_owner;  // [n_routed_experts] rank hosting each expert
};

// One expert applied to one received row.
struct ExpertTask {
  int32_t row = 0;     // index into ExpertWork rows
  int32_t expert = 0;  // an expert this rank owns
};

// What this rank received: rows grouped by source rank (ascending), then in token order.
struct ExpertWork {
  int64_t dim = 0;
  std::vector<float> x;            // [n_rows, dim]
  std::vector<int32_t> row_src;    // [n_rows] rank that sent the row
  std::vector<int32_t> row_token;  // [n_rows] token index on that rank
  std::vector<ExpertTask> tasks;   // [n_tasks] what to compute; outputs go in this order

  int64_t n_rows() const { return int64_t(row_src.size()); }
};

// Sends the rows of x [n_tokens, dim] to the owners of their experts; returns this rank's work.
StatusOr<ExpertWork> dispatch(Transport& t, std::span<const float> x, int64_t dim, const Routing& routing,
                              uint32_t tag, Deadline deadline);

// Sends y [work.tasks.size(), dim] back to the sources and writes out [routing.n_tokens, dim]
// = the weighted sum per token (out is overwritten). `routing` is the one given to dispatch.
Status combine(Transport& t, std::span<float> out, const ExpertWork& work, std::span<const float> y,
               const Routing& routing, uint32_t tag, Deadline deadline);

}  // namespace shoal::comm
