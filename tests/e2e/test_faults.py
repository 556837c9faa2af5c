"""A representative part of the fault matrix (bench/faults.py runs all of it), with real CRIU,
real agents and coordinator on the emulated hosts: each fault struck at an exact moment through
the daemons' failpoints, then the invariants checked (the job is not lost, every checkpoint
marked committed verifies, nothing is left frozen, locked or running)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from testbed import bed
from testbed.faultmatrix import (
    MOVE,
    RECORDED,
    SOURCE,
    STEP_TIMEOUT,
    TARGET,
    Bed,
    Cell,
    Run,
    background,
    bring_up,
    crctl,
    crctl_json,
    leftovers,
    restart_when_free,
    wait_until,
)


@pytest.fixture(scope="module")
def matrix_bed() -> Iterator[Bed]:
    if bed.status(bed.DEFAULT_DIR) is not None:
        pytest.fail("a testbed is already up; run `crctl testbed down` first", pytrace=False)
    testbed = bring_up()
    try:
        yield testbed
    finally:
        bed.down(bed.DEFAULT_DIR)


def test_a_coordinator_killed_between_the_commit_record_and_the_orders_restarts_from_it(
    matrix_bed: Bed,
) -> None:
    """Stop mode: the coordinator dies right after the commit is durable, before any agent
    hears it. Started again, it tells the agents (which still hold their ranks, or resumed them
    when their hold ended, keeping their images); the ranks stop, and the job restarts from
    exactly that checkpoint on other hosts with the ring intact."""
    run = Run(matrix_bed, Cell("coordinator SIGKILL", "recorded", "checkpoint"), 0)
    ring = run.launch(SOURCE)
    matrix_bed.arm(bed.COORDINATOR, RECORDED, "kill")
    since = matrix_bed.log_size(bed.COORDINATOR)
    caller = background("checkpoint", run.job, "--json")
    matrix_bed.wait_fired(bed.COORDINATOR, RECORDED, since)
    wait_until(lambda: not matrix_bed.running(bed.COORDINATOR), 10, "the coordinator dead")
    matrix_bed.start(bed.COORDINATOR)
    out, err = caller.communicate(timeout=60)
    # The caller's retry (same request id) finds the checkpoint committed.
    assert caller.returncode == 0, err
    committed = json.loads(out)
    assert committed["committed"] is True
    run.settle()
    status = run.status()
    assert [r["state"] for r in status["ranks"]] == ["checkpointed"] * 3
    recorded = run.checkpoints()[0]
    assert recorded["checkpoint"] == committed["checkpoint"]
    assert recorded["state"] == "committed"
    assert status["latest_checkpoint"] == recorded["checkpoint"]
    assert crctl("verify", run.job).returncode == 0
    restarted = crctl_json("restart", run.job, "--map", MOVE)
    assert restarted["restarted"] and restarted["checkpoint"] == recorded["checkpoint"]
    assert [r["host"] for r in run.status()["ranks"]] == TARGET
    assert run.ring_runs_on(), run.notes
    assert ring.errors() == []
    assert leftovers(matrix_bed) == []
    crctl("kill", run.job)


@pytest.mark.parametrize(
    ("fault", "phase", "operation", "outcomes"),
    [
        ("agent SIGKILL", "held", "checkpoint", {"aborted, ran on"}),
        ("agent SIGSTOP past deadline", "dumping", "checkpoint", {"aborted, ran on"}),
        ("coordinator SIGKILL", "unlock", "restart", {"restarted", "failed, restarted"}),
        ("CRIU post-restore fails (CRIU_FAULT=6)", "restore", "restart", {"failed, restarted"}),
        ("image corrupted after commit", "prepare", "restart", {"failed, restarted"}),
    ],
)
def test_a_fault_at_its_phase_loses_no_job_and_leaves_nothing(
    matrix_bed: Bed, fault: str, phase: str, operation: str, outcomes: set[str]
) -> None:
    result = Run(matrix_bed, Cell(fault, phase, operation), 1).run()
    assert not result.lost, result.problems
    assert result.invalid_marked_valid == 0, result.problems
    assert result.outcome in outcomes, (result.outcome, result.problems)
    assert not [n for n in result.problems if "left behind" in n], result.problems


def test_a_damaged_checkpoint_is_marked_and_the_latest_good_one_restarts(matrix_bed: Bed) -> None:
    run = Run(matrix_bed, Cell("image corrupted after commit", "prepare", "restart"), 2)
    run.launch(SOURCE)
    good = crctl_json("checkpoint", run.job, "--leave-running")["checkpoint"]
    bad = crctl_json("checkpoint", run.job)["checkpoint"]
    run._damage(bad, truncate=False)
    verify = crctl("verify", run.job, "--checkpoint", bad, "--json")
    assert verify.returncode == 1
    assert [p["kind"] for p in json.loads(verify.stdout)["problems"]] == ["digest"]
    states = {c["checkpoint"]: c["state"] for c in run.checkpoints()}
    assert states[bad] == "damaged" and states[good] == "committed"
    assert run.status()["latest_checkpoint"] == good
    refused = crctl("restart", run.job, "--checkpoint", bad)
    assert refused.returncode != 0 and "damaged" in refused.stderr
    restarted = crctl_json("restart", run.job, "--map", MOVE)
    assert restarted["checkpoint"] == good
    assert run.ring_runs_on(), run.notes
    wait_until(lambda: leftovers(matrix_bed) == [], 30, "nothing left behind")
    crctl("kill", run.job)
    time.sleep(0.5)


def test_restored_ranks_held_past_their_hold_die_when_the_coordinator_stays_dead(
    matrix_bed: Bed,
) -> None:
    """The coordinator dies while every target host holds its restored ranks (restored, not
    released, their connections locked) and stays dead: each agent kills its held ranks and
    lifts its lock when the hold ends. Started again, the coordinator rolls the restart back
    and the checkpoint restarts."""
    run = Run(matrix_bed, Cell("coordinator SIGKILL", "restore", "restart"), 3)
    run.launch(SOURCE)
    checkpoint = crctl_json("checkpoint", run.job)["checkpoint"]
    matrix_bed.arm("agent-h4", "agent.restore.unlock", "sleep:60")  # h4 never gets past it
    since = matrix_bed.log_size("agent-h4")
    caller = background("restart", run.job, "--map", MOVE, "--timeout", str(STEP_TIMEOUT))
    matrix_bed.wait_fired("agent-h4", "agent.restore.unlock", since)
    matrix_bed.kill(bed.COORDINATOR)
    caller.kill()
    caller.communicate()
    held = [p for p in leftovers(matrix_bed) if "nft table" in p]
    assert held, "the target hosts hold their locks while the restore is held"
    hold = STEP_TIMEOUT * 4 + 10  # the agents' hold of a restore
    time.sleep(hold + 5)
    matrix_bed.disarm()
    assert [p for p in leftovers(matrix_bed) if "nft table" in p or "frozen" in p] == []
    matrix_bed.start(bed.COORDINATOR)
    run.settle()
    status = run.status()
    assert [r["state"] for r in status["ranks"]] == ["checkpointed"] * 3
    assert status["latest_checkpoint"] == checkpoint
    again = restart_when_free(run.job, "--map", MOVE, "--json")
    assert again.returncode == 0, again.stderr
    restarted = json.loads(again.stdout)
    assert restarted["restarted"] and restarted["checkpoint"] == checkpoint
    assert run.ring_runs_on(), run.notes
    crctl("kill", run.job)
