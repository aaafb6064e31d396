#include "comm/mailbox.h"

#include "common/check.h"

namespace shoal::comm {

Mailbox::Mailbox(int rank, std::vector<std::string> peer_names)
    : rank_(rank), peer_names_(std::move(peer_names)), gone_(peer_names_.size()) {}

void Mailbox::push(int src, uint32_t tag, std::vector<std::byte> payload) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queues_[{tag, src}].push_back({next_seq_++, std::move(payload)});
  }
  cv_.notify_all();
}

void Mailbox::mark_gone(int src, Status why) {
  SHOAL_CHECK(!why.ok());
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (gone_[size_t(src)].ok()) gone_[size_t(src)] = std::move(why);
  }
  cv_.notify_all();
}

void Mailbox::close(Status why) {
  SHOAL_CHECK(!why.ok());
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_.ok()) closed_ = std::move(why);
  }
  cv_.notify_all();
}

StatusOr<Message> Mailbox::pop(int src, uint32_t tag, Deadline deadline) {
  const Clock::time_point start = Clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (!closed_.ok()) return closed_;
    if (std::optional<Message> m = take_locked(src, tag)) return std::move(*m);
    if (Status s = failure_locked(src); !s.ok()) return s;
    if (cv_.wait_until(lock, deadline) == std::cv_status::timeout) {
      if (std::optional<Message> m = take_locked(src, tag)) return std::move(*m);
      return deadline_status(src, tag, start);
    }
  }
}

// The matching queue with the earliest front: one queue for a given src, any for kAnySource.
std::optional<Message> Mailbox::take_locked(int src, uint32_t tag) {
  auto best = queues_.end();
  if (src == kAnySource) {
    for (auto it = queues_.lower_bound({tag, 0}); it != queues_.end() && it->first.first == tag; ++it)
      if (best == queues_.end() || it->second.front().seq < best->second.front().seq) best = it;
  } else {
    best = queues_.find({tag, src});
  }
  if (best == queues_.end()) return std::nullopt;
  Message m{best->first.second, tag, std::move(best->second.front().payload)};
  best->second.pop_front();
  if (best->second.empty()) queues_.erase(best);  // empty queues never stay in the map
  return m;
}

Status Mailbox::failure_locked(int src) const {
  if (src != kAnySource) return gone_[size_t(src)];
  for (const Status& s : gone_)
    if (!s.ok()) return s;
  return {};
}

Status Mailbox::deadline_status(int src, uint32_t tag, Clock::time_point start) const {
  const auto waited =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
  const std::string from = src == kAnySource ? "any rank" : peer_names_[size_t(src)];
  return {Code::kDeadlineExceeded, "rank " + std::to_string(rank_) + ": no message from " + from +
                                       " with tag " + std::to_string(tag) + " within the deadline (waited " +
                                       std::to_string(waited) + " ms)"};
}

}  // namespace shoal::comm
