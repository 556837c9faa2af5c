"""The agent's domain layer: carries out the coordinator's orders (launch, kill, prepare,
freeze, commit, abort, restore steps) on this host's ranks, and reports ranks that exit on
their own.

Each order is answered with one message carrying the order's correlation id."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from agent import ranks as rank_runtime
from agent.checkpointing import HostCheckpoint, remove_images
from agent.freezer import FreezerHierarchy
from agent.ranks import RankProcess, rank_log, rank_name, rank_number
from agent.restoring import HostRestore, RankFailure, finish_earlier_restores
from crctl.errors import CrctlError
from crctl.v1 import control_pb2

log = structlog.get_logger()

Send = Callable[[control_pb2.AgentMessage], Awaitable[object]]


class Orders:
    def __init__(self, *, host: str, addresses: list[str], work_dir: Path, send: Send) -> None:
        self._host = host
        self._addresses = addresses
        self._work_dir = work_dir
        self._send = send
        self._freezer: FreezerHierarchy | None = None
        self.ranks: dict[tuple[str, int], RankProcess] = {}
        self._expected_exits: set[tuple[str, int]] = set()
        self._checkpoints: dict[str, HostCheckpoint] = {}
        self._restores: dict[str, HostRestore] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def freezer(self) -> FreezerHierarchy:
        if self._freezer is None:
            self._freezer = FreezerHierarchy.detect()
        return self._freezer

    # --- dispatch ---

    def handle(self, message: control_pb2.CoordinatorMessage) -> None:
        """Start carrying out an order; its answer is sent when done."""
        self._spawn(self._answer(message), f"order-{message.WhichOneof('body')}")

    async def _answer(self, message: control_pb2.CoordinatorMessage) -> None:
        kind = message.WhichOneof("body")
        reply = control_pb2.AgentMessage(correlation_id=message.correlation_id)
        try:
            if kind == "launch_rank":
                reply.rank_launched.CopyFrom(await self._launch(message.launch_rank))
            elif kind == "kill_job":
                reply.job_killed.CopyFrom(await self._kill(message.kill_job.job))
            elif kind == "prepare":
                vote = await self._prepare(message.prepare)
                if vote is None:
                    reply.ready.checkpoint = message.prepare.checkpoint
                else:
                    reply.vote.CopyFrom(vote)
            elif kind == "freeze":
                reply.vote.CopyFrom(await self._freeze(message.freeze.checkpoint))
            elif kind == "commit":
                reply.commit_result.CopyFrom(await self._commit(message.commit.checkpoint))
            elif kind == "abort":
                await self._abort(message.abort.checkpoint, message.abort.reason)
                reply.abort_result.checkpoint = message.abort.checkpoint
            elif kind == "prepare_restore":
                reply.restore_result.CopyFrom(await self._prepare_restore(message.prepare_restore))
            elif kind == "restore_step":
                step = message.restore_step
                reply.restore_result.CopyFrom(await self._restore_step(step.restore, step.step))
            else:
                reply.order_failed.reason = f"unknown order {kind!r}"
        except (CrctlError, OSError) as exc:
            log.warning("order_failed", order=kind, error=str(exc))
            reply.order_failed.reason = str(exc)
        except Exception as exc:
            log.exception("order_crashed", order=kind)
            reply.order_failed.reason = f"agent error: {exc!r}"
        await self._send(reply)

    # --- ranks ---

    async def _launch(self, order: control_pb2.LaunchRank) -> control_pb2.RankLaunched:
        key = (order.job, order.rank)
        current = self.ranks.get(key)
        if current is not None and not current.exited:
            return control_pb2.RankLaunched(
                job=order.job, rank=order.rank, error=f"rank {order.rank} already runs here"
            )
        # Each rank gets a working directory of its own: CRIU's parasite mounts a private /proc
        # at a path relative to the task's cwd, so ranks sharing a cwd on one filesystem (the
        # testbed) could not be dumped at the same moment.
        cwd = self._work_dir / "ranks" / order.job / rank_name(order.rank)
        cwd.mkdir(parents=True, exist_ok=True)
        process = await rank_runtime.launch(
            order.job,
            rank_name(order.rank),
            list(order.argv),
            work_dir=cwd,
            log_path=rank_log(self._work_dir, order.job, order.rank),
            env=dict(order.env) or None,
            freezer=self.freezer(),
        )
        self.adopt(order.job, order.rank, process)
        return control_pb2.RankLaunched(job=order.job, rank=order.rank, pid=process.pid)

    def recover(self) -> None:
        """After an agent restart: adopt the ranks of this host that still run (they live in
        their own cgroups and sessions, and their log holders outlive the agent)."""
        own_netns = os.stat("/proc/self/ns/net").st_ino
        for job, name, cgroup in self.freezer().existing():
            rank = rank_number(name)
            if rank is None:
                continue
            pid = rank_runtime.pid_namespace_init(cgroup)
            if pid is None or (job, rank) in self.ranks:
                continue
            try:
                if os.stat(f"/proc/{pid}/ns/net").st_ino != own_netns:
                    continue  # another host's rank (emulated hosts share one machine)
                log_path = rank_log(self._work_dir, job, rank)
                process = rank_runtime.adopt_running(job, name, pid, cgroup, log_path)
                if cgroup.is_frozen():  # a checkpoint was under way when the agent died
                    cgroup.thaw()
                    log.warning("rank_thawed_after_agent_restart", job=job, rank=rank)
            except (OSError, ProcessLookupError) as exc:
                log.warning("rank_not_adopted", job=job, rank=rank, pid=pid, error=str(exc))
                continue
            self.adopt(job, rank, process)

    async def finish_earlier_restores(self) -> None:
        """After an agent restart, before serving: see restoring.finish_earlier_restores."""
        await finish_earlier_restores(self._work_dir, self.ranks)

    def running(self) -> list[control_pb2.RankRef]:
        return [
            control_pb2.RankRef(job=job, rank=rank, pid=process.pid)
            for (job, rank), process in sorted(self.ranks.items())
            if not process.exited
        ]

    def adopt(self, job: str, rank: int, process: RankProcess) -> None:
        """Track a launched or restored rank and report its exit when it ends by itself."""
        self.ranks[(job, rank)] = process
        self._spawn(self._watch(job, rank, process), f"watch-{job}-{rank}")

    async def _watch(self, job: str, rank: int, process: RankProcess) -> None:
        code = await process.wait()
        key = (job, rank)
        if self.ranks.get(key) is process:
            del self.ranks[key]
        if process.cgroup.exists():
            with contextlib.suppress(CrctlError, OSError):
                process.cgroup.remove(wait=1.0)
        if key in self._expected_exits:
            self._expected_exits.discard(key)
            return
        log.info("rank_exited", job=job, rank=rank, exit_status=code)
        message = control_pb2.AgentMessage()
        message.rank_exited.job = job
        message.rank_exited.rank = rank
        message.rank_exited.exit_status = -1 if code is None else code
        await self._send(message)

    async def _kill(self, job: str) -> control_pb2.JobKilled:
        killed = control_pb2.JobKilled(job=job)
        victims = [(key, p) for key, p in self.ranks.items() if key[0] == job]
        for key, process in victims:
            self._expected_exits.add(key)
            process.kill()
            killed.ranks.append(key[1])
        await asyncio.gather(*(p.wait() for _, p in victims))
        return killed

    # --- checkpoints ---

    async def _prepare(
        self, order: control_pb2.PrepareCheckpoint
    ) -> control_pb2.CheckpointVote | None:
        """CRIU started for every rank here and waiting (None), or a "no" vote."""
        missing = [r for r in order.ranks if (order.job, r) not in self.ranks]
        if missing:
            return control_pb2.CheckpointVote(
                checkpoint=order.checkpoint,
                yes=False,
                reason=f"ranks {missing} of {order.job} do not run on {self._host}",
                failed_rank=missing[0],
            )
        host_checkpoint = HostCheckpoint(
            job=order.job,
            checkpoint=order.checkpoint,
            images_dir=Path(order.images_dir),
            leave_running=order.leave_running,
            ranks={r: self.ranks[(order.job, r)] for r in order.ranks},
            host=self._host,
            host_addresses=self._addresses,
            job_addresses=set(order.job_addresses),
            refuse_external=order.external != "close",
        )
        self._checkpoints[order.checkpoint] = host_checkpoint
        # The hold deadline runs from now: a dump still going when it passes is aborted too.
        self._spawn(self._expire(host_checkpoint, order.hold_timeout), f"hold-{order.checkpoint}")
        vote = await host_checkpoint.ready()
        if vote is not None:
            self._forget(host_checkpoint)
        return vote

    async def _freeze(self, checkpoint_id: str) -> control_pb2.CheckpointVote:
        checkpoint = self._checkpoints.get(checkpoint_id)
        if checkpoint is None:
            return control_pb2.CheckpointVote(
                checkpoint=checkpoint_id,
                yes=False,
                failed_rank=-1,
                reason=f"{checkpoint_id} is not ready on {self._host} (expired or unknown)",
            )
        vote = await checkpoint.freeze_and_dump()
        if not vote.yes:
            self._forget(checkpoint)
        return vote

    async def _expire(self, checkpoint: HostCheckpoint, hold_timeout: float) -> None:
        """Nobody decided in time (the coordinator may be gone): abort by ourselves so that the
        ranks do not stay frozen."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(checkpoint.finished.wait(), hold_timeout)
            return
        log.error(
            "checkpoint_hold_expired",
            job=checkpoint.job,
            checkpoint=checkpoint.checkpoint,
            hold_timeout=hold_timeout,
        )
        await checkpoint.abort(f"no decision within {hold_timeout:.1f}s")
        remove_images(checkpoint.images_dir, list(checkpoint.ranks))
        self._forget(checkpoint)

    def _forget(self, checkpoint: HostCheckpoint) -> None:
        self._checkpoints.pop(checkpoint.checkpoint, None)

    async def _commit(self, checkpoint_id: str) -> control_pb2.CommitResult:
        checkpoint = self._checkpoints.get(checkpoint_id)
        if checkpoint is None:
            return control_pb2.CommitResult(
                checkpoint=checkpoint_id,
                ok=False,
                reason=f"{checkpoint_id} is not held on {self._host} (expired or unknown)",
            )
        if not checkpoint.leave_running:
            self._expected_exits.update((checkpoint.job, r) for r in checkpoint.ranks)
        result = await checkpoint.commit()
        self._forget(checkpoint)
        return result

    async def _abort(self, checkpoint_id: str, reason: str) -> None:
        checkpoint = self._checkpoints.get(checkpoint_id)
        if checkpoint is None:
            return
        await checkpoint.abort(reason)
        self._forget(checkpoint)

    # --- restores ---

    async def _prepare_restore(
        self, order: control_pb2.PrepareRestore
    ) -> control_pb2.RestoreResult:
        clash = [e.rank for e in order.ranks if (order.job, e.rank) in self.ranks]
        if clash:
            return control_pb2.RestoreResult(
                restore=order.restore,
                step="prepare",
                ok=False,
                failed_rank=clash[0],
                reason=f"ranks {clash} of {order.job} already run on {self._host}",
            )
        restore = HostRestore(order=order, host=self._host, work_dir=self._work_dir)
        self._restores[order.restore] = restore
        self._spawn(self._expire_restore(restore, order.hold_timeout), f"hold-{order.restore}")
        return await self._restore_call(restore, "prepare")

    async def _restore_step(self, restore_id: str, step: str) -> control_pb2.RestoreResult:
        restore = self._restores.get(restore_id)
        if restore is None:
            ok = step == "abort"  # nothing here to undo
            return control_pb2.RestoreResult(
                restore=restore_id,
                step=step,
                ok=ok,
                failed_rank=-1,
                reason="" if ok else f"restore {restore_id} is unknown on {self._host}",
            )
        return await self._restore_call(restore, step)

    async def _restore_call(self, restore: HostRestore, step: str) -> control_pb2.RestoreResult:
        result = control_pb2.RestoreResult(
            restore=restore.restore_id, step=step, ok=True, failed_rank=-1
        )
        try:
            if step == "prepare":
                await restore.prepare()
            elif step == "restore":
                for rank, pid in (await restore.restore()).items():
                    result.pids.add(rank=rank, pid=pid)
            elif step == "unlock":
                restore.unlock()
            elif step == "release":
                for rank, process in await restore.release():
                    self.adopt(restore.job, rank, process)
                    result.pids.add(rank=rank, pid=process.pid)
                self._restores.pop(restore.restore_id, None)
            elif step == "abort":
                await restore.abort("aborted by the coordinator")
                self._restores.pop(restore.restore_id, None)
            else:
                raise CrctlError(f"unknown restore step {step!r}")
        except RankFailure as exc:
            result.ok, result.reason, result.failed_rank = False, exc.message, exc.rank
        except (CrctlError, OSError) as exc:
            result.ok, result.reason = False, str(exc)
        if not result.ok:
            log.warning(
                "restore_step_failed",
                job=restore.job,
                restore=restore.restore_id,
                phase=step,
                rank=result.failed_rank,
                reason=result.reason,
            )
        return result

    async def _expire_restore(self, restore: HostRestore, hold_timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(restore.finished.wait(), hold_timeout)
            return
        log.error("restore_hold_expired", job=restore.job, restore=restore.restore_id)
        await restore.abort(f"no decision within {hold_timeout:.1f}s")
        self._restores.pop(restore.restore_id, None)

    async def close(self) -> None:
        """On agent shutdown: abort held checkpoints (ranks resume); ranks keep running."""
        for checkpoint in list(self._checkpoints.values()):
            await checkpoint.abort("agent stopping")
        for restore in list(self._restores.values()):
            await restore.abort("agent stopping")
        for task in list(self._tasks):
            task.cancel()
