"""This host as a participant of restarts: the prepare order and the restore steps (restore,
unlock, release, abort), the hold deadline, and answers to repeated orders.

A restart's steps are idempotent here: an order that arrives twice gets the first one's answer
(awaited if it is still under way: crctl.answers), and a restore that ended is remembered for a
while with its outcome, so that a coordinator that restarted in the middle can ask again:
``release`` of a released restore answers with its ranks' PIDs; ``abort`` of a released restore
kills those ranks (the coordinator could not finish the restart everywhere and rolls it back,
the checkpoint stays restartable); ``abort`` of what this host never heard of has nothing to
undo."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import structlog

from agent.engine import HostEngine, Rank, RestoreWork
from agent.owners import require_user
from agent.restoring import ImagesDamaged, RankFailure
from crctl import failpoints
from crctl.answers import Answers
from crctl.errors import CrctlError
from crctl.v1 import control_pb2

log = structlog.get_logger()

STEPS = ("prepare", "restore", "unlock", "release", "abort")
REMEMBERED_RESTORES = 256

Spawn = Callable[[Awaitable[None], str], None]


@dataclass(frozen=True)
class _Ended:
    job: str
    released: tuple[tuple[int, Rank], ...]  # empty: aborted here


class RestoreParticipant:
    def __init__(
        self,
        *,
        host: str,
        engine: HostEngine,
        ranks: Mapping[tuple[str, int], Rank],
        adopt: Callable[[str, int, Rank], None],
        expect_exit: Callable[[str, int], None],
        spawn: Spawn,
    ) -> None:
        self._host = host
        self._engine = engine
        self._ranks = ranks
        self._adopt = adopt
        self._expect_exit = expect_exit
        self._spawn = spawn
        self._active: dict[str, RestoreWork] = {}
        self._answers: Answers[tuple[str, str], control_pb2.RestoreResult] = Answers()
        self._ended: OrderedDict[str, _Ended] = OrderedDict()

    def active(self) -> list[str]:
        """The restores under way here (prepared, not released or aborted)."""
        return sorted(self._active)

    def _result(self, restore: str, step: str) -> control_pb2.RestoreResult:
        return control_pb2.RestoreResult(restore=restore, step=step, ok=True, failed_rank=-1)

    def _failed(self, restore: str, step: str, reason: str) -> control_pb2.RestoreResult:
        result = self._result(restore, step)
        result.ok, result.reason = False, reason
        return result

    # --- orders ---

    async def prepare(self, order: control_pb2.PrepareRestore) -> control_pb2.RestoreResult:
        async def answer() -> control_pb2.RestoreResult:
            if order.restore in self._ended:
                return self._failed(order.restore, "prepare", f"{order.restore} already ended")
            clash = [e.rank for e in order.ranks if (order.job, e.rank) in self._ranks]
            if clash:
                result = self._failed(
                    order.restore,
                    "prepare",
                    f"ranks {clash} of {order.job} already run on {self._host}",
                )
                result.failed_rank = clash[0]
                return result
            try:
                require_user(order.owner_uid, order.owner, job=order.job, host=self._host)
            except CrctlError as exc:
                return self._failed(order.restore, "prepare", exc.message)
            work = self._engine.restore(order, host=self._host)
            self._active[order.restore] = work
            self._spawn(self._hold(work, order.hold_timeout), f"hold-{order.restore}")
            return await self._call(work, "prepare")

        return await self._answers.once((order.restore, "prepare"), answer)

    async def step(self, restore: str, step: str) -> control_pb2.RestoreResult:
        if step not in STEPS[1:]:
            return self._failed(restore, step, f"unknown restore step {step!r}")

        async def answer() -> control_pb2.RestoreResult:
            ended = self._ended.get(restore)
            if ended is not None:
                return self._after_end(restore, step, ended)
            work = self._active.get(restore)
            if work is None:
                if step == "abort":
                    return self._result(restore, step)  # nothing here to undo
                return self._failed(restore, step, f"restore {restore} is unknown on {self._host}")
            return await self._call(work, step)

        return await self._answers.once((restore, step), answer)

    def _after_end(self, restore: str, step: str, ended: _Ended) -> control_pb2.RestoreResult:
        result = self._result(restore, step)
        if step == "release" and ended.released:
            for rank, process in ended.released:
                result.pids.add(rank=rank, pid=process.command_pid)
            return result
        if step == "abort":
            if ended.released:
                self._kill_released(restore, ended)
            return result
        what = "released" if ended.released else "aborted"
        return self._failed(restore, step, f"restore {restore} was already {what} here")

    def _kill_released(self, restore: str, ended: _Ended) -> None:
        """The coordinator rolls back a restart it could not finish on every host: the ranks
        this host released stop (the checkpoint stays restartable)."""
        for rank, process in ended.released:
            if not process.exited:
                self._expect_exit(ended.job, rank)
                process.kill()
        self._ended[restore] = _Ended(ended.job, ())
        log.warning(
            "restore_rolled_back_after_release",
            job=ended.job,
            restore=restore,
            phase="abort",
            ranks=[r for r, _ in ended.released],
        )

    async def _call(self, work: RestoreWork, step: str) -> control_pb2.RestoreResult:
        result = await self._carry_out(work, step)
        ended = self._ended.get(work.restore_id)
        if step != "abort" and ended is not None and not ended.released:
            # Aborted (by the coordinator or the hold's end) while this step was under way: undo
            # what the step did after the abort had cleaned up (working copies, a lock, CRIU).
            await work.abort("aborted while a step was under way")
            result = self._failed(work.restore_id, step, f"restore {work.restore_id} was aborted")
        return result

    async def _carry_out(self, work: RestoreWork, step: str) -> control_pb2.RestoreResult:
        result = self._result(work.restore_id, step)
        try:
            await failpoints.reached(f"agent.restore.{step}")
            if step == "prepare":
                await work.prepare()
            elif step == "restore":
                for rank, pid in (await work.restore()).items():
                    result.pids.add(rank=rank, pid=pid)
            elif step == "unlock":
                work.unlock()
            elif step == "release":
                released = tuple(await work.release())
                for rank, process in released:
                    self._adopt(work.job, rank, process)
                    result.pids.add(rank=rank, pid=process.command_pid)
                self._end(work, released)
            else:  # abort
                self._end(work, ())
                await work.abort("aborted by the coordinator")
        except RankFailure as exc:
            result.ok, result.reason, result.failed_rank = False, exc.message, exc.failed_rank
            result.images_damaged = isinstance(exc, ImagesDamaged)
        except (CrctlError, OSError) as exc:
            result.ok, result.reason = False, str(exc)
        if not result.ok:
            log.warning(
                "restore_step_failed",
                job=work.job,
                restore=work.restore_id,
                phase=step,
                rank=result.failed_rank,
                reason=result.reason,
            )
        return result

    def _end(self, work: RestoreWork, released: tuple[tuple[int, Rank], ...]) -> None:
        self._active.pop(work.restore_id, None)
        self._answers.forget(*((work.restore_id, step) for step in STEPS))
        self._ended[work.restore_id] = _Ended(work.job, released)
        while len(self._ended) > REMEMBERED_RESTORES:
            self._ended.popitem(last=False)

    async def _hold(self, work: RestoreWork, hold_timeout: float) -> None:
        """Nobody finished the restart in time (the coordinator may be gone): kill what was
        restored, lift the lock, remove the working copies."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(work.finished.wait(), hold_timeout)
            return
        if self._active.get(work.restore_id) is not work:
            return
        log.error("restore_hold_expired", job=work.job, restore=work.restore_id, phase="hold")
        self._end(work, ())
        await work.abort(f"no decision within {hold_timeout:.1f}s")

    async def close(self) -> None:
        """On agent shutdown: every restore under way is undone."""
        for work in list(self._active.values()):
            self._end(work, ())
            await work.abort("agent stopping")
