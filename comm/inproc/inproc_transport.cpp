#include "comm/inproc/inproc_transport.h"

#include <mutex>

#include "comm/mailbox.h"
#include "comm/poison.h"
#include "common/check.h"

namespace shoal::comm {
namespace {

std::string inproc_name(int rank) { return "rank " + std::to_string(rank) + " (inproc)"; }

std::vector<std::string> inproc_names(int size) {
  std::vector<std::string> names;
  for (int r = 0; r < size; ++r) names.push_back(inproc_name(r));
  return names;
}

}  // namespace

struct InprocWorld::State {
  explicit State(int size) : gone(size_t(size)) {
    for (int r = 0; r < size; ++r) mailboxes.push_back(std::make_unique<Mailbox>(r, inproc_names(size)));
  }
  int size() const { return int(mailboxes.size()); }

  Status gone_status(int rank) {
    std::lock_guard<std::mutex> lock(mu);
    return gone[size_t(rank)];
  }

  // The rank is gone for every other rank; its own mailbox closes so its waits end too.
  void remove(int rank, const std::string& why) {
    Status status(Code::kUnavailable, inproc_name(rank) + ": " + why);
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!gone[size_t(rank)].ok()) return;
      gone[size_t(rank)] = status;
    }
    for (int r = 0; r < size(); ++r)
      if (r != rank) mailboxes[size_t(r)]->mark_gone(rank, status);
    mailboxes[size_t(rank)]->close(status);
  }

  std::vector<std::unique_ptr<Mailbox>> mailboxes;  // [size] one per receiving rank
  std::mutex mu;
  std::vector<Status> gone;  // [size] ok while the rank is there
};

namespace {

class InprocTransport final : public Transport {
 public:
  InprocTransport(std::shared_ptr<InprocWorld::State> state, int rank)
      : state_(std::move(state)), rank_(rank) {}
  ~InprocTransport() override { state_->remove(rank_, "transport closed"); }

  int rank() const override { return rank_; }
  int size() const override { return state_->size(); }
  std::string peer_name(int rank) const override { return inproc_name(rank); }

  Status send(int dst, uint32_t tag, std::span<const std::byte> payload, Deadline) override {
    SHOAL_CHECK(dst >= 0 && dst < size());
    SHOAL_CHECK_LE(tag, kMaxTag);
    SHOAL_CHECK_LE(payload.size(), kMaxMessageBytes);
    SHOAL_RETURN_IF_ERROR(poison_.get());
    if (Status self = state_->gone_status(rank_); !self.ok()) return poison_.set(self);
    if (Status peer = state_->gone_status(dst); !peer.ok()) return poison_.set(peer);
    state_->mailboxes[size_t(dst)]->push(rank_, tag, {payload.begin(), payload.end()});
    return {};
  }

  StatusOr<Message> recv(int src, uint32_t tag, Deadline deadline) override {
    SHOAL_CHECK(src == kAnySource || (src >= 0 && src < size()));
    SHOAL_CHECK_LE(tag, kMaxTag);
    SHOAL_RETURN_IF_ERROR(poison_.get());
    StatusOr<Message> m = state_->mailboxes[size_t(rank_)]->pop(src, tag, deadline);
    if (!m.ok() && m.status().code() != Code::kDeadlineExceeded) return poison_.set(m.status());
    return m;
  }

 private:
  std::shared_ptr<InprocWorld::State> state_;
  const int rank_;
  Poison poison_;
};

}  // namespace

InprocWorld::InprocWorld(int size) : state_(std::make_shared<State>(size)) { SHOAL_CHECK(size > 0); }
InprocWorld::~InprocWorld() = default;

int InprocWorld::size() const { return state_->size(); }

std::unique_ptr<Transport> InprocWorld::transport(int rank) {
  SHOAL_CHECK(rank >= 0 && rank < size());
  return std::make_unique<InprocTransport>(state_, rank);
}

void InprocWorld::kill(int rank) {
  SHOAL_CHECK(rank >= 0 && rank < size());
  state_->remove(rank, "killed");
}

}  // namespace shoal::comm
