"""Periodic checkpoints on the real testbed: the coordinator checkpoints a running 3-host ring
by itself at the schedule's interval, keeps the schedule's newest N and leaves the ring
running; a coordinator killed and started again finds its schedule and takes the checkpoint
that fell due while it was down once, at start, then keeps the interval."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from testbed import bed
from testbed.ringjob import RingJob

from .conftest import coordinator_log
from .helpers import crctl, crctl_json, kill_daemon, running_ring, wait_for

HOSTS = ["h1", "h2", "h3"]


@pytest.fixture
def ring(testbed3: bed.State, request: pytest.FixtureRequest) -> Iterator[RingJob]:
    yield from running_ring(testbed3, request, HOSTS)


@pytest.fixture
def scheduled(ring: RingJob) -> Iterator[RingJob]:
    """The ring, its schedule switched off afterwards (before the ring is killed)."""
    try:
        yield ring
    finally:
        wait_for(
            lambda: crctl("schedule", ring.job, "--off", check=False).returncode == 0,
            timeout=20,
            what="the schedule switched off",
        )


def seconds(stamp: str) -> float:
    """A protobuf JSON timestamp ("2025-01-01T12:00:00.123456789Z") as seconds."""
    parsed = Timestamp()
    parsed.FromJsonString(stamp)
    return parsed.ToNanoseconds() / 1e9


def listed(job: str) -> list[dict[str, Any]]:
    """The job's checkpoints, newest first."""
    return list(crctl_json("checkpoints", job))


def committed(job: str) -> list[dict[str, Any]]:
    return [c for c in listed(job) if c["state"] == "committed"]


def none_preparing(job: str) -> bool:
    return all(c["state"] != "preparing" for c in listed(job))


def scheduled_outcomes(state: bed.State, job: str) -> list[tuple[str, str]]:
    """(checkpoint, outcome) of every scheduled checkpoint of ``job`` that finished, in order,
    from the coordinator's log."""
    found = []
    for line in coordinator_log(state).splitlines():
        if '"schedule_checkpoint_finished"' not in line:
            continue
        event = json.loads(line)
        if event.get("job") == job:
            found.append((event["checkpoint"], event["outcome"]))
    return found


def test_a_schedule_of_2s_keeping_2_leaves_the_two_newest_and_the_ring_running(
    testbed3: bed.State, scheduled: RingJob
) -> None:
    ring = scheduled
    result = crctl("schedule", ring.job, "--every", "2s", "--keep", "2")
    assert result.stdout.startswith(f"{ring.job}: every 2s, keeping 2, leave-running; next ")
    assert "schedule: every 2s, keeping 2, leave-running" in crctl("status", ring.job).stdout
    time.sleep(9)

    def newest_two_kept() -> tuple[list[str], list[str]] | None:
        """(the scheduled commits so far, the committed checkpoints listed) when no round is
        under way and the list holds exactly the two newest; None otherwise."""
        records = listed(ring.job)
        taken = [c for c, result in scheduled_outcomes(testbed3, ring.job) if result == "committed"]
        good = [c for c in records if c["state"] == "committed"]
        if any(c["state"] == "preparing" for c in records) or not (good and good[0]["latest"]):
            return None
        kept = [c["checkpoint"] for c in good]
        return (taken, kept) if kept == list(reversed(taken[-2:])) else None

    taken, kept = wait_for(newest_two_kept, timeout=10, what="exactly the two newest kept")
    assert len(taken) >= 3, f"every 2 s for 9 s: expected about 4 commits, got {taken}"
    assert len(kept) == 2
    status = crctl_json("status", ring.job)
    assert status["schedule"]["keep"] == 2
    assert [r["state"] for r in status["ranks"]] == ["running"] * 3
    ring.wait_for_progress(tokens=20)
    assert ring.errors() == []
    crctl("schedule", ring.job, "--off")
    assert "schedule" not in crctl_json("status", ring.job), "switched off"


def test_a_schedule_survives_a_coordinator_restart_and_takes_the_missed_checkpoint_once(
    testbed3: bed.State, scheduled: RingJob
) -> None:
    ring = scheduled
    every = 5.0
    crctl("schedule", ring.job, "--every", "5s", "--keep", "10")
    # killed just after a round committed: the next is seconds away, none is under way
    wait_for(
        lambda: crctl_json("status", ring.job)["schedule"]["last_outcome"] == "committed",
        timeout=every + 15,
        what="the first scheduled checkpoint",
        interval=0.05,
    )
    assert kill_daemon(bed.COORDINATOR)
    time.sleep(2.5 * every)  # two rounds fall due while it is down
    restarted_at = time.time()
    crctl("testbed", "start", bed.COORDINATOR)
    wait_for(
        lambda: crctl("agents", check=False).returncode == 0, timeout=10, what="coordinator back"
    )
    back_at = time.time()
    schedule = crctl_json("status", ring.job)["schedule"]
    assert (schedule["every_seconds"], schedule["keep"], schedule["stop"]) == (5.0, 10, False)

    def since_restart() -> list[dict[str, Any]]:
        """Checkpoints started since the restart, oldest first."""
        return sorted(
            (c for c in listed(ring.job) if seconds(c["started_at"]) >= restarted_at),
            key=lambda c: seconds(c["started_at"]),
        )

    wait_for(lambda: len(since_restart()) >= 2, timeout=every + 15, what="two rounds after")
    missed, following = since_restart()[:2]
    started = seconds(missed["started_at"])
    # at start, once the agents are heard from again (they re-register within seconds), not
    # an interval later
    assert started < back_at + every, f"the missed round started {started - back_at:.2f}s late"
    gap = seconds(following["started_at"]) - started
    assert every - 0.5 < gap < every + 1.0, f"one checkpoint for the rounds missed: gap {gap}s"
    wait_for(lambda: none_preparing(ring.job), timeout=20, what="the rounds to finish")
    states = {c["checkpoint"]: c["state"] for c in listed(ring.job)}
    assert states[missed["checkpoint"]] == "committed", missed
    before = [c for c in committed(ring.job) if seconds(c["started_at"]) < restarted_at]
    assert before, "keep 10: the checkpoint taken before the restart stays"
    status = crctl_json("status", ring.job)
    assert [r["state"] for r in status["ranks"]] == ["running"] * 3
    ring.wait_for_progress(tokens=20)
    assert ring.errors() == []
