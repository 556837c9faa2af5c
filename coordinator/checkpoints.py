"""Running checkpoints: the I/O around the pure barrier (coordinator.barrier).

One ``CheckpointRun`` per checkpoint feeds the barrier events (agents' votes and commit results,
lost agents, deadlines) and carries out its actions: orders to agents over the control plane,
durable records in the store, manifest and folders in the checkpoint store. Progress is
published as ``CheckpointEvent``s that any number of API callers can follow."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from google.protobuf.json_format import Parse

from coordinator import barrier as b
from coordinator import image_copies
from coordinator.control import Plane, request_all
from coordinator.image_copies import ImageCopies
from coordinator.jobs import JobService
from coordinator.progress import ProgressFeed
from coordinator.storage import CheckpointStore
from coordinator.store import CheckpointRecord, Store
from coordinator.verification import Verification, verify_checkpoint
from crctl import connections, failpoints
from crctl.clock import Clock, new_id
from crctl.errors import ConfigError, ConflictError, CrctlError, NotFoundError
from crctl.v1 import control_pb2, coordinator_pb2

log = structlog.get_logger()

ABORT_TIMEOUT = 15.0
EXTERNAL_POLICIES = ("refuse", "close")
# Agents may hold ranks frozen this much longer than the coordinator's own deadlines.
HOLD_MARGIN = 5.0


@dataclass(frozen=True, kw_only=True)
class CheckpointSettings:
    prepare_timeout: float
    commit_timeout: float
    retain: int


class CheckpointRun:
    def __init__(
        self,
        *,
        record: CheckpointRecord,
        ranks_by_host: dict[str, list[int]],
        job_addresses: list[str],
        external: str,
        settings: CheckpointSettings,
        plane: Plane,
        store: Store,
        files: CheckpointStore,
        clock: Clock,
    ) -> None:
        self.record = record
        self.checkpoint = record.checkpoint
        self.job = record.job
        self._ranks_by_host = ranks_by_host
        self._job_addresses = connections.addresses(job_addresses)
        self._external = external
        self._settings = settings
        self._plane = plane
        self._store = store
        self._files = files
        self._clock = clock
        self._barrier = b.CheckpointBarrier(
            tuple(sorted(ranks_by_host)),
            prepare_timeout=settings.prepare_timeout,
            commit_timeout=settings.commit_timeout,
            record_before_release=not record.leave_running,
        )
        self._events: asyncio.Queue[b.Event] = asyncio.Queue()
        self._images: dict[str, list[control_pb2.RankImage]] = {}
        self._frozen: dict[str, float] = {}
        self._feed: ProgressFeed[coordinator_pb2.CheckpointEvent] = ProgressFeed(
            lambda event: event.WhichOneof("event") == "outcome"
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._log = log.bind(job=self.job, checkpoint=self.checkpoint)
        self.done = asyncio.Event()
        self._started = 0.0
        self.outcome: coordinator_pb2.CheckpointOutcome | None = None
        self._recorded: coordinator_pb2.Manifest | None = None
        self._lost: set[str] = set()  # hosts whose agent went silent during the run
        # Retention removed checkpoints after this one committed: their images on the hosts
        # go next (ImageCopies.drop_retired).
        self.retired = False

    # --- following progress ---

    async def _publish(self, event: coordinator_pb2.CheckpointEvent) -> None:
        await self._feed.publish(event)

    def follow(self) -> AsyncIterator[coordinator_pb2.CheckpointEvent]:
        return self._feed.follow()

    async def _phase(self, phase: str, hosts: list[str]) -> None:
        self._log.info("checkpoint_phase", phase=phase, hosts=hosts)
        event = coordinator_pb2.CheckpointEvent()
        event.phase.checkpoint = self.checkpoint
        event.phase.phase = phase
        event.phase.hosts.extend(hosts)
        await self._publish(event)

    # --- events from outside ---

    def agent_lost(self, host: str) -> None:
        self._lost.add(host)
        self._events.put_nowait(b.AgentLost(host))

    def cancel(self, reason: str) -> bool:
        """Abort the checkpoint unless it was decided already (then it finishes as decided).
        True if it will be aborted."""
        if self._barrier.phase not in (b.Phase.IDLE, b.Phase.READYING, b.Phase.PREPARING):
            return False
        self._events.put_nowait(b.Cancel(reason))
        return True

    # --- the run ---

    async def run(self) -> None:
        self._started = self._clock.monotonic()
        try:
            await self._execute(self._barrier.handle(b.Start(now=self._clock.monotonic())))
            while not self._barrier.phase.finished:
                event = await self._events.get()
                await self._execute(self._barrier.handle(event))
        except Exception as exc:  # a bug or an I/O failure must not leave ranks frozen
            self._log.exception("checkpoint_run_failed")
            if not self._barrier.phase.finished:
                reason = f"coordinator error: {exc!r}"
                recorded = self._recorded is not None
                await self._execute(self._barrier.handle(b.Abandon(reason, recorded)))
        finally:
            for task in self._tasks:
                task.cancel()
            if self.outcome is None:  # even the way out failed: callers still get an answer
                self.outcome = coordinator_pb2.CheckpointOutcome(
                    checkpoint=self.checkpoint,
                    committed=self._recorded is not None,
                    reason="the coordinator failed during the checkpoint; see its log",
                )
                last = coordinator_pb2.CheckpointEvent()
                last.outcome.CopyFrom(self.outcome)
                with contextlib.suppress(Exception):
                    await self._publish(last)
            self.done.set()

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, actions: list[b.Action]) -> None:
        for action in actions:
            match action:
                case b.SendPrepare(hosts=hosts, deadline=deadline):
                    await self._phase("readying", list(hosts))
                    for host in hosts:
                        self._spawn(self._prepare(host, deadline))
                    await failpoints.reached("coordinator.checkpoint.readying")
                case b.SendFreeze(hosts=hosts, deadline=deadline):
                    await self._phase("preparing", list(hosts))
                    for host in hosts:
                        self._spawn(self._freeze(host, deadline))
                    await failpoints.reached("coordinator.checkpoint.freezing")
                case b.ArmTimer(deadline=deadline):
                    self._spawn(self._timer(deadline))
                case b.RecordCommit():
                    await failpoints.reached("coordinator.checkpoint.held")
                    self._record_commit()
                    # the decision is durable; no agent has heard it yet
                    await failpoints.reached("coordinator.checkpoint.recorded")
                case b.SendCommit(hosts=hosts, deadline=deadline):
                    if self.record.leave_running:
                        await failpoints.reached("coordinator.checkpoint.held")
                    await self._phase("committing", list(hosts))
                    for host in hosts:
                        self._spawn(self._commit(host, deadline))
                    await failpoints.reached("coordinator.checkpoint.releasing")
                case b.RecordAbort(reason=reason, failed_host=failed_host):
                    self._store.abort_checkpoint(
                        self.checkpoint, reason, failed_host or "", self._clock.now()
                    )
                case b.SendAbort(hosts=hosts, reason=reason):
                    await self._abort_everywhere(hosts, reason)
                case b.Finished(phase=phase, reason=reason):
                    await self._finish(phase, reason)

    async def _timer(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - self._clock.monotonic()))
        self._events.put_nowait(b.Tick(now=self._clock.monotonic()))

    async def _prepare(self, host: str, deadline: float) -> None:
        order = control_pb2.CoordinatorMessage()
        prepare = order.prepare
        prepare.job = self.job
        prepare.checkpoint = self.checkpoint
        prepare.ranks.extend(self._ranks_by_host[host])
        prepare.images_dir = self.record.directory
        prepare.leave_running = self.record.leave_running
        prepare.hold_timeout = (
            deadline - self._clock.monotonic() + self._settings.commit_timeout + HOLD_MARGIN
        )
        reply = await self._ask_for_vote(host, order, deadline)
        if reply is None:
            return
        if reply.WhichOneof("body") == "ready":
            self._log.debug("checkpoint_ready", agent=host)
            self._events.put_nowait(b.Ready(host))
        else:
            await self._take_vote(host, reply)

    async def _freeze(self, host: str, deadline: float) -> None:
        order = control_pb2.CoordinatorMessage()
        order.freeze.checkpoint = self.checkpoint
        reply = await self._ask_for_vote(host, order, deadline)
        if reply is not None:
            await self._take_vote(host, reply)

    async def _ask_for_vote(
        self, host: str, order: control_pb2.CoordinatorMessage, deadline: float
    ) -> control_pb2.AgentMessage | None:
        """The agent's answer to a prepare step, or None when there is none (unreachable,
        silent past the deadline): that counts as its "no" vote, given here."""
        try:
            return await self._plane.request(host, order, deadline - self._clock.monotonic())
        except CrctlError as exc:
            self._events.put_nowait(b.Vote(host, yes=False, reason=exc.message))
            return None

    async def _take_vote(self, host: str, reply: control_pb2.AgentMessage) -> None:
        if reply.WhichOneof("body") != "vote":
            self._events.put_nowait(
                b.Vote(host, yes=False, reason=reply.order_failed.reason or "no vote")
            )
            return
        vote = reply.vote
        yes, reason = vote.yes, vote.reason
        if vote.checkpoint != self.checkpoint:
            self._log.warning("checkpoint_vote_refused", agent=host, voted_for=vote.checkpoint)
            yes, reason = False, f"{host} answered for another checkpoint ({vote.checkpoint!r})"
        elif yes:
            yes, reason = self._judge_connections(vote)
        self._images[host] = list(vote.ranks) if yes else []
        if yes:  # a line per host and checkpoint: debug; a "no" is news
            self._log.debug("checkpoint_vote", agent=host, yes=True)
        else:
            self._log.info("checkpoint_vote", agent=host, yes=False, reason=reason)
        event = coordinator_pb2.CheckpointEvent()
        event.vote.checkpoint = self.checkpoint
        event.vote.host = host
        event.vote.yes = yes
        event.vote.reason = reason
        await self._publish(event)
        self._events.put_nowait(b.Vote(host, yes=yes, reason=reason))

    def _judge_connections(self, vote: control_pb2.CheckpointVote) -> tuple[bool, str]:
        """A yes stands unless a dumped connection leads outside the job and the checkpoint
        was not asked to close those at restart."""
        leaving = connections.outside(vote.connections, self._job_addresses)
        if not leaving or self._external == "close":
            return True, ""
        listed = ", ".join(
            f"{s.local_address}:{s.local_port} -> {s.peer_address}:{s.peer_port}" for s in leaving
        )
        return False, (
            f"connections to peers outside the job: {listed}; checkpoint with "
            "--external close to restore them closed at restart"
        )

    def _manifest(self) -> coordinator_pb2.Manifest:
        manifest = coordinator_pb2.Manifest(
            checkpoint=self.checkpoint, job=self.job, leave_running=self.record.leave_running
        )
        manifest.created_at.FromNanoseconds(int(self._clock.now() * 1e9))
        ranks = [image for images in self._images.values() for image in images]
        manifest.ranks.extend(sorted(ranks, key=lambda r: r.rank))
        return manifest

    def _record_commit(self) -> None:
        """The decision: manifest written last to the checkpoint folder, then the database makes
        it the job's latest in one transaction."""
        manifest = self._manifest()
        directory = self._files.directory(self.job, self.checkpoint)
        text = self._files.write_manifest(directory, manifest)
        self._store.commit_checkpoint(
            self.checkpoint,
            self.job,
            text,
            self._clock.now(),
            ranks_stop=not self.record.leave_running,
        )
        self._recorded = manifest
        self._log.info("checkpoint_recorded", phase="commit")

    async def _commit(self, host: str, deadline: float) -> None:
        order = control_pb2.CoordinatorMessage()
        order.commit.checkpoint = self.checkpoint
        try:
            reply = await self._plane.request(host, order, deadline - self._clock.monotonic())
        except CrctlError as exc:
            self._events.put_nowait(b.CommitAck(host, ok=False, reason=exc.message))
            return
        if reply.WhichOneof("body") != "commit_result":
            reason = reply.order_failed.reason or "unexpected reply to commit"
            self._events.put_nowait(b.CommitAck(host, ok=False, reason=reason))
            return
        result = reply.commit_result
        if result.checkpoint != self.checkpoint:
            self._log.warning("checkpoint_ack_refused", agent=host, answered_for=result.checkpoint)
            reason = f"{host} answered for another checkpoint ({result.checkpoint!r})"
            self._events.put_nowait(b.CommitAck(host, ok=False, reason=reason))
            return
        self._frozen[host] = result.frozen_seconds
        if result.ranks:
            self._images[host] = list(result.ranks)
        elif result.ok and self.record.leave_running:
            # Released ranks' manifest comes with the release; without it there is nothing
            # to record for this host, so no checkpoint.
            self._events.put_nowait(
                b.CommitAck(host, ok=False, reason=f"{host} released its ranks without a manifest")
            )
            return
        self._events.put_nowait(b.CommitAck(host, ok=result.ok, reason=result.reason))

    async def _abort_everywhere(self, hosts: tuple[str, ...], reason: str) -> None:
        await self._phase("aborting", list(hosts))

        order = control_pb2.CoordinatorMessage()
        order.abort.checkpoint = self.checkpoint
        order.abort.reason = reason
        # A lost agent is not waited for: its host resumes its ranks when its hold ends, and
        # hears the abort when it asks (see CheckpointService.resolve).
        reachable = [h for h in hosts if h not in self._lost]
        unanswered = await request_all(self._plane, reachable, order, ABORT_TIMEOUT)
        for host, exc in unanswered.items():
            self._log.warning("checkpoint_abort_unacknowledged", agent=host, error=str(exc))
        self._files.remove(self._files.directory(self.job, self.checkpoint))

    async def _finish(self, phase: b.Phase, reason: str) -> None:
        committed = phase is b.Phase.COMMITTED
        if committed:
            if reason:
                self._store.finish_checkpoint(self.checkpoint, reason)
            self._apply_retention()
        outcome = coordinator_pb2.CheckpointOutcome(
            checkpoint=self.checkpoint,
            committed=committed,
            reason=reason,
            failed_host=self._barrier.failed_host or "",
            duration_seconds=self._clock.monotonic() - self._started,
            frozen_seconds=max(self._frozen.values(), default=0.0),
        )
        if committed:
            assert self._recorded is not None  # a commit is recorded before it finishes
            outcome.ranks.extend(self._recorded.ranks)
        self.outcome = outcome
        self._log.info(
            "checkpoint_finished",
            phase=phase.value,
            reason=reason,
            frozen_seconds=max(self._frozen.values(), default=0.0),
        )
        await self._phase(phase.value, [])
        event = coordinator_pb2.CheckpointEvent()
        event.outcome.CopyFrom(outcome)
        await self._publish(event)

    def _apply_retention(self) -> None:
        """The newest ``keep`` good checkpoints stay, with any damaged one newer than the
        oldest of them (kept to be looked at); pinned ones always stay and are not counted.
        ``keep`` is the job's schedule's, read now (one set during the run counts), or the
        coordinator's ``retain``."""
        keep = retention_for(self._store, self.job, self._settings.retain)
        committed = [
            c
            for c in self._store.checkpoints(self.job, state="committed", manifests=False)
            if not c.pinned
        ]
        kept = committed[:keep]
        damaged = self._store.checkpoints(self.job, state="damaged", manifests=False)
        older = [d for d in damaged if not d.pinned and kept and d.started_at < kept[-1].started_at]
        for old in committed[keep:] + older:
            full = self._store.checkpoint(old.checkpoint)
            manifest = full.manifest if full is not None else None
            images_on = (
                image_copies.holders_of(Parse(manifest, coordinator_pb2.Manifest()))
                if manifest
                else []
            )
            self._files.remove(self._files.directory(old.job, old.checkpoint))
            self._store.delete_checkpoint(
                old.checkpoint, images_on=images_on, now=self._clock.now()
            )
            self.retired = True
            self._log.info("checkpoint_retired", retired=old.checkpoint, keep=keep)


def retention_for(store: Store, job: str, default: int) -> int:
    """How many unpinned good checkpoints of ``job`` retention keeps: its schedule's ``keep``,
    or ``default`` when it has none (or keep 0)."""
    schedule = store.schedule(job)
    return schedule.keep if schedule is not None and schedule.keep > 0 else default


def committed_checkpoint(
    store: Store,
    jobs: JobService,
    job: str,
    checkpoint: str,
    *,
    to: str,
    damaged_too: bool = False,
) -> tuple[CheckpointRecord, coordinator_pb2.Manifest]:
    """A committed checkpoint of ``job`` and its manifest: ``checkpoint``, or the job's latest
    when empty. ``to`` says what for, in the errors ("restart from"); ``damaged_too`` also
    takes one found damaged (to verify it again)."""
    record = jobs.get(job)
    name = checkpoint or record.latest_checkpoint
    if not name:
        raise NotFoundError(f"job {job} has no committed checkpoint to {to}", job=job)
    found = store.checkpoint(name)
    if found is None or found.job != job:
        raise NotFoundError(f"job {job} has no checkpoint {name}", job=job, checkpoint=name)
    if found.state == "damaged" and not damaged_too:
        latest = record.latest_checkpoint
        raise ConflictError(
            f"checkpoint {name} is damaged ({found.reason}); "
            + (
                f"the latest good checkpoint of {job} is {latest}"
                if latest
                else f"{job} has no good checkpoint left"
            ),
            job=job,
            checkpoint=name,
        )
    if found.state not in ("committed", "damaged") or not found.manifest:
        raise ConflictError(
            f"checkpoint {name} is {found.state}, not committed: there is nothing to {to}",
            job=job,
            checkpoint=name,
        )
    return found, Parse(found.manifest, coordinator_pb2.Manifest())


def outcome_of(record: CheckpointRecord) -> coordinator_pb2.CheckpointOutcome:
    """The outcome of a finished checkpoint, from its record (a retry, a restarted
    coordinator)."""
    outcome = coordinator_pb2.CheckpointOutcome(
        checkpoint=record.checkpoint,
        committed=record.state == "committed",
        reason=record.reason
        or ("" if record.state != "preparing" else "still preparing on a previous coordinator"),
        failed_host=record.failed_host,
    )
    if record.finished_at is not None:
        outcome.duration_seconds = record.finished_at - record.started_at
    if record.manifest:
        outcome.ranks.extend(Parse(record.manifest, coordinator_pb2.Manifest()).ranks)
    return outcome


def mark_damaged(store: Store, jobs: JobService, record: CheckpointRecord, reason: str) -> str:
    """A checkpoint whose images were found not to match its manifest is never offered again:
    the job's latest becomes its newest good checkpoint; a sentence saying so."""
    store.mark_damaged(record.checkpoint, reason)
    latest = jobs.get(record.job).latest_checkpoint
    log.error(
        "checkpoint_damaged",
        job=record.job,
        checkpoint=record.checkpoint,
        reason=reason,
        latest=latest,
    )
    now = f"the latest good checkpoint is now {latest}" if latest else "no good checkpoint is left"
    return f"checkpoint {record.checkpoint} is marked damaged and {now}"


class CheckpointService:
    def __init__(
        self,
        *,
        store: Store,
        jobs: JobService,
        plane: Plane,
        files: CheckpointStore,
        clock: Clock,
        settings: CheckpointSettings,
        copies: ImageCopies | None = None,
    ) -> None:
        self._store = store
        self._jobs = jobs
        self._plane = plane
        self._files = files
        self._clock = clock
        self._settings = settings
        self.copies = copies or ImageCopies(
            store=store, files=files, plane=plane, agents=jobs.agents, replicas=0
        )
        self._running: dict[str, CheckpointRun] = {}  # job -> its running checkpoint
        self._delivering: set[tuple[str, str]] = set()  # (host, checkpoint) being told
        self._tasks: set[asyncio.Task[None]] = set()

    def recover(self) -> None:
        """After a restart: a checkpoint left preparing was never decided; it is not valid
        (presumed abort). Hosts still holding it, or in doubt about it, hear so when they list it
        in their heartbeats (``resolve``), as they do for every checkpoint they await."""
        for record in self._store.checkpoints(state="preparing"):
            self._store.abort_checkpoint(
                record.checkpoint,
                "coordinator restarted before the decision",
                "",
                self._clock.now(),
            )
            self._files.remove(Path(record.directory))
            log.warning("checkpoint_abandoned", job=record.job, checkpoint=record.checkpoint)

    def agent_lost(self, host: str) -> None:
        for run in self._running.values():
            run.agent_lost(host)

    def decision(self, checkpoint: str) -> tuple[str, bool]:
        """(job, committed) as the durable record says; a checkpoint it does not know (or one
        never committed) is not committed, and its job is ""."""
        record = self._store.checkpoint(checkpoint, manifest=False)
        if record is None:
            return "", False
        return record.job, record.state == "committed"

    def resolve(self, host: str, awaiting: Sequence[str]) -> None:
        """An agent listed checkpoints it prepared and has no decision for. Each one no run of
        this coordinator is deciding gets the decision from the durable record, sent again as
        often as the agent asks: commit if committed, else abort (an unknown checkpoint was
        never committed). The agent applies it idempotently."""
        live = {run.checkpoint for run in self._running.values()}
        for checkpoint in awaiting:
            if checkpoint in live or (host, checkpoint) in self._delivering:
                continue
            job, commit = self.decision(checkpoint)
            self._delivering.add((host, checkpoint))
            task = asyncio.create_task(
                self._deliver(host, checkpoint, commit=commit, job=job),
                name=f"decision-{checkpoint}-{host}",
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, host: str, checkpoint: str, *, commit: bool, job: str) -> None:
        decision = "commit" if commit else "abort"
        order = control_pb2.CoordinatorMessage()
        if commit:
            order.commit.checkpoint = checkpoint
        else:
            order.abort.checkpoint = checkpoint
            order.abort.reason = "not committed (the coordinator's record)"
        try:
            reply = await self._plane.request(host, order, self._settings.commit_timeout)
        except CrctlError as exc:
            log.warning(
                "checkpoint_decision_undelivered",
                job=job,
                checkpoint=checkpoint,
                agent=host,
                decision=decision,
                error=exc.message,
            )
            return
        finally:
            self._delivering.discard((host, checkpoint))
        ok = not commit or reply.commit_result.ok
        log.info(
            "checkpoint_decision_delivered",
            job=job,
            checkpoint=checkpoint,
            agent=host,
            decision=decision,
            ok=ok,
            reason=reply.commit_result.reason if commit else "",
        )

    def start(
        self,
        job: str,
        *,
        leave_running: bool,
        timeout: float,
        external: str = "refuse",
    ) -> CheckpointRun:
        """Start a checkpoint of ``job`` (a retry of the same request is the request ledger's:
        coordinator.idempotency)."""
        record = self._jobs.get(job)
        running = [r for r in record.ranks if r.state == "running"]
        if not running:
            raise ConflictError(f"job {job} has no running rank to checkpoint", job=job)
        ranks_by_host: dict[str, list[int]] = {}
        for rank in running:
            ranks_by_host.setdefault(rank.host, []).append(rank.rank)
        if external not in EXTERNAL_POLICIES:
            raise ConfigError(
                f"bad external-connection policy {external!r}: use {' or '.join(EXTERNAL_POLICIES)}"
            )
        job_addresses: list[str] = []
        for host in ranks_by_host:
            job_addresses.extend(self._jobs.require_alive(host, job).addresses)
        checkpoint = new_id("ckpt")
        self._jobs.claim(job, f"checkpoint {checkpoint}")
        try:
            directory = self._files.create(job, checkpoint)
        except CrctlError:
            self._jobs.release(job)
            raise
        settings = self._settings
        if timeout > 0:
            settings = CheckpointSettings(
                prepare_timeout=timeout,
                commit_timeout=settings.commit_timeout,
                retain=settings.retain,
            )
        checkpoint_record = CheckpointRecord(
            checkpoint=checkpoint,
            job=job,
            request_id=None,
            state="preparing",
            leave_running=leave_running,
            directory=str(directory),
            started_at=self._clock.now(),
            finished_at=None,
            reason="",
            failed_host="",
            manifest=None,
        )
        self._store.begin_checkpoint(checkpoint_record)
        run = CheckpointRun(
            record=checkpoint_record,
            ranks_by_host=ranks_by_host,
            job_addresses=job_addresses,
            external=external,
            settings=settings,
            plane=self._plane,
            store=self._store,
            files=self._files,
            clock=self._clock,
        )
        self._running[job] = run
        task = asyncio.create_task(run.run(), name=f"checkpoint-{checkpoint}")

        def finished(_: asyncio.Task[None]) -> None:
            self._running.pop(job, None)
            self._jobs.release(job)
            if run.retired:
                self.copies.drop_retired()
            if run.outcome is not None and run.outcome.committed:
                self.copies.after_commit(checkpoint)

        task.add_done_callback(finished)
        return run

    def pin(self, job: str, checkpoint: str, pinned: bool) -> CheckpointRecord:
        """Pin (retention never removes it) or unpin one of the job's checkpoints; only a
        committed (or damaged) one can be pinned: nothing else has images to keep."""
        self._jobs.get(job)
        found = self._store.checkpoint(checkpoint)
        if found is None or found.job != job:
            raise NotFoundError(
                f"job {job} has no checkpoint {checkpoint}", job=job, checkpoint=checkpoint
            )
        if pinned and found.state not in ("committed", "damaged"):
            raise ConflictError(
                f"checkpoint {checkpoint} is {found.state}, not committed: there is nothing to pin",
                job=job,
                checkpoint=checkpoint,
            )
        self._store.pin_checkpoint(checkpoint, pinned)
        log.info(
            "checkpoint_pinned" if pinned else "checkpoint_unpinned", job=job, checkpoint=checkpoint
        )
        updated = self._store.checkpoint(checkpoint)
        assert updated is not None  # pinning removes nothing
        return updated

    def list(self, job: str) -> list[CheckpointRecord]:
        self._jobs.get(job)
        return self._store.checkpoints(job)

    async def verify(self, job: str, checkpoint: str = "") -> Verification:
        """Check a committed checkpoint's images against its manifest (the latest when
        ``checkpoint`` is empty), reading them in a worker thread."""
        record, manifest = committed_checkpoint(
            self._store, self._jobs, job, checkpoint, to="verify", damaged_too=True
        )
        verification = await verify_checkpoint(
            record, manifest, self._clock, plane=self._plane, agents=self._jobs.agents()
        )
        if verification.damaged:
            mark_damaged(
                self._store, self._jobs, record, "; ".join(str(p) for p in verification.problems)
            )
        elif verification.ok and record.state == "damaged":
            self._store.mark_intact(record.checkpoint)
            log.warning("checkpoint_intact_again", job=job, checkpoint=record.checkpoint)
        return verification
