"""What a checkpoint cannot carry, found before anything is frozen: a rank using RDMA devices
(InfiniBand verbs: CRIU cannot dump their state), or shared memory a rank shares with another
rank of the job (a /dev/shm mapping two process trees hold: a restart elsewhere would split it).
A checkpoint of such a job is refused with the reason in its prepare step, never dumped into
a checkpoint that would restore broken."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from crctl.errors import CrctlError

RDMA_DEVICES = ("/dev/infiniband/",)
SHARED_MEMORY = "/dev/shm/"


def _shared_mappings(pid: int, proc: Path) -> set[str]:
    """Paths of the MAP_SHARED file mappings of ``pid`` under /dev/shm."""
    try:
        lines = (proc / str(pid) / "maps").read_text().splitlines()
    except OSError:
        return set()
    found = set()
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[1].endswith("s") and fields[5].startswith(SHARED_MEMORY):
            found.add(fields[5].removesuffix(" (deleted)"))
    return found


def _device_uses(pid: int, proc: Path) -> set[str]:
    """RDMA device files ``pid`` maps or holds open."""
    found = set()
    try:
        for line in (proc / str(pid) / "maps").read_text().splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith(RDMA_DEVICES):
                found.add(fields[5])
    except OSError:
        pass
    try:
        for fd in (proc / str(pid) / "fd").iterdir():
            try:
                target = str(fd.readlink())
            except OSError:
                continue
            if target.startswith(RDMA_DEVICES):
                found.add(target)
    except OSError:
        pass
    return found


def refusals(ranks: Mapping[int, Iterable[int]], proc: Path = Path("/proc")) -> list[str]:
    """Why these ranks (rank -> the PIDs of its process tree) cannot be checkpointed: one line
    per reason, none if they can."""
    reasons = []
    holders: dict[str, set[int]] = {}
    for rank, pids in sorted(ranks.items()):
        for pid in pids:
            for device in sorted(_device_uses(pid, proc)):
                reasons.append(
                    f"rank {rank} (pid {pid}) uses {device}: CRIU cannot checkpoint RDMA "
                    "(InfiniBand verbs); run it over TCP (crctl mpirun forces MPI onto TCP)"
                )
            for path in _shared_mappings(pid, proc):
                holders.setdefault(path, set()).add(rank)
    for path, sharing in sorted(holders.items()):
        if len(sharing) > 1:
            reasons.append(
                f"ranks {sorted(sharing)} share the memory of {path}: a restart elsewhere "
                "would split it; turn the shared-memory transport off (MPI: "
                "MPIR_CVAR_NOLOCAL=1, which crctl mpirun sets)"
            )
    return reasons


def require_carriable(ranks: Mapping[int, Iterable[int]], proc: Path = Path("/proc")) -> None:
    found = refusals(ranks, proc)
    if found:
        raise CrctlError("cannot checkpoint: " + "; ".join(found), phase="prepare")
