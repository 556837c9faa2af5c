"""posix_shm: a POSIX shared memory object (shm_open: a file in /dev/shm, named after the
rank and its pid) mapped MAP_SHARED by a parent and its child, which play ping-pong in it.

Covers: a /dev/shm mapping two processes of one rank share (CRIU restores both mappings onto
the one file, whose contents live in the file on the tmpfs, not in the images). The parent
writes request `seq` (sequence number, checksum and body) into the request slot; the child
sees it, checks it and writes answer `seq` into the answer slot, or an error text into the
error slot; the parent checks the answer, that the child reported nothing, and that a fresh
read of /dev/shm/<name> (not through the mapping) holds what the mapping holds, so each
process still shares the object. A request unanswered for ANSWER_POLLS polls of the slot
(not a time: a frozen job makes no polls) is an error. SIGTERM removes the object (the name
is the one thing this workload writes outside its work dir). Progress: round trips checked."""

from __future__ import annotations

import ctypes
import mmap
import os
import struct

from tests.workloads.catalogue import _common

SIZE = 64 << 10
SLOT = 16 << 10
REQUEST, ANSWER, ERROR = 0, SLOT, 2 * SLOT
LENGTH = struct.Struct("!I")
ANSWER_POLLS = 20000
POLL = 0.0005
MAX_MESSAGE = 4000


def shm_open(name: str) -> int:
    lib = _common.libc()
    lib.shm_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint]
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
    return _common.check_libc(lib.shm_open(name.encode(), flags, 0o600), f"shm_open {name}")


def put(memory: mmap.mmap, slot: int, data: bytes) -> None:
    """Write `data` into a slot: body first, then its length (a reader that sees the new
    length sees the new body; 0 means empty)."""
    memory[slot + LENGTH.size : slot + LENGTH.size + len(data)] = data
    memory[slot : slot + LENGTH.size] = LENGTH.pack(len(data))


def take(memory: mmap.mmap, slot: int) -> bytes | None:
    (size,) = LENGTH.unpack_from(memory, slot)
    if size == 0:
        return None
    data = bytes(memory[slot + LENGTH.size : slot + LENGTH.size + size])
    memory[slot : slot + LENGTH.size] = LENGTH.pack(0)
    return data


def answer(memory: mmap.mmap) -> None:
    """The child: answer every request."""
    seq = 0
    while True:
        request = take(memory, REQUEST)
        if request is None:
            _common.pause(POLL)
            continue
        problem = _common.check_message(request, b"request", seq, MAX_MESSAGE)
        if problem is not None:
            put(memory, ERROR, problem.encode()[: SLOT - LENGTH.size])
            seq = _common.message_seq(request)
        put(memory, ANSWER, _common.make_message(b"answer", seq, MAX_MESSAGE))
        seq += 1


def compare_file(path: str, memory: mmap.mmap) -> str | None:
    with open(path, "rb") as shared:
        content = shared.read(SIZE)
    if content != memory[:SIZE]:
        return f"{path} read afresh differs from its mapping: the mapping is not shared"
    return None


def round_trip(memory: mmap.mmap, seq: int, status: _common.Status) -> list[str | None]:
    """Request `seq` and its answer (the child runs `answer`); what is wrong with them."""
    put(memory, REQUEST, _common.make_message(b"request", seq, MAX_MESSAGE))
    reply = None
    for _ in range(ANSWER_POLLS):
        reply = take(memory, ANSWER)
        if reply is not None:
            break
        _common.pause(POLL)
    if reply is None:
        status.error(f"request {seq}: no answer in {ANSWER_POLLS} polls")
        _common.idle_forever()
    reported = take(memory, ERROR)
    return [
        _common.check_message(reply, b"answer", seq, MAX_MESSAGE),
        None if reported is None else f"the child: {reported.decode(errors='replace')}",
    ]


def main() -> None:
    args, status = _common.start("posix_shm")
    name = f"/crctl-posix_shm-{args.rank}-{os.getpid()}"
    path = "/dev/shm" + name
    fd = shm_open(name)
    _common.at_exit(lambda: os.unlink(path))
    os.ftruncate(fd, SIZE)
    memory = mmap.mmap(fd, SIZE, mmap.MAP_SHARED)
    os.close(fd)
    child = _common.fork_child(lambda: answer(memory))
    _common.at_exit(lambda: _common.kill_and_reap([child]))
    seq = 0
    while True:
        status.check_all([*round_trip(memory, seq, status), compare_file(path, memory)])
        seq += 1
        _common.pause(0.005)


if __name__ == "__main__":
    main()
