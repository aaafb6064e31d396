// MPI transport: the ranks of MPI_COMM_WORLD (under mpirun or srun), on a private duplicate of
// it so shoal's tags never meet other MPI traffic in the process. Open MPI picks the wire: pml
// ob1 (btls self, vader shared memory, tcp) or pml ucx (UCX: shared memory, TCP, InfiniBand);
// docs/comm.md says how to force one and how to check which one ran.
//
// send() hands an owned copy to MPI_Isend and returns; later calls complete it (MPI_Test) in
// the background. recv() polls MPI_Improbe until a match or the deadline, then receives the
// matched message with MPI_Imrecv polled by MPI_Test (a deadline there poisons: the message
// was already taken off the wire). Every MPI call holds one mutex, so MPI_THREAD_SERIALIZED
// suffices; MPI_THREAD_MULTIPLE is asked for. Errors come back as codes (MPI_ERRORS_RETURN):
// kUnavailable naming "rank N (host)". A rank that dies usually ends the whole job (mpirun's
// default), so here a dead peer is mostly seen as silence: kDeadlineExceeded.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "comm/transport.h"

namespace shoal::comm {

struct MpiOptions {
  // Bytes of unfinished sends before send() waits for some to complete (until its deadline).
  size_t max_pending_bytes = size_t{256} << 20;
  // How long destruction waits for unfinished sends before giving up on MPI_Finalize.
  std::chrono::milliseconds close_timeout{10000};
};

// Initialises MPI unless it already is (and then finalises it when the transport is destroyed),
// duplicates MPI_COMM_WORLD and gathers every rank's host name: collective over the world.
// Fails when MPI gives less than MPI_THREAD_SERIALIZED or a tag bound below kMaxTag.
StatusOr<std::unique_ptr<Transport>> make_mpi_transport(int* argc, char*** argv, MpiOptions options = {});

// The PML Open MPI selected in this process ("ucx", "ob1", "cm"), read from the components
// mapped into it: Open MPI unloads the PMLs it did not select. "" before MPI_Init, or when
// the components are linked in statically or this is not Open MPI on Linux.
std::string open_mpi_pml();

// The thread level MPI provides ("MULTIPLE", "SERIALIZED", ...), after initialisation.
std::string mpi_thread_level();

}  // namespace shoal::comm
