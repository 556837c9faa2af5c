"""The checkpoint protocol with the real coordinator services and real agent order handling in
one process (fake CRIU, in-memory wire, virtual time): commits, aborts, lost messages, dead
coordinators and agents at every step. The invariants: a committed checkpoint is never lost,
no rank stays frozen, and the job always either runs or can restart from its latest commit."""

from __future__ import annotations

import asyncio

from tests.inproc import dropped
from tests.inproc.cluster import COMMIT_TIMEOUT, LOST_AFTER, PREPARE_TIMEOUT, Cluster, cluster_test

JOB = "ring"
HOSTS = ["h1", "h2", "h3"]


async def killed_after_the_commit_record(cluster: Cluster) -> str:
    """A stop-mode checkpoint whose coordinator dies once the commit is durable, before any
    agent heard it (every commit order is lost); the checkpoint."""
    await cluster.launch(JOB, HOSTS)
    for host in HOSTS:
        cluster.network.fault("to_agent", "commit", "drop", host=host)
    run = await cluster.start_checkpoint(JOB)
    store = cluster.service.checkpoints._store
    await cluster.until(
        lambda: (r := store.checkpoint(run.checkpoint)) is not None and r.state == "committed",
        "the commit recorded",
    )
    await cluster.kill_coordinator()
    return run.checkpoint


@cluster_test()
async def test_a_stop_mode_checkpoint_commits_and_stops_every_rank(cluster: Cluster) -> None:
    await cluster.launch(JOB, HOSTS)
    outcome = await cluster.checkpoint(JOB)
    assert outcome.committed, outcome.reason
    job = cluster.job(JOB)
    assert job.latest_checkpoint == outcome.checkpoint
    assert [r.state for r in job.ranks] == ["checkpointed"] * 3
    assert cluster.running(JOB) == {}
    assert cluster.images_kept(outcome.checkpoint)


@cluster_test()
async def test_a_leave_running_checkpoint_commits_and_the_ranks_run_on(cluster: Cluster) -> None:
    await cluster.launch(JOB, HOSTS)
    outcome = await cluster.checkpoint(JOB, leave_running=True)
    assert outcome.committed, outcome.reason
    assert sorted(cluster.running(JOB)) == [0, 1, 2]
    assert cluster.images_kept(outcome.checkpoint)


@cluster_test()
async def test_a_host_that_never_hears_the_commit_resumes_keeps_its_images_and_stops_later(
    cluster: Cluster,
) -> None:
    """Stop mode: the commit is recorded before any agent hears it. h2 hears nothing of it:
    its hold ends, its rank resumes, but its images stay (it voted yes: it is in doubt). Once
    orders reach it again, the decision its heartbeats ask for arrives and h2 stops its rank;
    the checkpoint restarts."""
    assert await dropped.commit_dropped(cluster) == "committed, restarted"


@cluster_test()
async def test_a_coordinator_killed_between_the_commit_record_and_the_orders_loses_nothing(
    cluster: Cluster,
) -> None:
    checkpoint = await killed_after_the_commit_record(cluster)
    # Past every hold: the ranks resume (no coordinator to tell them), the images stay.
    await asyncio.sleep(PREPARE_TIMEOUT + COMMIT_TIMEOUT + 10)
    assert sorted(cluster.running(JOB)) == [0, 1, 2], "no rank stays frozen"
    cluster.network.faults.clear()
    await cluster.start_coordinator()
    await cluster.until(lambda: not cluster.live(JOB), "the commit delivered and applied")
    assert cluster.images_kept(checkpoint)
    job = cluster.job(JOB)
    assert job.latest_checkpoint == checkpoint
    assert [r.state for r in job.ranks] == ["checkpointed"] * 3
    restarted = await cluster.restart(JOB)
    assert restarted.restarted, restarted.reason
    assert sorted(cluster.running(JOB)) == [0, 1, 2]


@cluster_test()
async def test_a_coordinator_back_within_the_hold_commits_the_held_ranks(cluster: Cluster) -> None:
    checkpoint = await killed_after_the_commit_record(cluster)
    cluster.network.faults.clear()
    started = asyncio.get_running_loop().time()
    await cluster.start_coordinator()
    await cluster.until(lambda: not cluster.live(JOB), "the held ranks committed")
    took = asyncio.get_running_loop().time() - started
    assert took < PREPARE_TIMEOUT, "committed at the coordinator's return, not after the hold"
    assert cluster.images_kept(checkpoint)


@cluster_test()
async def test_a_lost_agent_aborts_a_checkpoint_before_its_deadline(cluster: Cluster) -> None:
    await cluster.launch(JOB, HOSTS)
    first = await cluster.checkpoint(JOB, leave_running=True)
    cluster.fake["h3"].faults["dump"] = "hang"
    started = asyncio.get_running_loop().time()
    run = await cluster.start_checkpoint(JOB, leave_running=True, timeout=60.0)
    await asyncio.sleep(0.5)
    cluster.network.cut.add("h3")  # silent from now on
    await run.done.wait()
    took = asyncio.get_running_loop().time() - started
    assert run.outcome is not None and not run.outcome.committed
    assert "h3" in run.outcome.reason
    assert took < LOST_AFTER + 3, f"aborted after {took:.1f}s, not at the agent's loss"
    assert cluster.job(JOB).latest_checkpoint == first.checkpoint
    assert sorted(n for n in cluster.running(JOB) if n != 2) == [0, 1]
    cluster.network.cut.clear()
    del cluster.fake["h3"].faults["dump"]


@cluster_test()
async def test_a_failure_to_record_the_commit_aborts_and_the_ranks_run_on(cluster: Cluster) -> None:
    await cluster.launch(JOB, HOSTS)
    first = await cluster.checkpoint(JOB, leave_running=True)
    files = cluster.service.checkpoints._files

    def full(*_: object) -> str:
        raise OSError(28, "No space left on device")

    files.write_manifest = full
    outcome = await cluster.checkpoint(JOB)
    assert not outcome.committed
    assert "No space left" in outcome.reason
    assert cluster.job(JOB).latest_checkpoint == first.checkpoint
    await cluster.until(lambda: sorted(cluster.running(JOB)) == [0, 1, 2], "the ranks resumed")
    assert [r.state for r in cluster.job(JOB).ranks] == ["running"] * 3


@cluster_test()
async def test_a_lost_abort_order_leaves_the_host_running_and_it_hears_the_abort_later(
    cluster: Cluster,
) -> None:
    assert await dropped.abort_dropped(cluster) == "aborted, ran on"
