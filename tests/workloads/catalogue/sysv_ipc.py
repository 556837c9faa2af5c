"""sysv_ipc: SysV shared memory and a SysV message queue (ctypes on libc, IPC_PRIVATE)
between a parent and a child.

Covers: SysV IPC objects, which CRIU dumps with the rank's IPC namespace (the segment's
contents, the queue's unread messages), and a segment attached in two processes. Each cycle
the parent writes message `seq` into its half of the segment and sends "<seq>" (type 1) on
the queue; the child checks the parent's half, writes its own message `seq` into the other
half and answers "<seq> ok" or "<seq> ERROR ..." (type 2); the parent checks the answer and
the child's half. Progress: cycles checked."""

from __future__ import annotations

import ctypes
import errno
import struct

from tests.workloads.catalogue import _common

IPC_PRIVATE, IPC_CREAT, IPC_NOWAIT, IPC_RMID = 0, 0o1000, 0o4000, 0
SEGMENT = 64 << 10
HALF = SEGMENT // 2
LENGTH = struct.Struct("!I")
TO_CHILD, TO_PARENT = 1, 2


class Text(ctypes.Structure):
    _fields_ = [("mtype", ctypes.c_long), ("mtext", ctypes.c_char * 256)]


class Ipc:
    def __init__(self) -> None:
        lib = self.lib = _common.libc()
        lib.shmat.restype = ctypes.c_void_p
        lib.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
        lib.shmdt.argtypes = [ctypes.c_void_p]
        lib.msgrcv.restype = ctypes.c_ssize_t
        lib.msgrcv.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_long,
            ctypes.c_int,
        ]
        self.shm = _common.check_libc(lib.shmget(IPC_PRIVATE, SEGMENT, IPC_CREAT | 0o600), "shmget")
        address = lib.shmat(self.shm, None, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "shmat")
        self.address: int = address
        self.queue = _common.check_libc(lib.msgget(IPC_PRIVATE, IPC_CREAT | 0o600), "msgget")

    def remove(self) -> None:
        self.lib.shmdt(ctypes.c_void_p(self.address))
        self.lib.shmctl(self.shm, IPC_RMID, None)
        self.lib.msgctl(self.queue, IPC_RMID, None)

    def put(self, half: int, data: bytes) -> None:
        block = LENGTH.pack(len(data)) + data
        ctypes.memmove(self.address + half * HALF, block, len(block))

    def get(self, half: int) -> bytes:
        start = self.address + half * HALF
        (length,) = LENGTH.unpack(ctypes.string_at(start, LENGTH.size))
        return ctypes.string_at(start + LENGTH.size, min(length, HALF - LENGTH.size))

    def send(self, kind: int, text: str) -> None:
        message = Text(kind, text.encode()[:255])
        _common.check_libc(self.lib.msgsnd(self.queue, ctypes.byref(message), 256, 0), "msgsnd")

    def receive(self, kind: int) -> str:
        """The next message of `kind`, polling (so that SIGTERM is never stuck behind it)."""
        message = Text()
        while True:
            got = self.lib.msgrcv(self.queue, ctypes.byref(message), 256, kind, IPC_NOWAIT)
            if got >= 0:
                return bytes(message.mtext).decode(errors="replace")
            if ctypes.get_errno() != errno.ENOMSG:
                _common.check_libc(-1, "msgrcv")
            _common.pause(0.002)


def tag(half: int) -> bytes:
    return b"from-parent" if half == 0 else b"from-child"


def check_answer(answer: str, seq: int) -> str | None:
    return None if answer == f"{seq} ok" else f"answer {answer!r} to cycle {seq}"


def child(ipc: Ipc) -> None:
    seq = 0
    while True:
        asked = ipc.receive(TO_CHILD)
        problem = None if asked == str(seq) else f"asked {asked!r}, expected {seq}"
        problem = problem or _common.check_message(ipc.get(0), tag(0), seq, max_size=HALF // 2)
        ipc.put(1, _common.make_message(tag(1), seq, max_size=HALF // 2))
        ipc.send(TO_PARENT, f"{seq} ok" if problem is None else f"{seq} ERROR {problem}")
        seq += 1


def main() -> None:
    _, status = _common.start("sysv_ipc")
    ipc = Ipc()
    _common.at_exit(ipc.remove)
    pid = _common.fork_child(lambda: child(ipc))
    _common.at_exit(lambda: _common.kill_and_reap([pid]))
    seq = 0
    while True:
        ipc.put(0, _common.make_message(tag(0), seq, max_size=HALF // 2))
        ipc.send(TO_CHILD, str(seq))
        problem = check_answer(ipc.receive(TO_PARENT), seq)
        problem = problem or _common.check_message(ipc.get(1), tag(1), seq, max_size=HALF // 2)
        status.check(problem)
        seq += 1
        _common.pause(0.01)


if __name__ == "__main__":
    main()
