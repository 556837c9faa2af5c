"""Valid messages with absurd or foreign contents on the control wire, in the in-process tier:
each is refused with a log line, and the coordinator, the agents and the job carry on."""

from __future__ import annotations

from structlog.testing import capture_logs

from tests.inproc.cluster import Cluster, cluster_test

JOB = "ring"
HOSTS = ["h1", "h2", "h3"]


@cluster_test()
async def test_a_vote_for_another_checkpoint_is_refused_and_the_checkpoint_aborts(
    cluster: Cluster,
) -> None:
    await cluster.launch(JOB, HOSTS)

    def elsewhere(vote: object) -> None:
        vote.checkpoint = "ckpt-someone-else"  # type: ignore[attr-defined]

    cluster.network.fault("to_coordinator", "vote", "rewrite", host="h2", change=elsewhere)
    with capture_logs() as logs:
        outcome = await cluster.checkpoint(JOB, leave_running=True)
    assert not outcome.committed
    assert "answered for another checkpoint" in outcome.reason
    assert any(e["event"] == "checkpoint_vote_refused" for e in logs)
    await cluster.until(lambda: sorted(cluster.running(JOB)) == [0, 1, 2], "every rank runs")
    again = await cluster.checkpoint(JOB, leave_running=True)
    assert again.committed, again.reason


@cluster_test()
async def test_a_prepare_naming_absurd_ranks_gets_a_no_vote(cluster: Cluster) -> None:
    await cluster.launch(JOB, HOSTS)

    def absurd(prepare: object) -> None:
        prepare.ranks[:] = [-5, *range(100_000, 200_000)]  # type: ignore[attr-defined]

    cluster.network.fault("to_agent", "prepare", "rewrite", host="h3", change=absurd)
    outcome = await cluster.checkpoint(JOB, leave_running=True)
    assert not outcome.committed
    assert "do not run on h3" in outcome.reason
    assert sorted(cluster.running(JOB)) == [0, 1, 2]


@cluster_test()
async def test_decisions_for_unknown_checkpoints_change_nothing(cluster: Cluster) -> None:
    await cluster.launch(JOB, HOSTS)
    first = await cluster.checkpoint(JOB, leave_running=True)

    def unknown(order: object) -> None:
        order.checkpoint = "ckpt-never-was"  # type: ignore[attr-defined]

    # every commit order of the next checkpoint names a checkpoint nobody prepared
    cluster.network.fault("to_agent", "commit", "rewrite", times=3, change=unknown)
    outcome = await cluster.checkpoint(JOB, leave_running=True)
    assert not outcome.committed, "a release nobody made cannot be recorded"
    assert cluster.job(JOB).latest_checkpoint == first.checkpoint
    await cluster.until(lambda: sorted(cluster.running(JOB)) == [0, 1, 2], "every rank runs")
