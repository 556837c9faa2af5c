"""This host as a participant of two-phase checkpoints: prepare, freeze, commit and abort orders,
the hold deadline, and what a host does when it voted yes and then heard nothing.

An agent that voted yes is *in doubt*: the coordinator may have committed (in stop mode it
records the commit before it tells anyone) or aborted, and only the coordinator's durable record
says which. So the agent never decides alone. When its hold ends without a decision it resumes
its ranks (CRIU rolls back: no rank stays frozen waiting for a coordinator that may be gone) but
keeps the images, and it lists the checkpoint in every heartbeat and registration until the
coordinator answers with the decision (``commit`` or ``abort``, resent as often as needed):

* commit of a checkpoint whose ranks stop with it: the ranks that ran on are killed (the job's
  truth is now the checkpoint, from which a restart continues); with ``--leave-running`` the
  ranks simply run on;
* abort: the images are removed, the ranks run on.

Every checkpoint this host takes part in is recorded in ``<work dir>/checkpoints/<id>.json`` from
its prepare until its decision, so that an agent restarted meanwhile (its ranks thawed and
adopted) is in doubt about the same checkpoints and finishes them the same way. Decisions are
remembered for a while, so that a repeated order gets the same answer."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from agent.engine import CheckpointWork, HostEngine, Rank
from crctl import failpoints
from crctl.answers import Answers
from crctl.v1 import control_pb2

log = structlog.get_logger()

RECORDS_DIR = "checkpoints"
# Decisions remembered for replays of an order (a few minutes' worth of checkpoints).
REMEMBERED_DECISIONS = 256

Spawn = Callable[[Awaitable[None], str], None]


@dataclass
class _Participation:
    """One checkpoint on this host, from prepare to its decision."""

    job: str
    checkpoint: str
    ranks: list[int]
    images_dir: Path
    leave_running: bool
    work: CheckpointWork | None  # None: found in its record after an agent restart
    voted_yes: bool = False
    in_doubt: bool = False  # the hold ended without a decision: ranks resumed, images kept
    decided: asyncio.Event = field(default_factory=asyncio.Event)
    # Decisions and the hold's end take turns.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def record(self) -> dict[str, object]:
        return {
            "job": self.job,
            "checkpoint": self.checkpoint,
            "ranks": self.ranks,
            "images_dir": str(self.images_dir),
            "leave_running": self.leave_running,
        }


@dataclass(frozen=True)
class _Decision:
    committed: bool
    result: control_pb2.CommitResult | None = None
    # With --leave-running a commit order only releases the ranks; the coordinator decides
    # afterwards and may still abort.
    released_only: bool = False


class CheckpointParticipant:
    def __init__(
        self,
        *,
        host: str,
        addresses: list[str],
        work_dir: Path,
        engine: HostEngine,
        ranks: MutableMapping[tuple[str, int], Rank],
        expect_exit: Callable[[str, int], None],
        spawn: Spawn,
    ) -> None:
        self._host = host
        self._addresses = addresses
        self._records = work_dir / RECORDS_DIR
        self._engine = engine
        self._ranks = ranks
        self._expect_exit = expect_exit
        self._spawn = spawn
        self._current: dict[str, _Participation] = {}
        self._decisions: OrderedDict[str, _Decision] = OrderedDict()
        # A repeated prepare or freeze order gets the first one's vote.
        self._votes: Answers[tuple[str, str], control_pb2.CheckpointVote | None] = Answers()

    # --- what the coordinator is told ---

    def awaiting(self) -> list[str]:
        """Checkpoints this host prepared and has no decision for (held or in doubt)."""
        return sorted(self._current)

    def in_doubt(self) -> list[str]:
        return sorted(c for c, p in self._current.items() if p.in_doubt)

    # --- records ---

    def _write_record(self, part: _Participation) -> None:
        self._records.mkdir(parents=True, exist_ok=True)
        path = self._records / f"{part.checkpoint}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(part.record()))
        os.replace(tmp, path)

    def _remove_record(self, checkpoint: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self._records / f"{checkpoint}.json").unlink()

    def recover(self) -> None:
        """After an agent restart: every checkpoint the previous agent had prepared and not seen
        decided is in doubt here too (its ranks were thawed and adopted already)."""
        if not self._records.is_dir():
            return
        for path in sorted(self._records.glob("*.json")):
            try:
                raw = json.loads(path.read_text())
                part = _Participation(
                    job=str(raw["job"]),
                    checkpoint=str(raw["checkpoint"]),
                    ranks=[int(r) for r in raw["ranks"]],
                    images_dir=Path(str(raw["images_dir"])),
                    leave_running=bool(raw["leave_running"]),
                    work=None,
                    voted_yes=True,  # it may have: only the coordinator knows
                    in_doubt=True,
                )
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("checkpoint_record_unreadable", path=str(path), error=str(exc))
                continue
            self._current[part.checkpoint] = part
            log.warning(
                "checkpoint_in_doubt",
                job=part.job,
                checkpoint=part.checkpoint,
                phase="recover",
                reason="an earlier agent prepared it; waiting for the coordinator's decision",
            )

    # --- decisions remembered ---

    def _decide(self, part: _Participation, decision: _Decision) -> None:
        self._current.pop(part.checkpoint, None)
        self._votes.forget((part.checkpoint, "prepare"), (part.checkpoint, "freeze"))
        self._remove_record(part.checkpoint)
        self._decisions[part.checkpoint] = decision
        while len(self._decisions) > REMEMBERED_DECISIONS:
            self._decisions.popitem(last=False)
        part.decided.set()

    # --- orders ---

    async def prepare(
        self, order: control_pb2.PrepareCheckpoint
    ) -> control_pb2.CheckpointVote | None:
        """CRIU started for every rank here and waiting (None), or a "no" vote."""
        return await self._votes.once(
            (order.checkpoint, "prepare"), functools.partial(self._prepare, order)
        )

    async def _prepare(
        self, order: control_pb2.PrepareCheckpoint
    ) -> control_pb2.CheckpointVote | None:
        def no(reason: str, rank: int = -1) -> control_pb2.CheckpointVote:
            return control_pb2.CheckpointVote(
                checkpoint=order.checkpoint, yes=False, reason=reason, failed_rank=rank
            )

        if order.checkpoint in self._current or order.checkpoint in self._decisions:
            return no(f"{order.checkpoint} was already prepared on {self._host}")
        missing = [r for r in order.ranks if (order.job, r) not in self._ranks]
        if missing:
            return no(f"ranks {missing} of {order.job} do not run on {self._host}", missing[0])
        work = self._engine.checkpoint(
            order,
            {r: self._ranks[(order.job, r)] for r in order.ranks},
            host=self._host,
            addresses=self._addresses,
        )
        part = _Participation(
            job=order.job,
            checkpoint=order.checkpoint,
            ranks=list(order.ranks),
            images_dir=Path(order.images_dir),
            leave_running=order.leave_running,
            work=work,
        )
        self._write_record(part)
        self._current[order.checkpoint] = part
        # The hold deadline runs from now: a dump still going when it passes is rolled back.
        self._spawn(self._hold(part, order.hold_timeout), f"hold-{order.checkpoint}")
        await failpoints.reached("agent.checkpoint.readying")
        vote = await work.ready()
        if vote is not None:
            self._decide(part, _Decision(committed=False))
        return vote

    async def freeze(self, checkpoint: str) -> control_pb2.CheckpointVote:
        part = self._current.get(checkpoint)
        if part is None or part.work is None or part.in_doubt:
            return control_pb2.CheckpointVote(
                checkpoint=checkpoint,
                yes=False,
                failed_rank=-1,
                reason=f"{checkpoint} is not ready on {self._host} (expired or unknown)",
            )
        vote = await self._votes.once(
            (checkpoint, "freeze"), functools.partial(self._freeze, part, part.work)
        )
        assert vote is not None  # a freeze always votes
        return vote

    async def _freeze(
        self, part: _Participation, work: CheckpointWork
    ) -> control_pb2.CheckpointVote:
        await failpoints.reached("agent.checkpoint.freezing")
        vote = await work.freeze_and_dump()
        if vote.yes and not work.finished.is_set():
            part.voted_yes = True
            await failpoints.reached("agent.checkpoint.held")  # at post-dump, vote not sent
        elif not vote.yes:
            self._decide(part, _Decision(committed=False))
        return vote

    async def commit(self, checkpoint: str) -> control_pb2.CommitResult:
        remembered = self._decisions.get(checkpoint)
        if remembered is not None:
            if remembered.committed and remembered.result is not None:
                return remembered.result  # a repeated order: the same answer
            return control_pb2.CommitResult(
                checkpoint=checkpoint,
                ok=False,
                reason=f"{checkpoint} was aborted on {self._host}",
            )
        part = self._current.get(checkpoint)
        if part is None or not part.voted_yes:
            return control_pb2.CommitResult(
                checkpoint=checkpoint,
                ok=False,
                reason=f"{checkpoint} is not held on {self._host} (expired or unknown)",
            )
        async with part.lock:
            if part.decided.is_set():  # decided while this order waited its turn
                return await self.commit(checkpoint)
            if not part.leave_running:
                for number in part.ranks:
                    self._expect_exit(part.job, number)
            await failpoints.reached("agent.checkpoint.releasing")
            if part.work is None or part.work.finished.is_set():  # rolled back: in doubt
                result = self._commit_in_doubt(part)
            else:
                result = await part.work.commit()
            self._decide(
                part,
                _Decision(committed=True, result=result, released_only=part.leave_running),
            )
        return result

    def _commit_in_doubt(self, part: _Participation) -> control_pb2.CommitResult:
        """The decision came after the hold had ended: the images were kept, the ranks ran on.
        Ranks that were to stop with the checkpoint stop now; ranks left running go on. No
        manifest comes with this answer: a commit of a left-running checkpoint is recorded only
        once every host has sent its manifest with its release, and the coordinator refuses a
        release without one."""
        killed = []
        if not part.leave_running:
            for number in part.ranks:
                rank = self._ranks.get((part.job, number))
                if rank is not None and not rank.exited:
                    rank.kill()
                    killed.append(number)
        log.warning(
            "checkpoint_committed_after_hold",
            job=part.job,
            checkpoint=part.checkpoint,
            phase="commit",
            ranks_stopped=killed,
        )
        return control_pb2.CommitResult(checkpoint=part.checkpoint, ok=True)

    async def abort(self, checkpoint: str, reason: str) -> None:
        remembered = self._decisions.get(checkpoint)
        if remembered is not None:
            if remembered.committed and not remembered.released_only:
                log.error(
                    "checkpoint_abort_after_commit",
                    checkpoint=checkpoint,
                    phase="abort",
                    reason="the coordinator sent abort for a checkpoint committed here",
                )
            return
        part = self._current.get(checkpoint)
        if part is None:
            return
        async with part.lock:
            if part.decided.is_set():
                return
            if part.work is not None and not part.work.finished.is_set():
                await part.work.abort(reason)
            if part.voted_yes:
                # Whatever images were written here are no checkpoint: remove this host's part
                # (the coordinator removes the checkpoint's folder too, as it owns the store).
                self._engine.remove_images(part.images_dir, part.ranks)
            self._decide(part, _Decision(committed=False))

    async def _hold(self, part: _Participation, hold_timeout: float) -> None:
        """Nobody decided in time (the coordinator may be gone): the ranks resume. A host that
        had not voted yes aborts; one that had is in doubt and keeps its images."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(part.decided.wait(), hold_timeout)
            return
        async with part.lock:
            if part.decided.is_set():
                return
            if part.work is not None:
                await part.work.abort(f"no decision within {hold_timeout:.1f}s")
            if not part.voted_yes:
                log.error(
                    "checkpoint_hold_expired",
                    job=part.job,
                    checkpoint=part.checkpoint,
                    phase="prepare",
                    hold_timeout=hold_timeout,
                )
                self._decide(part, _Decision(committed=False))
                return
            part.in_doubt = True
        log.error(
            "checkpoint_in_doubt",
            job=part.job,
            checkpoint=part.checkpoint,
            phase="commit",
            hold_timeout=hold_timeout,
            reason="voted yes and heard no decision: ranks resumed, images kept until the "
            "coordinator says",
        )

    async def close(self) -> None:
        """On agent shutdown: every rank resumes. A checkpoint this host voted yes for stays in
        doubt (its record is kept for the next agent); the others are aborted."""
        for part in list(self._current.values()):
            if part.work is not None and not part.work.finished.is_set():
                await part.work.abort("agent stopping")
            if not part.voted_yes:
                self._decide(part, _Decision(committed=False))
