"""How the testbed's workload runner launches a catalogue entry, without a testbed: rank by rank
through the coordinator (as root), by the entry's user through the CLI run by that user, or as
one MPI job; in a job folder whose work dirs start empty and belong to whoever runs the ranks."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from cli.client import CoordinatorClient
from testbed import workloads
from testbed.bed import Host, State
from tests.workloads.catalogue import WORKLOADS

HOSTS = ["h1", "h2"]
ADDRESSES = ["198.18.0.11", "198.18.0.12"]


class FakeClient:
    def __init__(self) -> None:
        self.launched: list[tuple[str, str, int, list[str]]] = []

    def launch(self, job: str, host: str, rank: int, argv: list[str], env: object) -> None:
        self.launched.append((job, host, rank, list(argv)))


def state(tmp: Path) -> State:
    hosts = {h: Host(h, f"ns-{h}", f"veth-{h}", a) for h, a in zip(HOSTS, ADDRESSES, strict=True)}
    return State(str(tmp), "unix:/run/crctl/api.sock", "tcp://x:1", 1.0, 5.0, hosts=hosts)


def job_of(name: str, tmp: Path) -> workloads.WorkloadJob:
    return workloads.WorkloadJob(f"wl-{name}", WORKLOADS[name], tmp / "jobs" / name)


def test_a_root_workload_runs_its_program_rank_by_rank_in_empty_work_dirs(tmp_path: Path) -> None:
    job = job_of("big_memory_1g", tmp_path)
    (job.status_dir / "work-0").mkdir(parents=True)
    (job.status_dir / "work-0" / "left-from-last-run").write_text("x")
    workloads._prepare(job)
    client = FakeClient()
    workloads._launch(
        state(tmp_path), cast(CoordinatorClient, client), job, HOSTS[:1], ADDRESSES[:1]
    )
    [(name, host, rank, argv)] = client.launched
    assert (name, host, rank) == ("wl-big_memory_1g", "h1", 0)
    assert argv[:3] == [sys.executable, "-m", "tests.workloads.catalogue.big_memory"]
    assert argv[-2:] == ["--memory-mib", "1024"]
    assert list((job.status_dir / "work-0").iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chowns to user postgres")
def test_a_user_workload_is_launched_by_its_user_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[list[str], dict[str, Any]]] = []

    def run(command: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
        calls.append((command, options))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", run)
    job = job_of("postgres", tmp_path)
    workloads._prepare(job)
    client = FakeClient()
    workloads._launch(state(tmp_path), cast(CoordinatorClient, client), job, HOSTS, ADDRESSES)
    assert client.launched == []  # nothing launched as root
    postgres = pwd.getpwnam("postgres")
    for rank, (command, options) in enumerate(calls):
        work = job.status_dir / f"work-{rank}"
        assert command[:4] == [workloads.RUNUSER, "-u", "postgres", "--"]
        assert command[5:15] == [
            "-m", "cli", "launch", "--job", "wl-postgres", "--host", HOSTS[rank],
            "--rank", str(rank), "--cwd",
        ]  # fmt: skip
        assert "tests.workloads.catalogue.postgres" in command
        assert options["env"]["CRCTL_API_SOCKET"] == "/run/crctl/api.sock"
        assert options["env"]["PYTHONPATH"] == str(workloads.ROOT)
        assert options["env"]["HOME"] == postgres.pw_dir
        assert work.stat().st_uid == postgres.pw_uid
    assert len(calls) == 2
    assert job.status_dir.stat().st_uid == postgres.pw_uid  # the ranks write their status there


def test_an_mpi_workload_is_one_mpi_job_whose_processes_fill_in_their_rank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: dict[str, Any] = {}

    def start_mpi_job(client: object, job: str, names: list[str], **options: Any) -> None:
        started.update(options, job=job, names=names)

    monkeypatch.setattr(workloads, "start_mpi_job", start_mpi_job)
    job = job_of("mpi_ring", tmp_path)
    workloads._prepare(job)
    client = FakeClient()
    workloads._launch(state(tmp_path), cast(CoordinatorClient, client), job, HOSTS, ADDRESSES)
    assert client.launched == []
    assert (started["job"], started["names"], started["n"]) == ("wl-mpi_ring", HOSTS, 2)
    assert started["ranks_per_host"] == 1
    assert started["extra_env"] == {"PYTHONPATH": str(workloads.ROOT)}
    command = started["command"]
    assert command[command.index("--rank") + 1] == "{rank}"
    assert command[command.index("--status") + 1] == str(job.status_dir / "rank-{rank}.json")
    assert command[command.index("--work-dir") + 1] == str(job.status_dir / "work-{rank}")
    assert sorted(p.name for p in job.status_dir.iterdir()) == ["work-0", "work-1"]
