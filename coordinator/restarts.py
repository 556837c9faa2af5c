"""Restarting a job from a committed checkpoint, two-phase like the checkpoint itself.

Steps, each with its own deadline, each on every target host before the next begins:

1. ``prepare``: agents verify the images against the manifest, make working copies, run the
   ``before_restore`` plugins (the TCP endpoint rewriter among them) and lock their host;
2. ``restore``: agents restore their ranks with CRIU and hold them at ``post-restore``;
3. ``unlock``: every host lifts its lock (before any rank runs: FINDINGS 11);
4. ``release``: agents let the ranks run.

Any failure, lost agent or missed deadline aborts: every host kills what it restored, removes
its lock and its working copies; the job is reported not running, naming the host, rank and
reason; the checkpoint is untouched and stays restartable.

Restarts are durable: each is recorded when it starts, with the last step every host completed.
A coordinator that starts and finds one unfinished rolls it forward when every host had
unlocked (all ranks restored and held: only the release was left), asking each host to release
(a host answers a release it already did with its ranks' PIDs); otherwise, or if any host
cannot release, it rolls it back everywhere. Agents undo a restore held past its deadline by
themselves, so a coordinator that never returns leaves nothing held."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass

import structlog
from google.protobuf.json_format import Parse

from coordinator import image_copies
from coordinator.checkpoints import committed_checkpoint, mark_damaged
from coordinator.control import Plane, request_all
from coordinator.jobs import JobService
from coordinator.placement import Placement, connected_ranks, plan_restart
from coordinator.progress import ProgressFeed
from coordinator.registry import ALIVE
from coordinator.store import AgentRecord, CheckpointRecord, RestartRecord, Store
from crctl import failpoints
from crctl.clock import Clock, new_id
from crctl.doctor import LAZY_PAGES
from crctl.errors import ConflictError, CrctlError, PermissionDeniedError
from crctl.plugins import PER_RANK_ENDPOINTS, PLUGIN_CAPABILITY
from crctl.v1 import control_pb2, coordinator_pb2

log = structlog.get_logger()

STEPS = ("prepare", "restore", "unlock", "release")
# Once every host has unlocked, every rank is restored and held: a restart found unfinished
# then is rolled forward (released), before it rolled back.
ROLL_FORWARD_AFTER = "unlock"
ABORT_TIMEOUT = 30.0


@dataclass(frozen=True)
class _Plan:
    """A restart's checkpoint and where its ranks go."""

    checkpoint: CheckpointRecord
    manifest: coordinator_pb2.Manifest
    placement: Placement
    addresses: Mapping[str, Sequence[str]]
    lazy: frozenset[str]


@dataclass
class StepFailure(Exception):
    host: str
    rank: int
    reason: str
    images_damaged: bool = False


def require_plugins(agent: AgentRecord, plugins: Sequence[str], job: str) -> None:
    """Named plugins run as root in the agents: only modules the admin put in a host's
    plugin_dir (which its agent lists as ``plugin:<module>`` capabilities) may be named."""
    for spec in plugins:
        module = spec.partition(":")[0]
        if f"{PLUGIN_CAPABILITY}{module}" not in agent.capabilities:
            offered = sorted(
                c.removeprefix(PLUGIN_CAPABILITY)
                for c in agent.capabilities
                if c.startswith(PLUGIN_CAPABILITY)
            )
            raise PermissionDeniedError(
                f"plugin {spec} is not one the admin installed on {agent.host} (modules in "
                f"its plugin_dir: {', '.join(offered) or 'none'}); plugins run as root, so "
                "only those can be named",
                job=job,
                host=agent.host,
            )


class RestartRun:
    def __init__(
        self,
        *,
        restore: str,
        job: str,
        checkpoint: CheckpointRecord,
        manifest: coordinator_pb2.Manifest,
        passed_over: Sequence[coordinator_pb2.PassedOver],
        placement: Placement,
        addresses: Mapping[str, Sequence[str]],
        plugins: Sequence[str],
        plugin_options: Mapping[str, str],
        lazy_hosts: frozenset[str],
        step_timeout: float,
        owner: tuple[int, str],
        plane: Plane,
        store: Store,
        jobs: JobService,
        clock: Clock,
    ) -> None:
        self.restore = restore
        self.job = job
        self._checkpoint = checkpoint
        self._manifest = manifest
        self._passed_over = list(passed_over)
        self._placement = placement
        self._addresses = addresses
        self._plugins = list(plugins)
        self._options = dict(plugin_options)
        self._lazy_hosts = lazy_hosts
        self._timeout = step_timeout
        self._owner = owner
        self._plane = plane
        self._store = store
        self._jobs = jobs
        self._clock = clock
        self._lost = {host: asyncio.Event() for host in placement.hosts}
        self._agents = jobs.agents()  # where the images are fetched from, as at the start
        self._feed: ProgressFeed[coordinator_pb2.RestartEvent] = ProgressFeed(
            lambda event: event.WhichOneof("event") == "outcome"
        )
        self._log = log.bind(job=job, checkpoint=checkpoint.checkpoint, restore=restore)
        self.outcome: coordinator_pb2.RestartOutcome | None = None
        self.checkpoint = checkpoint.checkpoint
        self.hosts = placement.hosts
        self.step = ""  # the step under way
        self._done_on: dict[str, str] = {}  # host -> the last step it completed
        self._cancelled = asyncio.Event()
        self._cancel_reason = ""

    def follow(self) -> AsyncIterator[coordinator_pb2.RestartEvent]:
        return self._feed.follow()

    def progress(self) -> list[tuple[str, str]]:
        """(host, where it is): the step under way, or "<step> done" once it completed it."""
        return [
            (h, f"{self.step} done" if self._done_on.get(h) == self.step else self.step)
            for h in self.hosts
        ]

    def cancel(self, reason: str) -> bool:
        """Abort the restart at once unless its ranks are being released (too late: they may
        already run). True if it will be aborted."""
        if self.step == "release" or self.outcome is not None:
            return False
        self._cancel_reason = reason
        self._cancelled.set()
        return True

    def _cancellation(self) -> StepFailure:
        return StepFailure("", -1, f"cancelled: {self._cancel_reason}")

    def agent_lost(self, host: str) -> None:
        """A target host went silent: the step under way fails at once (no deadline wait)."""
        lost = self._lost.get(host)
        if lost is not None:
            lost.set()

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
        placement = self._placement
        for image in self._manifest.ranks:
            if placement.rank_hosts[image.rank] == host:
                prepare.ranks.add(
                    rank=image.rank,
                    image=image,
                    local_address_map=placement.rank_addresses.get(image.rank, {}),
                    peer_address_map=placement.peer_addresses.get(image.rank, {}),
                    sources=image_copies.sources(image, host, self._agents),
                )
                prepare.close_connections.extend(placement.close.get(image.rank, []))
        here = [r.rank for r in prepare.ranks]
        for image in connected_ranks(self._manifest.ranks, here):
            prepare.peer_ranks.add(
                rank=image.rank,
                image=image,
                sources=image_copies.sources(image, host, self._agents),
            )
        prepare.address_map.update(self._placement.address_map)
        prepare.host_map.update(self._placement.host_map)
        for old, new in self._placement.split_hosts.items():
            prepare.split_hosts[old] = ",".join(new)
        for name, addresses in self._addresses.items():
            prepare.host_addresses[name] = ",".join(addresses)
        for image in self._manifest.ranks:
            prepare.host_addresses.setdefault(image.host, ",".join(image.host_addresses))
        prepare.plugins.extend(self._plugins)
        prepare.plugin_options.update(self._options)
        prepare.lazy_pages = host in self._lazy_hosts
        prepare.owner_uid, prepare.owner = self._owner
        prepare.hold_timeout = self._timeout * len(STEPS) + 10.0
        return order

    async def _on_host(self, host: str, step: str) -> control_pb2.RestoreResult:
        if step == "prepare":
            order = self._prepare_order(host)
        else:
            order = control_pb2.CoordinatorMessage()
            order.restore_step.restore = self.restore
            order.restore_step.step = step
        lost = self._lost[host]
        if lost.is_set():
            raise StepFailure(host, -1, f"the agent on {host} was lost")
        asked = asyncio.ensure_future(self._plane.request(host, order, self._timeout))
        silence = asyncio.ensure_future(lost.wait())
        # A release is never interrupted: once asked, ranks may run.
        cancelled = asyncio.ensure_future(
            self._cancelled.wait() if step != "release" else asyncio.Event().wait()
        )
        try:
            await asyncio.wait({asked, silence, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            silence.cancel()
            cancelled.cancel()
        if not asked.done():
            asked.cancel()
            if self._cancelled.is_set() and step != "release":
                raise self._cancellation()
            raise StepFailure(host, -1, f"the agent on {host} was lost during {step}")
        try:
            reply = asked.result()
        except CrctlError as exc:
            raise StepFailure(host, -1, exc.message) from None
        if reply.WhichOneof("body") != "restore_result":
            raise StepFailure(host, -1, reply.order_failed.reason or "unexpected reply")
        result = reply.restore_result
        if not result.ok:
            raise StepFailure(host, result.failed_rank, result.reason, result.images_damaged)
        self._done_on[host] = step
        return result

    async def _everywhere(self, step: str) -> list[control_pb2.RestoreResult]:
        hosts = self._placement.hosts
        if self._cancelled.is_set():
            raise self._cancellation()
        self.step = step
        await self._step_event(step, hosts)
        await failpoints.reached(f"coordinator.restart.{step}")
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

    def _damaged(self, failure: StepFailure) -> tuple[str, bool]:
        """A rank's images found unlike the manifest: the checkpoint is marked damaged when
        every copy was read, else (another holder may keep an intact copy) it stays committed;
        a sentence saying which, and whether it was marked."""
        for image in self._manifest.ranks:
            if image.rank != failure.rank:
                continue
            why = image_copies.intact_copy_may_remain(image, failure.host, self._agents)
            if why:
                self._log.warning("restart_images_damaged_on_a_copy", rank=failure.rank, why=why)
                return (
                    f"checkpoint {self.checkpoint} stays committed: rank {failure.rank}'s "
                    f"images were not read from every copy ({why})"
                ), False
        return mark_damaged(self._store, self._jobs, self._checkpoint, failure.reason), True

    async def run(self) -> coordinator_pb2.RestartOutcome:
        started = self._clock.monotonic()
        outcome = coordinator_pb2.RestartOutcome(
            restore=self.restore, checkpoint=self._checkpoint.checkpoint
        )
        outcome.passed_over.extend(self._passed_over)
        outcome.address_map.update(self._placement.address_map)
        for old, new in self._placement.split_hosts.items():
            outcome.split_hosts[old] = ",".join(new)
        try:
            pids: dict[int, int] = {}
            for step in STEPS:
                for result in await self._everywhere(step):
                    pids.update({p.rank: p.pid for p in result.pids})
                self._store.restart_step_done(self.restore, step)
            self._store.finish_restart(self.restore, now=self._clock.now(), pids=pids)
            outcome.restarted = True
        except StepFailure as failure:
            outcome.reason = failure.reason
            outcome.failed_host = failure.host
            outcome.failed_rank = failure.rank
            await self._abort(failure.reason)
            if failure.images_damaged:
                said, outcome.checkpoint_damaged = self._damaged(failure)
                outcome.reason = f"{failure.reason}; {said}"
        except Exception as exc:  # never leave ranks held or hosts locked on a bug
            self._log.exception("restart_failed")
            outcome.reason = f"coordinator error: {exc!r}"
            outcome.failed_rank = -1
            await self._abort(outcome.reason)
        outcome.duration_seconds = self._clock.monotonic() - started
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

        # A lost host is not waited for: it gives up by itself when its hold times out.
        hosts = [h for h in self._placement.hosts if not self._lost[h].is_set()]
        await abort_restore(self._plane, self.restore, hosts, self._log)
        self._store.finish_restart(self.restore, now=self._clock.now(), reason=reason)
        self._log.warning("restart_aborted", reason=reason)


def _restore_step_order(restore: str, step: str) -> control_pb2.CoordinatorMessage:
    order = control_pb2.CoordinatorMessage()
    order.restore_step.restore = restore
    order.restore_step.step = step
    return order


async def abort_restore(
    plane: Plane, restore: str, hosts: Sequence[str], logger: structlog.typing.FilteringBoundLogger
) -> None:
    order = _restore_step_order(restore, "abort")
    for host, exc in (await request_all(plane, hosts, order, ABORT_TIMEOUT)).items():
        # the agent gives up by itself when its hold times out
        logger.warning("restart_abort_unacknowledged", agent=host, error=str(exc))


class RestartService:
    def __init__(
        self,
        *,
        store: Store,
        jobs: JobService,
        plane: Plane,
        clock: Clock,
        step_timeout: float,
        recovery_wait: float,
    ) -> None:
        self._store = store
        self._jobs = jobs
        self._plane = plane
        self._clock = clock
        self._step_timeout = step_timeout
        self._recovery_wait = recovery_wait
        self._running: dict[str, RestartRun] = {}  # restore id -> its run
        self._recovering: set[str] = set()  # restore ids a recovery is finishing
        self._aborting: set[tuple[str, str]] = set()  # (host, restore) being aborted
        self._tasks: set[asyncio.Task[None]] = set()

    def agent_lost(self, host: str) -> None:
        for run in self._running.values():
            run.agent_lost(host)

    def resolve(self, host: str, restoring: Sequence[str]) -> None:
        """An agent listed the restores under way on it: one that no run or recovery of this
        coordinator is carrying out was given up (this host was lost meanwhile, or the
        coordinator restarted and rolled it back): it is aborted there now, not at the end of
        the agent's hold."""
        for restore in restoring:
            if restore in self._running or restore in self._recovering:
                continue
            if (host, restore) in self._aborting:
                continue
            self._aborting.add((host, restore))
            task = asyncio.create_task(
                self._abort_stray(host, restore), name=f"abort-{restore}-{host}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _abort_stray(self, host: str, restore: str) -> None:
        try:
            await abort_restore(self._plane, restore, [host], log.bind(restore=restore))
            log.warning("restore_abandoned_aborted", agent=host, restore=restore)
        finally:
            self._aborting.discard((host, restore))

    # --- after a coordinator restart ---

    def recover(self) -> None:
        """Finish every restart an earlier coordinator left unfinished (in the background: the
        target agents are reconnecting); its job takes no other operation meanwhile."""
        for record in self._store.restarts(state="running"):
            self._jobs.claim(record.job, f"recovery of restart {record.restore}")
            self._recovering.add(record.restore)
            task = asyncio.create_task(self._recover(record), name=f"recover-{record.restore}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(functools.partial(self._release_job, record.job, record.restore))

    def _release_job(self, job: str, restore: str, _: asyncio.Task[None]) -> None:
        self._recovering.discard(restore)
        self._jobs.release(job)

    async def _targets_alive(self, hosts: Sequence[str]) -> list[str]:
        """Wait (up to the recovery wait) for every target agent to be back; the ones that are."""
        deadline = self._clock.monotonic() + self._recovery_wait

        def alive() -> list[str]:
            found = [self._jobs.agent(h) for h in hosts]
            return [a.host for a in found if a is not None and a.state == ALIVE]

        while len(alive()) < len(hosts) and self._clock.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return alive()

    async def _recover(self, record: RestartRecord) -> None:
        logger = log.bind(job=record.job, checkpoint=record.checkpoint, restore=record.restore)
        hosts = record.hosts
        alive = await self._targets_alive(hosts)
        forward = (
            STEPS.index(record.step) >= STEPS.index(ROLL_FORWARD_AFTER) if record.step else False
        )
        if forward and len(alive) == len(hosts):
            pids = await self._release_all(record, hosts, logger)
            if pids is not None:
                self._store.finish_restart(record.restore, now=self._clock.now(), pids=pids)
                logger.warning("restart_recovered", phase="release", outcome="restarted")
                return
        await abort_restore(self._plane, record.restore, alive, logger)
        reason = "the coordinator restarted before the restart finished; rolled back"
        self._store.finish_restart(record.restore, now=self._clock.now(), reason=reason)
        logger.warning(
            "restart_recovered",
            phase="abort",
            outcome="aborted",
            step_done=record.step,
            unreachable=sorted(set(hosts) - set(alive)),
        )

    async def _release_all(
        self,
        record: RestartRecord,
        hosts: Sequence[str],
        logger: structlog.typing.FilteringBoundLogger,
    ) -> dict[int, int] | None:
        """Every host released (the ranks' PIDs), or None if one could not."""

        async def release(host: str) -> control_pb2.AgentMessage | CrctlError:
            try:
                return await self._plane.request(
                    host, _restore_step_order(record.restore, "release"), self._step_timeout
                )
            except CrctlError as exc:
                return exc

        pids: dict[int, int] = {}
        for host, reply in zip(hosts, await asyncio.gather(*map(release, hosts)), strict=True):
            if isinstance(reply, CrctlError) or not reply.restore_result.ok:
                why = (
                    reply.message if isinstance(reply, CrctlError) else reply.restore_result.reason
                )
                logger.warning("restart_release_failed", agent=host, reason=why or "no answer")
                return None
            pids.update({p.rank: p.pid for p in reply.restore_result.pids})
        return pids

    def _plan(
        self,
        request: coordinator_pb2.RestartRequest,
        checkpoint: CheckpointRecord,
        manifest: coordinator_pb2.Manifest,
    ) -> _Plan:
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
        return _Plan(checkpoint, manifest, placement, addresses, frozenset(lazy))

    def _newest_restorable(
        self, request: coordinator_pb2.RestartRequest, latest: _Plan
    ) -> tuple[_Plan, list[coordinator_pb2.PassedOver]]:
        """A restart that names no checkpoint starts from the newest committed one every rank
        of which has a reachable copy: the job's latest, or an older one when a host holding
        the only copies of a rank of the latest is gone. The newer ones it passes over, each
        with why; refused, naming each, when none is restorable."""
        agents = self._jobs.agents()
        passed_over: list[coordinator_pb2.PassedOver] = []
        plan: _Plan | None = latest
        older = (  # their manifests read one by one, only as far as needed
            c
            for c in self._store.checkpoints(request.job, "committed", manifests=False)
            if c.started_at < latest.checkpoint.started_at
        )
        while plan is not None and (
            missing := image_copies.unreachable_ranks(
                plan.manifest, plan.placement.rank_hosts, agents
            )
        ):
            passed_over.append(
                coordinator_pb2.PassedOver(
                    checkpoint=plan.checkpoint.checkpoint, reason=f"no reachable copy of {missing}"
                )
            )
            plan = self._older_plan(request, latest, older, passed_over)
        if plan is None:
            raise ConflictError(
                f"no checkpoint of {request.job} can be restored now: "
                + "; ".join(f"{p.checkpoint}: {p.reason}" for p in passed_over)
                + "; bring a host that holds them back",
                job=request.job,
                checkpoint=latest.checkpoint.checkpoint,
            )
        for skipped in passed_over:
            log.warning(
                "restart_passed_over",
                job=request.job,
                checkpoint=skipped.checkpoint,
                reason=skipped.reason,
                restart_from=plan.checkpoint.checkpoint,
            )
        return plan, passed_over

    def _older_plan(
        self,
        request: coordinator_pb2.RestartRequest,
        latest: _Plan,
        older: Iterator[CheckpointRecord],
        passed_over: list[coordinator_pb2.PassedOver],
    ) -> _Plan | None:
        """The plan from the next of ``older`` whose ranks can go where the request sends the
        latest's (each rank to the same new host: a map names the latest's hosts, which an
        older checkpoint may not have run on); one that cannot is passed over too. None when
        none is left."""
        rank_hosts = latest.placement.rank_hosts
        for listed in older:
            record = self._store.checkpoint(listed.checkpoint)
            if record is None or not record.manifest:
                continue
            manifest = Parse(record.manifest, coordinator_pb2.Manifest())
            ranks = sorted(image.rank for image in manifest.ranks)
            same_place = coordinator_pb2.RestartRequest()
            same_place.CopyFrom(request)
            if ranks == sorted(rank_hosts):  # else the request as it is, if it fits
                same_place.ClearField("host_map")
                same_place.ClearField("hosts")
                same_place.hosts.extend(rank_hosts[rank] for rank in ranks)
            try:
                return self._plan(same_place, record, manifest)
            except CrctlError as exc:
                passed_over.append(
                    coordinator_pb2.PassedOver(checkpoint=record.checkpoint, reason=exc.message)
                )
        return None

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
        plan = self._plan(request, checkpoint, manifest)
        passed_over: list[coordinator_pb2.PassedOver] = []
        if not request.checkpoint:
            plan, passed_over = self._newest_restorable(request, plan)
        checkpoint, manifest, placement = plan.checkpoint, plan.manifest, plan.placement
        addresses, lazy = plan.addresses, plan.lazy
        image_copies.require_restorable(manifest, placement.rank_hosts, self._jobs.agents())
        rewritten_one_by_one = set(placement.rank_addresses) | set(placement.peer_addresses)
        for host in placement.hosts:
            agent = self._jobs.require_alive(host, job)
            require_plugins(agent, request.plugins, job)
            ranks = sorted(r for r in rewritten_one_by_one if placement.rank_hosts[r] == host)
            if ranks and PER_RANK_ENDPOINTS not in agent.capabilities:
                raise ConflictError(
                    f"the agent on {host} cannot restore ranks {ranks}: their connections "
                    f"need per-rank endpoint rewrites (the ranks of "
                    f"{', '.join(sorted(placement.split_hosts))} are spread over several "
                    "hosts) and it is older than that; upgrade it, or keep those ranks together",
                    job=job,
                    host=host,
                )
        restore = new_id("rst")
        self._jobs.claim(job, f"restart {restore}")
        self._store.begin_restart(
            RestartRecord(
                restore=restore,
                job=job,
                checkpoint=checkpoint.checkpoint,
                state="running",
                placement=dict(placement.rank_hosts),
                step="",
                started_at=self._clock.now(),
                finished_at=None,
                reason="",
            )
        )
        run = RestartRun(
            restore=restore,
            job=job,
            checkpoint=checkpoint,
            manifest=manifest,
            passed_over=passed_over,
            placement=placement,
            addresses={h: addresses[h] for h in placement.hosts},
            plugins=list(request.plugins),
            plugin_options=dict(request.plugin_options),
            lazy_hosts=frozenset(lazy),
            step_timeout=request.timeout_seconds or self._step_timeout,
            owner=(record.owner_uid, record.owner),
            plane=self._plane,
            store=self._store,
            jobs=self._jobs,
            clock=self._clock,
        )
        self._running[restore] = run
        task = asyncio.create_task(run.run(), name=f"restart-{restore}")

        def finished(_: asyncio.Task[coordinator_pb2.RestartOutcome]) -> None:
            self._running.pop(restore, None)
            self._jobs.release(job)

        task.add_done_callback(finished)
        return run
