#include "comm/mpi/mpi_transport.h"

#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <list>
#include <mutex>
#include <thread>

#include "comm/poison.h"
#include "common/check.h"

namespace shoal::comm {
namespace {

// Polling without burning a core: spin briefly (latency), then sleep longer and longer, never
// past the deadline. Ranks are often oversubscribed (more ranks than cores).
class Backoff {
 public:
  void wait(Deadline deadline) {
    if (spins_++ < 64) return std::this_thread::yield();
    const auto left = deadline - Clock::now();
    if (left <= Clock::duration::zero()) return;
    std::this_thread::sleep_for(std::min<Clock::duration>(sleep_, left));
    sleep_ = std::min<Clock::duration>(sleep_ * 2, std::chrono::milliseconds(1));
  }

 private:
  int spins_ = 0;
  Clock::duration sleep_ = std::chrono::microseconds(20);
};

std::string error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  return std::string(text, size_t(length));
}

class MpiTransport final : public Transport {
 public:
  MpiTransport(MPI_Comm comm, bool owns_mpi, std::vector<std::string> hosts, MpiOptions options)
      : comm_(comm), owns_mpi_(owns_mpi), hosts_(std::move(hosts)), options_(options) {
    MPI_Comm_rank(comm_, &rank_);
  }

  ~MpiTransport() override {
    const Deadline deadline = deadline_after(options_.close_timeout);
    Backoff backoff;
    std::unique_lock<std::mutex> lock(mu_);
    while (!pending_.empty() && Clock::now() < deadline) {
      if (!progress_sends_locked().ok()) break;
      lock.unlock();
      backoff.wait(deadline);
      lock.lock();
    }
    const bool clean = pending_.empty() && abandoned_.empty();
    if (!clean) {
      std::fprintf(stderr, "shoal: rank %d: MPI transport closed with %zu sends and %zu receives unfinished; not calling MPI_Finalize\n",
                   rank_, pending_.size(), abandoned_.size());
      return;
    }
    MPI_Comm_free(&comm_);
    if (owns_mpi_) MPI_Finalize();
  }

  int rank() const override { return rank_; }
  int size() const override { return int(hosts_.size()); }
  std::string peer_name(int rank) const override {
    return "rank " + std::to_string(rank) + " (" + hosts_[size_t(rank)] + ")";
  }

  Status send(int dst, uint32_t tag, std::span<const std::byte> payload, Deadline deadline) override {
    SHOAL_CHECK(dst >= 0 && dst < size());
    SHOAL_CHECK_LE(tag, kMaxTag);
    SHOAL_CHECK_LE(payload.size(), kMaxMessageBytes);
    SHOAL_RETURN_IF_ERROR(poison_.get());
    PendingSend p{std::vector<std::byte>(payload.begin(), payload.end()), MPI_REQUEST_NULL, dst};
    Backoff backoff;
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      if (Status s = progress_sends_locked(); !s.ok()) return poison_.set(s);
      if (pending_bytes_ == 0 || pending_bytes_ + payload.size() <= options_.max_pending_bytes) break;
      if (Clock::now() >= deadline)
        return poison_.set({Code::kDeadlineExceeded, me() + ": send to " + peer_name(dst) + ": " +
                                                         std::to_string(pending_bytes_) + " bytes of sends unfinished at the deadline"});
      lock.unlock();
      backoff.wait(deadline);
      lock.lock();
    }
    PendingSend& sent = pending_.emplace_back(std::move(p));
    const int rc = MPI_Isend(sent.data.data(), int(sent.data.size()), MPI_BYTE, dst, int(tag), comm_, &sent.request);
    if (rc != MPI_SUCCESS) {
      pending_.pop_back();
      return poison_.set(mpi_error(rc, "MPI_Isend to", dst));
    }
    pending_bytes_ += sent.data.size();
    return {};
  }

  StatusOr<Message> recv(int src, uint32_t tag, Deadline deadline) override {
    SHOAL_CHECK(src == kAnySource || (src >= 0 && src < size()));
    SHOAL_CHECK_LE(tag, kMaxTag);
    SHOAL_RETURN_IF_ERROR(poison_.get());
    const Clock::time_point start = Clock::now();
    MPI_Message handle = MPI_MESSAGE_NULL;
    MPI_Status status;
    Backoff backoff;
    while (true) {
      int found = 0;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (Status s = progress_sends_locked(); !s.ok()) return poison_.set(s);
        const int rc = MPI_Improbe(src == kAnySource ? MPI_ANY_SOURCE : src, int(tag), comm_, &found, &handle, &status);
        if (rc != MPI_SUCCESS) return poison_.set(mpi_error(rc, "MPI_Improbe from", src));
      }
      if (found) break;
      if (Clock::now() >= deadline) return recv_deadline(src, tag, start);
      backoff.wait(deadline);
    }
    return receive_matched(handle, status, tag, deadline);
  }

 private:
  struct PendingSend {
    std::vector<std::byte> data;  // owned until MPI is done with it
    MPI_Request request;
    int dst;
  };
  struct Abandoned {  // a matched receive cut off by its deadline: MPI may still write into it
    std::vector<std::byte> buffer;
    MPI_Request request;
  };

  std::string me() const { return "rank " + std::to_string(rank_); }

  Status mpi_error(int code, const std::string& what, int peer) const {
    const std::string who = peer == kAnySource ? "any rank" : peer_name(peer);
    return {Code::kUnavailable, me() + ": " + what + " " + who + " failed: " + error_text(code)};
  }

  Status recv_deadline(int src, uint32_t tag, Clock::time_point start) const {
    const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
    const std::string from = src == kAnySource ? "any rank" : peer_name(src);
    return {Code::kDeadlineExceeded, me() + ": no message from " + from + " with tag " + std::to_string(tag) +
                                         " within the deadline (waited " + std::to_string(waited) + " ms)"};
  }

  StatusOr<Message> receive_matched(MPI_Message handle, MPI_Status& status, uint32_t tag, Deadline deadline) {
    int count = 0;
    MPI_Get_count(&status, MPI_BYTE, &count);
    Message m{status.MPI_SOURCE, tag, std::vector<std::byte>(size_t(count))};
    MPI_Request request = MPI_REQUEST_NULL;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const int rc = MPI_Imrecv(m.payload.data(), count, MPI_BYTE, &handle, &request);
      if (rc != MPI_SUCCESS) return poison_.set(mpi_error(rc, "MPI_Imrecv from", m.src));
    }
    Backoff backoff;
    while (true) {
      int done = 0;
      {
        std::lock_guard<std::mutex> lock(mu_);
        const int rc = MPI_Test(&request, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) return poison_.set(mpi_error(rc, "receiving from", m.src));
        if (!done && Clock::now() >= deadline) {
          abandoned_.push_back({std::move(m.payload), request});
          return poison_.set({Code::kDeadlineExceeded, me() + ": message from " + peer_name(m.src) + " with tag " +
                                                           std::to_string(tag) + " (" + std::to_string(count) +
                                                           " bytes) did not finish arriving by the deadline"});
        }
      }
      if (done) return m;
      backoff.wait(deadline);
    }
  }

  // Completes what it can of the unfinished sends; an MPI error is returned (callers poison).
  Status progress_sends_locked() {
    for (auto it = pending_.begin(); it != pending_.end();) {
      int done = 0;
      const int rc = MPI_Test(&it->request, &done, MPI_STATUS_IGNORE);
      if (rc != MPI_SUCCESS) return mpi_error(rc, "MPI_Isend to", it->dst);
      if (!done) {
        ++it;
        continue;
      }
      pending_bytes_ -= it->data.size();
      it = pending_.erase(it);
    }
    return {};
  }

  MPI_Comm comm_;
  const bool owns_mpi_;
  const std::vector<std::string> hosts_;  // [size]
  const MpiOptions options_;
  int rank_ = 0;
  std::mutex mu_;  // held for every MPI call
  std::list<PendingSend> pending_;
  size_t pending_bytes_ = 0;
  std::vector<Abandoned> abandoned_;
  Poison poison_;
};

StatusOr<std::vector<std::string>> gather_hosts(MPI_Comm comm) {
  constexpr int kHostChars = 256;
  char host[kHostChars] = {};
  gethostname(host, kHostChars - 1);
  int size = 0;
  MPI_Comm_size(comm, &size);
  std::vector<char> all(size_t(size) * kHostChars);
  const int rc = MPI_Allgather(host, kHostChars, MPI_CHAR, all.data(), kHostChars, MPI_CHAR, comm);
  if (rc != MPI_SUCCESS) return Status(Code::kUnavailable, "MPI_Allgather of host names failed: " + error_text(rc));
  std::vector<std::string> hosts;
  for (int r = 0; r < size; ++r) hosts.emplace_back(all.data() + size_t(r) * kHostChars);
  return hosts;
}

// MPI_Init_thread unless initialised; returns whether this call initialised it.
StatusOr<bool> init_mpi(int* argc, char*** argv) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (finalized) return Status(Code::kUnavailable, "MPI was already finalised in this process");
  if (initialized) return false;
  int provided = 0;
  const int rc = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
  if (rc != MPI_SUCCESS) return Status(Code::kUnavailable, "MPI_Init_thread failed: " + error_text(rc));
  return true;
}

Status check_mpi_limits() {
  int provided = 0;
  MPI_Query_thread(&provided);
  if (provided < MPI_THREAD_SERIALIZED)
    return unimplemented("MPI provides thread level " + mpi_thread_level() + "; shoal needs SERIALIZED or MULTIPLE");
  int* tag_ub = nullptr;
  int flag = 0;
  MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &tag_ub, &flag);
  if (!flag || int64_t(*tag_ub) < int64_t(kMaxTag))
    return unimplemented("MPI_TAG_UB is " + std::to_string(flag ? *tag_ub : 0) + "; shoal needs " + std::to_string(kMaxTag));
  return {};
}

}  // namespace

StatusOr<std::unique_ptr<Transport>> make_mpi_transport(int* argc, char*** argv, MpiOptions options) {
  SHOAL_ASSIGN_OR_RETURN(const bool owns_mpi, init_mpi(argc, argv));
  Status limits = check_mpi_limits();
  MPI_Comm comm = MPI_COMM_NULL;
  if (limits.ok() && MPI_Comm_dup(MPI_COMM_WORLD, &comm) != MPI_SUCCESS)
    limits = Status(Code::kUnavailable, "MPI_Comm_dup of MPI_COMM_WORLD failed");
  if (limits.ok()) MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  StatusOr<std::vector<std::string>> hosts = limits.ok() ? gather_hosts(comm) : StatusOr<std::vector<std::string>>(limits);
  if (!hosts.ok()) {
    if (comm != MPI_COMM_NULL) MPI_Comm_free(&comm);
    if (owns_mpi) MPI_Finalize();
    return hosts.status();
  }
  return std::unique_ptr<Transport>(new MpiTransport(comm, owns_mpi, std::move(*hosts), options));
}

std::string open_mpi_pml() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    const size_t at = line.rfind("/mca_pml_");
    if (at == std::string::npos) continue;
    const size_t begin = at + 9, end = line.find(".so", begin);
    const std::string name = line.substr(begin, end - begin);
    if (name != "monitoring") return name;  // the monitoring PML wraps the selected one
  }
  return "";
}

std::string mpi_thread_level() {
  int provided = -1;
  MPI_Query_thread(&provided);
  switch (provided) {
    case MPI_THREAD_MULTIPLE: return "MULTIPLE";
    case MPI_THREAD_SERIALIZED: return "SERIALIZED";
    case MPI_THREAD_FUNNELED: return "FUNNELED";
    case MPI_THREAD_SINGLE: return "SINGLE";
    default: return "unknown";
  }
}

}  // namespace shoal::comm
