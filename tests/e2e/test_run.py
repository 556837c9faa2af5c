"""`crctl run`, the whole job for a batch script, on the testbed without Slurm (`--hosts`
given; a requeued run told by SLURM_RESTART_COUNT, as Slurm sets it): a TCP ring launched, a
warning signal checkpoints it, the next run restarts it on other hosts where it counts on; a
job that ends by itself gives its status; nothing outlives `crctl run`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import bed
from testbed.ringjob import RING_PORT, RingJob

from .helpers import crctl, crctl_json, wait_for

pytestmark = pytest.mark.e2e

RING = Path(__file__).resolve().parents[2] / "testbed" / "ring.py"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def ring_command(status_dir: Path) -> list[str]:
    """Each rank's command: the ring, told its rank and peers by crctl run."""
    return [
        "/bin/sh", "-c",
        f'exec {sys.executable} {RING} --rank "$CRCTL_RANK" --peers "$CRCTL_PEERS" '
        f"--port {RING_PORT} --status {status_dir}/$CRCTL_RANK.json --interval 0.01",
    ]  # fmt: skip


@pytest.fixture
def status_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    for job in ("batch-ring", "batch-exit", "batch-kill", "batch-mpi", "batch-fail",
                "batch-requeue"):  # fmt: skip
        if crctl("status", job, check=False).returncode == 0:
            crctl("kill", job, check=False)


def test_a_signal_checkpoints_the_job_and_the_requeued_run_restarts_it_elsewhere(
    testbed6: bed.State, status_dir: Path
) -> None:
    first = run("--job", "batch-ring", "--hosts", "h[1-2]", "--", *ring_command(status_dir))
    ring = RingJob("batch-ring", ["h1", "h2"], status_dir, testbed6.api_address)
    ring.wait_for_tokens(20, timeout=30)
    first.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@T` sends
    out, err = first.communicate(timeout=120)
    assert first.returncode == 10, (out, err)
    assert "checkpointed batch-ring" in out and "not a Slurm job: nothing to requeue" in out
    assert crctl_json("status", "batch-ring")["state"] == "stopped"
    tokens = ring.tokens()

    again = run("--job", "batch-ring", "--hosts", "h3,h4", "--", *ring_command(status_dir),
                env={"SLURM_RESTART_COUNT": "1"})  # fmt: skip
    wait_for(
        lambda: {r["host"] for r in crctl_json("status", "batch-ring")["ranks"]} == {"h3", "h4"},
        timeout=60,
        what="the ring restarted on h3, h4",
    )
    ring.wait_for_tokens(tokens + 30, timeout=30)
    assert ring.errors() == []
    again.send_signal(signal.SIGTERM)
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 10 and "restarted batch-ring" in out


def test_a_job_that_ends_by_itself_gives_its_status_and_leaves_nothing(
    testbed6: bed.State, status_dir: Path
) -> None:
    done = run("--job", "batch-exit", "--hosts", "h1,h2", "--", "/bin/sh", "-c",
               'sleep 0.5; exit $((3 + CRCTL_RANK))')  # fmt: skip
    out, err = done.communicate(timeout=60)
    assert done.returncode == 3, (out, err)
    assert crctl_json("status", "batch-exit")["state"] == "stopped"


def test_a_killed_run_takes_its_ranks_with_it(testbed6: bed.State, status_dir: Path) -> None:
    killed = run("--job", "batch-kill", "--hosts", "h1,h2", "--on-signal", "none", "--",
                 *ring_command(status_dir))  # fmt: skip
    ring = RingJob("batch-kill", ["h1", "h2"], status_dir, testbed6.api_address)
    ring.wait_for_tokens(10, timeout=30)
    pids = [r["pid"] for r in crctl_json("status", "batch-kill")["ranks"]]
    killed.send_signal(signal.SIGTERM)  # scancel, preemption
    killed.communicate(timeout=60)
    assert killed.returncode == 12
    time.sleep(0.5)
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert crctl_json("status", "batch-kill")["state"] == "stopped"


def test_an_mpi_job_checkpointed_on_the_signal_and_restarted_by_the_next_run(
    testbed6: bed.State, status_dir: Path
) -> None:
    from .test_mpi import PROGRAM, STEPS, MpiJob, uninterrupted

    command = [sys.executable, str(PROGRAM), "--steps", str(STEPS), "--interval", "0.004",
               "--status", str(status_dir), "--result", str(status_dir / "result")]  # fmt: skip
    first = run("--job", "batch-mpi", "--hosts", "h1,h2", "--mpi", "--", *command)
    job = MpiJob("batch-mpi", status_dir)
    job.wait_for_step(150)
    first.send_signal(signal.SIGUSR1)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 10, (out, err)
    stopped_at = job.step()
    assert stopped_at < STEPS - 200

    again = run("--job", "batch-mpi", "--hosts", "h3,h4", "--mpi", "--", *command,
                env={"SLURM_RESTART_COUNT": "1"})  # fmt: skip
    out, err = again.communicate(timeout=240)
    assert again.returncode == 0, (out, err)
    assert "restarted batch-mpi" in out and "ended with status 0" in out
    assert [r["host"] for r in crctl_json("status", "batch-mpi")["ranks"]] == ["h3", "h3", "h4"]
    assert job.result() == uninterrupted(2)


def test_a_failed_checkpoint_on_the_signal_is_reported_and_never_restarted_from(
    testbed6: bed.State, status_dir: Path
) -> None:
    from testbed import faultmatrix

    first = run("--job", "batch-fail", "--hosts", "h1,h2", "--", *ring_command(status_dir))
    ring = RingJob("batch-fail", ["h1", "h2"], status_dir, testbed6.api_address)
    ring.wait_for_tokens(10, timeout=30)
    fault = faultmatrix.Bed(testbed6)
    fault.arm("agent-h2", "criu.fault", "3")  # CRIU's own fault injection: its dump fails
    try:
        first.send_signal(signal.SIGUSR1)
        out, err = first.communicate(timeout=120)
    finally:
        fault.disarm()
    assert first.returncode == 11, (out, err)
    assert "the checkpoint of batch-fail failed" in err
    assert crctl_json("status", "batch-fail")["state"] == "stopped"  # killed, nothing left
    assert [c["state"] for c in crctl_json("checkpoints", "batch-fail")] == ["aborted"]

    again = run("--job", "batch-fail", "--hosts", "h3,h4", "--", *ring_command(status_dir),
                env={"SLURM_RESTART_COUNT": "1"})  # fmt: skip
    out, err = again.communicate(timeout=60)
    assert again.returncode == 5, (out, err)
    assert "no committed checkpoint of batch-fail to restart from" in err
    assert {r["host"] for r in crctl_json("status", "batch-fail")["ranks"]} == {"h1", "h2"}


def test_checkpoint_exits_with_the_requeue_code_after_a_stop_mode_commit(
    testbed6: bed.State, status_dir: Path
) -> None:
    """For hand-written scripts with Slurm's RequeueExit=N."""
    crctl("launch", "--job", "batch-requeue", "--host", "h1", "--", "/bin/sleep", "600")
    running = crctl("checkpoint", "batch-requeue", "--leave-running", "--requeue-exit-code", "85")
    assert running.returncode == 0  # the job runs on: nothing to requeue
    stopped = crctl("checkpoint", "batch-requeue", "--requeue-exit-code", "85", check=False)
    assert stopped.returncode == 85, stopped.stderr
    assert crctl_json("status", "batch-requeue")["state"] == "stopped"
