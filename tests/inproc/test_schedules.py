"""Periodic checkpoints with the real coordinator services and agents in one process (fake
CRIU, in-memory wire, virtual time): a schedule takes its checkpoints at its interval, skips a
round while another checkpoint or a restart runs, keeps the newest N besides pinned ones, and
survives the coordinator's death (one checkpoint for the rounds missed, then the interval)."""

from __future__ import annotations

import asyncio

from coordinator.store import CheckpointRecord, ScheduleRecord
from tests.inproc.cluster import HEARTBEAT, Cluster, LoopClock, cluster_test

JOB = "ring"
HOSTS = ["h1", "h2", "h3"]
EVERY = 5.0


def committed(cluster: Cluster) -> list[CheckpointRecord]:
    """The job's committed checkpoints, oldest first."""
    records = cluster.service.checkpoints.list(JOB)
    return sorted((c for c in records if c.state == "committed"), key=lambda c: c.started_at)


def schedule(cluster: Cluster) -> ScheduleRecord:
    found = cluster.service.schedules.get(JOB)
    assert found is not None
    return found


@cluster_test()
async def test_a_schedule_takes_a_checkpoint_every_interval_and_keeps_the_newest(
    cluster: Cluster,
) -> None:
    await cluster.launch(JOB, HOSTS)
    cluster.service.schedules.set(JOB, every_seconds=EVERY, keep=2, stop=False)
    set_at = cluster.service.checkpoints._clock.now()
    await asyncio.sleep(4 * EVERY + 1.0)  # four rounds
    kept = committed(cluster)
    assert len(kept) == 2, "retention keeps the schedule's two newest"
    every = [c.started_at - set_at for c in kept]
    assert [round(t) for t in every] == [3 * EVERY, 4 * EVERY]
    assert all(abs(t - round(t)) < 0.3 for t in every), every  # within a tick of the interval
    assert sorted(cluster.running(JOB)) == [0, 1, 2], "leave-running: the job runs on"
    last = schedule(cluster)
    assert (last.last_checkpoint, last.last_outcome) == (kept[-1].checkpoint, "committed")
    cluster.service.schedules.set(JOB, every_seconds=0, keep=0, stop=False)
    await asyncio.sleep(3 * EVERY)
    assert committed(cluster)[-1].checkpoint == kept[-1].checkpoint, "off: no more"


@cluster_test()
async def test_a_round_due_while_another_checkpoint_runs_is_skipped(cluster: Cluster) -> None:
    await cluster.launch(JOB, HOSTS)
    cluster.network.fault("to_agent", "prepare", "delay", host="h2", delay=2 * EVERY - 1)
    manual = await cluster.start_checkpoint(JOB, leave_running=True)  # lasts past a round
    cluster.service.schedules.set(JOB, every_seconds=EVERY, keep=0, stop=False)
    await cluster.until(lambda: schedule(cluster).last_outcome.startswith("skipped"), "a skip")
    assert schedule(cluster).last_outcome == (
        f"skipped: checkpoint {manual.checkpoint} of ring is already running"
    )
    await manual.done.wait()
    assert manual.outcome is not None and manual.outcome.committed, manual.outcome
    await cluster.until(lambda: schedule(cluster).last_outcome == "committed", "the next round")
    assert committed(cluster)[0].checkpoint == manual.checkpoint
    assert len(committed(cluster)) == 2


@cluster_test()
async def test_a_round_due_while_a_restart_runs_is_skipped_and_stop_mode_rounds_stop_the_job(
    cluster: Cluster,
) -> None:
    await cluster.launch(JOB, HOSTS)
    first = await cluster.checkpoint(JOB)  # stop mode: the job stops, to restart
    assert first.committed, first.reason
    cluster.service.schedules.set(JOB, every_seconds=EVERY, keep=0, stop=True)
    await asyncio.sleep(EVERY + 0.5)
    assert schedule(cluster).last_outcome == "skipped: ring has no running rank"
    cluster.network.fault("to_agent", "prepare_restore", "delay", delay=EVERY + 1, times=3)
    restarted = asyncio.ensure_future(cluster.restart(JOB))
    await cluster.until(
        lambda: "restart" in schedule(cluster).last_outcome, "a skip for the restart", timeout=30
    )
    assert schedule(cluster).last_outcome.endswith("of ring is already running")
    outcome = await restarted
    assert outcome.restarted, outcome.reason
    await cluster.until(lambda: schedule(cluster).last_outcome == "committed", "the next round")
    await cluster.until(lambda: not cluster.running(JOB), "the stop-mode checkpoint's stop")
    assert [r.state for r in cluster.job(JOB).ranks] == ["checkpointed"] * 3


@cluster_test()
async def test_retention_keeps_the_newest_n_and_every_pinned_checkpoint(cluster: Cluster) -> None:
    await cluster.launch(JOB, HOSTS)
    cluster.service.schedules.set(JOB, every_seconds=EVERY, keep=2, stop=False)
    await cluster.until(lambda: committed(cluster), "the first scheduled checkpoint")
    pinned = committed(cluster)[0].checkpoint
    cluster.service.checkpoints.pin(JOB, pinned, True)
    await asyncio.sleep(5 * EVERY)
    kept = committed(cluster)
    assert kept[0].checkpoint == pinned and kept[0].pinned
    assert len(kept) == 3, [c.checkpoint for c in kept]  # the pin besides the two newest
    assert schedule(cluster).last_checkpoint == kept[-1].checkpoint


@cluster_test()
async def test_a_restarted_coordinator_takes_the_missed_checkpoint_once_then_keeps_the_interval(
    cluster: Cluster,
) -> None:
    await cluster.launch(JOB, HOSTS)
    cluster.service.schedules.set(JOB, every_seconds=EVERY, keep=10, stop=False)
    await cluster.until(lambda: committed(cluster), "the first scheduled checkpoint")
    await cluster.kill_coordinator()
    await asyncio.sleep(4 * EVERY)  # three or four rounds missed
    back = LoopClock().now()
    await cluster.start_coordinator()
    await cluster.until(lambda: len(committed(cluster)) == 2, "the missed round taken")
    missed = committed(cluster)[-1]
    # at once (once the agents are heard from again: they heartbeat every HEARTBEAT seconds)
    assert missed.started_at - back < 3 * HEARTBEAT, "taken right at start"
    await asyncio.sleep(EVERY / 2)
    assert len(committed(cluster)) == 2, "one checkpoint for all the rounds missed"
    await cluster.until(lambda: len(committed(cluster)) == 3, "the next round", timeout=EVERY)
    gap = committed(cluster)[-1].started_at - missed.started_at
    assert abs(gap - EVERY) < 0.5, gap
