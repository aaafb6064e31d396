// A timeline of what each rank's threads did, for finding where a step waits and on whom:
// with SHOAL_TRACE=DIR set, spans (a name, a start, an end, a micro-batch id) are kept in memory
// and written as Chrome trace-event JSON (open it in ui.perfetto.dev or chrome://tracing) to
// DIR/shoal-<host>-<pid>.json by trace::write(), which the runtime calls when a session ends.
// Each rank is a "process" of the timeline and each thread ("pipeline", "experts",
// "coordinator") a row; timestamps are CLOCK_MONOTONIC microseconds, so the files of processes
// on one machine line up. Unset: a span costs one branch (a direct record() its clock reads).
#pragma once

#include <chrono>
#include <cstdint>

namespace shoal::trace {

bool enabled();

// The rank and row of this thread's spans (until set again); `row` is a literal.
void set_thread(int rank, const char* row);

// Records [start, end) under name (a literal); `id` is a micro-batch id, `peer` the rank waited on
// or served, `layer` a layer (-1: none). The timeline shows "name L (rank P)".
void record(const char* name, std::chrono::steady_clock::time_point start, std::chrono::steady_clock::time_point end,
            int64_t id = -1, int peer = -1, int layer = -1);

// A span from construction to destruction (nothing when tracing is off).
class Span {
 public:
  explicit Span(const char* name, int64_t id = -1, int peer = -1, int layer = -1)
      : name_(enabled() ? name : nullptr), id_(id), peer_(peer), layer_(layer) {
    if (name_) start_ = std::chrono::steady_clock::now();
  }
  ~Span() {
    if (name_) record(name_, start_, std::chrono::steady_clock::now(), id_, peer_, layer_);
  }
  Span(const Span&) = delete;
  Span& operator=(const Span&) = delete;

 private:
  const char* name_;
  int64_t id_;
  int peer_, layer_;
  std::chrono::steady_clock::time_point start_;
};

// Writes every span recorded so far in this process (the file is replaced: call it as often as
// wanted). A failure to write is printed to stderr, never fatal.
void write();

}  // namespace shoal::trace
