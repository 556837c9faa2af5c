"""file_locks: file locks held by the rank on files in its work dir (a flock lock, POSIX
record locks on ranges that change as it runs, an open file description lock), probed by a
child that opened the same files itself.

Covers: file locks, which CRIU dumps and takes again at restore only with --file-locks
(without it, a dump of a process holding locks fails). The rank holds flock(LOCK_EX) on
"flock.lock", an OFD write lock (F_OFD_SETLK) on the first RANGE bytes of "ofd.lock", and
POSIX write locks (F_SETLK) on LOCKED of the RANGES ranges of "records.lock"; each operation
it moves one of those to a range it does not hold, then asks the child (over a pipe) to probe:
the child's flock(LOCK_EX | LOCK_NB) on its own open file must fail; F_GETLK on each range
must find the rank's pid on exactly the ranges the rank holds and nothing elsewhere;
F_OFD_GETLK on the OFD range must find an OFD lock (pid -1). The child answers what it
found and the rank checks it against what it holds. Progress: probes checked."""

from __future__ import annotations

import fcntl
import os
import random
import struct
from pathlib import Path

from tests.workloads.catalogue import _common

RANGE = 4096
RANGES = 16
LOCKED = 5
FLOCK = struct.Struct("@hhqqi4x")  # struct flock: type, whence, start, len, pid


def lock_request(kind: int, start: int, length: int = RANGE) -> bytes:
    return FLOCK.pack(kind, os.SEEK_SET, start, length, 0)


def holder(fd: int, command: int, start: int) -> int | None:
    """The pid holding a lock that conflicts with a write lock on the range (-1 for an OFD
    lock), None if there is none."""
    kind, _, _, _, pid = FLOCK.unpack(fcntl.fcntl(fd, command, lock_request(fcntl.F_WRLCK, start)))
    return None if kind == fcntl.F_UNLCK else int(pid)


def probe(work_dir: Path) -> str:
    """What the child finds: "flock=<held|free> ofd=<pid> ranges=<i:pid,...>"."""
    with open(work_dir / "flock.lock", "rb") as flocked:
        try:
            fcntl.flock(flocked, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(flocked, fcntl.LOCK_UN)
            flock = "free"
        except BlockingIOError:
            flock = "held"
    with open(work_dir / "ofd.lock", "rb") as ofd:
        ofd_holder = holder(ofd.fileno(), fcntl.F_OFD_GETLK, 0)
    with open(work_dir / "records.lock", "rb") as records:
        held = {i: holder(records.fileno(), fcntl.F_GETLK, i * RANGE) for i in range(RANGES)}
    ranges = ",".join(f"{i}:{pid}" for i, pid in sorted(held.items()) if pid is not None)
    return f"flock={flock} ofd={ofd_holder} ranges={ranges}"


def expected_probe(own: int, locked: set[int]) -> str:
    ranges = ",".join(f"{i}:{own}" for i in sorted(locked))
    return f"flock=held ofd=-1 ranges={ranges}"


def child(reads: int, writes: int, work_dir: Path) -> None:
    while True:
        seq = os.read(reads, 64)
        if not seq:
            return
        os.write(writes, seq.strip() + b" " + probe(work_dir).encode() + b"\n")


def main() -> None:
    args, status = _common.start("file_locks")
    files = {}
    for name in ("flock.lock", "ofd.lock", "records.lock"):
        fd = os.open(args.work_dir / name, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(fd, RANGES * RANGE)
        files[name] = fd
    fcntl.flock(files["flock.lock"], fcntl.LOCK_EX)
    fcntl.fcntl(files["ofd.lock"], fcntl.F_OFD_SETLK, lock_request(fcntl.F_WRLCK, 0))
    choose = random.Random(args.rank)
    locked = set(choose.sample(range(RANGES), LOCKED))
    for i in locked:
        fcntl.fcntl(files["records.lock"], fcntl.F_SETLK, lock_request(fcntl.F_WRLCK, i * RANGE))
    child_reads, rank_writes = os.pipe()
    rank_reads, child_writes = os.pipe()
    work_dir = args.work_dir
    pid = _common.fork_child(lambda: child(child_reads, child_writes, work_dir))
    _common.at_exit(lambda: _common.kill_and_reap([pid]))
    os.close(child_reads)
    os.close(child_writes)
    own = os.getpid()
    seq = 0
    pending = b""
    while True:
        release = choose.choice(sorted(locked))
        take = choose.choice(sorted(set(range(RANGES)) - locked))
        records = files["records.lock"]
        fcntl.fcntl(records, fcntl.F_SETLK, lock_request(fcntl.F_UNLCK, release * RANGE))
        fcntl.fcntl(records, fcntl.F_SETLK, lock_request(fcntl.F_WRLCK, take * RANGE))
        locked = (locked - {release}) | {take}
        os.write(rank_writes, f"{seq}\n".encode())
        while b"\n" not in pending:
            data = os.read(rank_reads, 4096)
            if not data:
                status.error("the probing child is gone")
                _common.idle_forever()
            pending += data
        line, _, pending = pending.partition(b"\n")
        want = f"{seq} {expected_probe(own, locked)}"
        got = line.decode(errors="replace")
        status.check(None if got == want else f"probe {seq}: found {got!r}, expected {want!r}")
        seq += 1
        _common.pause(0.01)


if __name__ == "__main__":
    main()
