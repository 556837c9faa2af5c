"""MPI jobs through `crctl mpirun` (real MPICH from PyPI, real mpi4py, real CRIU, the testbed):
every process of the MPI job (mpiexec, the per-host proxies, the ranks) is a crctl rank, so a
checkpoint captures the job whole and a restart on other hosts continues it mid-computation,
with no MPI re-initialisation, to the very result an uninterrupted run computes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed import bed, faultmatrix

from .helpers import SHARED_TMP, crctl, crctl_json, wait_for

pytestmark = pytest.mark.e2e

PROGRAM = Path(__file__).resolve().parents[2] / "examples" / "mpi_ring.py"
MPIEXEC = Path(sys.executable).with_name("mpiexec")
STEPS = 3000
INTERVAL = "0.004"  # seconds per step: the job lasts long enough to be checkpointed twice
_reference: dict[int, str] = {}


def uninterrupted(ranks: int) -> str:
    """The program's result for ``ranks`` ranks, run by plain mpiexec with no crctl."""
    if ranks not in _reference:
        if not os.access(MPIEXEC, os.X_OK):
            pytest.fail(f"{MPIEXEC} is missing: deploy/setup.sh installs MPICH", pytrace=False)
        env = {**os.environ, "MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp",
               "MPIR_CVAR_NOLOCAL": "1"}  # fmt: skip
        run = subprocess.run(
            [MPIEXEC, "-n", str(ranks), sys.executable, PROGRAM, "--steps", str(STEPS)],
            capture_output=True, text=True, timeout=300, env=env, check=False, cwd="/",
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        _reference[ranks] = run.stdout.split("RESULT ")[1].split()[0]
    return _reference[ranks]


class MpiJob:
    def __init__(self, job: str, folder: Path) -> None:
        self.job = job
        self.folder = folder

    def steps(self) -> list[int]:
        found = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                found.append(int(json.loads(path.read_text())["step"]))
            except (json.JSONDecodeError, KeyError):
                found.append(0)
        return found

    def step(self) -> int:
        steps = self.steps()
        return min(steps) if steps else 0

    def wait_for_step(self, step: int, timeout: float = 60) -> None:
        wait_for(lambda: self.step() >= step, timeout=timeout, what=f"{self.job} at step {step}")

    def result(self, timeout: float = 120) -> str:
        path = self.folder / "result"
        wait_for(path.exists, timeout=timeout, what=f"the result of {self.job}")
        return path.read_text().strip()

    def hosts(self) -> list[str]:
        return [r["host"] for r in crctl_json("status", self.job)["ranks"]]


@pytest.fixture
def mpi_job(testbed6: bed.State, request: pytest.FixtureRequest) -> Iterator[Any]:
    """``start(hosts, *options)`` runs the example under `crctl mpirun` as a job named after
    the test; it is killed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="crctl-mpi-", dir=SHARED_TMP))
    segments = set(Path("/dev/shm").glob("mpich_shm_*"))
    name = "mpi-" + request.node.name.removeprefix("test_")[:40].replace("_", "-").strip("-")
    started: list[str] = []

    def start(hosts: str, *options: str) -> MpiJob:
        crctl("mpirun", "--job", name, "--hosts", hosts, *options, "--", sys.executable,
              str(PROGRAM), "--steps", str(STEPS), "--interval", INTERVAL, "--status",
              str(folder), "--result", str(folder / "result"))  # fmt: skip
        started.append(name)
        return MpiJob(name, folder)

    try:
        yield start
    finally:
        for job in started:
            if crctl_json("status", job)["state"] == "running":
                crctl("kill", job, check=False)
        shutil.rmtree(folder, ignore_errors=True)
        # MPICH's per-rank segments: a rank killed (by a stop-mode checkpoint, or a kill)
        # leaves its own behind; a finished job has removed them.
        for segment in set(Path("/dev/shm").glob("mpich_shm_*")) - segments:
            segment.unlink(missing_ok=True)


def test_an_mpi_job_checkpointed_and_moved_mid_run_ends_with_the_uninterrupted_result(
    mpi_job: Any,
) -> None:
    job = mpi_job("h1,h2,h3")
    ranks = crctl_json("status", job.job)["ranks"]
    assert [r["host"] for r in ranks] == ["h1", "h1", "h2", "h3"]  # mpiexec, 3 proxies
    job.wait_for_step(200)

    crctl("checkpoint", job.job, "--leave-running")
    at = job.step()
    job.wait_for_step(at + 100)  # it went on

    crctl("checkpoint", job.job)
    stopped_at = job.step()
    assert stopped_at < STEPS - 200, "the job ended before it could be moved"
    crctl("restart", job.job, "--map", "h1=h4,h2=h5,h3=h6")
    assert job.hosts() == ["h4", "h4", "h5", "h6"]
    job.wait_for_step(stopped_at + 100)
    assert job.result() == uninterrupted(3)
    launcher = crctl_json("status", job.job)["ranks"][0]
    assert launcher["state"] == "exited" and launcher["exit_status"] == 0


def test_two_moves_in_a_row_with_two_ranks_per_host(mpi_job: Any) -> None:
    job = mpi_job("h1,h2", "--ranks-per-host", "2")
    assert len(job.steps()) in (0, 4) and job.hosts() == ["h1", "h1", "h2"]
    job.wait_for_step(150)
    for mapping, hosts in (
        ("h1=h3,h2=h4", ["h3", "h3", "h4"]),
        ("h3=h1,h4=h2", ["h1", "h1", "h2"]),
    ):
        crctl("checkpoint", job.job)
        at = job.step()
        crctl("restart", job.job, "--map", mapping)
        assert job.hosts() == hosts
        job.wait_for_step(at + 100)
    assert len(job.steps()) == 4
    assert job.result() == uninterrupted(4)


def test_an_mpi_rank_killed_during_a_checkpoint_aborts_it_and_leaves_nothing_frozen(
    mpi_job: Any, testbed6: bed.State
) -> None:
    job = mpi_job("h1,h2,h3")
    job.wait_for_step(100)
    fault = faultmatrix.Bed(testbed6)
    fault.arm("agent-h2", "agent.checkpoint.readying", "sleep:3")
    result: dict[str, subprocess.CompletedProcess[str]] = {}
    checkpoint = threading.Thread(
        target=lambda: result.setdefault("run", crctl("checkpoint", job.job, check=False))
    )
    checkpoint.start()
    try:
        # The rank dies once the checkpoint runs (h2 holds it in readying), not before.
        wait_for(
            lambda: crctl_json("operations", "--job", job.job, "--running"),
            timeout=30,
            what="the checkpoint under way",
        )
        proxy = next(r for r in crctl_json("status", job.job)["ranks"] if r["host"] == "h2")
        children = Path(f"/proc/{proxy['pid']}/task/{proxy['pid']}/children").read_text().split()
        os.kill(int(children[0]), signal.SIGKILL)  # the MPI rank under h2's proxy
    finally:
        checkpoint.join(timeout=120)
        fault.disarm()
    run = result["run"]
    assert run.returncode != 0, run.stdout
    assert "aborted" in (run.stdout + run.stderr)
    wait_for(
        lambda: crctl_json("status", job.job)["state"] == "stopped",
        timeout=30,
        what="the MPI job reported ended (mpiexec ends a job whose rank died)",
    )
    assert [c["state"] for c in crctl_json("checkpoints", job.job)] == ["aborted"]
    assert faultmatrix.leftovers(fault) == []


def test_a_restart_onto_hosts_without_mpi_is_refused_in_prepare(mpi_job: Any) -> None:
    """The hosts share this machine's files: hiding MPICH's library from all of them makes
    every target a host without MPI. The checkpoint stays restartable."""
    job = mpi_job("h1,h2,h3")
    job.wait_for_step(100)
    crctl("checkpoint", job.job)
    libraries = sorted(MPIEXEC.parent.parent.glob("lib/libmpi*"))  # the mpich wheel's
    assert libraries, f"MPICH's libraries not found under {MPIEXEC.parent.parent}"
    hidden = [(path, path.with_name(path.name + ".hidden")) for path in libraries]
    for path, away in hidden:
        path.rename(away)
    try:
        refused = crctl("restart", job.job, "--map", "h1=h4,h2=h5,h3=h6", check=False)
    finally:
        for path, away in hidden:
            away.rename(path)
    assert refused.returncode != 0
    assert "prepare" in refused.stderr and "libmpi" in refused.stderr, refused.stderr
    assert crctl_json("status", job.job)["state"] == "stopped"
    crctl("restart", job.job, "--map", "h1=h4,h2=h5,h3=h6")
    assert job.result() == uninterrupted(3)


SHARER = """
import mmap, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(fd, 4096)
memory = mmap.mmap(fd, 4096, mmap.MAP_SHARED)
while True:
    memory[0] = (memory[0] + 1) % 256
    time.sleep(0.01)
"""


def test_memory_shared_between_two_ranks_is_refused_before_anything_is_frozen(
    testbed6: bed.State,
) -> None:
    """What a shared-memory transport between two process trees does; a restart elsewhere
    would split it, so the checkpoint is refused in its prepare step and the job runs on."""
    segment = Path("/dev/shm") / f"crctl-test-{os.getpid()}"  # as h1 sees it
    on_h1 = bed.seen_from_root(testbed6, "h1", segment)
    try:
        for _ in range(2):
            crctl("launch", "--job", "sharing", "--host", "h1", "--", sys.executable, "-c",
                  SHARER, str(segment))  # fmt: skip
        wait_for(on_h1.exists, timeout=10, what="the shared segment")
        refused = crctl("checkpoint", "sharing", check=False)
        assert refused.returncode != 0
        assert "ranks [0, 1] share the memory of " + str(segment) in refused.stdout + refused.stderr
        assert crctl_json("status", "sharing")["state"] == "running"
        assert faultmatrix.leftovers(faultmatrix.Bed(testbed6)) == []
    finally:
        crctl("kill", "sharing", check=False)
        on_h1.unlink(missing_ok=True)


def test_mpirun_wait_exits_with_the_jobs_status(testbed6: bed.State) -> None:
    short = crctl("mpirun", "--job", "mpi-wait", "--hosts", "h1,h2", "--wait", "--",
                  sys.executable, str(PROGRAM), "--steps", "50", check=False)  # fmt: skip
    assert short.returncode == 0, short.stderr
    assert "mpiexec exited 0" in short.stdout
    failing = crctl("mpirun", "--job", "mpi-fail", "--hosts", "h1,h2", "--wait", "--",
                    sys.executable, "-c", "import sys; from mpi4py import MPI; sys.exit(3)",
                    check=False)  # fmt: skip
    assert failing.returncode == 3, (failing.stdout, failing.stderr)
