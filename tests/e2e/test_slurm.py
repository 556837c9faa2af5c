"""Batch scripts under real Slurm on the testbed: `sbatch deploy/slurm/example.sbatch` runs a
TCP ring through `crctl run`; Slurm's warning signal makes crctl checkpoint it and requeue the
batch job; with the first nodes drained, the requeued run restarts the ring from that
checkpoint on the other two nodes, where it counts on with no token lost."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import bed
from testbed.ringjob import RingJob

from .helpers import crctl, crctl_json, wait_for

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "slurm" / "example.sbatch"


def slurm(*argv: str) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, (argv, done.stdout, done.stderr)
    return done.stdout


def job_state(job_id: str) -> str:
    shown = slurm("scontrol", "show", "job", job_id, "-o")
    return shown.split("JobState=")[1].split()[0]


def restarts(job_id: str) -> int:
    shown = slurm("scontrol", "show", "job", job_id, "-o")
    return int(shown.split("Restarts=")[1].split()[0])


def submit(script: Path, folder: Path, **env: str) -> str:
    """sbatch ``script`` from ``folder`` with these variables besides ours; the job id."""
    exports = ",".join(["ALL", *(f"{k}={v}" for k, v in env.items())])
    submitted = slurm(
        "sbatch", "--parsable", f"--chdir={folder}", f"--export={exports}", str(script)
    )
    return submitted.strip().split(";")[0]


def submit_ring(folder: Path) -> str:
    """The example script's ring, its status files in ``folder``."""
    ring = SCRIPT.parents[2] / "testbed" / "ring.py"
    return submit(SCRIPT, folder, CRCTL_RING_STATUS=str(folder), CRCTL_RING=str(ring))


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="crctl-slurm-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_warning_signal_checkpoints_and_requeues_and_the_job_moves_to_other_nodes(
    testbed_slurm: bed.State, folder: Path
) -> None:
    job_id = submit_ring(folder)
    job = f"slurm-{job_id}"
    try:
        wait_for(lambda: job_state(job_id) == "RUNNING", timeout=60, what="the batch job running")
        wait_for(
            lambda: crctl("status", job, check=False).returncode == 0,
            timeout=60,
            what="crctl run launching the job",
        )
        hosts = [r["host"] for r in crctl_json("status", job)["ranks"]]
        assert hosts == ["h1", "h2"]
        ring = RingJob(job, hosts, folder, testbed_slurm.api_address)
        ring.wait_for_tokens(20, timeout=30)

        slurm("scontrol", "update", "nodename=h1,h2", "state=drain", "reason=crctl-test")
        slurm("scancel", "--batch", "--signal=USR1", job_id)  # Slurm's warning, by hand
        wait_for(lambda: restarts(job_id) >= 1, timeout=120, what="the batch job requeued")
        tokens = ring.tokens()
        wait_for(
            lambda: (
                {r["host"] for r in crctl_json("status", job)["ranks"]} == {"h3", "h4"}
                and crctl_json("status", job)["state"] == "running"
            ),
            timeout=240,
            what="the requeued run restarting the ring on h3, h4",
        )
        ring.hosts = ["h3", "h4"]
        ring.wait_for_tokens(tokens + 30, timeout=60)
        assert ring.errors() == []
        output = next(folder.glob("crctl-ring-*.out")).read_text()
        assert f"checkpointed {job}" in output and f"Slurm job {job_id} requeued" in output
        assert f"restarted {job} from ckpt-" in output
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, check=False)
        subprocess.run(["scontrol", "update", "nodename=h1,h2", "state=resume"], check=False)
        wait_for(
            lambda: (
                crctl("status", job, check=False).returncode != 0
                or json.loads(crctl("status", job, "--json").stdout)["state"] == "stopped"
            ),
            timeout=60,
            what="nothing of the job left running after scancel",
        )


def test_a_cancelled_batch_job_leaves_nothing_running(
    testbed_slurm: bed.State, folder: Path
) -> None:
    job_id = submit_ring(folder)
    job = f"slurm-{job_id}"
    wait_for(
        lambda: (
            crctl("status", job, check=False).returncode == 0
            and crctl_json("status", job)["state"] == "running"
        ),
        timeout=90,
        what="the batch job's ranks running",
    )
    pids = [r["pid"] for r in crctl_json("status", job)["ranks"]]
    slurm("scancel", job_id)
    wait_for(lambda: job_state(job_id) in ("CANCELLED", "COMPLETED"), timeout=90, what="cancelled")
    wait_for(
        lambda: not [pid for pid in pids if Path(f"/proc/{pid}").exists()],
        timeout=60,
        what="every rank gone",
    )
    assert crctl_json("status", job)["state"] == "stopped"


def test_an_mpi_batch_job_is_checkpointed_requeued_and_finished_on_other_nodes(
    testbed_slurm: bed.State, folder: Path
) -> None:
    from .test_mpi import STEPS, MpiJob, uninterrupted

    script = SCRIPT.with_name("example-mpi.sbatch")
    repo = SCRIPT.parents[2]
    job_id = submit(
        script,
        folder,
        CRCTL_REPO=str(repo),
        CRCTL_MPI_STATUS=str(folder),
        CRCTL_MPI_STEPS=str(STEPS),
    )
    job = f"slurm-{job_id}"
    mpi_job = MpiJob(job, folder)
    try:
        mpi_job.wait_for_step(150, timeout=120)
        assert [r["host"] for r in crctl_json("status", job)["ranks"]] == ["h1", "h1", "h2"]
        slurm("scontrol", "update", "nodename=h1,h2", "state=drain", "reason=crctl-test")
        slurm("scancel", "--batch", "--signal=USR1", job_id)
        wait_for(lambda: restarts(job_id) >= 1, timeout=120, what="the batch job requeued")
        assert mpi_job.result(timeout=400) == uninterrupted(2)
        assert [r["host"] for r in crctl_json("status", job)["ranks"]] == ["h3", "h3", "h4"]
        wait_for(lambda: job_state(job_id) == "COMPLETED", timeout=60, what="the batch job done")
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, check=False)
        subprocess.run(["scontrol", "update", "nodename=h1,h2", "state=resume"], check=False)
        for segment in Path("/dev/shm").glob("mpich_shm_*"):
            segment.unlink(missing_ok=True)
