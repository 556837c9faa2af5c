"""examples/scheduler_client.py, a scheduler's client written only against the API's contract
(grpcio, crctl/v1's stubs, google.longrunning), moves a real ring with the real coordinator:
StartCheckpoint, WatchJob, WaitOperation, StartRestart, and the ring counts on, on the new
hosts, with no token lost."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import bed
from testbed.ringjob import RingJob

from .helpers import crctl_json, running_ring

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "scheduler_client.py"


@pytest.fixture
def ring(testbed6: bed.State, request: pytest.FixtureRequest) -> Iterator[RingJob]:
    yield from running_ring(testbed6, request, ["h1", "h2"])


def scheduler_client(state: bed.State, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args, "--address", state.api_address],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=180,
        check=False,
    )


def test_the_example_client_moves_a_ring_to_two_other_hosts(
    testbed6: bed.State, ring: RingJob
) -> None:
    before = [s["last_sequence"] for s in ring.statuses()]

    result = scheduler_client(testbed6, ring.job, "--map", "h1=h3,h2=h4")

    assert result.returncode == 0, f"stdout: {result.stdout}\nstderr: {result.stderr}"
    assert result.stderr == ""
    out = result.stdout
    assert f"checkpointing {ring.job}: operations/ckpt-" in out
    assert f"restarting {ring.job} from ckpt-" in out
    assert "rank 0 on h3 (pid " in out
    assert "rank 1 on h4 (pid " in out
    # WatchJob's events, one line each: the snapshot first, then the checkpoint's phases (the
    # last events may come after the operation is done and the watch stopped: not asserted)
    assert f"{ring.job} snapshot: state=running ranks=2" in out
    assert f"{ring.job} checkpoint_phase: " in out
    status = crctl_json("status", ring.job)
    assert status["state"] == "running"
    assert {r["rank"]: r["host"] for r in status["ranks"]} == {0: "h3", 1: "h4"}
    ring.wait_for_progress(tokens=30)
    assert ring.errors() == []  # the ring itself records any token lost, repeated or corrupted
    after = [s["last_sequence"] for s in ring.statuses()]
    assert all(a > b for a, b in zip(after, before, strict=True))
    addresses = {testbed6.hosts[h].address for h in ("h3", "h4")}
    found = {
        pair.rsplit(":", 1)[0]
        for s in ring.statuses()
        for pair in (s.get("inbound") or []) + (s.get("outbound") or [])
    }
    assert found == addresses
