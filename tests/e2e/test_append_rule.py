"""A file open for appending that grew after a leave-running checkpoint (issue 14), with real
CRIU on hosts that share no storage but the job's folder: the job is checkpointed with its
ranks left running, appends on, is killed, and is restarted on another host from that
checkpoint. CRIU reopens an O_WRONLY|O_APPEND file as it finds it (it records no size for
one), so the restart works and the file holds both lives' lines, in order: the abandoned
life's to its end, then the restored process's, numbering on from its restored counter."""

from __future__ import annotations

import sys

import pytest

from cli.client import CoordinatorClient
from testbed import bed
from testbed.workloads import BASE_PORT, WorkloadJob
from tests.workloads.catalogue import WORKLOADS

from .helpers import crctl, crctl_json, wait_for

pytestmark = pytest.mark.e2e


def lines(path: str) -> list[int]:
    with open(path) as fh:
        return [int(line) for line in fh.read().splitlines() if line.strip()]


def test_a_restart_from_a_leave_running_checkpoint_keeps_what_the_file_gained_since(
    private6: bed.State,
) -> None:
    spec = WORKLOADS["append_file"]
    job = WorkloadJob("append-rule", spec, private6.dir / "jobs" / "append-rule")
    work = job.status_dir / "work-0"
    work.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", spec.module, "--rank", "0", "--ranks", "1",
            "--addresses", private6.hosts["h1"].address, "--port", str(BASE_PORT),
            "--status", str(job.status_dir / "rank-0.json"), "--work-dir", str(work)]  # fmt: skip
    log = str(work / "appended.log")
    with CoordinatorClient(private6.api_address, timeout=60) as client:
        client.launch(job.job, "h1", 0, argv, {})
        try:
            job.wait_for_progress([0], 10, 30)
            checkpoint = crctl_json("checkpoint", job.job, "--leave-running")["checkpoint"]
            at_checkpoint = max(lines(log))
            job.wait_for_progress(job.progress(), 40, 30)  # the first life appends on
            crctl("kill", job.job)
            abandoned = lines(log)
            assert max(abandoned) > at_checkpoint + 20

            crctl("restart", job.job, "--checkpoint", checkpoint, "--map", "h1=h2")
            assert crctl_json("status", job.job)["ranks"][0]["host"] == "h2"
            wait_for(lambda: len(lines(log)) > len(abandoned) + 20, timeout=30,
                     what="the restored process appending")  # fmt: skip
            assert job.errors() == []
            now = lines(log)
            assert now[: len(abandoned)] == abandoned  # nothing the first life wrote is lost
            restored = now[len(abandoned) :]
            assert restored[0] <= at_checkpoint + 2  # numbering on from the restored counter
            assert restored == list(range(restored[0], restored[0] + len(restored)))
        finally:
            if client.job(job.job).state == "running":
                client.kill(job.job)
