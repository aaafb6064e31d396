#include "comm/expert_exchange.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "comm/bytes.h"
#include "common/check.h"

namespace shoal::comm {
namespace {

// Message layouts (bytes.h encoding; every array 4-byte aligned):
//   dispatch: u32 n_rows, u32 n_tasks, u32 dim, i32 token[n_rows], i32 task_row[n_tasks],
//             i32 task_expert[n_tasks], f32 x[n_rows, dim]
//   combine:  u32 n, u32 dim, i32 token[n], i32 expert[n], f32 y[n, dim]

void check_routing(const Routing& r, int world) {
  SHOAL_CHECK(r.n_tokens >= 0 && r.topk >= 0);
  SHOAL_CHECK_EQ(r.idx.size(), size_t(r.n_tokens * r.topk));
  SHOAL_CHECK_EQ(r.weight.size(), size_t(r.n_tokens * r.topk));
  for (int32_t e : r.idx) SHOAL_CHECK(e >= 0 && size_t(e) < r.expert_owner.size());
  for (int32_t owner : r.expert_owner) SHOAL_CHECK(owner >= 0 && owner < world);
}

Status malformed(const Transport& t, int src, const char* kind, const std::string& what) {
  return internal_error("rank " + std::to_string(t.rank()) + ": malformed " + kind + " message from " +
                        t.peer_name(src) + ": " + what);
}

// The rows (once each) and tasks of the local tokens that have an expert on rank dst.
ByteWriter dispatch_message(std::span<const float> x, int64_t dim, const Routing& r, int dst) {
  std::vector<int32_t> tokens, task_row, task_expert;
  for (int64_t t = 0; t < r.n_tokens; ++t) {
    bool sent = false;
    for (int64_t j = 0; j < r.topk; ++j) {
      const int32_t e = r.idx[size_t(t * r.topk + j)];
      if (r.expert_owner[size_t(e)] != dst) continue;
      if (!sent) tokens.push_back(int32_t(t));
      sent = true;
      task_row.push_back(int32_t(tokens.size() - 1));
      task_expert.push_back(e);
    }
  }
  ByteWriter w;
  w.put(uint32_t(tokens.size()));
  w.put(uint32_t(task_row.size()));
  w.put(uint32_t(dim));
  w.put_array(std::span<const int32_t>(tokens));
  w.put_array(std::span<const int32_t>(task_row));
  w.put_array(std::span<const int32_t>(task_expert));
  for (int32_t t : tokens) w.put_array(x.subspan(size_t(t * dim), size_t(dim)));
  return w;
}

Status append_dispatch(ExpertWork& work, const Transport& t, int src, std::span<const std::byte> payload,
                       std::span<const int32_t> owner) {
  ByteReader in(payload);
  const auto n_rows = in.get<uint32_t>(), n_tasks = in.get<uint32_t>(), dim = in.get<uint32_t>();
  if (!in.ok()) return malformed(t, src, "dispatch", "short header");
  if (dim != work.dim) return malformed(t, src, "dispatch", "dim " + std::to_string(dim) + ", expected " + std::to_string(work.dim));
  if (in.remaining() != (size_t(n_rows) + 2 * n_tasks) * 4 + size_t(n_rows) * dim * 4)
    return malformed(t, src, "dispatch", "size does not match its counts");
  std::vector<int32_t> tokens(n_rows), task_row(n_tasks), task_expert(n_tasks);
  in.get_array(std::span<int32_t>(tokens));
  in.get_array(std::span<int32_t>(task_row));
  in.get_array(std::span<int32_t>(task_expert));
  const int32_t base = int32_t(work.n_rows());
  for (uint32_t i = 0; i < n_tasks; ++i) {
    const int32_t row = task_row[i], e = task_expert[i];
    if (row < 0 || uint32_t(row) >= n_rows) return malformed(t, src, "dispatch", "task row out of range");
    if (e < 0 || size_t(e) >= owner.size() || owner[size_t(e)] != t.rank())
      return malformed(t, src, "dispatch", "expert " + std::to_string(e) + " is not hosted here");
    work.tasks.push_back({base + row, e});
  }
  const size_t old = work.x.size();
  work.x.resize(old + size_t(n_rows) * dim);
  in.get_array(std::span<float>(work.x).subspan(old));
  work.row_token.insert(work.row_token.end(), tokens.begin(), tokens.end());
  work.row_src.insert(work.row_src.end(), n_rows, src);
  return {};
}

// The outputs of the tasks whose rows came from rank dst.
ByteWriter combine_message(const ExpertWork& work, std::span<const float> y, int dst) {
  std::vector<int32_t> tokens, experts;
  std::vector<size_t> which;
  for (size_t i = 0; i < work.tasks.size(); ++i) {
    const ExpertTask& task = work.tasks[i];
    if (work.row_src[size_t(task.row)] != dst) continue;
    tokens.push_back(work.row_token[size_t(task.row)]);
    experts.push_back(task.expert);
    which.push_back(i);
  }
  ByteWriter w;
  w.put(uint32_t(tokens.size()));
  w.put(uint32_t(work.dim));
  w.put_array(std::span<const int32_t>(tokens));
  w.put_array(std::span<const int32_t>(experts));
  for (size_t i : which) w.put_array(y.subspan(i * size_t(work.dim), size_t(work.dim)));
  return w;
}

using Blob = std::vector<std::byte>;

// Where each (token, k) output sits in the received combine messages.
struct Outputs {
  std::vector<Blob> messages;         // [size] kept alive for the pointers below
  std::vector<const std::byte*> row;  // [n_tokens, topk] f32[dim] each, or null
};

Status place_outputs(Outputs& out, const Transport& t, int src, const Routing& r, int64_t dim) {
  const Blob& msg = out.messages[size_t(src)];
  ByteReader in(msg);
  const auto n = in.get<uint32_t>(), got_dim = in.get<uint32_t>();
  if (!in.ok() || got_dim != dim) return malformed(t, src, "combine", "bad header");
  if (in.remaining() != size_t(n) * 8 + size_t(n) * dim * 4) return malformed(t, src, "combine", "size does not match its count");
  std::vector<int32_t> tokens(n), experts(n);
  in.get_array(std::span<int32_t>(tokens));
  in.get_array(std::span<int32_t>(experts));
  const std::byte* rows = msg.data() + (msg.size() - in.remaining());
  for (uint32_t i = 0; i < n; ++i) {
    const int64_t token = tokens[i];
    if (token < 0 || token >= r.n_tokens) return malformed(t, src, "combine", "token out of range");
    const auto first = r.idx.begin() + token * r.topk, last = first + r.topk;
    const auto hit = std::find(first, last, experts[i]);
    if (hit == last || r.expert_owner[size_t(*hit)] != src) return malformed(t, src, "combine", "an expert the token did not choose there");
    const std::byte*& slot = out.row[size_t(hit - r.idx.begin())];
    if (slot) return malformed(t, src, "combine", "a token's expert output twice");
    slot = rows + size_t(i) * size_t(dim) * 4;
  }
  return {};
}

// out[t] = sum over the token's experts in ascending id of weight * y (moe_forward's order).
void weighted_sum(std::span<float> out, const Outputs& outputs, const Routing& r, int64_t dim) {
  std::vector<int64_t> order(size_t(r.topk));
  std::vector<float> y(static_cast<size_t>(dim));
  for (int64_t t = 0; t < r.n_tokens; ++t) {
    const int64_t base = t * r.topk;
    std::iota(order.begin(), order.end(), base);
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return r.idx[size_t(a)] < r.idx[size_t(b)]; });
    float* o = out.data() + t * dim;
    std::fill(o, o + dim, 0.0f);
    for (int64_t slot : order) {
      std::memcpy(y.data(), outputs.row[size_t(slot)], size_t(dim) * sizeof(float));
      const float w = r.weight[size_t(slot)];
      for (int64_t d = 0; d < dim; ++d) o[d] += y[size_t(d)] * w;
    }
  }
}

}  // namespace

StatusOr<ExpertWork> dispatch(Transport& t, std::span<const float> x, int64_t dim, const Routing& routing,
                              uint32_t tag, Deadline deadline) {
  check_routing(routing, t.size());
  SHOAL_CHECK_EQ(x.size(), size_t(routing.n_tokens * dim));
  for (int dst = 0; dst < t.size(); ++dst) {
    const ByteWriter msg = dispatch_message(x, dim, routing, dst);
    SHOAL_RETURN_IF_ERROR(t.send(dst, tag, msg.bytes(), deadline));
  }
  ExpertWork work;
  work.dim = dim;
  for (int src = 0; src < t.size(); ++src) {
    SHOAL_ASSIGN_OR_RETURN(Message m, t.recv(src, tag, deadline));
    SHOAL_RETURN_IF_ERROR(append_dispatch(work, t, src, m.payload, routing.expert_owner));
  }
  return work;
}

Status combine(Transport& t, std::span<float> out, const ExpertWork& work, std::span<const float> y,
               const Routing& routing, uint32_t tag, Deadline deadline) {
  check_routing(routing, t.size());
  SHOAL_CHECK_EQ(y.size(), work.tasks.size() * size_t(work.dim));
  SHOAL_CHECK_EQ(out.size(), size_t(routing.n_tokens * work.dim));
  for (int dst = 0; dst < t.size(); ++dst) {
    const ByteWriter msg = combine_message(work, y, dst);
    SHOAL_RETURN_IF_ERROR(t.send(dst, tag, msg.bytes(), deadline));
  }
  Outputs outputs{std::vector<Blob>(size_t(t.size())), std::vector<const std::byte*>(routing.idx.size())};
  for (int src = 0; src < t.size(); ++src) {
    SHOAL_ASSIGN_OR_RETURN(Message m, t.recv(src, tag, deadline));
    outputs.messages[size_t(src)] = std::move(m.payload);
    SHOAL_RETURN_IF_ERROR(place_outputs(outputs, t, src, routing, work.dim));
  }
  for (size_t slot = 0; slot < outputs.row.size(); ++slot) {
    if (outputs.row[slot]) continue;
    const int32_t e = routing.idx[slot];
    return internal_error("rank " + std::to_string(t.rank()) + ": no output of expert " + std::to_string(e) +
                          " for token " + std::to_string(slot / size_t(routing.topk)) + " from " +
                          t.peer_name(routing.expert_owner[size_t(e)]));
  }
  weighted_sum(out, outputs, routing, work.dim);
  return {};
}

}  // namespace shoal::comm
