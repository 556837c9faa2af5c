"""What an agent's order handling (agent.orders) needs of its host: launching ranks, finding the
ranks an earlier agent left running, and one host's part of a checkpoint or a restore.

:class:`HostEngine` is that seam. :class:`CriuEngine` is the real one (CRIU, freezer cgroups,
nftables, image files); the in-process test tier gives the same order handling a fake host, so
that every message of the protocols can be dropped, delayed or duplicated and either side killed
at any step without CRIU."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import structlog

from agent import host_files, netlock
from agent import ranks as rank_runtime
from agent.checkpointing import HostCheckpoint
from agent.freezer import FreezerHierarchy
from agent.host_images import HostImages
from agent.ranks import RankProcess, RunAs, rank_log, rank_name, rank_number
from agent.restoring import HostRestore, finish_earlier_restores
from crctl.errors import CrctlError
from crctl.fs import remove_tree
from crctl.v1 import control_pb2

log = structlog.get_logger()


class Rank(Protocol):
    """One running incarnation of a rank, as the order handling sees it."""

    @property
    def pid(self) -> int: ...

    @property
    def command_pid(self) -> int:
        """The rank's command (its owner's process), as reported to people."""
        ...

    @property
    def exited(self) -> bool: ...

    async def wait(self) -> int | None: ...

    def kill(self) -> bool: ...


class CheckpointWork(Protocol):
    """This host's ranks of one checkpoint (agent.checkpointing.HostCheckpoint)."""

    job: str
    checkpoint: str
    leave_running: bool
    finished: asyncio.Event

    async def ready(self) -> control_pb2.CheckpointVote | None: ...

    async def freeze_and_dump(self) -> control_pb2.CheckpointVote: ...

    async def commit(self) -> control_pb2.CommitResult: ...

    async def abort(self, reason: str) -> None: ...


class RestoreWork(Protocol):
    """This host's part of one restart (agent.restoring.HostRestore)."""

    restore_id: str
    job: str
    finished: asyncio.Event

    async def prepare(self) -> None: ...

    async def restore(self) -> dict[int, int]: ...

    def unlock(self) -> None: ...

    async def release(self) -> Sequence[tuple[int, Rank]]: ...

    async def abort(self, reason: str) -> None: ...


class HostEngine(Protocol):
    async def launch(
        self, job: str, rank: int, argv: Sequence[str], env: Mapping[str, str], run_as: RunAs
    ) -> Rank: ...

    def running_ranks(self) -> list[tuple[str, int, Rank]]:
        """Ranks of this host that run without an agent (after an agent restart)."""
        ...

    async def finish_earlier_restores(self, ranks: Mapping[tuple[str, int], Rank]) -> None: ...

    def rank_ended(self, rank: Rank) -> None:
        """A rank's root exited: remove what the host kept for it."""
        ...

    def checkpoint(
        self,
        order: control_pb2.PrepareCheckpoint,
        ranks: Mapping[int, Rank],
        *,
        host: str,
        addresses: Sequence[str],
    ) -> CheckpointWork: ...

    def restore(self, order: control_pb2.PrepareRestore, *, host: str) -> RestoreWork: ...

    def remove_images(self, images_dir: Path, ranks: Sequence[int]) -> None:
        """Delete this host's ranks' images of a checkpoint that was aborted."""
        ...


def _process(rank: Rank) -> RankProcess:
    if not isinstance(rank, RankProcess):
        raise TypeError(f"not a rank this engine runs: {rank!r}")
    return rank


class CriuEngine:
    """The real host: ranks as PID-namespace inits in freezer cgroups, CRIU dumps and restores."""

    def __init__(
        self,
        work_dir: Path,
        plugin_dir: Path,
        images: HostImages | None = None,
        private_paths: str = "/tmp,/dev/shm",
    ) -> None:
        self._work_dir = work_dir
        self._private_paths = private_paths
        self._plugin_dir = plugin_dir
        self._images = images
        self._freezer: FreezerHierarchy | None = None

    def freezer(self) -> FreezerHierarchy:
        if self._freezer is None:
            self._freezer = FreezerHierarchy.detect()
        return self._freezer

    async def launch(
        self, job: str, rank: int, argv: Sequence[str], env: Mapping[str, str], run_as: RunAs
    ) -> RankProcess:
        # Each rank gets a working directory of its own: CRIU's parasite mounts a private /proc
        # at a path relative to the task's cwd, so ranks sharing a cwd on one filesystem (the
        # testbed) could not be dumped at the same moment.
        cwd = self._work_dir / "ranks" / job / rank_name(rank)
        cwd.mkdir(parents=True, exist_ok=True)
        return await rank_runtime.launch(
            job,
            rank_name(rank),
            list(argv),
            work_dir=cwd,
            log_path=rank_log(self._work_dir, job, rank),
            env=dict(env) or None,
            freezer=self.freezer(),
            run_as=run_as,
        )

    def running_ranks(self) -> list[tuple[str, int, Rank]]:
        """The ranks of this host that still run (they live in their own cgroups and sessions,
        and their log holders outlive the agent); a frozen one is thawed (a checkpoint was under
        way when the agent died)."""
        found: list[tuple[str, int, Rank]] = []
        own_netns = os.stat("/proc/self/ns/net").st_ino
        for job, name, cgroup in self.freezer().existing():
            rank = rank_number(name)
            if rank is None:
                continue
            pid = rank_runtime.pid_namespace_init(cgroup)
            if pid is None:
                continue
            try:
                if os.stat(f"/proc/{pid}/ns/net").st_ino != own_netns:
                    continue  # another host's rank (emulated hosts share one machine)
                log_path = rank_log(self._work_dir, job, rank)
                process = rank_runtime.adopt_running(job, name, pid, cgroup, log_path)
                if cgroup.is_frozen():
                    cgroup.thaw()
                    log.warning("rank_thawed_after_agent_restart", job=job, rank=rank)
            except (OSError, ProcessLookupError) as exc:
                log.warning("rank_not_adopted", job=job, rank=rank, pid=pid, error=str(exc))
                continue
            found.append((job, rank, process))
        return found

    async def finish_earlier_restores(self, ranks: Mapping[tuple[str, int], Rank]) -> None:
        """After an agent restart, before serving: the earlier agent's restores finished (their
        lazy-pages daemons awaited, working copies removed) and its locks lifted."""
        await finish_earlier_restores(
            self._work_dir, {key: _process(rank) for key, rank in ranks.items()}
        )
        netlock.remove_stale_locks()

    def rank_ended(self, rank: Rank) -> None:
        cgroup = _process(rank).cgroup
        if cgroup.exists():
            with contextlib.suppress(CrctlError, OSError):
                cgroup.remove(wait=1.0)

    def checkpoint(
        self,
        order: control_pb2.PrepareCheckpoint,
        ranks: Mapping[int, Rank],
        *,
        host: str,
        addresses: Sequence[str],
    ) -> HostCheckpoint:
        return HostCheckpoint(
            job=order.job,
            checkpoint=order.checkpoint,
            images_dir=Path(order.images_dir),
            leave_running=order.leave_running,
            ranks={number: _process(rank) for number, rank in ranks.items()},
            host=host,
            host_addresses=list(addresses),
            private_roots=host_files.private_roots(self._work_dir, self._private_paths),
        )

    def restore(self, order: control_pb2.PrepareRestore, *, host: str) -> HostRestore:
        return HostRestore(
            order=order,
            host=host,
            work_dir=self._work_dir,
            plugin_dir=self._plugin_dir,
            images=self._images,
        )

    def remove_images(self, images_dir: Path, ranks: Sequence[int]) -> None:
        for number in ranks:
            remove_tree(images_dir / rank_name(number))
