// The one order in which a token's routed experts are summed, whatever the placement: a binary
// tree over expert ids [0, P) (P = n_routed_experts rounded up to a power of two). A leaf is
// weight * output of a selected expert; every inner node is left + right, where a side with no
// selected expert counts as +0.0. Any set of experts that one rank holds splits into aligned
// intervals, which are nodes of this tree ("maximal nodes"), so the rank can sum the experts it
// runs for a token into one partial per node and send only those; the token's rank adds the
// partials up the tree and gets the same bits as one process that summed every leaf (DeepSeek's
// experts are kept whole per group by the planner, so a rank holding a run of whole groups sends
// one or two rows per token instead of one per expert).
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <vector>

namespace shoal {

// The aligned interval [lo, lo + size) of expert ids; size a power of two, lo a multiple of it.
struct CombineNode {
  int32_t lo = 0, size = 0;
  bool contains(int32_t e) const { return e >= lo && e < lo + size; }
};

// P: the tree's width for n_experts leaves.
int32_t combine_width(int64_t n_experts);

// The maximal nodes covering exactly the experts with mine[e] (in ascending order of lo).
std::vector<CombineNode> maximal_nodes(const std::vector<bool>& mine);
// owner[e] is the rank holding expert e: each rank's maximal nodes.
std::map<int, std::vector<CombineNode>> maximal_nodes_by_owner(const std::vector<int>& owner);

// One summand of a token: the node it covers and its value [dim] (a leaf: weight * output).
struct CombineTerm {
  CombineNode node;
  const float* value;
};

// out[dim] = the tree's sum over `node` of `terms` (disjoint nodes inside `node`, ascending lo,
// none empty). `terms` may be leaves, partials of maximal nodes, or a mix.
void combine_sum(float* out, CombineNode node, std::span<const CombineTerm> terms, int64_t dim);

}  // namespace shoal

namespace shoal {

// One token's routed experts inside an owner's maximal `nodes` (the whole tree, {0, P}, for one
// process): the experts' ids in ascending order, each one's output row and gate weight. Writes
// one partial per node that holds at least one of them (its leaves weight * output summed in the
// tree's order), in node order, into out [.., dim], and returns those nodes.
std::vector<CombineNode> weighted_partials(float* out, std::span<const CombineNode> nodes, std::span<const int32_t> ids,
                                           std::span<const float* const> outputs, std::span<const float> weights,
                                           int64_t dim);

}  // namespace shoal
