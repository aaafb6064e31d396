#include "common/trace.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

namespace shoal::trace {
namespace {

struct Event {
  const char* name;
  int64_t start_us, dur_us, id;
  int rank, peer, layer;
  const char* row;
};

struct Thread {
  int rank = 0;
  const char* row = "main";
};

thread_local Thread this_thread;
std::mutex mu;
std::vector<Event> events;

const char* dir() {
  static const char* d = [] {
    const char* v = std::getenv("SHOAL_TRACE");
    return v && *v ? v : nullptr;
  }();
  return d;
}

int64_t micros(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
}

}  // namespace

bool enabled() { return dir() != nullptr; }

void set_thread(int rank, const char* row) {
  this_thread.rank = rank;
  this_thread.row = row;
}

void record(const char* name, std::chrono::steady_clock::time_point start, std::chrono::steady_clock::time_point end,
            int64_t id, int peer, int layer) {
  if (!enabled()) return;
  std::lock_guard<std::mutex> lock(mu);
  events.push_back({name, micros(start), micros(end) - micros(start), id, this_thread.rank, peer, layer, this_thread.row});
}

void write() {
  if (!enabled()) return;
  static std::mutex writing;  // ranks of one process (threads) may end their sessions at once
  std::lock_guard<std::mutex> one_writer(writing);
  char host[256] = "host";
  gethostname(host, sizeof host - 1);
  const std::string path = std::string(dir()) + "/shoal-" + host + "-" + std::to_string(getpid()) + ".json";
  nlohmann::json out = {{"displayTimeUnit", "ms"}, {"traceEvents", nlohmann::json::array()}};
  nlohmann::json& list = out["traceEvents"];
  {
    std::lock_guard<std::mutex> lock(mu);
    std::set<std::pair<int, std::string>> named;  // (rank, row) given their names
    for (const Event& e : events) {
      if (named.insert({e.rank, e.row}).second) {
        list.push_back({{"ph", "M"}, {"name", "process_name"}, {"pid", e.rank},
                        {"args", {{"name", "rank " + std::to_string(e.rank)}}}});
        list.push_back({{"ph", "M"}, {"name", "thread_name"}, {"pid", e.rank}, {"tid", e.row}, {"args", {{"name", e.row}}}});
      }
      std::string name = e.name;
      if (e.layer >= 0) name += " " + std::to_string(e.layer);
      if (e.peer >= 0) name += " (rank " + std::to_string(e.peer) + ")";
      list.push_back({{"ph", "X"}, {"name", name}, {"pid", e.rank}, {"tid", e.row}, {"ts", e.start_us},
                      {"dur", e.dur_us}, {"args", {{"micro_batch", e.id}, {"peer", e.peer}, {"layer", e.layer}}}});
    }
  }
  std::ofstream f(path + ".tmp");
  f << out.dump() << "\n";
  f.close();
  std::error_code ec;
  if (f) std::filesystem::rename(path + ".tmp", path, ec);
  if (!f || ec) std::fprintf(stderr, "shoal: cannot write the trace %s\n", path.c_str());
}

}  // namespace shoal::trace
