"""The agent's domain layer: carries out the coordinator's orders (launch, kill, prepare,
freeze, commit, abort, restore steps) on this host's ranks, and reports ranks that exit on
their own. Checkpoint orders go to agent.checkpoint_participant, restart orders to
agent.restore_participant; what they do on the host goes through agent.engine.

Each order is answered with one message carrying the order's correlation id."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from agent.checkpoint_participant import CheckpointParticipant
from agent.engine import CriuEngine, HostEngine, Rank
from agent.host_images import HostImages
from agent.owners import rank_environment, run_as_owner
from agent.restore_participant import RestoreParticipant
from crctl.errors import CrctlError
from crctl.v1 import control_pb2

log = structlog.get_logger()

Send = Callable[[control_pb2.AgentMessage], Awaitable[object]]


class Orders:
    def __init__(
        self,
        *,
        host: str,
        addresses: list[str],
        work_dir: Path,
        send: Send,
        engine: HostEngine | None = None,
        plugin_dir: Path = Path("/etc/crctl/plugins"),
        images: HostImages | None = None,
        private_paths: str = "/tmp,/dev/shm",
    ) -> None:
        self._host = host
        self._send = send
        self._images = images
        self._engine: HostEngine = engine or CriuEngine(work_dir, plugin_dir, images, private_paths)
        self.ranks: dict[tuple[str, int], Rank] = {}
        self._expected_exits: set[tuple[str, int]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.checkpoints = CheckpointParticipant(
            host=host,
            addresses=addresses,
            work_dir=work_dir,
            engine=self._engine,
            ranks=self.ranks,
            expect_exit=self._expect_exit,
            spawn=self._spawn,
        )
        self.restores = RestoreParticipant(
            host=host,
            engine=self._engine,
            ranks=self.ranks,
            adopt=self.adopt,
            expect_exit=self._expect_exit,
            spawn=self._spawn,
        )

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _expect_exit(self, job: str, rank: int) -> None:
        self._expected_exits.add((job, rank))

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
                vote = await self.checkpoints.prepare(message.prepare)
                if vote is None:
                    reply.ready.checkpoint = message.prepare.checkpoint
                else:
                    reply.vote.CopyFrom(vote)
            elif kind == "freeze":
                reply.vote.CopyFrom(await self.checkpoints.freeze(message.freeze.checkpoint))
            elif kind == "commit":
                reply.commit_result.CopyFrom(
                    await self.checkpoints.commit(message.commit.checkpoint)
                )
            elif kind == "abort":
                await self.checkpoints.abort(message.abort.checkpoint, message.abort.reason)
                reply.abort_result.checkpoint = message.abort.checkpoint
            elif kind == "prepare_restore":
                reply.restore_result.CopyFrom(await self.restores.prepare(message.prepare_restore))
            elif kind == "restore_step":
                step = message.restore_step
                reply.restore_result.CopyFrom(await self.restores.step(step.restore, step.step))
            elif kind == "copy_images" and self._images is not None:
                reply.images_copied.CopyFrom(await self._images.copy(message.copy_images))
            elif kind == "drop_images" and self._images is not None:
                await asyncio.to_thread(self._images.drop, message.drop_images)
                reply.images_dropped.checkpoint = message.drop_images.checkpoint
            elif kind == "verify_images" and self._images is not None:
                verified = await asyncio.to_thread(self._images.verify, message.verify_images)
                reply.images_verified.CopyFrom(verified)
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
        run_as = run_as_owner(order, self._host)
        env = rank_environment(order, run_as)
        process = await self._engine.launch(order.job, order.rank, order.argv, env, run_as)
        self.adopt(order.job, order.rank, process)
        return control_pb2.RankLaunched(job=order.job, rank=order.rank, pid=process.command_pid)

    def recover(self) -> None:
        """After an agent restart: adopt the ranks of this host that still run, and take up the
        checkpoints the earlier agent had prepared and not seen decided."""
        for job, rank, process in self._engine.running_ranks():
            if (job, rank) not in self.ranks:
                self.adopt(job, rank, process)
        self.checkpoints.recover()

    async def finish_earlier_restores(self) -> None:
        """After an agent restart, before serving: see restoring.finish_earlier_restores."""
        await self._engine.finish_earlier_restores(self.ranks)

    def running(self) -> list[control_pb2.RankRef]:
        return [
            control_pb2.RankRef(job=job, rank=rank, pid=process.command_pid)
            for (job, rank), process in sorted(self.ranks.items())
            if not process.exited
        ]

    def adopt(self, job: str, rank: int, process: Rank) -> None:
        """Track a launched or restored rank and report its exit when it ends by itself."""
        self.ranks[(job, rank)] = process
        self._spawn(self._watch(job, rank, process), f"watch-{job}-{rank}")

    async def _watch(self, job: str, rank: int, process: Rank) -> None:
        code = await process.wait()
        key = (job, rank)
        if self.ranks.get(key) is process:
            del self.ranks[key]
        self._engine.rank_ended(process)
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

    async def close(self) -> None:
        """On agent shutdown: held checkpoints and restores are undone (ranks resume; a
        checkpoint this host voted yes for stays in doubt for the next agent); ranks keep
        running."""
        await self.checkpoints.close()
        await self.restores.close()
        for task in list(self._tasks):
            task.cancel()
