"""memfd: an anonymous memory file (memfd_create) sealed against shrinking and growing,
mapped MAP_SHARED by the rank and by a child that maps it again from the inherited
descriptor; the two play posix_shm's ping-pong in it.

Covers: a memfd (CRIU dumps its contents, name and seals, and restores both mappings and the
descriptor onto one new memfd). Each operation is one round trip as in posix_shm (request
`seq` written by the rank, checked and answered by the child through the shared mapping,
the answer checked by the rank); then the rank checks the descriptor still names
"/memfd:crctl-memfd (deleted)", its seals are still F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL,
growing it is still refused (EPERM), and a pread of the descriptor holds what the mapping
holds. Progress: operations checked."""

from __future__ import annotations

import fcntl
import mmap
import os

from tests.workloads.catalogue import _common, posix_shm

NAME = "crctl-memfd"
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def check_memfd(fd: int, memory: mmap.mmap) -> list[str | None]:
    problems: list[str | None] = []
    target = os.readlink(f"/proc/self/fd/{fd}")
    if target != f"/memfd:{NAME} (deleted)":
        problems.append(f"the descriptor names {target!r}")
    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    if seals != SEALS:
        problems.append(f"seals {seals:#x}, expected {SEALS:#x}")
    try:
        os.ftruncate(fd, 2 * posix_shm.SIZE)
        problems.append("the memfd grew: its F_SEAL_GROW is gone")
    except PermissionError:
        pass
    if os.pread(fd, posix_shm.SIZE, 0) != memory[: posix_shm.SIZE]:
        problems.append("the memfd's contents differ from its mapping")
    return problems


def child(fd: int) -> None:
    posix_shm.answer(mmap.mmap(fd, posix_shm.SIZE, mmap.MAP_SHARED))


def main() -> None:
    _, status = _common.start("memfd")
    fd = os.memfd_create(NAME, os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    os.ftruncate(fd, posix_shm.SIZE)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    memory = mmap.mmap(fd, posix_shm.SIZE, mmap.MAP_SHARED)
    pid = _common.fork_child(lambda: child(fd))
    _common.at_exit(lambda: _common.kill_and_reap([pid]))
    seq = 0
    while True:
        status.check_all([*posix_shm.round_trip(memory, seq, status), *check_memfd(fd, memory)])
        seq += 1
        _common.pause(0.005)


if __name__ == "__main__":
    main()
