// The comm cases over the MPI transport: an MPI program that ctest runs under mpirun (see the
// end of tests/CMakeLists.txt: -np 3, once with pml ob1 and once with pml ucx). Every rank runs
// every case of test_comm_cases.cpp in the same order, with a barrier between cases; then the
// ranks allgather their failure counts and rank 0 prints the verdict. Exit status 0 only when
// every rank passed every case.
//
// SHOAL_EXPECT_PML=ucx (or ob1) makes the run fail unless Open MPI really selected that PML
// (comm::open_mpi_pml(): the PML component mapped into the process). A dead peer is not
// tested here: under mpirun a rank that dies ends the job.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "comm/collectives.h"
#include "comm/mpi/mpi_transport.h"
#include "tests/test_comm_cases.h"

namespace shoal::comm::testing {
namespace {

constexpr uint32_t kSyncTag = 2000;

void report(const Transport& t, const char* name, const Status& s, int64_t ms) {
  if (s.ok()) {
    std::printf("rank %d: %-22s ok (%lld ms)\n", t.rank(), name, static_cast<long long>(ms));
  } else {
    std::printf("rank %d: %-22s FAILED: %s\n", t.rank(), name, s.to_string().c_str());
  }
  std::fflush(stdout);
}

// 1 when SHOAL_EXPECT_PML names another PML than the one in use.
int check_pml(const Transport& t) {
  const std::string pml = open_mpi_pml();
  const char* expected = std::getenv("SHOAL_EXPECT_PML");
  if (t.rank() == 0) {
    std::printf("test_comm_mpi: %d ranks, Open MPI pml in use: %s, thread level %s\n", t.size(),
                pml.empty() ? "(unknown)" : pml.c_str(), mpi_thread_level().c_str());
  }
  if (expected == nullptr || pml == expected) return 0;
  std::printf("rank %d: FAILED: expected pml %s but Open MPI selected %s\n", t.rank(), expected,
              pml.empty() ? "(unknown)" : pml.c_str());
  return 1;
}

int run_all(Transport& t) {
  int failures = check_pml(t);
  for (const CommCase& c : comm_cases()) {
    const Clock::time_point start = Clock::now();
    const Status s = c.body(t);
    report(t, c.name, s, std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count());
    failures += s.ok() ? 0 : 1;
    if (const Status sync = barrier(t, kSyncTag, deadline_after(kTimeout)); !sync.ok()) {
      report(t, "barrier between cases", sync, 0);
      return failures + 1;
    }
  }
  return failures;
}

// The sum of every rank's failures, or -1 when the ranks cannot agree on it.
int total_failures(Transport& t, int mine) {
  StatusOr<std::vector<Blob>> all = allgather(t, as_bytes_of(std::span<const int>(&mine, 1)), kSyncTag + 1, deadline_after(kTimeout));
  if (!all.ok()) return -1;
  int total = 0;
  for (const Blob& b : *all) {
    int failures = 1;  // a malformed count counts as a failure
    if (b.size() == sizeof(int)) std::memcpy(&failures, b.data(), sizeof(int));
    total += failures;
  }
  return total;
}

}  // namespace
}  // namespace shoal::comm::testing

int main(int argc, char** argv) {
  using namespace shoal;
  using namespace shoal::comm;
  StatusOr<std::unique_ptr<Transport>> transport = make_mpi_transport(&argc, &argv);
  if (!transport.ok()) {
    std::fprintf(stderr, "test_comm_mpi: %s\n", transport.status().to_string().c_str());
    return 1;
  }
  Transport& t = **transport;
  const int failures = testing::run_all(t);
  const int total = testing::total_failures(t, failures);
  if (t.rank() == 0) {
    if (total == 0) std::printf("test_comm_mpi: PASSED, %zu cases on %d ranks\n", testing::comm_cases().size(), t.size());
    else std::printf("test_comm_mpi: FAILED (%d failures over all ranks)\n", total);
  }
  std::fflush(stdout);
  const int rc = total == 0 ? 0 : 1;
  transport->reset();  // MPI_Finalize
  return rc;
}
