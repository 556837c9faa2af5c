"""Periodic checkpoints. The decision (coordinator.schedules.decide / next_due) is pure: due or
not, skipped while an operation runs or when no rank runs, one checkpoint for any number of
rounds missed while the coordinator was down, the next round one interval after the last. The
Scheduler carries it out over a real store, starting checkpoints through the callable it is
given, and says what it skipped in its log and on the job's events."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from structlog.testing import capture_logs

from coordinator.job_events import JobEvents
from coordinator.jobs import JobService
from coordinator.registry import AgentRegistry
from coordinator.schedules import (
    UNHEARD_RECHECK,
    Scheduler,
    Skip,
    Take,
    Wait,
    decide,
    next_due,
    schedule_to_proto,
)
from coordinator.store import RankRecord, ScheduleRecord, Store
from crctl.clock import ManualClock
from crctl.errors import ConflictError, NotFoundError
from crctl.v1 import control_pb2, coordinator_pb2

JOB = "ring"
EVERY = 10.0


def schedule(next_at: float, every: float = EVERY) -> ScheduleRecord:
    return ScheduleRecord(JOB, every, 2, False, next_at=next_at)


# --- the decision ---------------------------------------------------------------------------


def test_nothing_is_done_before_the_schedule_is_due() -> None:
    assert decide(schedule(100.0), 99.9, busy=None, running_ranks=True) == Wait(100.0)


def test_a_due_schedule_of_a_running_idle_job_takes_a_checkpoint() -> None:
    assert decide(schedule(100.0), 100.0, busy=None, running_ranks=True) == Take()
    assert decide(schedule(100.0), 130.0, busy=None, running_ranks=True) == Take()


def test_a_due_round_is_skipped_while_a_checkpoint_or_restart_runs_on_the_job() -> None:
    for operation in ("checkpoint ckpt-1", "restart rst-1"):
        assert decide(schedule(100.0), 100.5, busy=operation, running_ranks=True) == Skip(
            f"{operation} of ring is already running"
        )


def test_a_due_round_of_a_job_without_running_ranks_is_skipped() -> None:
    assert decide(schedule(100.0), 100.5, busy=None, running_ranks=False) == Skip(
        "ring has no running rank"
    )


def test_a_due_round_waits_for_hosts_not_heard_since_the_coordinator_started() -> None:
    decision = decide(schedule(100.0), 100.5, busy=None, running_ranks=True, unheard=["h2"])
    assert decision == Wait(100.5 + UNHEARD_RECHECK)


def test_the_next_round_is_one_interval_after_the_last_was_due() -> None:
    assert next_due(schedule(100.0), 100.2) == 110.0  # taken on time: no drift
    assert next_due(schedule(100.0), 109.0) == 110.0  # taken late within the interval


def test_rounds_missed_while_down_give_one_checkpoint_then_the_interval_resumes() -> None:
    missed = schedule(100.0)
    now = 100.0 + 7.5 * EVERY  # seven rounds passed while the coordinator was down
    assert decide(missed, now, busy=None, running_ranks=True) == Take()
    following = ScheduleRecord(JOB, EVERY, 2, False, next_at=next_due(missed, now))
    assert following.next_at == now + EVERY
    assert decide(following, now + 0.1, busy=None, running_ranks=True) == Wait(now + EVERY)


def test_a_skipped_round_also_moves_the_next_one_a_whole_interval_on() -> None:
    due = schedule(100.0)
    assert isinstance(decide(due, 100.1, busy="checkpoint ckpt-1", running_ranks=True), Skip)
    assert next_due(due, 100.1) == 110.0
    assert next_due(due, 125.0) == 135.0  # no catch-up after a long skip either


def test_a_schedule_reads_as_protobuf_with_its_times() -> None:
    record = ScheduleRecord(
        JOB, 2.0, 3, True, 12.0, last_at=11.5, last_checkpoint="c1", last_outcome="committed"
    )
    proto = schedule_to_proto(record)
    assert (proto.job, proto.every_seconds, proto.keep, proto.stop) == (JOB, 2.0, 3, True)
    assert proto.next_at.ToNanoseconds() == 12_000_000_000
    assert proto.last_at.ToNanoseconds() == 11_500_000_000
    assert (proto.last_checkpoint, proto.last_outcome) == ("c1", "committed")
    off = schedule_to_proto(ScheduleRecord(JOB, 0.0, 0, False, 0.0))
    assert off.every_seconds == 0 and not off.HasField("next_at") and not off.HasField("last_at")


# --- the scheduler ---------------------------------------------------------------------------


@dataclass
class FakeRun:
    checkpoint: str
    done: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: coordinator_pb2.CheckpointOutcome | None = None

    def finish(self, committed: bool, reason: str = "") -> None:
        self.outcome = coordinator_pb2.CheckpointOutcome(
            checkpoint=self.checkpoint, committed=committed, reason=reason
        )
        self.done.set()


class Coordinator:
    """A store in memory with a running job on h1, whose agent was heard; checkpoints are
    started by ``start`` (which records the calls, or raises ``refuse``)."""

    def __init__(
        self, store: Store | None = None, clock: ManualClock | None = None, *, hear: bool = True
    ) -> None:
        self.clock = clock or ManualClock()
        self.store = store or Store(":memory:")
        self.registry = AgentRegistry(self.store, self.clock, lost_after=5)
        self.events = JobEvents(self.clock)
        self.jobs = JobService(self.store, self.registry, None, self.clock, self.events)  # type: ignore[arg-type]
        self.published: list[coordinator_pb2.JobEvent] = []
        self.events.listen(self.published.append)
        self.started: list[tuple[str, bool, str]] = []
        self.runs: list[FakeRun] = []
        self.refuse: Exception | None = None
        self.scheduler = Scheduler(
            store=self.store,
            jobs=self.jobs,
            events=self.events,
            clock=self.clock,
            start_checkpoint=self.start,  # type: ignore[arg-type]
        )
        if self.store.job(JOB) is None:
            self.store.add_rank(RankRecord(JOB, 0, "h1", 10, "running", None, ("a",)), 1.0)
        if hear:
            self.heard("h1")

    def heard(self, host: str) -> None:
        self.registry.register(control_pb2.AgentInfo(host=host, addresses=["10.0.0.1"]))

    def start(self, job: str, *, leave_running: bool, requested_by: str) -> FakeRun:
        if self.refuse is not None:
            raise self.refuse
        self.started.append((job, leave_running, requested_by))
        run = FakeRun(f"ckpt-{len(self.runs) + 1}")
        self.runs.append(run)
        return run

    def schedule(self) -> ScheduleRecord:
        found = self.store.schedule(JOB)
        assert found is not None
        return found

    def kinds(self) -> list[str | None]:
        return [e.WhichOneof("event") for e in self.published]


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def test_a_set_schedule_is_due_one_interval_later_and_is_published() -> None:
    async def test() -> None:
        c = Coordinator()
        with capture_logs() as logs:
            record = c.scheduler.set(JOB, every_seconds=EVERY, keep=2, stop=True)
        assert record == ScheduleRecord(JOB, EVERY, 2, True, next_at=c.clock.now() + EVERY)
        assert c.kinds() == ["schedule"]
        assert c.published[0].schedule == schedule_to_proto(record)
        assert c.published[0].job == JOB
        assert [(e["event"], e["job"]) for e in logs] == [("schedule_set", JOB)]
        c.scheduler.tick()
        assert c.started == []  # not due yet
        c.clock.advance(EVERY)
        c.scheduler.tick()
        assert c.started == [(JOB, False, "schedule")]  # stop: not leave-running

    run(test)


def test_a_schedule_of_an_unknown_job_is_refused() -> None:
    async def test() -> None:
        with pytest.raises(NotFoundError, match="unknown job 'nope'"):
            Coordinator().scheduler.set("nope", every_seconds=EVERY, keep=0, stop=False)

    run(test)


def test_switched_off_the_schedule_is_gone_and_the_change_published() -> None:
    async def test() -> None:
        c = Coordinator()
        c.scheduler.set(JOB, every_seconds=EVERY, keep=2, stop=False)
        c.scheduler.set(JOB, every_seconds=0, keep=0, stop=False)
        assert c.store.schedule(JOB) is None
        assert [e.schedule.every_seconds for e in c.published] == [EVERY, 0.0]
        c.clock.advance(EVERY * 3)
        c.scheduler.tick()
        assert c.started == []

    run(test)


def test_a_taken_checkpoints_outcome_is_recorded_when_it_ends() -> None:
    async def test() -> None:
        c = Coordinator()
        c.scheduler.set(JOB, every_seconds=EVERY, keep=2, stop=False)
        due = c.schedule().next_at
        c.clock.advance(EVERY + 0.2)
        c.scheduler.tick()
        assert c.started == [(JOB, True, "schedule")]
        assert c.schedule().next_at == due + EVERY
        c.clock.advance(1.0)
        c.runs[0].finish(committed=True)
        await asyncio.sleep(0)  # the outcome task runs
        await asyncio.sleep(0)
        found = c.schedule()
        assert (found.last_checkpoint, found.last_outcome, found.last_at) == (
            "ckpt-1",
            "committed",
            c.clock.now(),
        )
        c.clock.advance(EVERY)
        c.scheduler.tick()
        c.runs[1].finish(committed=False, reason="deadline passed")
        for _ in range(2):
            await asyncio.sleep(0)
        assert c.schedule().last_checkpoint == "ckpt-2"
        assert c.schedule().last_outcome == "aborted: deadline passed"

    run(test)


def test_a_round_due_while_an_operation_runs_is_skipped_logged_and_published() -> None:
    async def test() -> None:
        c = Coordinator()
        c.scheduler.set(JOB, every_seconds=EVERY, keep=2, stop=False)
        c.jobs.claim(JOB, "restart rst-1")
        c.clock.advance(EVERY)
        with capture_logs() as logs:
            c.scheduler.tick()
        reason = "restart rst-1 of ring is already running"
        assert c.started == []
        assert [(e["event"], e["job"], e["reason"]) for e in logs] == [
            ("schedule_skipped", JOB, reason)
        ]
        assert c.kinds() == ["schedule", "schedule_skipped"]
        assert c.published[-1].schedule_skipped.reason == reason
        found = c.schedule()
        assert found.last_outcome == f"skipped: {reason}"
        assert found.next_at == c.clock.now() + EVERY
        c.scheduler.tick()  # the same moment again: skipped once, not once per tick
        assert c.kinds().count("schedule_skipped") == 1
        c.jobs.release(JOB)
        c.clock.advance(EVERY)
        c.scheduler.tick()
        assert len(c.started) == 1

    run(test)


def test_a_job_without_running_ranks_is_skipped_without_an_error() -> None:
    async def test() -> None:
        c = Coordinator()
        c.scheduler.set(JOB, every_seconds=EVERY, keep=2, stop=False)
        c.store.set_rank_state(JOB, 0, "checkpointed")
        c.clock.advance(EVERY)
        c.scheduler.tick()
        assert c.started == []
        assert c.schedule().last_outcome == "skipped: ring has no running rank"

    run(test)


def test_a_refused_start_counts_as_a_skip() -> None:
    async def test() -> None:
        c = Coordinator()
        c.scheduler.set(JOB, every_seconds=EVERY, keep=2, stop=False)
        c.refuse = ConflictError("checkpoint ckpt-9 of ring is already running; wait for it")
        c.clock.advance(EVERY)
        c.scheduler.tick()
        assert c.schedule().last_outcome == (
            "skipped: checkpoint ckpt-9 of ring is already running; wait for it"
        )
        assert c.schedule().next_at == c.clock.now() + EVERY
        assert c.kinds()[-1] == "schedule_skipped"

    run(test)


def test_a_restarted_coordinator_takes_a_missed_checkpoint_once_then_resumes_the_interval(
    tmp_path: Any,
) -> None:
    async def test() -> None:
        path = tmp_path / "coordinator.db"
        first = Coordinator(Store(path))
        first.scheduler.set(JOB, every_seconds=EVERY, keep=2, stop=False)
        first.store.close()
        clock = first.clock
        clock.advance(EVERY * 5.5)  # down for five rounds and a half
        again = Coordinator(Store(path), clock)
        again.scheduler.tick()
        again.scheduler.tick()
        assert again.started == [(JOB, True, "schedule")]  # one, at once
        assert again.schedule().next_at == clock.now() + EVERY
        clock.advance(EVERY)
        again.runs[0].finish(committed=True)
        again.scheduler.tick()
        assert len(again.started) == 2
        again.store.close()

    run(test)


def test_after_a_restart_a_round_waits_for_the_jobs_hosts_to_be_heard(tmp_path: Any) -> None:
    """The agents' records say alive, but an agent may not have reconnected yet: a due round
    waits for each host of the job to be heard from, then takes its checkpoint."""

    async def test() -> None:
        path = tmp_path / "coordinator.db"
        first = Coordinator(Store(path))
        first.scheduler.set(JOB, every_seconds=EVERY, keep=2, stop=False)
        first.store.close()
        clock = first.clock
        clock.advance(EVERY * 2)
        again = Coordinator(Store(path), clock, hear=False)
        assert again.scheduler.tick() <= clock.now() + UNHEARD_RECHECK
        assert again.started == []
        assert again.schedule().last_outcome == ""  # waiting is no skip
        clock.advance(0.5)
        again.registry.heartbeat("h1")
        again.scheduler.tick()
        assert again.started == [(JOB, True, "schedule")]
        again.store.close()

    run(test)
