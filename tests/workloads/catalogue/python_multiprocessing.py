"""python_multiprocessing: a multiprocessing Pool (the fork start method) of WORKERS processes,
with IN_FLIGHT tasks outstanding at all times; each worker is replaced after
TASKS_PER_WORKER tasks, so workers are forked anew all the time (also after a restore).

Covers: Python's multiprocessing machinery: worker processes fed through pipes, the pool's
three threads in the rank (task feeder, result collector, worker handler), its locks
(POSIX semaphores whose /dev/shm names are unlinked at once: mappings of deleted files) and
tasks and results in flight in the pipes. Task `seq` asks a worker for the checksum of
message `seq`'s body; the result (seq, checksum, worker pid) must carry the right checksum
and come from a pool worker, and every task must come back exactly once (results are matched
by seq). A task unanswered after OVERDUE later results came back is an error. SIGTERM ends
the rank; its workers die with it (PR_SET_PDEATHSIG). Progress: results checked."""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import queue
import signal
import zlib

from tests.workloads.catalogue import _common

WORKERS = 4
IN_FLIGHT = 16
TASKS_PER_WORKER = 50
OVERDUE = 2000


def task(seq: int) -> tuple[int, int, int]:
    body = _common.message_body(b"multiprocessing", seq)
    return seq, zlib.crc32(body), os.getpid()


def die_with_parent(parent: int) -> None:
    """A worker's start: it dies with the rank, also if the rank ended before this ran."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _common.libc().prctl(_common.PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def check_result(result: tuple[int, int, int], outstanding: dict[int, int], own: int) -> str | None:
    seq, checksum, pid = result
    if seq not in outstanding:
        return f"result {seq} came back but was not outstanding (repeated?)"
    del outstanding[seq]
    if checksum != zlib.crc32(_common.message_body(b"multiprocessing", seq)):
        return f"result {seq}: wrong checksum {checksum:08x}"
    if pid == own:
        return f"result {seq} was computed in the rank itself, not a worker"
    return None


def main() -> None:
    _, status = _common.start("python_multiprocessing")
    context = multiprocessing.get_context("fork")
    pool = context.Pool(
        WORKERS,
        initializer=die_with_parent,
        initargs=(os.getpid(),),
        maxtasksperchild=TASKS_PER_WORKER,
    )
    results: queue.SimpleQueue[tuple[int, int, int]] = queue.SimpleQueue()
    outstanding: dict[int, int] = {}  # seq -> results received when it was sent
    received = sent = 0
    own = os.getpid()
    while True:
        while len(outstanding) < IN_FLIGHT:
            outstanding[sent] = received
            pool.apply_async(task, (sent,), callback=results.put)
            sent += 1
        status.check(check_result(results.get(), outstanding, own))
        received += 1
        late = [seq for seq, at in outstanding.items() if received - at > OVERDUE]
        for seq in late:
            status.error(f"task {seq} has not come back after {OVERDUE} later results")
            del outstanding[seq]
        _common.pause(0.002)


if __name__ == "__main__":
    main()
