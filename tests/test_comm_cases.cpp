#include "tests/test_comm_cases.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>

#include "comm/collectives.h"
#include "comm/expert_exchange.h"

namespace shoal::comm::testing {
namespace {

using namespace std::chrono_literals;

// A failed expectation becomes the rank's status (bodies run on many threads: no asserts).
#define EXPECT_OR_FAIL(cond, what)                                                       \
  do {                                                                                   \
    if (!(cond)) return internal_error(std::string("expected " #cond ": ") + (what));   \
  } while (0)

std::string text(const Message& m) {
  return {reinterpret_cast<const char*>(m.payload.data()), m.payload.size()};
}

StatusOr<std::string> recv_text(Transport& t, int src, uint32_t tag, Deadline d) {
  SHOAL_ASSIGN_OR_RETURN(Message m, t.recv(src, tag, d));
  return text(m);
}

Blob make_blob(int seed, size_t size) {
  Blob b(size);
  for (size_t i = 0; i < size; ++i) b[i] = std::byte((seed * 131 + i * 7) & 0xff);
  return b;
}

int64_t ms_since(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
}

// Rank 0 talks to every other rank in turn, 20 rounds, then an empty message each way.
Status ping_pong(Transport& t) {
  constexpr uint32_t kTag = 100;
  const Deadline d = deadline_after(kTimeout);
  for (int round = 0; round < 20; ++round) {
    const std::string n = std::to_string(round);
    for (int r = 1; r < t.size(); ++r) {
      if (t.rank() == 0) {
        SHOAL_RETURN_IF_ERROR(t.send(r, kTag, as_bytes_of("ping " + n), d));
        SHOAL_ASSIGN_OR_RETURN(std::string pong, recv_text(t, r, kTag, d));
        EXPECT_OR_FAIL(pong == "pong " + n + " from " + std::to_string(r), pong);
      } else if (t.rank() == r) {
        SHOAL_ASSIGN_OR_RETURN(std::string ping, recv_text(t, 0, kTag, d));
        EXPECT_OR_FAIL(ping == "ping " + n, ping);
        SHOAL_RETURN_IF_ERROR(t.send(0, kTag, as_bytes_of("pong " + n + " from " + std::to_string(r)), d));
      }
    }
  }
  const int peer = t.rank() == 0 ? 1 : 0;
  if (t.rank() > 1) return {};
  SHOAL_RETURN_IF_ERROR(t.send(peer, kTag, {}, d));
  SHOAL_ASSIGN_OR_RETURN(Message empty, t.recv(peer, kTag, d));
  EXPECT_OR_FAIL(empty.payload.empty() && empty.src == peer, "an empty message");
  return {};
}

// Every rank (itself included) gets 200 numbered messages from every rank, in order.
Status order_per_tag(Transport& t) {
  constexpr uint32_t kTag = 200;
  constexpr uint32_t kCount = 200;
  const Deadline d = deadline_after(kTimeout);
  for (uint32_t i = 0; i < kCount; ++i) {
    for (int dst = 0; dst < t.size(); ++dst) {
      SHOAL_RETURN_IF_ERROR(t.send(dst, kTag, as_bytes_of(std::span<const uint32_t>(&i, 1)), d));
    }
  }
  for (int src = 0; src < t.size(); ++src) {
    for (uint32_t i = 0; i < kCount; ++i) {
      SHOAL_ASSIGN_OR_RETURN(Message m, t.recv(src, kTag, d));
      uint32_t got = 0;
      EXPECT_OR_FAIL(m.payload.size() == 4 && m.src == src, "a 4-byte message from " + std::to_string(src));
      std::memcpy(&got, m.payload.data(), 4);
      EXPECT_OR_FAIL(got == i, "from rank " + std::to_string(src) + ": " + std::to_string(got) + ", expected " + std::to_string(i));
    }
  }
  return {};
}

// Around a ring: 64 messages over 8 tags, sent interleaved, received one tag after another
// starting with the last one; each tag's messages keep their order.
Status interleaved_tags(Transport& t) {
  constexpr uint32_t kTag = 300;
  constexpr uint32_t kTags = 8;
  const Deadline d = deadline_after(kTimeout);
  const int next = (t.rank() + 1) % t.size(), prev = (t.rank() + t.size() - 1) % t.size();
  for (uint32_t i = 0; i < 8 * kTags; ++i) {
    SHOAL_RETURN_IF_ERROR(t.send(next, kTag + i % kTags, as_bytes_of(std::to_string(i)), d));
  }
  for (uint32_t k = kTags; k-- > 0;) {
    for (uint32_t j = 0; j < 8; ++j) {
      SHOAL_ASSIGN_OR_RETURN(std::string got, recv_text(t, prev, kTag + k, d));
      EXPECT_OR_FAIL(got == std::to_string(j * kTags + k), "tag " + std::to_string(kTag + k) + " gave " + got);
    }
  }
  return {};
}

// 8 MiB around a ring.
Status large_message(Transport& t) {
  constexpr uint32_t kTag = 400;
  constexpr size_t kBytes = size_t{8} << 20;
  const Deadline d = deadline_after(kTimeout);
  const int next = (t.rank() + 1) % t.size(), prev = (t.rank() + t.size() - 1) % t.size();
  SHOAL_RETURN_IF_ERROR(t.send(next, kTag, make_blob(t.rank(), kBytes), d));
  SHOAL_ASSIGN_OR_RETURN(Message m, t.recv(prev, kTag, d));
  EXPECT_OR_FAIL(m.payload == make_blob(prev, kBytes), "8 MiB from rank " + std::to_string(prev) + " intact");
  return {};
}

// Rank 0 receives 3 messages from every other rank with kAnySource: each once, each
// sender's in order.
Status any_source(Transport& t) {
  constexpr uint32_t kTag = 500;
  constexpr int kEach = 3;
  const Deadline d = deadline_after(kTimeout);
  if (t.rank() != 0) {
    for (int k = 0; k < kEach; ++k) {
      SHOAL_RETURN_IF_ERROR(t.send(0, kTag, as_bytes_of(std::to_string(t.rank()) + ":" + std::to_string(k)), d));
    }
    return {};
  }
  std::vector<int> seen(size_t(t.size()), 0);
  for (int i = 0; i < kEach * (t.size() - 1); ++i) {
    SHOAL_ASSIGN_OR_RETURN(Message m, t.recv(kAnySource, kTag, d));
    EXPECT_OR_FAIL(m.src > 0 && m.src < t.size(), "a sender in range");
    const std::string want = std::to_string(m.src) + ":" + std::to_string(seen[size_t(m.src)]++);
    EXPECT_OR_FAIL(text(m) == want, text(m) + " instead of " + want);
  }
  for (int r = 1; r < t.size(); ++r) EXPECT_OR_FAIL(seen[size_t(r)] == kEach, "3 from rank " + std::to_string(r));
  return {};
}

// Barriers in a row; then the last rank enters 250 ms late and nobody may leave before it
// entered: from before the previous barrier, every rank's wait is causally >= 250 ms.
Status barriers(Transport& t) {
  constexpr uint32_t kTag = 600;
  const Deadline d = deadline_after(kTimeout);
  for (int i = 0; i < 5; ++i) SHOAL_RETURN_IF_ERROR(barrier(t, kTag, d));
  const Clock::time_point start = Clock::now();
  SHOAL_RETURN_IF_ERROR(barrier(t, kTag, d));
  if (t.rank() == t.size() - 1) std::this_thread::sleep_for(250ms);
  SHOAL_RETURN_IF_ERROR(barrier(t, kTag, d));
  EXPECT_OR_FAIL(ms_since(start) >= 250, "left after " + std::to_string(ms_since(start)) + " ms");
  return {};
}

// Every rank broadcasts in turn; then an empty and a 1 MiB broadcast from rank 0.
Status broadcasts(Transport& t) {
  constexpr uint32_t kTag = 700;
  const Deadline d = deadline_after(kTimeout);
  std::vector<std::pair<int, size_t>> runs;  // (root, bytes)
  for (int root = 0; root < t.size(); ++root) runs.push_back({root, size_t(1000 + root)});
  runs.push_back({0, 0});
  runs.push_back({0, size_t{1} << 20});
  for (const auto& [root, bytes] : runs) {
    const Blob mine = t.rank() == root ? make_blob(root, bytes) : Blob{};
    SHOAL_ASSIGN_OR_RETURN(Blob got, broadcast(t, root, mine, kTag, d));
    EXPECT_OR_FAIL(got == make_blob(root, bytes), "the blob of root " + std::to_string(root));
  }
  return {};
}

// Blobs of different sizes (rank r: 1000 r + 3 bytes), gathered at the last rank and on all.
Status gathers(Transport& t) {
  constexpr uint32_t kTag = 800;
  const Deadline d = deadline_after(kTimeout);
  const auto blob_of = [](int r) { return make_blob(r + 7, size_t(1000 * r + 3)); };
  const int root = t.size() - 1;
  SHOAL_ASSIGN_OR_RETURN(std::vector<Blob> at_root, gather(t, root, blob_of(t.rank()), kTag, d));
  EXPECT_OR_FAIL(at_root.size() == (t.rank() == root ? size_t(t.size()) : 0), "one blob per rank at the root only");
  for (size_t r = 0; r < at_root.size(); ++r) EXPECT_OR_FAIL(at_root[r] == blob_of(int(r)), "gathered blob " + std::to_string(r));
  SHOAL_ASSIGN_OR_RETURN(std::vector<Blob> all, allgather(t, blob_of(t.rank()), kTag + 1, d));
  EXPECT_OR_FAIL(all.size() == size_t(t.size()), "one blob per rank");
  for (size_t r = 0; r < all.size(); ++r) EXPECT_OR_FAIL(all[r] == blob_of(int(r)), "allgathered blob " + std::to_string(r));
  SHOAL_ASSIGN_OR_RETURN(std::vector<Blob> empty, allgather(t, {}, kTag + 1, d));
  for (const Blob& b : empty) EXPECT_OR_FAIL(b.empty(), "empty blobs stay empty");
  return {};
}

// ---- expert exchange -----------------------------------------------------------------------

constexpr int64_t kDim = 16, kTopk = 3;

// The "expert": any fixed function of (expert id, row) that differs between experts.
void run_expert(float* y, const float* x, int32_t expert) {
  for (int64_t d = 0; d < kDim; ++d) y[d] = std::tanh(x[d] * 0.3f * float(expert + 1)) + 0.01f * float(expert * d);
}

struct Tokens {
  std::vector<float> x;          // [n, kDim]
  std::vector<int32_t> idx;      // [n, kTopk]
  std::vector<float> weight;     // [n, kTopk]
  std::vector<int32_t> owner;    // [n_experts]
  Routing routing() const {
    return {int64_t(x.size()) / kDim, kTopk, idx, weight, owner};
  }
};

// Deterministic tokens of one rank; rank 1 has none (its messages are all empty).
Tokens make_tokens(int rank, int size) {
  Tokens tk;
  const int32_t n_experts = 2 * size + 1;
  for (int32_t e = 0; e < n_experts; ++e) tk.owner.push_back((e * 7) % size);
  const int64_t n = rank == 1 ? 0 : 4 + 3 * rank;
  uint32_t state = 12345u + uint32_t(rank);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t d = 0; d < kDim; ++d) tk.x.push_back(std::sin(float(rank) * 1.3f + float(t) * 0.7f + float(d) * 0.11f));
    std::vector<int32_t> chosen;
    while (chosen.size() < size_t(kTopk)) {
      state = state * 1664525u + 1013904223u;
      const int32_t e = int32_t((state >> 8) % uint32_t(n_experts));
      if (std::find(chosen.begin(), chosen.end(), e) == chosen.end()) chosen.push_back(e);
    }
    for (int64_t j = 0; j < kTopk; ++j) {
      tk.idx.push_back(chosen[size_t(j)]);
      tk.weight.push_back(0.1f + 0.05f * float((t + j + rank) % 7));
    }
  }
  return tk;
}

// The single-rank reference: the weighted sum in ascending expert id, as moe_forward does.
std::vector<float> reference_moe(const Tokens& tk) {
  const Routing r = tk.routing();
  std::vector<float> out(tk.x.size(), 0.0f), y(kDim);
  for (int64_t t = 0; t < r.n_tokens; ++t) {
    std::vector<int64_t> order;
    for (int64_t j = 0; j < kTopk; ++j) order.push_back(j);
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return tk.idx[size_t(t * kTopk + a)] < tk.idx[size_t(t * kTopk + b)]; });
    for (int64_t j : order) {
      run_expert(y.data(), tk.x.data() + t * kDim, tk.idx[size_t(t * kTopk + j)]);
      for (int64_t d = 0; d < kDim; ++d) out[size_t(t * kDim + d)] += y[size_t(d)] * tk.weight[size_t(t * kTopk + j)];
    }
  }
  return out;
}

Status dispatch_combine(Transport& t) {
  constexpr uint32_t kTag = 900;
  const Deadline d = deadline_after(kTimeout);
  const Tokens tk = make_tokens(t.rank(), t.size());
  const std::vector<float> want = reference_moe(tk);
  for (int pass = 0; pass < 2; ++pass) {  // the same tags again: nothing is left behind
    SHOAL_ASSIGN_OR_RETURN(ExpertWork work, dispatch(t, tk.x, kDim, tk.routing(), kTag, d));
    std::vector<float> y(work.tasks.size() * size_t(kDim));
    for (size_t i = 0; i < work.tasks.size(); ++i) {
      const ExpertTask& task = work.tasks[i];
      EXPECT_OR_FAIL(tk.owner[size_t(task.expert)] == t.rank(), "only own experts to run");
      run_expert(y.data() + i * size_t(kDim), work.x.data() + task.row * kDim, task.expert);
    }
    std::vector<float> out(tk.x.size(), -1.0f);
    SHOAL_RETURN_IF_ERROR(combine(t, out, work, y, tk.routing(), kTag + 1, d));
    for (size_t i = 0; i < out.size(); ++i) {
      EXPECT_OR_FAIL(std::fabs(out[i] - want[i]) <= 1e-5f * (1.0f + std::fabs(want[i])),
                     "out[" + std::to_string(i) + "] = " + std::to_string(out[i]) + ", reference " + std::to_string(want[i]));
    }
  }
  return {};
}

// ---- failures ------------------------------------------------------------------------------

// Rank 1 stays silent until rank 0's waits ran out: kDeadlineExceeded on time, naming rank 1;
// the transport stays usable and the late message still arrives.
Status silent_peer(Transport& t) {
  constexpr uint32_t kTag = 1000;
  const Deadline d = deadline_after(kTimeout);
  if (t.rank() == 1) {
    SHOAL_ASSIGN_OR_RETURN(std::string go, recv_text(t, 0, kTag + 1, d));
    EXPECT_OR_FAIL(go == "go", go);
    return t.send(0, kTag, as_bytes_of(std::string("late")), d);
  }
  if (t.rank() != 0) return {};
  Clock::time_point start = Clock::now();
  StatusOr<Message> m = t.recv(1, kTag, deadline_after(200ms));
  const int64_t waited = ms_since(start);
  EXPECT_OR_FAIL(m.status().code() == Code::kDeadlineExceeded, m.status().to_string());
  EXPECT_OR_FAIL(m.status().message().find("rank 1") != std::string::npos, m.status().message());
  EXPECT_OR_FAIL(waited >= 190 && waited < 2000, "returned after " + std::to_string(waited) + " ms");
  start = Clock::now();
  m = t.recv(kAnySource, kTag, deadline_after(100ms));
  EXPECT_OR_FAIL(m.status().code() == Code::kDeadlineExceeded && ms_since(start) < 2000, m.status().to_string());
  SHOAL_RETURN_IF_ERROR(t.send(1, kTag + 1, as_bytes_of(std::string("go")), d));
  SHOAL_ASSIGN_OR_RETURN(std::string late, recv_text(t, 1, kTag, d));
  EXPECT_OR_FAIL(late == "late", late);
  return {};
}

constexpr CommCase kCases[] = {
    {"ping-pong", ping_pong},
    {"order per tag", order_per_tag},
    {"interleaved tags", interleaved_tags},
    {"8 MiB messages", large_message},
    {"any-source recv", any_source},
    {"barrier", barriers},
    {"broadcast", broadcasts},
    {"gather and allgather", gathers},
    {"dispatch and combine", dispatch_combine},
    {"silent peer", silent_peer},
};

}  // namespace

std::span<const CommCase> comm_cases() { return kCases; }

Status dead_peer_body(Transport& t, const std::function<void()>& die) {
  constexpr uint32_t kTag = 1100;
  const int victim = t.size() - 1;
  const Deadline d = deadline_after(kTimeout);
  if (t.rank() == victim) {
    SHOAL_RETURN_IF_ERROR(t.send(0, kTag, as_bytes_of(std::string("last words")), d));
    die();  // t is gone from here on
    return {};
  }
  if (t.rank() == 0) {
    SHOAL_ASSIGN_OR_RETURN(std::string last, recv_text(t, victim, kTag, d));
    EXPECT_OR_FAIL(last == "last words", "what the peer sent before it died still arrives");
  }
  const Clock::time_point start = Clock::now();
  StatusOr<Message> m = t.recv(victim, kTag, d);
  const std::string name = "rank " + std::to_string(victim);
  EXPECT_OR_FAIL(m.status().code() == Code::kUnavailable, m.status().to_string());
  EXPECT_OR_FAIL(m.status().message().find(name) != std::string::npos, m.status().message());
  EXPECT_OR_FAIL(ms_since(start) < 5000, "noticed after " + std::to_string(ms_since(start)) + " ms");
  const Status again = t.send(t.rank(), kTag + 1, {}, d);  // poisoned: fails at once
  EXPECT_OR_FAIL(again.code() == Code::kUnavailable && again.message() == m.status().message(), again.to_string());
  EXPECT_OR_FAIL(t.recv(kAnySource, kTag + 1, d).status().message() == m.status().message(), "the first error again");
  return {};
}

}  // namespace shoal::comm::testing
