"""mmap_file: a file in the work dir mapped MAP_SHARED by the parent and, separately, by a
child, plus an anonymous MAP_SHARED mapping the child inherits.

Covers: shared file mappings (CRIU maps the file again on restore: it must be the same file,
of the same size) and shared anonymous memory between two processes. Each cycle the parent
writes message `seq` into the file mapping and then `seq` into the file's counter slot; the
child, seeing the counter, checks the message through its own mapping and through a plain
pread of the file, writes its answer (message `seq` of its own) into the anonymous mapping and
then `seq` into the anonymous counter slot; the parent checks that. A child's complaint goes
into the anonymous mapping as text. Progress: cycles checked."""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

from tests.workloads.catalogue import _common

SIZE = 64 << 10
SLOT = struct.Struct("!qI")  # counter, length of what follows
MAX_BODY = SIZE // 2
TICKS = 2000  # 2 ms each


def put(memory: mmap.mmap, seq: int, data: bytes) -> None:
    """`data` first, then the counter that announces it."""
    memory[SLOT.size : SLOT.size + len(data)] = data
    SLOT.pack_into(memory, 0, seq, len(data))


def get(memory: mmap.mmap | bytes) -> tuple[int, bytes]:
    seq, length = SLOT.unpack_from(memory, 0)
    length = min(length, SIZE - SLOT.size)
    return seq, bytes(memory[SLOT.size : SLOT.size + length])


def wait_for(memory: mmap.mmap, seq: int) -> tuple[int, bytes] | None:
    """The counter and data of `memory` once its counter reaches `seq` (None if it does not
    in TICKS ticks)."""
    for _ in range(TICKS):
        got, data = get(memory)
        if got >= seq:
            return got, data
        _common.pause(0.002)
    return None


def check_file(by_map: bytes, by_read: bytes, seq: int) -> str | None:
    problem = _common.check_message(by_map, b"file", seq, MAX_BODY)
    if problem is None and by_map != by_read:
        problem = f"cycle {seq}: the mapping and a read of the file differ"
    return problem


def child(path: Path, shared: mmap.mmap) -> None:
    fd = os.open(path, os.O_RDWR)
    mine = mmap.mmap(fd, SIZE, mmap.MAP_SHARED)
    seq = 0
    while True:
        announced = wait_for(mine, seq)
        if announced is None:
            continue
        seq, by_map = announced
        _, by_read = get(os.pread(fd, SIZE, 0))
        problem = check_file(by_map, by_read, seq)
        answer = _common.make_message(b"anon", seq, MAX_BODY) if problem is None else b""
        put(shared, seq, answer or f"ERROR {problem}".encode())
        seq += 1


def main() -> None:
    args, status = _common.start("mmap_file")
    path = args.work_dir / "mapped"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.ftruncate(fd, SIZE)
    file_map = mmap.mmap(fd, SIZE, mmap.MAP_SHARED)
    put(file_map, -1, b"")
    shared = mmap.mmap(-1, SIZE, mmap.MAP_SHARED)
    put(shared, -1, b"")
    pid = _common.fork_child(lambda: child(path, shared))
    _common.at_exit(lambda: _common.kill_and_reap([pid]))
    seq = 0
    while True:
        put(file_map, seq, _common.make_message(b"file", seq, MAX_BODY))
        _, answer = wait_for(shared, seq) or (None, None)
        if answer is None:
            problem: str | None = f"cycle {seq}: no answer from the child in {TICKS} ticks"
        elif answer.startswith(b"ERROR"):
            problem = f"the child says: {answer.decode(errors='replace')}"
        else:
            problem = _common.check_message(answer, b"anon", seq, MAX_BODY)
        status.check(problem)
        seq += 1
        _common.pause(0.01)


if __name__ == "__main__":
    main()
