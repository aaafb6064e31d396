// The comm tests with ranks as threads of this process (STYLE 11): every case of
// test_comm_cases.cpp over the in-process transport and over TCP on 127.0.0.1 with ephemeral
// ports, for 2, 3 and 5 ranks; a dead peer over both; TCP set-up failures. The same bodies run
// under mpirun in test_comm_mpi.cpp.
#include <catch2/catch.hpp>

#include <functional>
#include <latch>
#include <thread>

#include "comm/inproc/inproc_transport.h"
#include "comm/tcp/tcp_transport.h"
#include "tests/test_comm_cases.h"

namespace shoal::comm::testing {
namespace {

using namespace std::chrono_literals;

enum class Kind { kInproc, kTcp };
const char* kind_name(Kind kind) { return kind == Kind::kInproc ? "inproc" : "tcp"; }

// A rank's body; die() is the transport's kill hook (inproc) or closes it (tcp).
using Body = std::function<Status(Transport& t, const std::function<void()>& die)>;

std::vector<Status> run_inproc(int n, const Body& body) {
  InprocWorld world(n);
  std::vector<std::unique_ptr<Transport>> transports;
  for (int r = 0; r < n; ++r) transports.push_back(world.transport(r));
  std::vector<Status> results(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] { results[size_t(r)] = body(*transports[size_t(r)], [&world, r] { world.kill(r); }); });
  }
  for (std::thread& thread : threads) thread.join();
  return results;
}

// Every transport lives until every body has returned: a closed transport is a gone peer.
std::vector<Status> run_tcp(int n, const Body& body) {
  std::vector<TcpListener> listeners;
  std::vector<PeerAddress> peers;
  for (int r = 0; r < n; ++r) {
    StatusOr<TcpListener> listener = TcpListener::bind("127.0.0.1", 0);
    REQUIRE(listener.ok());
    peers.push_back({"127.0.0.1", listener->port()});
    listeners.push_back(std::move(*listener));
  }
  std::vector<std::unique_ptr<Transport>> transports(static_cast<size_t>(n));
  std::vector<Status> results(static_cast<size_t>(n));
  std::latch done(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      auto& mine = transports[size_t(r)];
      StatusOr<std::unique_ptr<Transport>> t = connect_tcp(r, peers, std::move(listeners[size_t(r)]), deadline_after(kTimeout));
      if (t.ok()) mine = std::move(*t);
      results[size_t(r)] = t.ok() ? body(*mine, [&mine] { mine.reset(); }) : t.status();
      done.arrive_and_wait();
      mine.reset();
    });
  }
  for (std::thread& thread : threads) thread.join();
  return results;
}

void check_ranks(Kind kind, int n, const char* what, const Body& body) {
  const auto start = Clock::now();
  const std::vector<Status> results = kind == Kind::kInproc ? run_inproc(n, body) : run_tcp(n, body);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
  for (size_t r = 0; r < results.size(); ++r) {
    INFO(what << " over " << kind_name(kind) << " with " << n << " ranks (" << ms << " ms), rank " << r << ": "
              << results[r].to_string());
    CHECK(results[r].ok());
  }
}

void check_every_case(Kind kind) {
  for (const CommCase& c : comm_cases()) {
    for (int n : {2, 3, 5}) check_ranks(kind, n, c.name, [&c](Transport& t, const auto&) { return c.body(t); });
  }
}

TEST_CASE("comm: every case over the in-process transport", "[comm]") { check_every_case(Kind::kInproc); }

TEST_CASE("comm: every case over TCP loopback", "[comm]") { check_every_case(Kind::kTcp); }

TEST_CASE("comm: a dead peer is kUnavailable naming it, then the transport is poisoned", "[comm]") {
  for (Kind kind : {Kind::kInproc, Kind::kTcp}) {
    for (int n : {2, 3}) check_ranks(kind, n, "dead peer", dead_peer_body);
  }
}

TEST_CASE("comm: TCP set-up names the rank that never answered", "[comm]") {
  StatusOr<TcpListener> l0 = TcpListener::bind("127.0.0.1", 0), l1 = TcpListener::bind("127.0.0.1", 0);
  REQUIRE((l0.ok() && l1.ok()));
  const std::vector<PeerAddress> peers = {{"127.0.0.1", l0->port()}, {"127.0.0.1", l1->port()}};
  const std::string rank0 = "rank 0 (127.0.0.1:" + std::to_string(l0->port()) + ")";
  const std::string rank1 = "rank 1 (127.0.0.1:" + std::to_string(l1->port()) + ")";

  // Rank 1 dials rank 0, whose socket listens but nobody answers the Hello.
  auto start = Clock::now();
  StatusOr<std::unique_ptr<Transport>> t1 = connect_tcp(1, peers, std::move(*l1), deadline_after(300ms));
  CHECK(Clock::now() - start < 2s);
  REQUIRE(!t1.ok());
  INFO(t1.status().to_string());
  CHECK(t1.status().code() == Code::kDeadlineExceeded);
  CHECK(t1.status().message().find(rank0) != std::string::npos);

  // Rank 0 waits for rank 1, which never dials.
  start = Clock::now();
  StatusOr<std::unique_ptr<Transport>> t0 = connect_tcp(0, peers, std::move(*l0), deadline_after(300ms));
  CHECK(Clock::now() - start < 2s);
  REQUIRE(!t0.ok());
  INFO(t0.status().to_string());
  CHECK(t0.status().code() == Code::kDeadlineExceeded);
  CHECK(t0.status().message().find(rank1) != std::string::npos);
}

TEST_CASE("comm: TCP set-up refuses peers with another world size", "[comm]") {
  StatusOr<TcpListener> l0 = TcpListener::bind("127.0.0.1", 0), l1 = TcpListener::bind("127.0.0.1", 0);
  REQUIRE((l0.ok() && l1.ok()));
  const std::vector<PeerAddress> two = {{"127.0.0.1", l0->port()}, {"127.0.0.1", l1->port()}};
  std::vector<PeerAddress> three = two;
  three.push_back({"127.0.0.1", 1});  // never reached: the size check fails first
  Status s0, s1;
  const auto start = Clock::now();
  std::thread rank0([&] { s0 = connect_tcp(0, two, std::move(*l0), deadline_after(kTimeout)).status(); });
  std::thread rank1([&] { s1 = connect_tcp(1, three, std::move(*l1), deadline_after(kTimeout)).status(); });
  rank0.join();
  rank1.join();
  CHECK(Clock::now() - start < 5s);
  for (const Status& s : {s0, s1}) {
    INFO(s.to_string());
    CHECK(s.code() == Code::kInvalidArgument);
    CHECK(s.message().find("world size") != std::string::npos);
  }
}

}  // namespace
}  // namespace shoal::comm::testing
