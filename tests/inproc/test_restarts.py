"""The restart protocol in the in-process tier: durable restarts that a new coordinator rolls
forward or back, lost agents that fail a step at once, repeated orders, held ranks given up
by their agents when the coordinator is gone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from crctl.errors import ConflictError
from crctl.plugins import PER_RANK_ENDPOINTS
from tests.inproc.cluster import LOST_AFTER, Cluster, cluster_test

JOB = "ring"
HOSTS = ["h1", "h2"]
MOVE = {"h1": "h3", "h2": "h4"}


async def stopped_job(cluster: Cluster) -> str:
    await cluster.launch(JOB, HOSTS)
    outcome = await cluster.checkpoint(JOB)
    assert outcome.committed, outcome.reason
    return outcome.checkpoint


def restarts(cluster: Cluster, state: str | None = None) -> list[str]:
    return [r.restore for r in cluster.coordinator.store.restarts(state)]  # type: ignore[union-attr]


@cluster_test(hosts=4)
async def test_a_restart_is_recorded_from_start_to_finish(cluster: Cluster) -> None:
    await stopped_job(cluster)
    outcome = await cluster.restart(JOB, host_map=MOVE)
    assert outcome.restarted, outcome.reason
    assert restarts(cluster, "restarted") == [outcome.restore]
    assert {r.host for r in cluster.job(JOB).ranks} == {"h3", "h4"}
    assert sorted(cluster.running(JOB)) == [0, 1]


async def kill_coordinator_after(cluster: Cluster, step: str) -> str:
    """Start a restart and kill the coordinator once every host completed ``step`` (the
    orders of the next step are held back until then)."""
    following = {"prepare": "restore", "restore": "unlock", "unlock": "release"}[step]
    held = cluster.network.fault(
        "to_agent",
        "restore_step",
        "drop",
        times=100,
        where=lambda order: order.step == following,
    )
    run_started = asyncio.ensure_future(cluster.restart(JOB, host_map=MOVE))
    store = cluster.coordinator.store  # type: ignore[union-attr]
    await cluster.until(
        lambda: any(r.step == step for r in store.restarts("running")), f"{step} done"
    )
    restore = store.restarts("running")[0].restore
    await cluster.kill_coordinator()
    run_started.cancel()
    await asyncio.gather(run_started, return_exceptions=True)
    cluster.network.faults.remove(held)
    return restore


@cluster_test(hosts=4)
async def test_a_coordinator_dead_after_every_host_unlocked_rolls_the_restart_forward(
    cluster: Cluster,
) -> None:
    await stopped_job(cluster)
    cluster.fake["h3"].delays["release"] = 1.0  # h4 releases, h3 is still at it
    restore = await kill_coordinator_after(cluster, "unlock")
    cluster.fake["h3"].delays.clear()
    await cluster.start_coordinator()
    await cluster.until(lambda: restarts(cluster, "running") == [], "the restart recovered")
    assert restarts(cluster, "restarted") == [restore]
    job = cluster.job(JOB)
    assert {r.host for r in job.ranks} == {"h3", "h4"}
    assert [r.state for r in job.ranks] == ["running", "running"]
    running = cluster.running(JOB)
    assert sorted(running) == [0, 1]
    assert {r.rank: r.pid for r in job.ranks} == {n: p.command_pid for n, p in running.items()}


@cluster_test(hosts=4)
async def test_a_coordinator_dead_before_every_host_unlocked_rolls_the_restart_back(
    cluster: Cluster,
) -> None:
    checkpoint = await stopped_job(cluster)
    restore = await kill_coordinator_after(cluster, "restore")  # held, not unlocked
    await cluster.start_coordinator()
    await cluster.until(lambda: restarts(cluster, "running") == [], "the restart recovered")
    assert restarts(cluster, "aborted") == [restore]
    assert cluster.live(JOB) == [], "what was restored is gone"
    job = cluster.job(JOB)
    assert [r.state for r in job.ranks] == ["checkpointed", "checkpointed"]
    assert job.latest_checkpoint == checkpoint
    outcome = await cluster.restart(JOB, host_map=MOVE)
    assert outcome.restarted, outcome.reason


@cluster_test(hosts=4)
async def test_held_ranks_die_with_their_hold_when_the_coordinator_never_returns(
    cluster: Cluster,
) -> None:
    await stopped_job(cluster)
    await kill_coordinator_after(cluster, "restore")  # restored, held, locked
    assert len(cluster.live(JOB)) == 2 and cluster.fake["h3"].locks
    await asyncio.sleep(10 * 4 + 20)  # every restore's hold (4 steps x the step timeout + 10)
    assert cluster.live(JOB) == [], "held ranks were killed by their agents"
    assert not cluster.fake["h3"].locks and not cluster.fake["h4"].locks
    await cluster.start_coordinator()
    await cluster.until(lambda: restarts(cluster, "running") == [], "the restart recovered")
    assert len(restarts(cluster, "aborted")) == 1
    outcome = await cluster.restart(JOB, host_map=MOVE)
    assert outcome.restarted, outcome.reason


@cluster_test(hosts=4)
async def test_a_lost_target_agent_fails_the_restart_at_once(cluster: Cluster) -> None:
    checkpoint = await stopped_job(cluster)
    cluster.fake["h4"].faults["restore"] = "hang"
    started = asyncio.get_running_loop().time()
    task = asyncio.ensure_future(cluster.restart(JOB, host_map=MOVE, timeout_seconds=20))
    await asyncio.sleep(0.5)
    cluster.network.cut.add("h4")
    outcome = await task
    took = asyncio.get_running_loop().time() - started
    assert not outcome.restarted
    assert outcome.failed_host == "h4" and "lost" in outcome.reason
    assert took < LOST_AFTER + 3, f"failed after {took:.1f}s, not at the agent's loss"
    assert cluster.live(JOB) == [], "what h3 restored was killed"
    assert cluster.job(JOB).latest_checkpoint == checkpoint
    assert cluster.fake["h4"].locks, "h4, cut off, still holds its restore"
    cluster.network.cut.clear()
    healed = asyncio.get_running_loop().time()
    await cluster.until(lambda: not cluster.fake["h4"].locks, "h4's restore aborted")
    took = asyncio.get_running_loop().time() - healed
    assert took < 2, f"h4 gave up its restore {took:.1f}s after it was heard again, not at once"
    del cluster.fake["h4"].faults["restore"]


@cluster_test(hosts=4)
async def test_every_restart_order_delivered_twice_changes_nothing(cluster: Cluster) -> None:
    await stopped_job(cluster)
    for kind in ("prepare_restore", "restore_step"):
        cluster.network.fault("to_agent", kind, "duplicate", times=100)
    outcome = await cluster.restart(JOB, host_map=MOVE)
    assert outcome.restarted, outcome.reason
    assert sorted(cluster.running(JOB)) == [0, 1]
    assert len(cluster.live(JOB)) == 2


@cluster_test()
async def test_every_checkpoint_order_delivered_twice_changes_nothing(cluster: Cluster) -> None:
    await cluster.launch(JOB, ["h1", "h2", "h3"])
    for kind in ("prepare", "freeze", "commit"):
        cluster.network.fault("to_agent", kind, "duplicate", times=100)
    first = await cluster.checkpoint(JOB, leave_running=True)
    assert first.committed, first.reason
    second = await cluster.checkpoint(JOB)
    assert second.committed, second.reason
    assert cluster.live(JOB) == []


@cluster_test(hosts=4)
async def test_a_checkpoint_found_damaged_is_never_offered_again(cluster: Cluster) -> None:
    await cluster.launch(JOB, HOSTS)
    good = await cluster.checkpoint(JOB, leave_running=True)
    bad = await cluster.checkpoint(JOB)
    assert good.committed and bad.committed
    record = cluster.coordinator.store.checkpoint(bad.checkpoint)  # type: ignore[union-attr]
    assert record is not None
    page = Path(record.directory) / "rank-1" / "pages-1.img"
    original = page.read_bytes()
    page.write_bytes(b"X" + original[1:])  # one byte flipped after the commit
    outcome = await cluster.restart(JOB, host_map=MOVE)
    assert not outcome.restarted
    assert "rank-1/pages-1.img" in outcome.reason
    assert outcome.checkpoint_damaged
    assert f"the latest good checkpoint is now {good.checkpoint}" in outcome.reason
    assert cluster.job(JOB).latest_checkpoint == good.checkpoint
    assert cluster.coordinator.store.checkpoint(bad.checkpoint).state == "damaged"  # type: ignore[union-attr]
    assert cluster.live(JOB) == []
    again = await cluster.restart(JOB, host_map=MOVE)  # from the latest good one
    assert again.restarted, again.reason
    assert again.checkpoint == good.checkpoint
    assert sorted(cluster.running(JOB)) == [0, 1]
    # Put back (say the store had been mounted wrong): verifying makes it good again.
    page.write_bytes(original)
    verification = await cluster.in_coordinator(
        lambda: cluster.service.checkpoints.verify(JOB, bad.checkpoint)
    )
    assert verification.ok
    assert cluster.coordinator.store.checkpoint(bad.checkpoint).state == "committed"  # type: ignore[union-attr]


@cluster_test(hosts=4)
async def test_an_abort_during_a_prepare_undoes_what_the_prepare_does_after_it(
    cluster: Cluster,
) -> None:
    """The coordinator dies while h3 prepares (slowly); started again, it rolls the restart
    back at once, while h3's prepare is still going: once that prepare ends, h3 undoes it too
    (no lock or restored rank is left: checked after every test of this tier)."""
    await stopped_job(cluster)
    cluster.fake["h3"].delays["prepare"] = 5.0
    task = asyncio.ensure_future(cluster.restart(JOB, host_map=MOVE))
    await cluster.until(lambda: "crctl-" in " ".join(cluster.fake["h3"].locks), "h3 locked")
    await cluster.kill_coordinator()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await cluster.start_coordinator()
    await cluster.until(lambda: restarts(cluster, "running") == [], "the restart rolled back")
    await asyncio.sleep(6)  # h3's prepare has ended
    assert not cluster.fake["h3"].locks
    assert cluster.live(JOB) == []
    outcome = await cluster.restart(JOB, host_map=MOVE)
    assert outcome.restarted, outcome.reason


@cluster_test(hosts=6)
async def test_a_job_packed_on_two_hosts_spreads_over_four_and_packs_back(
    cluster: Cluster,
) -> None:
    """Ranks 0, 1 on h1 and 2, 3 on h2, restarted one per host on h3-h6: every host of the
    spread is told which old hosts were split and each rank gets its own new address; packed
    back onto h1, h2 the restart is an ordinary one again."""
    await cluster.launch(JOB, ["h1", "h1", "h2", "h2"])
    assert (await cluster.checkpoint(JOB)).committed
    spread = await cluster.restart(JOB, hosts=["h3", "h4", "h5", "h6"])
    assert spread.restarted, spread.reason
    assert dict(spread.split_hosts) == {"h1": "h3,h4", "h2": "h5,h6"}
    assert dict(spread.address_map) == {}
    assert {r.rank: r.host for r in cluster.job(JOB).ranks} == {0: "h3", 1: "h4", 2: "h5", 3: "h6"}
    assert sorted(cluster.running(JOB)) == [0, 1, 2, 3]
    for rank, host in enumerate(["h3", "h4", "h5", "h6"]):
        (order,) = cluster.fake[host].prepared
        assert dict(order.split_hosts) == {"h1": "h3,h4", "h2": "h5,h6"}
        assert not order.host_map and not order.address_map
        (entry,) = order.ranks
        old = cluster.fake["h1" if rank < 2 else "h2"].addresses[0]
        assert (entry.rank, dict(entry.local_address_map)) == (
            rank,
            {old: cluster.fake[host].addresses[0]},
        )

    assert (await cluster.checkpoint(JOB)).committed
    packed = await cluster.restart(JOB, hosts=["h1", "h2"])
    assert packed.restarted, packed.reason
    assert dict(packed.split_hosts) == {}
    assert {r.rank: r.host for r in cluster.job(JOB).ranks} == {0: "h1", 1: "h2", 2: "h1", 3: "h2"}
    assert dict(packed.address_map) == {
        cluster.fake[new].addresses[0]: cluster.fake[old].addresses[0]
        for new, old in (("h3", "h1"), ("h4", "h2"), ("h5", "h1"), ("h6", "h2"))
    }
    assert sorted(cluster.running(JOB)) == [0, 1, 2, 3]


@cluster_test(hosts=6)
async def test_a_spread_onto_an_agent_without_per_rank_rewrites_is_refused_before_any_order(
    cluster: Cluster,
) -> None:
    """An older agent would restore a spread rank's sockets with stale addresses: the
    coordinator refuses the plan, naming the host and the ranks, and nothing is restored."""
    await cluster.launch(JOB, ["h1", "h1", "h2", "h2"])
    assert (await cluster.checkpoint(JOB)).committed
    cluster.lacking["h4"] = {PER_RANK_ENDPOINTS}
    await cluster.kill_agent("h4")
    await cluster.start_agent("h4")
    registry = cluster.coordinator.registry  # type: ignore[union-attr]
    await cluster.until(
        lambda: PER_RANK_ENDPOINTS not in registry.get("h4").capabilities,  # type: ignore[union-attr]
        "h4 registered again, older",
    )
    with pytest.raises(ConflictError, match=r"the agent on h4 cannot restore ranks \[1\]"):
        await cluster.restart(JOB, hosts=["h3", "h4", "h5", "h6"])
    assert all(not cluster.fake[h].prepared for h in ("h3", "h4", "h5", "h6"))
    packed = await cluster.restart(JOB, host_map={"h1": "h4", "h2": "h5"})  # no spread: fine
    assert packed.restarted, packed.reason


@cluster_test(hosts=4)
async def test_a_restart_naming_no_checkpoint_passes_over_one_a_rank_of_which_is_out_of_reach(
    cluster: Cluster,
) -> None:
    """The newest checkpoint's rank 1 is only on h4, whose agent is gone: a restart that names
    no checkpoint starts from the older one, saying which it passed over and why; one that
    names the newest is refused, and with no restorable checkpoint left, every one is named."""
    older = await stopped_job(cluster)  # dumped on h1 and h2
    assert (await cluster.restart(JOB, host_map=MOVE)).restarted
    newer = await cluster.checkpoint(JOB)  # dumped on h3 and h4
    assert newer.committed, newer.reason
    await cluster.kill_agent("h4")
    await cluster.until(lambda: "h4" not in cluster.alive(), "h4 lost")
    back = {"h3": "h1", "h4": "h2"}
    with pytest.raises(ConflictError, match=r"no reachable copy of rank 1 \(only on h4 \(lost\)\)"):
        await cluster.restart(JOB, checkpoint=newer.checkpoint, host_map=back)
    outcome = await cluster.restart(JOB, host_map=back)
    assert outcome.restarted, outcome.reason
    assert outcome.checkpoint == older
    assert [(p.checkpoint, p.reason) for p in outcome.passed_over] == [
        (newer.checkpoint, "no reachable copy of rank 1 (only on h4 (lost))")
    ]
    assert {r.host for r in cluster.job(JOB).ranks} == {"h1", "h2"}
    assert cluster.job(JOB).latest_checkpoint == newer.checkpoint  # kept for when h4 is back

    assert (await cluster.checkpoint(JOB)).committed  # on h1 and h2
    await cluster.kill_agent("h1")
    await cluster.until(lambda: "h1" not in cluster.alive(), "h1 lost")
    with pytest.raises(ConflictError) as refused:
        await cluster.restart(JOB, hosts=["h2", "h3"])
    message = refused.value.message
    assert message.startswith(f"no checkpoint of {JOB} can be restored now: ")
    assert f"{older}: no reachable copy of rank 0 (only on h1 (lost))" in message
    assert f"{newer.checkpoint}: no reachable copy of rank 1 (only on h4 (lost))" in message
