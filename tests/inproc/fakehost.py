"""A fake host for the in-process tier: what CRIU, the freezer and nftables would do to a host's
ranks, kept in memory (and in small image files, so that the coordinator's store, manifests and
the restore's verification are the real ones).

A :class:`FakeHost` outlives its agent, as a real host's ranks, CRIU processes and lock tables
do. When its agent dies, a dump under way rolls back (CRIU sees its socket close: the ranks
resume, as the thaw guard makes sure) and a restore under way dies with its restored ranks.
``faults`` make one step fail or hang: ``{"dump": "error"}``, ``{"ready": "hang"}`` ..."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent import images
from agent.engine import Rank
from agent.ranks import RunAs, rank_name
from agent.restoring import ImagesDamaged, RankFailure
from crctl.errors import CriuError
from crctl.fs import remove_tree
from crctl.v1 import control_pb2

_pids = itertools.count(1000)


class FakeRank:
    def __init__(self, job: str, rank: int, argv: Sequence[str], *, frozen: bool = False) -> None:
        self.job = job
        self.rank = rank
        self.argv = list(argv)
        self.pid = next(_pids)
        self.command_pid = self.pid + 100_000
        self.frozen = frozen
        self._exit: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    @property
    def exited(self) -> bool:
        return self._exit.done()

    async def wait(self) -> int | None:
        return await asyncio.shield(self._exit)

    def kill(self) -> bool:
        if self._exit.done():
            return False
        self.frozen = False
        self._exit.set_result(-9)
        return True

    def __repr__(self) -> str:
        state = "exited" if self.exited else "frozen" if self.frozen else "running"
        return f"<FakeRank {self.job}/{self.rank} pid {self.pid} {state}>"


@dataclass
class FakeHost:
    name: str
    addresses: list[str]
    ranks: dict[tuple[str, int], FakeRank] = field(default_factory=dict)
    locks: set[str] = field(default_factory=set)
    faults: dict[str, str] = field(default_factory=dict)  # step -> "error" | "hang"
    delays: dict[str, float] = field(default_factory=dict)  # step -> seconds
    works: list[FakeCheckpointWork | FakeRestoreWork] = field(default_factory=list)
    prepared: list[control_pb2.PrepareRestore] = field(default_factory=list)  # every order

    async def step(self, name: str) -> None:
        """The fake's work for ``name``: its delay, then its fault if one is armed."""
        await asyncio.sleep(self.delays.get(name, 0.0))
        fault = self.faults.get(name)
        if fault == "hang":
            await asyncio.Event().wait()
        if fault == "error":
            raise CriuError(f"fake CRIU failed at {name} on {self.name}", phase=name)

    def agent_died(self) -> None:
        """What survives an agent's SIGKILL: ranks run on (a held dump rolls back), a restore
        under way dies with what it restored (CRIU kills its tasks when its socket closes), its
        lock stays."""
        for work in self.works:
            work.orphaned()
        self.works.clear()

    def frozen(self) -> list[FakeRank]:
        return [r for r in self.ranks.values() if r.frozen and not r.exited]


def _image_entry(
    host: FakeHost, images_dir: Path, number: int, rank: FakeRank
) -> control_pb2.RankImage:
    prefix = rank_name(number)
    files = [d.to_proto(prefix=f"{prefix}/") for d in images.digest_files(images_dir / prefix)]
    return control_pb2.RankImage(
        rank=number,
        host=host.name,
        pid=rank.pid,
        files=files,
        bytes=sum(f.size for f in files),
        host_addresses=host.addresses,
    )


class FakeCheckpointWork:
    def __init__(
        self,
        host: FakeHost,
        order: control_pb2.PrepareCheckpoint,
        ranks: Mapping[int, Rank],
    ) -> None:
        self.host = host
        self.job = order.job
        self.checkpoint = order.checkpoint
        self.leave_running = order.leave_running
        self.images_dir = Path(order.images_dir)
        self.ranks = {n: r for n, r in ranks.items() if isinstance(r, FakeRank)}
        self.finished = asyncio.Event()
        self.outcome = ""
        host.works.append(self)

    def _no(self, reason: str) -> control_pb2.CheckpointVote:
        return control_pb2.CheckpointVote(
            checkpoint=self.checkpoint, yes=False, reason=reason, failed_rank=-1
        )

    async def ready(self) -> control_pb2.CheckpointVote | None:
        try:
            await self.host.step("ready")
        except CriuError as exc:
            await self.abort(str(exc))
            return self._no(str(exc))
        return None

    async def freeze_and_dump(self) -> control_pb2.CheckpointVote:
        if self.finished.is_set():
            return self._no(f"checkpoint {self.outcome} here")
        for rank in self.ranks.values():
            rank.frozen = True
        try:
            await self.host.step("dump")
            for number, rank in self.ranks.items():
                folder = self.images_dir / rank_name(number)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "pages-1.img").write_bytes(f"{self.job}:{number}:{rank.pid}".encode())
                (folder / "core-1.img").write_bytes(b"core")
            await self.host.step("held")
        except (CriuError, OSError) as exc:
            await self.abort(str(exc))
            return self._no(str(exc))
        if self.finished.is_set():
            return self._no(f"checkpoint {self.outcome} while dumping")
        vote = control_pb2.CheckpointVote(checkpoint=self.checkpoint, yes=True)
        if not self.leave_running:
            vote.ranks.extend(self._entries())
        return vote

    def _entries(self) -> list[control_pb2.RankImage]:
        return [_image_entry(self.host, self.images_dir, n, r) for n, r in self.ranks.items()]

    async def commit(self) -> control_pb2.CommitResult:
        result = control_pb2.CommitResult(checkpoint=self.checkpoint, ok=True)
        if self.leave_running:
            for rank in self.ranks.values():
                rank.frozen = False
            result.ranks.extend(self._entries())
        else:
            for rank in self.ranks.values():
                rank.kill()
        self._end("committed")
        return result

    async def abort(self, reason: str) -> None:
        if self.finished.is_set():
            return
        for rank in self.ranks.values():
            rank.frozen = False
        self._end("aborted")

    def _end(self, outcome: str) -> None:
        self.outcome = outcome
        self.finished.set()
        if self in self.host.works:
            self.host.works.remove(self)

    def orphaned(self) -> None:
        if not self.finished.is_set():
            for rank in self.ranks.values():
                rank.frozen = False
            self.outcome = "rolled back"
            self.finished.set()


class FakeRestoreWork:
    def __init__(self, host: FakeHost, order: control_pb2.PrepareRestore) -> None:
        self.host = host
        self.order = order
        self.restore_id = order.restore
        self.job = order.job
        self.lock = f"crctl-{order.restore}"
        self.restored: dict[int, FakeRank] = {}
        self.finished = asyncio.Event()
        self.aborted = self.released = False
        host.works.append(self)
        host.prepared.append(order)

    async def prepare(self) -> None:
        checkpoint_dir = Path(self.order.checkpoint_dir)
        for entry in self.order.ranks:
            prefix = rank_name(entry.rank) + "/"
            expected = [images.FileDigest.from_proto(f, strip=prefix) for f in entry.image.files]
            problems = images.verify(checkpoint_dir / rank_name(entry.rank), expected)
            if problems:
                raise ImagesDamaged(
                    entry.rank,
                    "the checkpoint's images do not match its manifest: "
                    + "; ".join(f"{prefix}{p}" for p in problems),
                )
        self.host.locks.add(self.lock)
        await self.host.step("prepare")
        if self.aborted:
            raise RankFailure(-1, "aborted")

    async def restore(self) -> dict[int, int]:
        await self.host.step("restore")
        if self.aborted:
            raise RankFailure(-1, "aborted")
        for entry in self.order.ranks:
            rank = FakeRank(self.job, entry.rank, [], frozen=True)
            self.restored[entry.rank] = rank
            self.host.ranks[(self.job, entry.rank)] = rank
        return {n: r.pid for n, r in self.restored.items()}

    def unlock(self) -> None:
        self.host.locks.discard(self.lock)

    async def release(self) -> list[tuple[int, Rank]]:
        await self.host.step("release")
        for rank in self.restored.values():
            rank.frozen = False
        self.released = True
        self._end()
        return list(self.restored.items())

    async def abort(self, reason: str) -> None:
        if self.released:
            return
        self.aborted = True
        self.orphaned()

    def _end(self) -> None:
        self.finished.set()
        if self in self.host.works:
            self.host.works.remove(self)

    def orphaned(self) -> None:
        for rank in self.restored.values():
            rank.kill()
        self.host.locks.discard(self.lock)
        self._end()


class FakeEngine:
    """agent.engine.HostEngine over a FakeHost."""

    def __init__(self, host: FakeHost) -> None:
        self.host = host

    async def launch(
        self, job: str, rank: int, argv: Sequence[str], env: Mapping[str, str], run_as: RunAs
    ) -> FakeRank:
        process = FakeRank(job, rank, argv)
        self.host.ranks[(job, rank)] = process
        return process

    def running_ranks(self) -> list[tuple[str, int, Rank]]:
        return [(j, n, r) for (j, n), r in self.host.ranks.items() if not r.exited]

    async def finish_earlier_restores(self, ranks: Mapping[tuple[str, int], Rank]) -> None:
        return None

    def rank_ended(self, rank: Rank) -> None:
        for key, known in list(self.host.ranks.items()):
            if known is rank:
                del self.host.ranks[key]

    def checkpoint(
        self,
        order: control_pb2.PrepareCheckpoint,
        ranks: Mapping[int, Rank],
        *,
        host: str,
        addresses: Sequence[str],
    ) -> FakeCheckpointWork:
        return FakeCheckpointWork(self.host, order, ranks)

    def restore(self, order: control_pb2.PrepareRestore, *, host: str) -> FakeRestoreWork:
        return FakeRestoreWork(self.host, order)

    def remove_images(self, images_dir: Path, ranks: Sequence[int]) -> None:
        for number in ranks:
            remove_tree(images_dir / rank_name(number))
