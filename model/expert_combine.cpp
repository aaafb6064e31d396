#include "model/expert_combine.h"

#include <algorithm>

#include "common/check.h"

namespace shoal {

int32_t combine_width(int64_t n_experts) {
  int32_t p = 1;
  while (p < n_experts) p *= 2;
  return p;
}

std::vector<CombineNode> maximal_nodes(const std::vector<bool>& mine) {
  std::vector<CombineNode> out;
  const int32_t n = int32_t(mine.size());
  for (int32_t lo = 0; lo < n;) {
    if (!mine[size_t(lo)]) {
      ++lo;
      continue;
    }
    // The largest aligned node starting at lo whose experts are all mine.
    int32_t size = 1;
    while (lo % (2 * size) == 0 && lo + 2 * size <= n &&
           std::all_of(mine.begin() + lo + size, mine.begin() + lo + 2 * size, [](bool b) { return b; }))
      size *= 2;
    out.push_back({lo, size});
    lo += size;
  }
  return out;
}

namespace {

// combine_sum with `scratch` holding one `dim` row per level below `node` for right-hand sides.
void sum_into(float* out, CombineNode node, std::span<const CombineTerm> terms, int64_t dim, float* scratch) {
  SHOAL_CHECK(!terms.empty());
  if (terms.size() == 1 && terms[0].node.lo == node.lo && terms[0].node.size == node.size) {
    std::copy_n(terms[0].value, dim, out);
    return;
  }
  SHOAL_CHECK(node.size > 1);
  const int32_t mid = node.lo + node.size / 2;
  const auto split = std::partition_point(terms.begin(), terms.end(), [&](const CombineTerm& t) { return t.node.lo < mid; });
  const std::span<const CombineTerm> left(terms.begin(), split), right(split, terms.end());
  const CombineNode l{node.lo, node.size / 2}, r{mid, node.size / 2};
  if (left.empty() || right.empty()) {  // the empty side is +0.0
    sum_into(out, left.empty() ? r : l, left.empty() ? right : left, dim, scratch);
    for (int64_t d = 0; d < dim; ++d) out[d] = out[d] + 0.0f;
    return;
  }
  float* rhs = scratch;
  sum_into(out, l, left, dim, scratch + dim);
  sum_into(rhs, r, right, dim, scratch + dim);
  for (int64_t d = 0; d < dim; ++d) out[d] = out[d] + rhs[d];
}

}  // namespace

void combine_sum(float* out, CombineNode node, std::span<const CombineTerm> terms, int64_t dim) {
  int64_t depth = 0;
  for (int32_t s = node.size; s > 1; s /= 2) ++depth;
  static thread_local std::vector<float> scratch;
  if (int64_t(scratch.size()) < (depth + 1) * dim) scratch.resize(static_cast<size_t>((depth + 1) * dim));
  sum_into(out, node, terms, dim, scratch.data());
}

}  // namespace shoal

namespace shoal {

std::map<int, std::vector<CombineNode>> maximal_nodes_by_owner(const std::vector<int>& owner) {
  std::map<int, std::vector<bool>> mine;
  for (size_t e = 0; e < owner.size(); ++e) {
    std::vector<bool>& m = mine[owner[e]];
    m.resize(owner.size(), false);
    m[e] = true;
  }
  std::map<int, std::vector<CombineNode>> out;
  for (const auto& [rank, m] : mine) out[rank] = maximal_nodes(m);
  return out;
}

std::vector<CombineNode> weighted_partials(float* out, std::span<const CombineNode> nodes, std::span<const int32_t> ids,
                                           std::span<const float* const> outputs, std::span<const float> weights,
                                           int64_t dim) {
  SHOAL_CHECK(outputs.size() == ids.size() && weights.size() == ids.size());
  std::vector<float> leaves(ids.size() * size_t(dim));
  for (size_t j = 0; j < ids.size(); ++j)
    for (int64_t d = 0; d < dim; ++d) leaves[j * size_t(dim) + size_t(d)] = outputs[j][d] * weights[j];
  std::vector<CombineNode> used;
  std::vector<CombineTerm> terms;
  for (const CombineNode& node : nodes) {
    terms.clear();
    for (size_t j = 0; j < ids.size(); ++j)
      if (node.contains(ids[j])) terms.push_back({{ids[j], 1}, leaves.data() + j * size_t(dim)});
    if (terms.empty()) continue;
    combine_sum(out + int64_t(used.size()) * dim, node, terms, dim);
    used.push_back(node);
  }
  return used;
}

}  // namespace shoal
