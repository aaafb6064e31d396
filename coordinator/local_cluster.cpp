#include "coordinator/local_cluster.h"

#include <cstdio>
#include <thread>

#include "comm/inproc/inproc_transport.h"
#include "node/session.h"

namespace shoal {

StatusOr<std::unique_ptr<Cluster>> start_local_cluster(int n, ClusterOptions o) {
  if (n < 1) return invalid_argument("a local cluster needs at least one rank, not " + std::to_string(n));
  auto world = std::make_shared<comm::InprocWorld>(n);
  std::unique_ptr<comm::Transport> t0 = world->transport(0);
  auto threads = std::make_shared<std::vector<std::thread>>();
  for (int r = 1; r < n; ++r) {
    threads->emplace_back([world, t = std::shared_ptr<comm::Transport>(world->transport(r))] {
      NodeState st;
      st.build_id = build_id();
      auto end = serve_session(*t, st);
      if (!end.ok()) std::fprintf(stderr, "shoal: rank %d: %s\n", t->rank(), end.status().to_string().c_str());
    });
  }
  auto join = [threads] {
    for (auto& th : *threads)
      if (th.joinable()) th.join();
  };
  o.nodes_exit = true;
  auto c = Cluster::start(std::move(t0), o);
  if (!c.ok()) {
    world->kill(0);  // the node threads see rank 0 gone and end
    join();
    return c.status();
  }
  (*c)->on_shutdown(join);
  return c;
}

}  // namespace shoal
