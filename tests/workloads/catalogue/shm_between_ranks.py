"""shm_between_ranks (2 ranks on one host): two ranks, two process trees, sharing a POSIX
shared memory object (/dev/shm/crctl-shm-<port>) as an MPI job's shared-memory transport
would between processes of one node.

Covers a refusal: crctl moves process trees, and a restart may put the two ranks on different
hosts, where no memory can be shared; so a checkpoint of such a job is refused in its prepare
step, naming the object and the ranks, before anything is frozen, and the job runs on
untouched (agent/uncarried.py). Each rank writes its own counter into its slot and checks that
the other's never goes back and moves on (the memory is shared). Progress: reads of the other
rank's counter that moved on."""

from __future__ import annotations

import contextlib
import mmap
import os
import struct

from tests.workloads.catalogue import _common

COUNTER = struct.Struct("!Q")
STALL_READS = 20000  # reads of an unmoved counter before that is an error (not a time)


def _remove(path: str) -> None:
    """The object goes with whichever rank ends first (the other keeps its mapping)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def main() -> None:
    args, status = _common.start("shm_between_ranks", ranks=2)
    path = f"/dev/shm/crctl-shm-{args.port}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, mmap.PAGESIZE)
    memory = mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED)
    _common.at_exit(lambda: _remove(path))
    own, other = args.rank * COUNTER.size, (1 - args.rank) * COUNTER.size
    written, seen, stalled = 0, 0, 0
    while True:
        written += 1
        memory[own : own + COUNTER.size] = COUNTER.pack(written)
        (now,) = COUNTER.unpack_from(memory, other)
        if now < seen:
            status.error(f"the other rank's counter went back from {seen} to {now}")
        elif now > seen:
            status.ok()
            seen, stalled = now, 0
        else:
            stalled += 1
            if stalled == STALL_READS:
                status.error(f"the other rank's counter stayed at {seen}")
        _common.pause(0.002)


if __name__ == "__main__":
    main()
