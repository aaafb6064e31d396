// The main thread reads and tokenizes requests, submits them, and writes every record; the
// service's thread only collects tokens (decoding them as they come, to stop at a stop string,
// through server::TextStream) and hands finished requests over through `Shared`.
#include "serve/batch/runner.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <ctime>
#include <deque>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "coordinator/service.h"
#include "serve/batch/format.h"
#include "serve/batch/progress.h"

namespace shoal::batch {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// The input's lines, blank ones skipped ("\r\n" line ends accepted). Line numbers count every
// line, blank ones too, as an editor shows them.
class InputLines {
 public:
  Status open(const std::filesystem::path& path) {
    in_.open(path, std::ios::binary);
    if (!in_) return not_found("cannot open the input " + path.string() + ": " + std::strerror(errno));
    return {};
  }
  bool next(std::string& text, int64_t& line) {
    while (std::getline(in_, text)) {
      ++line_;
      if (!text.empty() && text.back() == '\r') text.pop_back();
      if (text.find_first_not_of(" \t\r\f\v") == std::string::npos) continue;
      line = line_;
      return true;
    }
    return false;
  }
  bool failed() const { return in_.bad(); }

 private:
  std::ifstream in_;
  int64_t line_ = 0;
};

// A line's resume key, and why it gets an error record when it has no request to run.
struct Classified {
  LineHead head;
  std::string key;
  std::optional<RecordError> error;
};

Classified classify(std::string_view text, int64_t line, std::unordered_map<std::string, int64_t>& first_line) {
  Classified c{read_line_head(text, line), "", std::nullopt};
  if (c.head.error) {
    c.key = line_key(line);
    c.error = c.head.error;
    return c;
  }
  const auto [it, fresh] = first_line.emplace(*c.head.custom_id, line);
  if (!fresh) {
    c.key = line_key(line);
    c.error = RecordError{"duplicate_custom_id", "custom_id " + json(*c.head.custom_id).dump() +
                                                     " was already used on line " + std::to_string(it->second)};
    return c;
  }
  c.key = custom_id_key(*c.head.custom_id);
  return c;
}

// One request in flight. Until `done`, only the service's thread touches its response part.
struct Active {
  uint64_t order = 0;  // submission order
  std::string custom_id;
  int64_t line = 0;
  server::Endpoint endpoint = server::Endpoint::kChat;
  std::string model;                // the model it ran: the base's name or its adapter's
  bool reasoning = false;           // split off reasoning_content (server::Prepared::reasoning)
  uint64_t service_id = 0;
  std::shared_ptr<struct Classified> source;  // the line, to run again after the cluster heals
  std::optional<server::Completion> answer;  // as `shoal serve` collects a response
  server::TextStream::Delta total;
  Status error;
  bool done = false;

  void add(const server::TextStream::Delta& d) {
    total.append(d);
  }
};

// What the service's thread hands to the main thread.
struct Shared {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::shared_ptr<Active>> finished;
  std::atomic<int64_t> tokens{0};

  void complete(const std::shared_ptr<Active>& a) {
    a->done = true;
    {
      std::lock_guard<std::mutex> lock(mu);
      finished.push_back(a);
    }
    cv.notify_all();
  }
};

const char* signal_name(int sig) {
  switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGHUP: return "SIGHUP";
    default: return "a signal";
  }
}

}  // namespace

BatchRunner::~BatchRunner() = default;

StatusOr<std::unique_ptr<BatchRunner>> BatchRunner::open(RunnerOptions o) {
  std::unique_ptr<BatchRunner> r(new BatchRunner());
  r->o_ = std::move(o);
  std::error_code ec;
  if (std::filesystem::equivalent(r->o_.input, r->o_.output, ec))
    return invalid_argument("the output " + r->o_.output.string() + " is the input file");
  InputLines in;
  SHOAL_RETURN_IF_ERROR(in.open(r->o_.input));
  SHOAL_ASSIGN_OR_RETURN(r->out_, ResultsFile::open(r->o_.output, r->recovered_));
  std::unordered_map<std::string, int64_t> first_line;
  std::string text;
  int64_t line = 0;
  while (in.next(text, line)) {
    const Classified c = classify(text, line, first_line);
    ++r->total_;
    if (r->recovered_.keys.count(c.key)) ++r->done_;
  }
  if (in.failed()) return Status(Code::kUnavailable, "cannot read the input " + r->o_.input.string());
  r->unknown_ = r->recovered_.records - r->recovered_.duplicates - r->done_;
  return r;
}

StatusOr<RunSummary> BatchRunner::run(Executor& ex, const Tokenizer& tok, const StopSignal& stop) {
  RunSummary sum;
  sum.total = total_;
  sum.already_done = done_;
  const auto t0 = Clock::now();
  const int64_t slots = std::max<int64_t>(ex.n_slots(), 1);
  const size_t max_in_flight = size_t(o_.max_in_flight > 0 ? o_.max_in_flight : 4 * slots);
  PrepareOptions po{&tok, o_.model_name, {}, ex.config().vocab_size, ex.max_seq_len(),
                    tok.eos_id() >= 0 ? tok.eos_id() : int32_t(ex.config().eos_token_id)};
  for (const std::string& a : ex.adapter_names())
    if (!a.empty()) po.adapters.push_back(a);
  OutputGrammars grammars(tok);  // each line's response_format / forced tool calls; repeats share one
  po.grammars = &grammars;
  Progress progress(o_.log, o_.progress_tty, o_.progress_interval_s, total_, done_);

  InputLines in;
  SHOAL_RETURN_IF_ERROR(in.open(o_.input));
  std::unordered_map<std::string, int64_t> first_line;

  auto shared = std::make_shared<Shared>();
  std::map<uint64_t, std::shared_ptr<Active>> active;  // by submission order
  uint64_t next_order = 0;
  auto service = std::make_unique<GenerationService>(ex);
  GenerationService* svc = service.get();
  Status fatal;

  auto write = [&](const Record& record, bool is_error) {
    if (!fatal.ok()) return;
    if (Status s = out_->append(dump_line(record)); !s.ok()) {
      fatal = s;
      return;
    }
    ++sum.written;
    if (is_error) ++sum.errors;
  };

  int64_t submitted = 0, answered = 0;  // requests given to the service; of them, with a record
  // Over TCP nodes the cluster heals (coordinator/healing_cluster.h): requests a lost node
  // failed are run again once it is back, in their order, and nothing new is submitted meanwhile.
  const bool can_heal = ex.can_heal();
  std::map<uint64_t, std::shared_ptr<Classified>> again;  // by submission order
  std::optional<Clock::time_point> failed_at;
  auto handle_finished = [&](const std::shared_ptr<Active>& a) {
    active.erase(a->order);
    if (a->error.ok() && a->answer->finish().empty()) return;  // cancelled by a signal
    if (!a->error.ok() && can_heal && !svc->health().ok()) {  // lost with a node: run it again
      again.emplace(a->order, a->source);
      --submitted;
      return;
    }
    ++answered;
    if (!a->error.ok()) {
      if (Status h = svc->health(); !h.ok()) {  // the executor failed: fatal, nothing written
        if (fatal.ok()) fatal = h;
        return;
      }
      write(error_record(a->custom_id, {"server_error", a->error.to_string()}, a->line), true);
      return;
    }
    const json body = server::full_response(a->endpoint, server::new_response_id(a->endpoint), int64_t(std::time(nullptr)),
                                            a->model, a->total, a->reasoning, a->answer->finish(),
                                            a->answer->usage(), a->answer->take_logprobs());
    write(response_record(a->custom_id, body), false);
  };

  auto submit = [&](Classified& c, std::optional<uint64_t> order = std::nullopt) {
    if (c.error) {
      write(error_record(c.head.custom_id, *c.error, c.head.line), true);
      return;
    }
    auto prepared = prepare_request(c.head.request, *c.head.custom_id, po);
    if (auto* e = std::get_if<RecordError>(&prepared)) {
      write(error_record(c.head.custom_id, *e, c.head.line), true);
      return;
    }
    PreparedRequest& r = std::get<PreparedRequest>(prepared);
    auto a = std::make_shared<Active>();
    a->order = order ? *order : next_order++;
    a->source = std::make_shared<Classified>(c);
    a->custom_id = *c.head.custom_id;
    a->line = c.head.line;
    a->endpoint = r.request.endpoint;
    a->model = r.request.model;
    a->reasoning = r.prepared.reasoning;
    a->answer.emplace(tok, r.prepared, r.request);
    GenerationService::Callbacks cb;
    cb.on_event = [a, shared, svc](const TokenEvent& e) {
      if (a->done) return;  // cut at a stop string already
      if (e.token >= 0) shared->tokens.fetch_add(1, std::memory_order_relaxed);
      a->add(a->answer->push(e));
      if (a->answer->stopped_by_string()) svc->cancel(e.request);  // the answer ends here
      if (!a->answer->finish().empty() || e.finish != FinishReason::kNone) shared->complete(a);
    };
    cb.on_error = [a, shared](const Status& s) {
      if (a->done) return;
      a->error = s;
      shared->complete(a);
    };
    active.emplace(a->order, a);
    auto id = svc->submit(std::move(r.prepared.generation), std::move(cb));
    if (!id.ok()) {  // refused at once: the service failed, or (not expected) the request
      active.erase(a->order);
      if (can_heal && !svc->health().ok()) {
        again.emplace(a->order, a->source);
        return;
      }
      if (Status h = svc->health(); !h.ok()) {
        fatal = h;
        return;
      }
      write(error_record(a->custom_id, {"server_error", id.status().to_string()}, a->line), true);
      return;
    }
    a->service_id = *id;
    ++submitted;
  };

  auto cancel = [&](std::map<uint64_t, std::shared_ptr<Active>>::iterator from) {
    for (auto it = from; it != active.end(); it = active.erase(it)) svc->cancel(it->second->service_id);
  };

  bool input_done = false, stopping = false;
  int signals_seen = 0;
  Clock::time_point drain_until{}, last_sync = Clock::now();
  std::string text;
  int64_t line = 0;
  while (true) {
    std::deque<std::shared_ptr<Active>> finished;
    {
      std::lock_guard<std::mutex> lock(shared->mu);
      finished.swap(shared->finished);
    }
    for (const auto& a : finished) handle_finished(a);
    const auto now = Clock::now();
    bool healing = false;
    if (fatal.ok()) {
      if (Status h = svc->health(); !h.ok()) {
        if (!can_heal) {
          fatal = h;
        } else {
          healing = true;
          if (!failed_at) {
            failed_at = now;
            char buf[160];
            std::snprintf(buf, sizeof buf, "shoal batch: a node was lost; waiting up to %.0f s for it to come back (--heal-timeout)",
                          o_.heal_timeout_s);
            progress.note(buf);
          } else if (now - *failed_at > std::chrono::duration<double>(o_.heal_timeout_s)) {
            fatal = h.with_context("no node came back within --heal-timeout " + std::to_string(int(o_.heal_timeout_s)) + " s");
          }
        }
      } else if (failed_at) {  // healed: the lost requests first, in their order
        failed_at.reset();
        progress.note("shoal batch: the cluster is back; running the " + std::to_string(again.size()) +
                      " requests it lost again");
        for (auto it = again.begin(); it != again.end(); it = again.erase(it)) submit(*it->second, it->first);
      }
    }
    if (!fatal.ok()) break;
    if (now - last_sync >= std::chrono::duration<double>(o_.sync_interval_s)) {
      if (Status s = out_->sync(); !s.ok()) {
        fatal = s;
        break;
      }
      last_sync = now;
    }
    progress.update(sum.written, shared->tokens.load());

    // Signals: the first stops submitting, cancels what waits for a slot and lets the running
    // requests finish for drain_timeout_s; a second one (or the timeout) cancels the rest.
    const int signals = stop.count.load();
    if (signals > signals_seen) {
      signals_seen = signals;
      sum.signal = stop.signal.load();
      if (!stopping) {
        stopping = true;
        drain_until = now + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o_.drain_timeout_s));
        auto keep = active.begin();  // admission is in submission order: the oldest `slots` run
        for (int64_t k = 0; k < slots && keep != active.end(); ++k) ++keep;
        cancel(keep);
        char buf[200];
        std::snprintf(buf, sizeof buf,
                      "shoal batch: %s: no new requests; finishing the %zu running (up to %.0f s, a second signal "
                      "stops them now)",
                      signal_name(sum.signal), active.size(), o_.drain_timeout_s);
        progress.note(buf);
      } else {
        cancel(active.begin());
      }
    }
    if (stopping) {
      if (now >= drain_until) cancel(active.begin());
      if (active.empty()) break;
    } else if (healing) {
      // nothing new until the cluster is back
    } else if (!input_done && active.size() < max_in_flight) {
      if (!in.next(text, line)) {
        input_done = true;
        if (in.failed()) {
          fatal = Status(Code::kUnavailable, "cannot read the input " + o_.input.string());
          break;
        }
        continue;
      }
      Classified c = classify(text, line, first_line);
      if (!recovered_.keys.count(c.key)) submit(c);
      continue;
    } else if (input_done && active.empty() && again.empty()) {
      break;
    }
    std::unique_lock<std::mutex> lock(shared->mu);
    shared->cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return !shared->finished.empty(); });
  }

  // Let the service go idle (cancelled requests leave with their micro-batches) and write what
  // finished meanwhile; then stop its thread, before `active` and the callbacks go.
  if (fatal.ok()) {
    const auto until = Clock::now() + std::chrono::seconds(5);
    while (Clock::now() < until && (svc->waiting() > 0 || svc->running() > 0))
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    std::deque<std::shared_ptr<Active>> finished;
    {
      std::lock_guard<std::mutex> lock(shared->mu);
      finished.swap(shared->finished);
    }
    for (const auto& a : finished) handle_finished(a);
  }
  service.reset();
  if (Status s = out_->sync(); !s.ok() && fatal.ok()) fatal = s;
  sum.dropped = submitted - answered;
  sum.completion_tokens = shared->tokens.load();
  sum.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  progress.finish(sum.written, sum.completion_tokens);
  if (!fatal.ok()) return fatal;
  sum.complete = done_ + sum.written == total_;
  return sum;
}

}  // namespace shoal::batch
