"""Periodic checkpoints: a job's schedule (every N seconds, keeping its newest K) carried out by
the coordinator itself.

The decision is pure (``decide``, ``next_due``): a schedule record, the time, and what the job
is doing in, a ``Take``, ``Skip`` or ``Wait`` out. The ``Scheduler`` reads the durable records
(coordinator.store), asks ``decide`` about each, and carries out the answer: a checkpoint
started through an injected ``start_checkpoint``, or a skip logged and published on the job's
events. The schedules live in the database only, so a coordinator started again finds them,
and a checkpoint that fell due while it was down is simply due: taken once, then the interval
resumes from then."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from coordinator.checkpoints import CheckpointRun
from coordinator.job_events import JobEvents
from coordinator.jobs import JobService
from coordinator.registry import ALIVE
from coordinator.store import ScheduleRecord, Store
from crctl.clock import Clock
from crctl.errors import CrctlError
from crctl.v1 import coordinator_pb2

log = structlog.get_logger()

TICK = 0.25  # seconds: the longest the scheduler sleeps before looking again
REQUESTED_BY = "schedule"


# --- the decision (pure) ----------------------------------------------------------------------


@dataclass(frozen=True)
class Take:
    """Start the checkpoint now."""


@dataclass(frozen=True)
class Skip:
    """Not this round (the next one is due an interval later)."""

    reason: str


@dataclass(frozen=True)
class Wait:
    """Nothing to do before ``until``."""

    until: float


Decision = Take | Skip | Wait
UNHEARD_RECHECK = 0.25  # seconds between looks while a host has not been heard since start


def decide(
    schedule: ScheduleRecord,
    now: float,
    *,
    busy: str | None,
    running_ranks: bool,
    unheard: Sequence[str] = (),
) -> Decision:
    """What to do about ``schedule`` at ``now``. ``busy``: the operation running on the job (a
    checkpoint or restart), if any; ``running_ranks``: whether it has any; ``unheard``: hosts
    of its running ranks whose agent the coordinator has not heard from since it started (it
    may not be connected yet: the checkpoint waits for it rather than failing to reach it)."""
    if now < schedule.next_at:
        return Wait(schedule.next_at)
    if busy:
        return Skip(f"{busy} of {schedule.job} is already running")
    if not running_ranks:
        return Skip(f"{schedule.job} has no running rank")
    if unheard:
        return Wait(now + UNHEARD_RECHECK)
    return Take()


def next_due(schedule: ScheduleRecord, now: float) -> float:
    """When the round after the one done at ``now`` is due: an interval after this one was due,
    or an interval from ``now`` if that has passed too (no catch-up: however many rounds were
    missed, one is done and the interval resumes)."""
    following = schedule.next_at + schedule.every_seconds
    return following if following > now else now + schedule.every_seconds


# --- protobuf ---------------------------------------------------------------------------------


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def schedule_to_proto(record: ScheduleRecord) -> coordinator_pb2.Schedule:
    proto = coordinator_pb2.Schedule(
        job=record.job,
        every_seconds=record.every_seconds,
        keep=record.keep,
        stop=record.stop,
        last_checkpoint=record.last_checkpoint,
        last_outcome=record.last_outcome,
    )
    if record.every_seconds > 0:
        proto.next_at.CopyFrom(_timestamp(record.next_at))
    if record.last_at is not None:
        proto.last_at.CopyFrom(_timestamp(record.last_at))
    return proto


# --- carrying it out --------------------------------------------------------------------------


class StartCheckpoint(Protocol):
    """Starts a checkpoint of ``job`` (ConflictError if an operation runs on it)."""

    def __call__(self, job: str, *, leave_running: bool, requested_by: str) -> CheckpointRun: ...


class Scheduler:
    def __init__(
        self,
        *,
        store: Store,
        jobs: JobService,
        events: JobEvents,
        clock: Clock,
        start_checkpoint: StartCheckpoint,
    ) -> None:
        self._store = store
        self._jobs = jobs
        self._events = events
        self._clock = clock
        self._start_checkpoint = start_checkpoint
        self._started = clock.now()
        self._wake = asyncio.Event()
        self._outcomes: set[asyncio.Task[None]] = set()

    # --- the API's calls ---

    def get(self, job: str) -> ScheduleRecord | None:
        return self._store.schedule(job)

    def set(self, job: str, *, every_seconds: float, keep: int, stop: bool) -> ScheduleRecord:
        """Set, change (the next checkpoint is due one new interval from now; what the last
        round did is kept) or, with ``every_seconds`` 0, switch off the job's schedule."""
        self._jobs.get(job)
        bound = log.bind(job=job)
        if every_seconds == 0:
            self._store.remove_schedule(job)
            record = ScheduleRecord(job=job, every_seconds=0.0, keep=0, stop=False, next_at=0.0)
            bound.info("schedule_off")
        else:
            self._store.set_schedule(
                ScheduleRecord(
                    job=job,
                    every_seconds=every_seconds,
                    keep=keep,
                    stop=stop,
                    next_at=self._clock.now() + every_seconds,
                )
            )
            found = self._store.schedule(job)
            assert found is not None  # just written
            record = found
            bound.info("schedule_set", every_seconds=every_seconds, keep=keep, stop=stop)
        event = coordinator_pb2.JobEvent()
        event.schedule.CopyFrom(schedule_to_proto(record))
        self._events.publish(job, event)
        self._wake.set()
        return record

    # --- the loop ---

    async def run(self) -> None:
        """Look at the schedules every TICK (sooner when one is set), for ever."""
        while True:
            until = self.tick()
            delay = min(TICK, max(0.0, until - self._clock.now()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def tick(self) -> float:
        """One round over every schedule; the earliest time one may be due next."""
        now = self._clock.now()
        earliest = now + TICK
        for schedule in self._store.schedules():
            try:
                decision = self._decide(schedule, now)
                match decision:
                    case Wait(until=until):
                        earliest = min(earliest, until)
                    case Skip(reason=reason):
                        self._skip(schedule, now, reason)
                    case Take():
                        self._take(schedule, now)
            except Exception as exc:  # a bug in one round must not stop every schedule
                log.exception("schedule_round_failed", job=schedule.job)
                self._skip(schedule, now, f"coordinator error: {exc!r}")
        return earliest

    def _decide(self, schedule: ScheduleRecord, now: float) -> Decision:
        record = self._jobs.find(schedule.job)
        running = [r for r in record.ranks if r.state == "running"] if record else []
        unheard = []
        for host in sorted({r.host for r in running}):
            agent = self._jobs.agent(host)
            if agent is not None and agent.state == ALIVE and agent.last_heartbeat < self._started:
                unheard.append(host)
        return decide(
            schedule,
            now,
            busy=self._jobs.busy(schedule.job),
            running_ranks=bool(running),
            unheard=unheard,
        )

    def _skip(self, schedule: ScheduleRecord, now: float, reason: str) -> None:
        self._store.schedule_outcome(
            schedule.job, at=now, outcome=f"skipped: {reason}", next_at=next_due(schedule, now)
        )
        log.info("schedule_skipped", job=schedule.job, reason=reason)
        event = coordinator_pb2.JobEvent()
        event.schedule_skipped.reason = reason
        self._events.publish(schedule.job, event)

    def _take(self, schedule: ScheduleRecord, now: float) -> None:
        try:
            run = self._start_checkpoint(
                schedule.job, leave_running=not schedule.stop, requested_by=REQUESTED_BY
            )
        except CrctlError as exc:  # e.g. a checkpoint someone started meanwhile; an agent lost
            self._skip(schedule, now, exc.message)
            return
        self._store.schedule_next(schedule.job, next_due(schedule, now))
        log.info("schedule_checkpoint_started", job=schedule.job, checkpoint=run.checkpoint)
        task = asyncio.create_task(
            self._record_outcome(schedule.job, run), name=f"schedule-{run.checkpoint}"
        )
        self._outcomes.add(task)
        task.add_done_callback(self._outcomes.discard)

    async def _record_outcome(self, job: str, run: CheckpointRun) -> None:
        await run.done.wait()
        outcome = run.outcome
        if outcome is not None and outcome.committed:
            text = "committed"
        else:
            text = f"aborted: {outcome.reason if outcome is not None else 'no outcome'}"
        self._store.schedule_outcome(
            job, at=self._clock.now(), outcome=text, checkpoint=run.checkpoint
        )
        log.info("schedule_checkpoint_finished", job=job, checkpoint=run.checkpoint, outcome=text)
