"""Running the workload catalogue (tests/workloads/catalogue) on the testbed: each workload's
ranks launched as one crctl job, then checkpointed with the ranks left running, checkpointed
and restarted on other hosts, and moved once more; after each step every rank must go on
making verified progress with no error of its own.

A workload's program checks itself (tests/workloads/catalogue's contract): it writes a JSON
status with a monotonic ``progress`` count of operations it verified and the ``errors`` it
found. The runner only reads those, so a program from anyone can be added to the catalogue."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cli.client import CoordinatorClient
from crctl.errors import CrctlError
from crctl.v1 import coordinator_pb2
from testbed.bed import State
from testbed.ringjob import read_status

BASE_PORT = 7300
STEP_PROGRESS = 20  # verified operations every rank must add after each step
STEP_TIMEOUT = 60.0
STEPS = ("leave-running", "restart elsewhere", "second move")


class Spec(Protocol):
    """What the runner needs of a catalogue entry (tests.workloads.catalogue.Spec has it)."""

    @property
    def name(self) -> str: ...
    @property
    def ranks(self) -> int: ...
    @property
    def extra_args(self) -> tuple[str, ...]: ...


@dataclass
class Result:
    workload: str
    ranks: int
    steps: dict[str, str] = field(default_factory=dict)  # step -> "ok" or why not
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return len(self.steps) == len(STEPS) and all(v == "ok" for v in self.steps.values())


class StepFailed(Exception):
    pass


@dataclass
class WorkloadJob:
    job: str
    spec: Spec
    status_dir: Path

    def status(self, rank: int) -> dict[str, Any]:
        found = read_status(self.status_dir / f"rank-{rank}.json")
        return found if found is not None else {"rank": rank, "progress": 0, "errors": []}

    def statuses(self) -> list[dict[str, Any]]:
        return [self.status(rank) for rank in range(self.spec.ranks)]

    def errors(self) -> list[str]:
        return [f"rank {s.get('rank')}: {e}" for s in self.statuses() for e in s.get("errors", [])]

    def progress(self) -> list[int]:
        return [int(s.get("progress", 0)) for s in self.statuses()]

    def wait_for_progress(self, since: list[int], more: int, timeout: float) -> None:
        """Every rank ``more`` verified operations past ``since``, with no error."""
        deadline = time.monotonic() + timeout
        while True:
            errors = self.errors()
            if errors:
                raise StepFailed("; ".join(errors[:3]))
            now = self.progress()
            if all(n >= s + more for n, s in zip(now, since, strict=True)):
                return
            if time.monotonic() > deadline:
                raise StepFailed(f"no progress in {timeout:.0f}s: {since} -> {now}")
            time.sleep(0.05)


def _argv(spec: Spec, job: WorkloadJob, rank: int, addresses: list[str]) -> list[str]:
    work = job.status_dir / f"work-{rank}"
    work.mkdir(parents=True, exist_ok=True)
    return [
        sys.executable,
        "-m",
        f"tests.workloads.catalogue.{spec.name}",
        "--rank",
        str(rank),
        "--ranks",
        str(spec.ranks),
        "--addresses",
        ",".join(addresses),
        "--port",
        str(BASE_PORT),
        "--status",
        str(job.status_dir / f"rank-{rank}.json"),
        "--work-dir",
        str(work),
        *spec.extra_args,
    ]


def _checkpoint(client: CoordinatorClient, job: str, *, leave_running: bool) -> None:
    outcome = client.checkpoint_outcome(job, leave_running=leave_running)
    if outcome is None or not outcome.committed:
        raise StepFailed(f"checkpoint aborted: {outcome.reason if outcome else 'no outcome'}")


def _restart(client: CoordinatorClient, job: str, host_map: dict[str, str]) -> None:
    request = coordinator_pb2.RestartRequest(
        job=job, host_map=host_map, request_id=uuid.uuid4().hex
    )
    outcome = client.restart_outcome(request)
    if outcome is None or not outcome.restarted:
        where = f" on {outcome.failed_host}" if outcome and outcome.failed_host else ""
        raise StepFailed(f"restart failed{where}: {outcome.reason if outcome else 'no outcome'}")


def host_sets(spec: Spec, hosts: list[str]) -> list[list[str]]:
    """The hosts of the launch, of the restart elsewhere and of the second move: three
    disjoint sets of ``spec.ranks`` hosts (one rank per host)."""
    need = 3 * spec.ranks
    if len(hosts) < need:
        raise CrctlError(
            f"workload {spec.name} has {spec.ranks} ranks: it needs {need} hosts, the testbed "
            f"has {len(hosts)} (crctl testbed up --hosts {need})"
        )
    return [hosts[i * spec.ranks : (i + 1) * spec.ranks] for i in range(3)]


def run(
    state: State, spec: Spec, *, job_prefix: str = "wl", say: Callable[[str], None] = print
) -> Result:
    """One workload through the three steps; the job is killed at the end whatever happened."""
    started = time.monotonic()
    result = Result(spec.name, spec.ranks)
    job = WorkloadJob(
        f"{job_prefix}-{spec.name}".replace("_", "-")[:64],
        spec,
        Path(state.directory) / "jobs" / f"{job_prefix}-{spec.name}",
    )
    first, second, third = host_sets(spec, sorted(state.hosts, key=lambda h: int(h[1:])))
    job.status_dir.mkdir(parents=True, exist_ok=True)
    for old in job.status_dir.glob("rank-*.json"):
        old.unlink()
    addresses = [state.hosts[h].address for h in first]
    with CoordinatorClient(state.api_address, timeout=60) as client:
        try:
            for rank, host in enumerate(first):
                client.launch(job.job, host, rank, _argv(spec, job, rank, addresses), {})
            job.wait_for_progress([0] * spec.ranks, 10, STEP_TIMEOUT)
            steps: list[tuple[str, Callable[[], None]]] = [
                ("leave-running", lambda: _checkpoint(client, job.job, leave_running=True)),
                ("restart elsewhere", lambda: _move(client, job.job, first, second)),
                ("second move", lambda: _move(client, job.job, second, third)),
            ]
            for name, step in steps:
                before = job.progress()
                try:
                    step()
                    job.wait_for_progress(before, STEP_PROGRESS, STEP_TIMEOUT)
                except (StepFailed, CrctlError) as exc:
                    result.steps[name] = str(exc)
                    say(f"{spec.name}: {name}: {exc}")
                    break
                result.steps[name] = "ok"
        except (StepFailed, CrctlError) as exc:
            result.steps["launch"] = str(exc)
            say(f"{spec.name}: launch: {exc}")
        finally:
            try:
                if client.job(job.job).state == "running":
                    client.kill(job.job)
            except CrctlError as exc:
                say(f"{spec.name}: could not kill {job.job}: {exc}")
    result.seconds = time.monotonic() - started
    return result


def _move(client: CoordinatorClient, job: str, old: list[str], new: list[str]) -> None:
    _checkpoint(client, job, leave_running=False)
    _restart(client, job, dict(zip(old, new, strict=True)))
