"""Operations on the real testbed, through the CLI: a checkpoint cancelled while its ranks stand
frozen (held at post-dump) aborts, every rank thaws and the ring counts on with nothing lost;
a restart cancelled in its prepare step is rolled back and its checkpoint stays restartable.
`crctl operations` shows both as a person and a script see them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from testbed import bed, faultmatrix
from testbed.ringjob import RingJob

from .helpers import crctl, crctl_background, crctl_json, running_ring, wait_for

HOSTS = ["h1", "h2", "h3"]


@pytest.fixture
def ring(testbed6: bed.State, request: pytest.FixtureRequest) -> Iterator[RingJob]:
    yield from running_ring(testbed6, request, HOSTS)


def running_operation(job: str) -> dict[str, Any]:
    """The job's one operation under way, once there is one."""
    found: list[dict[str, Any]] = []

    def under_way() -> bool:
        found[:] = crctl_json("operations", "--job", job, "--running")
        return bool(found)

    wait_for(under_way, timeout=30, what=f"an operation of {job} under way")
    assert len(found) == 1, found
    return found[0]


def test_a_checkpoint_cancelled_while_frozen_aborts_and_the_ring_counts_on(
    testbed6: bed.State, ring: RingJob
) -> None:
    fault = faultmatrix.Bed(testbed6)
    fault.arm("agent-h2", "agent.checkpoint.held", "sleep:4")  # h2 frozen at post-dump
    try:
        running = crctl_background("checkpoint", ring.job, "--leave-running")
        operation = running_operation(ring.job)
        wait_for(
            lambda: crctl_json("operations", operation["name"])["metadata"]["phase"] == "preparing",
            timeout=10,
            what="the checkpoint freezing",
        )
        cancelled = crctl("operations", operation["name"], "--cancel")
        assert "cancel asked" in cancelled.stderr
        out, err = running.communicate(timeout=60)
    finally:
        fault.disarm()
    assert running.returncode == 7, (out, err)  # aborted: the job runs on
    assert "aborted: cancelled: by root" in err
    shown = crctl_json("operations", operation["name"])
    assert shown["done"] and shown["error"]["code"] == 1  # google.rpc.Code.CANCELLED
    info = shown["error"]["details"][0]
    assert info["reason"] == "CANCELLED" and info["metadata"]["job"] == ring.job
    assert info["metadata"]["phase"] == "preparing"
    ring.wait_for_progress(tokens=30)
    assert ring.errors() == []
    assert [c["state"] for c in crctl_json("checkpoints", ring.job)] == ["aborted"]
    assert faultmatrix.leftovers(fault) == []


def test_a_restart_cancelled_in_prepare_rolls_back_and_the_checkpoint_stays_restartable(
    testbed6: bed.State, ring: RingJob
) -> None:
    crctl("checkpoint", ring.job)
    fault = faultmatrix.Bed(testbed6)
    fault.arm("agent-h4", "agent.restore.prepare", "sleep:4")
    try:
        running = crctl_background("restart", ring.job, "--map", "h1=h4,h2=h5,h3=h6")
        operation = running_operation(ring.job)
        assert operation["metadata"]["@type"].endswith("crctl.v1.RestartMetadata")
        crctl("operations", operation["name"], "--cancel")
        out, err = running.communicate(timeout=60)
    finally:
        fault.disarm()
    assert running.returncode == 1, (out, err)
    assert "cancelled: by root" in err and "stays restartable" in err
    table = crctl("operations", "--job", ring.job).stdout
    restore = operation["name"].removeprefix("operations/")
    assert any(
        line.split()[:4] == [restore, "restart", ring.job, "cancelled"]
        for line in table.splitlines()
    ), table
    assert crctl_json("status", ring.job)["state"] == "stopped"
    crctl("restart", ring.job, "--map", "h1=h4,h2=h5,h3=h6")
    status = crctl_json("status", ring.job)
    assert [r["host"] for r in status["ranks"]] == ["h4", "h5", "h6"]
    ring.wait_for_progress(tokens=30)
    assert ring.errors() == []
    assert faultmatrix.leftovers(fault) == []
    assert json.loads(crctl("operations", "--job", ring.job, "--json").stdout)
