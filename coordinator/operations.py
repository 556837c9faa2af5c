"""Long-running operations (google.longrunning, AIP-151): every checkpoint and restart is one,
named ``operations/<checkpoint or restore id>``, that a caller can poll, wait on, cancel and
delete, and find again after reconnecting or after the coordinator restarted.

While it runs, an operation is followed from its run's progress feed: its metadata
(CheckpointMetadata / RestartMetadata: phase or step, where each host is) is kept in memory
and its events are published on the jobs' events bus (WatchJob). It is written to the
database when it starts and when it ends, with the outcome as its response (committed,
restarted) or as an error (a google.rpc.Status with ErrorInfo and the outcome in its details).
A coordinator that starts again finishes the operations the previous one left running from
the durable records of their checkpoint or restart (a checkpoint left undecided was aborted;
a restart is rolled forward or back, then its operation ends). Finished operations are
removed after ``keep_for`` seconds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from google.longrunning import operations_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2

from coordinator.checkpoints import CheckpointRun, outcome_of
from coordinator.job_events import JobEvents, rank_changed
from coordinator.restarts import RestartRun
from coordinator.store import OperationRecord, Store
from crctl.clock import Clock
from crctl.errors import ConflictError, NotFoundError
from crctl.lro import PREFIX, operation_name
from crctl.status import rich_status
from crctl.v1 import coordinator_pb2

log = structlog.get_logger()

CHECKPOINT = "checkpoint"
RESTART = "restart"
KINDS = (CHECKPOINT, RESTART)
RECOVERY_POLL = 0.5  # seconds between looks at a recovering restart's record
EXPIRE_EVERY = 60.0  # seconds between expiry passes


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


@dataclass(eq=False)
class _Live:
    """An operation whose run this coordinator carries out."""

    name: str
    kind: str
    job: str
    run: CheckpointRun | RestartRun
    metadata: coordinator_pb2.CheckpointMetadata | coordinator_pb2.RestartMetadata
    created_at: float
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    hosts: dict[str, coordinator_pb2.HostProgress] = field(default_factory=dict)


class Operations:
    def __init__(self, store: Store, clock: Clock, events: JobEvents, *, keep_for: float) -> None:
        self._store = store
        self._clock = clock
        self._events = events
        self._keep_for = keep_for
        self._live: dict[str, _Live] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._expired_at: float | None = None  # monotonic time of the last expiry pass

    # --- starting ---

    def track_checkpoint(
        self, run: CheckpointRun, *, requested_by: str
    ) -> operations_pb2.Operation:
        metadata = coordinator_pb2.CheckpointMetadata(
            job=run.job,
            checkpoint=run.checkpoint,
            phase="starting",
            leave_running=run.record.leave_running,
            requested_by=requested_by,
        )
        metadata.started_at.FromNanoseconds(int(run.record.started_at * 1e9))
        live = _Live(
            operation_name(run.checkpoint), CHECKPOINT, run.job, run, metadata, self._clock.now()
        )
        return self._begin(live, self._follow_checkpoint(live, run))

    def track_restart(self, run: RestartRun, *, requested_by: str) -> operations_pb2.Operation:
        metadata = coordinator_pb2.RestartMetadata(
            job=run.job,
            restore=run.restore,
            checkpoint=run.checkpoint,
            step="planning",
            requested_by=requested_by,
        )
        now = self._clock.now()
        metadata.started_at.FromNanoseconds(int(now * 1e9))
        live = _Live(operation_name(run.restore), RESTART, run.job, run, metadata, now)
        return self._begin(live, self._follow_restart(live, run))

    def _begin(self, live: _Live, follow: Coroutine[Any, Any, None]) -> operations_pb2.Operation:
        self._live[live.name] = live
        operation = self._live_operation(live)
        self._save(live.name, live.kind, live.job, operation, live.created_at)
        task = asyncio.ensure_future(follow)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info("operation_started", operation=live.name, job=live.job, kind=live.kind)
        return operation

    # --- following a run ---

    def _host(self, live: _Live, host: str, state: str, reason: str | None = None) -> None:
        """Where ``host`` is now; without a ``reason``, the one it gave before stays."""
        progress = live.hosts.setdefault(host, coordinator_pb2.HostProgress(host=host))
        progress.state = state
        if reason is not None:
            progress.reason = reason

    async def _follow_checkpoint(self, live: _Live, run: CheckpointRun) -> None:
        metadata = live.metadata
        assert isinstance(metadata, coordinator_pb2.CheckpointMetadata)
        failed_in = ""
        try:
            async for event in run.follow():
                kind = event.WhichOneof("event")
                if kind == "phase":
                    phase = event.phase
                    if phase.phase == "aborting" and not failed_in:
                        failed_in = metadata.phase
                    metadata.phase = phase.phase
                    for host in phase.hosts:
                        self._host(live, host, {"readying": "asked"}.get(phase.phase, phase.phase))
                    if phase.phase in ("committed", "aborted"):  # the last: no hosts named
                        for host in live.hosts:
                            self._host(live, host, phase.phase)
                    self._publish(live, coordinator_pb2.JobEvent(checkpoint_phase=phase))
                elif kind == "vote":
                    vote = event.vote
                    self._host(
                        live, vote.host, "voted yes" if vote.yes else "voted no", vote.reason
                    )
                    self._publish(live, coordinator_pb2.JobEvent(checkpoint_vote=vote))
                elif kind == "outcome":
                    self._finish_checkpoint(live, event.outcome, failed_in or metadata.phase)
                    return
        finally:
            self._end(live)

    def _finish_checkpoint(
        self, live: _Live, outcome: coordinator_pb2.CheckpointOutcome, failed_in: str
    ) -> None:
        operation = self._live_operation(live)
        finish_checkpoint(operation, live.job, outcome, failed_in)
        self._save(live.name, live.kind, live.job, operation, live.created_at, finished=True)
        self._publish(live, coordinator_pb2.JobEvent(checkpoint_outcome=outcome))
        assert isinstance(live.run, CheckpointRun)
        if outcome.committed and not live.run.record.leave_running:
            for image in outcome.ranks:
                self._publish(live, rank_changed(image.rank, image.host, image.pid, "checkpointed"))
        log.info("operation_done", operation=live.name, job=live.job, ok=outcome.committed)

    async def _follow_restart(self, live: _Live, run: RestartRun) -> None:
        metadata = live.metadata
        assert isinstance(metadata, coordinator_pb2.RestartMetadata)
        failed_in = ""
        try:
            async for event in run.follow():
                if event.WhichOneof("event") == "step":
                    if event.step.step == "abort" and not failed_in:
                        failed_in = metadata.step
                    metadata.step = event.step.step
                    self._publish(live, coordinator_pb2.JobEvent(restart_step=event.step))
                else:
                    self._finish_restart(live, event.outcome, failed_in or metadata.step)
                    return
        finally:
            self._end(live)

    def _finish_restart(
        self, live: _Live, outcome: coordinator_pb2.RestartOutcome, failed_in: str
    ) -> None:
        operation = self._live_operation(live)
        finish_restart(operation, live.job, outcome, failed_in)
        self._save(live.name, live.kind, live.job, operation, live.created_at, finished=True)
        self._publish(live, coordinator_pb2.JobEvent(restart_outcome=outcome))
        if outcome.restarted:
            for rank in outcome.ranks:
                self._publish(
                    live,
                    rank_changed(rank.rank, rank.host, rank.pid, rank.state, reason="restarted"),
                )
        log.info("operation_done", operation=live.name, job=live.job, ok=outcome.restarted)

    def _end(self, live: _Live) -> None:
        live.finished.set()
        self._live.pop(live.name, None)

    def _publish(self, live: _Live, event: coordinator_pb2.JobEvent) -> None:
        self._events.publish(live.job, event, operation=live.name)

    # --- reading ---

    def _live_operation(self, live: _Live) -> operations_pb2.Operation:
        metadata = live.metadata
        if isinstance(live.run, RestartRun) and live.run.step:
            live.hosts.clear()
            for host, state in live.run.progress():
                self._host(live, host, state)
        del metadata.hosts[:]
        metadata.hosts.extend(live.hosts[h] for h in sorted(live.hosts))
        metadata.updated_at.FromNanoseconds(int(self._clock.now() * 1e9))
        return operations_pb2.Operation(name=live.name, metadata=_pack(metadata))

    def get(self, name: str) -> tuple[operations_pb2.Operation, str]:
        """The operation and its job; NotFoundError if there is none of that name."""
        live = self._live.get(name)
        if live is not None:
            return self._live_operation(live), live.job
        record = self._store.operation(name)
        if record is None:
            raise NotFoundError(f"unknown operation {name!r}")
        return operations_pb2.Operation.FromString(record.operation), record.job

    def job_of(self, name: str) -> str:
        return self.get(name)[1]

    def list(
        self, *, job: str | None = None, done: bool | None = None, kind: str | None = None
    ) -> list[tuple[operations_pb2.Operation, str]]:
        """(operation, job), newest first, live ones with their current metadata."""
        found = []
        for record in self._store.operations(job=job, done=done, kind=kind):
            live = self._live.get(record.name)
            if live is not None:
                found.append((self._live_operation(live), record.job))
            else:
                found.append((operations_pb2.Operation.FromString(record.operation), record.job))
        return found

    async def wait(self, name: str, timeout: float) -> operations_pb2.Operation:
        """The operation once done, or as it is after ``timeout`` seconds."""
        live = self._live.get(name)
        if live is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.finished.wait(), timeout)
            return self.get(name)[0]
        deadline = self._clock.monotonic() + timeout
        while True:  # a restart the coordinator is rolling forward or back after a restart
            operation = self.get(name)[0]
            remaining = deadline - self._clock.monotonic()
            if operation.done or remaining <= 0:
                return operation
            await asyncio.sleep(min(RECOVERY_POLL, remaining))
            self.settle()

    def in_flight(self) -> dict[str, int]:
        counts = dict.fromkeys(KINDS, 0)
        for live in list(self._live.values()):  # also read by the metrics server's thread
            counts[live.kind] += 1
        return counts

    def run_of(self, name: str) -> CheckpointRun | RestartRun | None:
        live = self._live.get(name)
        return live.run if live is not None else None

    # --- acting ---

    def cancel(self, name: str, by: str) -> bool:
        """Ask the operation's run to abort (best effort, as AIP-151 has it): True if it will,
        False if it is done or past the point of no return (a checkpoint decided, ranks being
        released): then it ends as it would have."""
        live = self._live.get(name)
        if live is None:
            self.get(name)  # NotFoundError for an unknown one; a finished one: nothing to do
            return False
        live.metadata.cancel_requested = True
        taken = live.run.cancel(f"by {by}")
        log.info("operation_cancel", operation=name, job=live.job, by=by, taken=taken)
        return taken

    def delete(self, name: str) -> None:
        """Forget a finished operation (its checkpoint or restart stays)."""
        if name in self._live:
            raise ConflictError(f"operation {name} is still running; cancel it first")
        self.get(name)
        self._store.delete_operation(name)

    # --- durability ---

    def _save(
        self,
        name: str,
        kind: str,
        job: str,
        operation: operations_pb2.Operation,
        created_at: float,
        *,
        finished: bool = False,
    ) -> None:
        self._store.save_operation(
            OperationRecord(
                name=name,
                kind=kind,
                job=job,
                done=operation.done,
                operation=operation.SerializeToString(),
                created_at=created_at,
                finished_at=self._clock.now() if finished else None,
            )
        )

    def settle(self) -> None:
        """End every unfinished operation no run of this coordinator carries out (left by a
        previous coordinator) whose checkpoint or restart has an outcome on record."""
        for record in self._store.operations(done=False):
            if record.name in self._live:
                continue
            outcome = self._recorded_outcome(record)
            if outcome is None:
                continue
            operation = operations_pb2.Operation.FromString(record.operation)
            if isinstance(outcome, coordinator_pb2.CheckpointOutcome):
                finish_checkpoint(operation, record.job, outcome, "")
            else:
                finish_restart(operation, record.job, outcome, "")
            self._save(
                record.name, record.kind, record.job, operation, record.created_at, finished=True
            )
            log.info("operation_settled", operation=record.name, job=record.job)

    def _recorded_outcome(
        self, record: OperationRecord
    ) -> coordinator_pb2.CheckpointOutcome | coordinator_pb2.RestartOutcome | None:
        """The outcome the durable records give the operation's run; None while it is still
        undecided (a checkpoint preparing, a restart being rolled forward or back)."""
        run_id = record.name.removeprefix(PREFIX)
        if record.kind == CHECKPOINT:
            checkpoint = self._store.checkpoint(run_id)
            if checkpoint is None:
                return coordinator_pb2.CheckpointOutcome(
                    checkpoint=run_id, reason="its record is gone (retired or never recorded)"
                )
            return None if checkpoint.state == "preparing" else outcome_of(checkpoint)
        restart = self._store.restart(run_id)
        if restart is not None and restart.state == "running":
            return None
        outcome = coordinator_pb2.RestartOutcome(
            restore=run_id,
            checkpoint=restart.checkpoint if restart is not None else "",
            restarted=restart is not None and restart.state == "restarted",
            reason=restart.reason if restart is not None else "its record is gone",
        )
        if restart is not None and restart.finished_at is not None:
            outcome.duration_seconds = restart.finished_at - restart.started_at
        job = self._store.job(record.job)
        for rank in job.ranks if job is not None else ():
            outcome.ranks.add(rank=rank.rank, host=rank.host, pid=rank.pid, state=rank.state)
        return outcome

    def expire(self) -> None:
        """Remove operations (and request ids) older than ``keep_for``: at most once every
        EXPIRE_EVERY seconds (each pass is a write transaction, and the sweeper calls this
        every period)."""
        now = self._clock.monotonic()
        if self._expired_at is not None and now - self._expired_at < EXPIRE_EVERY:
            return
        self._expired_at = now
        names = self._store.expire(self._clock.now() - self._keep_for)
        if names:
            log.info("operations_expired", count=len(names))


def finish_checkpoint(
    operation: operations_pb2.Operation,
    job: str,
    outcome: coordinator_pb2.CheckpointOutcome,
    phase: str,
) -> None:
    """``operation`` done: the outcome as its response if committed, else its error."""
    operation.done = True
    if outcome.committed:
        operation.response.CopyFrom(_pack(outcome))
    else:
        operation.error.CopyFrom(checkpoint_error(job, outcome, phase))


def finish_restart(
    operation: operations_pb2.Operation,
    job: str,
    outcome: coordinator_pb2.RestartOutcome,
    step: str,
) -> None:
    """``operation`` done: the outcome as its response if restarted, else its error."""
    operation.done = True
    if outcome.restarted:
        operation.response.CopyFrom(_pack(outcome))
    else:
        operation.error.CopyFrom(restart_error(job, outcome, step))


def _cancelled(reason: str) -> bool:
    return reason.startswith("cancelled")


def checkpoint_error(
    job: str, outcome: coordinator_pb2.CheckpointOutcome, phase: str
) -> status_pb2.Status:
    """An aborted checkpoint as an operation's error: ABORTED (CANCELLED when cancelled), its
    ErrorInfo (CHECKPOINT_ABORTED or CANCELLED) and the outcome."""
    cancelled = _cancelled(outcome.reason)
    error = ConflictError(
        f"checkpoint {outcome.checkpoint} of {job} aborted: {outcome.reason}",
        job=job,
        checkpoint=outcome.checkpoint,
        host=outcome.failed_host or None,
        phase=phase or None,
    )
    return rich_status(
        error,
        outcome,
        code=grpc.StatusCode.CANCELLED if cancelled else grpc.StatusCode.ABORTED,
        reason="CANCELLED" if cancelled else "CHECKPOINT_ABORTED",
    )


def restart_error(
    job: str, outcome: coordinator_pb2.RestartOutcome, step: str
) -> status_pb2.Status:
    """A restart that did not restart, as an operation's error (RESTART_ABORTED or CANCELLED)."""
    cancelled = _cancelled(outcome.reason)
    error = ConflictError(
        f"restart {outcome.restore} of {job} aborted: {outcome.reason}",
        job=job,
        checkpoint=outcome.checkpoint or None,
        host=outcome.failed_host or None,
        rank=outcome.failed_rank if outcome.failed_rank >= 0 and outcome.failed_host else None,
        phase=step or None,
    )
    return rich_status(
        error,
        outcome,
        code=grpc.StatusCode.CANCELLED if cancelled else grpc.StatusCode.ABORTED,
        reason="CANCELLED" if cancelled else "RESTART_ABORTED",
    )
