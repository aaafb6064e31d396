// shoal node: a worker for coordinators that connect over TCP (`--nodes`). It admits only a
// coordinator that proves it holds the cluster token, serves its session, and then waits for
// the next coordinator, keeping the checkpoint open, until a coordinator tells it to exit or it
// is killed.
#include <cstdio>

#include "cli/cluster_flags.h"
#include "cli/commands.h"
#include "comm/tcp/admission.h"
#include "comm/wire/tags.h"
#include "node/session.h"

namespace shoal::cli {
namespace {

struct NodeOptions {
  std::string listen = "127.0.0.1:7070";
  std::string token_file;
  std::string model;
  std::vector<std::string> lora;  // this machine's copies of the coordinator's LoRA adapters
  int sessions = 0;  // 0: no limit
};

int run_node(const NodeOptions& o) {
  const size_t colon = o.listen.rfind(':');
  int port = -1;
  try { port = colon == std::string::npos ? -1 : std::stoi(o.listen.substr(colon + 1)); } catch (...) { port = -1; }
  if (colon == std::string::npos || port < 0 || port > 65535)
    return fail(invalid_argument("--listen '" + o.listen + "' is not HOST:PORT"));
  auto token = comm::read_token_file(o.token_file);
  if (!token.ok()) return fail(token.status());
  auto listener = comm::NodeListener::bind(o.listen.substr(0, colon), uint16_t(port));
  if (!listener.ok()) return fail(listener.status());
  std::printf("shoal node: listening on %s:%u\n", o.listen.substr(0, colon).c_str(), unsigned(listener->port()));
  std::fflush(stdout);
  NodeState st;
  st.model_dir = o.model;
  auto loras = parse_lora_specs(o.lora);
  if (!loras.ok()) return fail(loras.status());
  st.loras = *loras;
  st.build_id = build_id();
  const comm::AdmissionInfo mine{wire::kWireVersion, st.build_id};
  for (int served = 0; o.sessions == 0 || served < o.sessions;) {
    auto t = listener->accept_coordinator(*token, mine, comm::deadline_after(std::chrono::minutes(1)));
    if (!t.ok()) {
      if (t.status().code() != Code::kDeadlineExceeded)
        std::fprintf(stderr, "shoal node: %s\n", t.status().to_string().c_str());
      continue;
    }
    ++served;
    std::fprintf(stderr, "shoal node: rank %d of %d: session started\n", (*t)->rank(), (*t)->size());
    auto end = serve_session(**t, st);
    if (!end.ok()) {
      std::fprintf(stderr, "shoal node: session ended: %s\n", end.status().to_string().c_str());
      continue;
    }
    std::fprintf(stderr, "shoal node: session ended by the coordinator\n");
    if (end->exit_process) return 0;
  }
  return 0;
}

}  // namespace

void add_node(CLI::App& app, int& rc) {
  auto o = std::make_shared<NodeOptions>();
  CLI::App* sub = app.add_subcommand("node", "Serve coordinators that connect over TCP (--nodes)");
  sub->add_option("--listen", o->listen, "HOST:PORT to listen on (default 127.0.0.1:7070; port 0: any)");
  sub->add_option("--token-file", o->token_file, "File with the cluster token")->required();
  sub->add_option("--model", o->model, "Checkpoint folder on this machine (default: the coordinator's path)");
  sub->add_option("--lora", o->lora,
                  "This machine's copy of a LoRA adapter the coordinator serves: NAME=DIR, or DIR for its only "
                  "one (repeatable; default: the coordinator's path)");
  sub->add_option("--sessions", o->sessions, "Exit after this many sessions (default: serve forever)");
  sub->callback([o, &rc] { rc = run_node(*o); });
}

}  // namespace shoal::cli
