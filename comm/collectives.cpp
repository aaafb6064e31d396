#include "comm/collectives.h"

#include "common/check.h"

namespace shoal::comm {

Status barrier(Transport& t, uint32_t tag, Deadline deadline) {
  // Everyone checks in with rank 0, then rank 0 lets everyone go.
  SHOAL_ASSIGN_OR_RETURN(std::vector<Blob> arrived, gather(t, 0, {}, tag, deadline));
  (void)arrived;
  SHOAL_ASSIGN_OR_RETURN(Blob released, broadcast(t, 0, {}, tag, deadline));
  (void)released;
  return {};
}

StatusOr<Blob> broadcast(Transport& t, int root, std::span<const std::byte> data, uint32_t tag,
                         Deadline deadline) {
  SHOAL_CHECK(root >= 0 && root < t.size());
  if (t.rank() != root) {
    SHOAL_ASSIGN_OR_RETURN(Message m, t.recv(root, tag, deadline));
    return std::move(m.payload);
  }
  for (int r = 0; r < t.size(); ++r) {
    if (r != root) SHOAL_RETURN_IF_ERROR(t.send(r, tag, data, deadline));
  }
  return Blob(data.begin(), data.end());
}

StatusOr<std::vector<Blob>> gather(Transport& t, int root, std::span<const std::byte> data,
                                   uint32_t tag, Deadline deadline) {
  SHOAL_CHECK(root >= 0 && root < t.size());
  std::vector<Blob> all;
  if (t.rank() != root) {
    SHOAL_RETURN_IF_ERROR(t.send(root, tag, data, deadline));
    return all;
  }
  all.resize(size_t(t.size()));
  for (int r = 0; r < t.size(); ++r) {
    if (r == root) {
      all[size_t(r)].assign(data.begin(), data.end());
      continue;
    }
    SHOAL_ASSIGN_OR_RETURN(Message m, t.recv(r, tag, deadline));
    all[size_t(r)] = std::move(m.payload);
  }
  return all;
}

StatusOr<std::vector<Blob>> allgather(Transport& t, std::span<const std::byte> data, uint32_t tag,
                                      Deadline deadline) {
  // Sends are buffered (transport.h), so everyone sends to all first and then receives.
  for (int r = 0; r < t.size(); ++r) {
    if (r != t.rank()) SHOAL_RETURN_IF_ERROR(t.send(r, tag, data, deadline));
  }
  std::vector<Blob> all(size_t(t.size()));
  for (int r = 0; r < t.size(); ++r) {
    if (r == t.rank()) {
      all[size_t(r)].assign(data.begin(), data.end());
      continue;
    }
    SHOAL_ASSIGN_OR_RETURN(Message m, t.recv(r, tag, deadline));
    all[size_t(r)] = std::move(m.payload);
  }
  return all;
}

}  // namespace shoal::comm
