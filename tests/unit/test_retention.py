"""Retention after a commit (CheckpointRun._apply_retention against a real store and checkpoint
folders): the job's schedule's keep overrides the coordinator's retain, read when the run
finishes; pinned checkpoints always stay and do not count among the kept; pins themselves
(CheckpointService.pin) are for committed checkpoints of the job named."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.checkpoints import CheckpointRun, CheckpointService, CheckpointSettings
from coordinator.job_events import JobEvents
from coordinator.jobs import JobService
from coordinator.registry import AgentRegistry
from coordinator.storage import CheckpointStore
from coordinator.store import CheckpointRecord, RankRecord, ScheduleRecord, Store
from crctl.clock import ManualClock
from crctl.errors import ConflictError, NotFoundError

JOB = "ring"
RETAIN = 3


class Job:
    def __init__(self, root: Path) -> None:
        self.clock = ManualClock()
        self.store = Store(":memory:")
        self.files = CheckpointStore(root / "checkpoints")
        self.settings = CheckpointSettings(prepare_timeout=10, commit_timeout=5, retain=RETAIN)
        self.store.add_rank(RankRecord(JOB, 0, "h1", 100, "running", None, ("ring",)), 1.0)
        self.records: dict[str, CheckpointRecord] = {}
        self.jobs = JobService(
            self.store,
            AgentRegistry(self.store, self.clock, lost_after=5),
            None,  # type: ignore[arg-type]
            self.clock,
            JobEvents(self.clock),
        )
        self.service = CheckpointService(
            store=self.store,
            jobs=self.jobs,
            plane=None,  # type: ignore[arg-type]
            files=self.files,
            clock=self.clock,
            settings=self.settings,
        )

    def commit(self, count: int) -> list[str]:
        """``count`` more committed checkpoints, oldest first, each with its folder."""
        names = []
        for _ in range(count):
            number = len(self.records) + 1
            name = f"ckpt-{number:02}"
            directory = self.files.create(JOB, name)
            record = CheckpointRecord(
                name,
                JOB,
                None,
                "preparing",
                True,
                str(directory),
                float(number),
                None,
                "",
                "",
                None,
            )
            self.store.begin_checkpoint(record)
            self.store.commit_checkpoint(name, JOB, "{}", number + 0.5, ranks_stop=False)
            self.records[name] = record
            names.append(name)
        return names

    def retire_after(self, name: str) -> None:
        """Retention as the run of ``name`` applies it when it commits."""
        run = CheckpointRun(
            record=self.records[name],
            ranks_by_host={"h1": [0]},
            job_addresses=[],
            external="refuse",
            settings=self.settings,
            plane=None,  # type: ignore[arg-type]
            store=self.store,
            files=self.files,
            clock=self.clock,
        )
        run._apply_retention()

    def kept(self) -> list[str]:
        names = sorted(c.checkpoint for c in self.store.checkpoints(JOB, manifests=False))
        for name in self.records:  # a retired checkpoint's folder goes with its record
            assert self.files.directory(JOB, name).exists() == (name in names), name
        return names


@pytest.fixture
def job(tmp_path: Path) -> Job:
    return Job(tmp_path)


def test_without_a_schedule_the_coordinators_retain_newest_stay(job: Job) -> None:
    names = job.commit(5)
    job.retire_after(names[-1])
    assert job.kept() == names[-RETAIN:]


def test_a_schedules_keep_overrides_retain_even_one_set_during_the_run(job: Job) -> None:
    names = job.commit(5)
    job.store.set_schedule(ScheduleRecord(JOB, 60.0, 2, False, next_at=0.0))
    job.retire_after(names[-1])
    assert job.kept() == names[-2:]


def test_a_schedule_with_keep_0_uses_the_coordinators_retain(job: Job) -> None:
    names = job.commit(5)
    job.store.set_schedule(ScheduleRecord(JOB, 60.0, 0, False, next_at=0.0))
    job.retire_after(names[-1])
    assert job.kept() == names[-RETAIN:]


def test_a_pinned_checkpoint_stays_and_is_not_counted_among_the_kept(job: Job) -> None:
    names = job.commit(6)
    job.store.set_schedule(ScheduleRecord(JOB, 60.0, 2, False, next_at=0.0))
    job.store.pin_checkpoint(names[0], True)  # the oldest
    job.store.pin_checkpoint(names[-1], True)  # the newest: the two kept are older ones
    job.retire_after(names[-1])
    assert job.kept() == [names[0], names[-3], names[-2], names[-1]]


def test_a_pinned_damaged_checkpoint_older_than_the_kept_stays(job: Job) -> None:
    names = job.commit(4)
    job.store.mark_damaged(names[0], "rank-0/pages-1.img: missing")
    job.store.mark_damaged(names[1], "rank-0/pages-1.img: missing")
    job.store.pin_checkpoint(names[0], True)
    job.store.set_schedule(ScheduleRecord(JOB, 60.0, 1, False, next_at=0.0))
    job.retire_after(names[-1])
    assert job.kept() == [names[0], names[-1]]


def test_pin_and_unpin_a_committed_checkpoint(job: Job) -> None:
    (name,) = job.commit(1)
    assert job.service.pin(JOB, name, True).pinned is True
    assert job.service.pin(JOB, name, False).pinned is False


def test_pinning_what_is_not_a_committed_checkpoint_of_the_job_is_refused(job: Job) -> None:
    (name,) = job.commit(1)
    with pytest.raises(NotFoundError, match="job ring has no checkpoint ckpt-99"):
        job.service.pin(JOB, "ckpt-99", True)
    job.store.add_rank(RankRecord("other", 0, "h1", 100, "running", None, ("x",)), 1.0)
    with pytest.raises(NotFoundError, match=f"job other has no checkpoint {name}"):
        job.service.pin("other", name, True)
    with pytest.raises(NotFoundError, match="unknown job 'nope'"):
        job.service.pin("nope", name, True)
    aborted = CheckpointRecord(
        "ckpt-ab", JOB, None, "preparing", True, "/x", 9.0, None, "", "", None
    )
    job.store.begin_checkpoint(aborted)
    job.store.abort_checkpoint("ckpt-ab", "deadline", "h1", 10.0)
    with pytest.raises(
        ConflictError, match="ckpt-ab is aborted, not committed: there is nothing to pin"
    ):
        job.service.pin(JOB, "ckpt-ab", True)
    assert job.service.pin(JOB, "ckpt-ab", False).pinned is False  # unpinning is always fine
