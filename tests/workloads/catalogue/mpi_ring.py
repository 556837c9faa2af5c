"""mpi_ring (an MPI job of --ranks processes, launched by mpiexec: `crctl mpirun` on the
testbed): every step each MPI rank passes a message to the next rank of a ring and receives
one from the previous (sendrecv), then all agree on a sum (allreduce) and, every tenth step,
on a message rank 0 broadcasts (bcast).

Covers: MPICH (mpi4py) over TCP between hosts: mpiexec, the per-host proxies and the MPI
ranks, with their PMI and MPI connections, moved as one job. Every process is started with
the same arguments, in which "{rank}" stands for its MPI rank (`--rank {rank} --status
DIR/rank-{rank}.json --work-dir DIR/work-{rank}`); --ranks must be the MPI job's size. Each
message follows from (sender, step) with a checksum (_common.make_message), so a lost,
repeated, reordered or corrupted one is an error on the receiving rank; the sum of
(rank + 1) * step over the ranks must be step * N(N+1)/2. SIGTERM ends a rank without
MPI_Finalize, so it first removes the segment MPICH made for it in /dev/shm (MPI_Finalize
would). Progress: steps checked."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from mpi4py import MPI

from tests.workloads.catalogue import _common

BCAST_EVERY = 10
STEP_PAUSE = 0.02  # MPICH busy-waits for the other ranks: fewer steps, less CPU
MPICH_SEGMENTS = "/dev/shm/mpich_shm_"


def remove_own_segments() -> None:
    """Unlink the MPICH segments in /dev/shm this process maps."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith(MPICH_SEGMENTS):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(fields[5])


def tag(rank: int) -> bytes:
    return f"mpi-{rank}".encode()


def check_step(comm: MPI.Intracomm, rank: int, size: int, step: int) -> list[str | None]:
    right, left = (rank + 1) % size, (rank - 1) % size
    received = comm.sendrecv(_common.make_message(tag(rank), step, 2000), dest=right, source=left)
    problems = [_common.check_message(received, tag(left), step, 2000)]
    total = comm.allreduce((rank + 1) * step, op=MPI.SUM)
    want = step * size * (size + 1) // 2
    problems.append(None if total == want else f"step {step}: allreduce {total}, want {want}")
    if step % BCAST_EVERY == 0:
        sent = _common.make_message(b"bcast", step, 2000) if rank == 0 else None
        problems.append(_common.check_message(comm.bcast(sent, root=0), b"bcast", step, 2000))
    return problems


def main() -> None:
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    argv = [arg.replace("{rank}", str(rank)) for arg in sys.argv[1:]]
    args, status = _common.start("mpi_ring", ranks=size, argv=argv)
    _common.at_exit(remove_own_segments)
    if args.rank != rank:
        status.error(f"started as --rank {args.rank}, but this is MPI rank {rank}")
    step = 0
    while True:
        step += 1
        status.check_all(check_step(comm, rank, size, step))
        _common.pause(STEP_PAUSE)


if __name__ == "__main__":
    main()
