// A cluster of N ranks as threads of this process over the in-process transport
// (`--local-nodes N`, and tests): rank 0 is returned, ranks 1..N-1 serve sessions on their own
// threads, joined when the cluster shuts down.
#pragma once

#include <memory>

#include "coordinator/cluster.h"

namespace shoal {

StatusOr<std::unique_ptr<Cluster>> start_local_cluster(int n_ranks, ClusterOptions options);

}  // namespace shoal
