"""What a checkpoint refuses before freezing anything: RDMA devices, shared memory split across
ranks (a fake /proc: maps and fd links as the kernel writes them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.uncarried import refusals, require_carriable
from crctl.errors import CrctlError

LIB = "7f00-7f10 r-xp 00000000 08:01 1234 /usr/lib/libc.so.6"


def process(proc: Path, pid: int, maps: list[str], fds: dict[int, str] | None = None) -> None:
    folder = proc / str(pid)
    (folder / "fd").mkdir(parents=True)
    (folder / "maps").write_text("\n".join(maps) + "\n")
    for fd, target in (fds or {}).items():
        os.symlink(target, folder / "fd" / str(fd))


def test_ranks_with_their_own_shared_memory_and_no_rdma_can_be_checkpointed(
    tmp_path: Path,
) -> None:
    process(tmp_path, 10, [LIB, "7f20-7f30 rw-s 00000000 00:1a 99 /dev/shm/mpich_shm_a_0"])
    process(tmp_path, 11, [LIB, "7f20-7f30 rw-s 00000000 00:1a 98 /dev/shm/mpich_shm_a_1"])
    process(tmp_path, 12, [LIB, "7f20-7f30 rw-p 00000000 00:1a 99 /dev/shm/private_copy"])
    process(tmp_path, 13, [LIB, "7f20-7f30 rw-s 00000000 00:1a 99 /dev/shm/mpich_shm_a_0"])
    assert refusals({0: [10, 13], 1: [11], 2: [12]}, tmp_path) == []  # 10, 13: one tree


def test_memory_shared_by_two_ranks_and_rdma_devices_are_refused(tmp_path: Path) -> None:
    process(tmp_path, 20, ["7f20-7f30 rw-s 00000000 00:1a 99 /dev/shm/seg (deleted)"])
    process(tmp_path, 21, ["7f20-7f30 rw-s 00000000 00:1a 99 /dev/shm/seg"])
    process(tmp_path, 22, [LIB], {5: "/dev/infiniband/uverbs0"})
    found = refusals({0: [20], 1: [21], 2: [22]}, tmp_path)
    assert len(found) == 2
    assert "rank 2 (pid 22) uses /dev/infiniband/uverbs0" in found[0]
    assert "ranks [0, 1] share the memory of /dev/shm/seg" in found[1]
    with pytest.raises(CrctlError, match="cannot checkpoint: rank 2"):
        require_carriable({0: [20], 1: [21], 2: [22]}, tmp_path)
    assert refusals({0: [404]}, tmp_path) == []  # a process that is gone says nothing
