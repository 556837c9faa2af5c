"""Restarting a job from a committed checkpoint, two-phase like the checkpoint itself.

Steps, each with its own deadline, each on every target host before the next begins:

1. ``prepare``: agents verify the images against the manifest, make working copies, run the
   ``before_restore`` plugins (the TCP endpoint rewriter among them) and lock their host;
2. ``restore``: agents restore their ranks with CRIU and hold them at ``post-restore``;
3. ``unlock``: every host lifts its lock (before any rank runs: FINDINGS 11);
4. ``release``: agents let the ranks run.

Any failure or missed deadline aborts: every host kills what it restored, removes its lock and
its working copies; the job is reported not running, naming the host, rank and reason; the
checkpoint is untouched and stays restartable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

import structlog

from coordinator.checkpoints import committed_checkpoint
from coordinator.control import ControlPlane
from coordinator.jobs import JobService
from coordinator.placement import Placement, connected_ranks, plan_restart
from coordinator.progress import ProgressFeed
from coordinator.store import CheckpointRecord, Store
from crctl.clock import new_id
from crctl.doctor import LAZY_PAGES
from crctl.errors import ConflictError, CrctlError
from crctl.v1 import control_pb2, coordinator_pb2

log = structlog.get_logger()

STEPS = ("prepare", "restore", "unlock", "release")
ABORT_TIMEOUT = 30.0


@dataclass
class StepFailure(Exception):
    host: str
    rank: int
    reason: str


class RestartRun:
    def __init__(
        self,
        *,
        restore: str,
        job: str,
        checkpoint: CheckpointRecord,
        manifest: coordinator_pb2.Manifest,
        placement: Placement,
        addresses: Mapping[str, Sequence[str]],
        plugins: Sequence[str],
        plugin_options: Mapping[str, str],
        lazy_hosts: frozenset[str],
        step_timeout: float,
        plane: ControlPlane,
        store: Store,
    ) -> None:
        self.restore = restore
        self.job = job
        self._checkpoint = checkpoint
        self._manifest = manifest
        self._placement = placement
        self._addresses = addresses
        self._plugins = list(plugins)
        self._options = dict(plugin_options)
        self._lazy_hosts = lazy_hosts
        self._timeout = step_timeout
        self._plane = plane
        self._store = store
        self._feed: ProgressFeed[coordinator_pb2.RestartEvent] = ProgressFeed(
            lambda event: event.WhichOneof("event") == "outcome"
        )
        self._log = log.bind(job=job, checkpoint=checkpoint.checkpoint, restore=restore)
        self.outcome: coordinator_pb2.RestartOutcome | None = None

    def follow(self) -> AsyncIterator[coordinator_pb2.RestartEvent]:
        return self._feed.follow()

    async def _step_event(self, step: str, hosts: Sequence[str]) -> None:
        self._log.info("restart_step", phase=step, hosts=list(hosts))
        event = coordinator_pb2.RestartEvent()
        event.step.restore = self.restore
        event.step.step = step
        event.step.hosts.extend(hosts)
        await self._feed.publish(event)

    def _prepare_order(self, host: str) -> control_pb2.CoordinatorMessage:
        order = control_pb2.CoordinatorMessage()
        prepare = order.prepare_restore
        prepare.job = self.job
        prepare.restore = self.restore
        prepare.checkpoint = self._checkpoint.checkpoint
        prepare.checkpoint_dir = self._checkpoint.directory
        for image in self._manifest.ranks:
            if self._placement.rank_hosts[image.rank] == host:
                prepare.ranks.add(rank=image.rank, image=image)
                prepare.close_connections.extend(self._placement.close.get(image.rank, []))
        here = [r.rank for r in prepare.ranks]
        for image in connected_ranks(self._manifest.ranks, here):
            prepare.peer_ranks.add(rank=image.rank, image=image)
        prepare.address_map.update(self._placement.address_map)
        prepare.host_map.update(self._placement.host_map)
        for name, addresses in self._addresses.items():
            prepare.host_addresses[name] = ",".join(addresses)
        for image in self._manifest.ranks:
            prepare.host_addresses.setdefault(image.host, ",".join(image.host_addresses))
        prepare.plugins.extend(self._plugins)
        prepare.plugin_options.update(self._options)
        prepare.lazy_pages = host in self._lazy_hosts
        prepare.hold_timeout = self._timeout * len(STEPS) + 10.0
        return order

    async def _on_host(self, host: str, step: str) -> control_pb2.RestoreResult:
        if step == "prepare":
            order = self._prepare_order(host)
        else:
            order = control_pb2.CoordinatorMessage()
            order.restore_step.restore = self.restore
            order.restore_step.step = step
        try:
            reply = await self._plane.request(host, order, self._timeout)
        except CrctlError as exc:
            raise StepFailure(host, -1, exc.message) from None
        if reply.WhichOneof("body") != "restore_result":
            raise StepFailure(host, -1, reply.order_failed.reason or "unexpected reply")
        result = reply.restore_result
        if not result.ok:
            raise StepFailure(host, result.failed_rank, result.reason)
        return result

    async def _everywhere(self, step: str) -> list[control_pb2.RestoreResult]:
        hosts = self._placement.hosts
        await self._step_event(step, hosts)
        results = await asyncio.gather(
            *(self._on_host(h, step) for h in hosts), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, StepFailure)]
        if failures:
            # A rank's images are read on its own host and where its peers go: name its own.
            failures.sort(key=lambda f: self._placement.rank_hosts.get(f.rank) != f.host)
            raise failures[0]
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [r for r in results if isinstance(r, control_pb2.RestoreResult)]

    async def run(self) -> coordinator_pb2.RestartOutcome:
        started = time.monotonic()
        outcome = coordinator_pb2.RestartOutcome(
            restore=self.restore, checkpoint=self._checkpoint.checkpoint
        )
        outcome.address_map.update(self._placement.address_map)
        try:
            pids: dict[int, int] = {}
            for step in STEPS:
                for result in await self._everywhere(step):
                    pids.update({p.rank: p.pid for p in result.pids})
            self._store.move_ranks(
                self.job,
                {
                    rank: (host, pids.get(rank, 0))
                    for rank, host in self._placement.rank_hosts.items()
                },
            )
            outcome.restarted = True
        except StepFailure as failure:
            outcome.reason = failure.reason
            outcome.failed_host = failure.host
            outcome.failed_rank = failure.rank
            await self._abort(failure.reason)
        except Exception as exc:  # never leave ranks held or hosts locked on a bug
            self._log.exception("restart_failed")
            outcome.reason = f"coordinator error: {exc!r}"
            outcome.failed_rank = -1
            await self._abort(outcome.reason)
        outcome.duration_seconds = time.monotonic() - started
        job = self._store.job(self.job)
        if job is not None:
            for rank in job.ranks:
                outcome.ranks.add(rank=rank.rank, host=rank.host, pid=rank.pid, state=rank.state)
        self._log.info("restart_finished", restarted=outcome.restarted, reason=outcome.reason)
        self.outcome = outcome
        event = coordinator_pb2.RestartEvent()
        event.outcome.CopyFrom(outcome)
        await self._feed.publish(event)
        return outcome

    async def _abort(self, reason: str) -> None:
        await self._step_event("abort", self._placement.hosts)

        order = control_pb2.CoordinatorMessage()
        order.restore_step.restore = self.restore
        order.restore_step.step = "abort"
        hosts = self._placement.hosts
        for host, exc in (await self._plane.request_all(hosts, order, ABORT_TIMEOUT)).items():
            # the agent gives up by itself when its hold times out
            self._log.warning("restart_abort_unacknowledged", agent=host, error=str(exc))
        self._log.warning("restart_aborted", reason=reason)


class RestartService:
    def __init__(
        self, *, store: Store, jobs: JobService, plane: ControlPlane, step_timeout: float
    ) -> None:
        self._store = store
        self._jobs = jobs
        self._plane = plane
        self._step_timeout = step_timeout

    def start(self, request: coordinator_pb2.RestartRequest) -> RestartRun:
        job = request.job
        record = self._jobs.get(job)
        running = [r.rank for r in record.ranks if r.state == "running"]
        if running:
            raise ConflictError(
                f"job {job} still runs ranks {running}: kill it (crctl kill {job}) or "
                "checkpoint it without --leave-running before restarting it",
                job=job,
            )
        checkpoint, manifest = committed_checkpoint(
            self._store, self._jobs, job, request.checkpoint, to="restart from"
        )
        candidates = set(request.host_map.values()) | set(request.hosts)
        candidates |= {image.host for image in manifest.ranks}
        addresses = {}
        lazy = set()
        for host in sorted(candidates):
            agent = self._jobs.agent(host)
            if agent is not None:
                addresses[host] = list(agent.addresses)
                if LAZY_PAGES in agent.capabilities and not request.eager_pages:
                    lazy.add(host)
        placement = plan_restart(
            list(manifest.ranks),
            host_map=dict(request.host_map),
            hosts=list(request.hosts),
            addresses=addresses,
        )
        for host in placement.hosts:
            self._jobs.require_alive(host, job)
        restore = new_id("rst")
        self._jobs.claim(job, f"restart {restore}")
        run = RestartRun(
            restore=restore,
            job=job,
            checkpoint=checkpoint,
            manifest=manifest,
            placement=placement,
            addresses={h: addresses[h] for h in placement.hosts},
            plugins=list(request.plugins),
            plugin_options=dict(request.plugin_options),
            lazy_hosts=frozenset(lazy),
            step_timeout=request.timeout_seconds or self._step_timeout,
            plane=self._plane,
            store=self._store,
        )
        task = asyncio.create_task(run.run(), name=f"restart-{restore}")
        task.add_done_callback(lambda _: self._jobs.release(job))
        return run
