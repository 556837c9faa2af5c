"""Lost decisions, for the in-process tests and the fault matrix (bench/faults.py): a commit or
an abort order that never reaches one host. Each scenario checks the invariants itself and
returns what became of the job."""

from __future__ import annotations

from tests.inproc.cluster import Cluster

JOB = "ring"
HOSTS = ["h1", "h2", "h3"]


async def commit_dropped(cluster: Cluster) -> str:
    """Stop mode: every commit order to h2 is lost until h2 is in doubt (its hold ended: rank
    resumed, images kept); then orders get through again and its heartbeat fetches the
    decision."""
    await cluster.launch(JOB, HOSTS)
    lost = cluster.network.fault("to_agent", "commit", "drop", host="h2", times=10_000)
    outcome = await cluster.checkpoint(JOB)
    assert outcome.committed, outcome.reason
    participant = cluster.agents["h2"]._orders.checkpoints
    await cluster.until(lambda: participant.in_doubt() == [outcome.checkpoint], "h2 in doubt")
    assert sorted(cluster.running(JOB)) == [1], "h2's rank resumed at the end of its hold"
    assert cluster.images_kept(outcome.checkpoint), "an in-doubt host keeps its images"
    await cluster.until(
        lambda: cluster.service.awaiting_decision(JOB) == [(outcome.checkpoint, "h2", "committed")],
        "the job's status naming h2",
    )
    lost.times = 0
    await cluster.until(lambda: not cluster.live(JOB), "h2's rank stopped by the decision")
    assert participant.awaiting() == []
    assert cluster.images_kept(outcome.checkpoint)
    assert cluster.job(JOB).latest_checkpoint == outcome.checkpoint
    restarted = await cluster.restart(JOB, host_map={"h1": "h2", "h2": "h3", "h3": "h1"})
    assert restarted.restarted, restarted.reason
    assert sorted(cluster.running(JOB)) == [0, 1, 2]
    return "committed, restarted"


async def abort_dropped(cluster: Cluster) -> str:
    """h3's dump fails, so the checkpoint aborts; the abort order to h1 is lost: h1's hold
    ends, its rank resumes; it asks and hears the abort, and removes its images."""
    await cluster.launch(JOB, HOSTS)
    first = await cluster.checkpoint(JOB, leave_running=True)
    cluster.fake["h3"].faults["dump"] = "error"
    cluster.network.fault("to_agent", "abort", "drop", host="h1")
    outcome = await cluster.checkpoint(JOB)
    del cluster.fake["h3"].faults["dump"]
    assert not outcome.committed
    participant = cluster.agents["h1"]._orders.checkpoints
    await cluster.until(lambda: participant.awaiting() == [], "h1 heard the abort")
    await cluster.until(lambda: sorted(cluster.running(JOB)) == [0, 1, 2], "every rank runs")
    assert cluster.job(JOB).latest_checkpoint == first.checkpoint
    return "aborted, ran on"
