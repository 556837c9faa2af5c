"""Running the workload catalogue (tests/workloads/catalogue) on the testbed: each workload's
ranks launched as one crctl job, then checkpointed with the ranks left running, checkpointed
and restarted on other hosts, and moved once more; after each step every rank must go on
making verified progress with no error of its own.

A workload's program checks itself (tests/workloads/catalogue's contract): it writes a JSON
status with a monotonic ``progress`` count of operations it verified and the ``errors`` it
found. The runner only reads those, so a program from anyone can be added to the catalogue.

A workload whose Spec names a ``user`` is launched by that user (``runuser`` running the CLI,
so the job is theirs and its ranks run as them; root checkpoints and restarts it as an admin).
One whose ``launcher`` is ``"mpirun"`` is one MPI job started as ``crctl mpirun`` does (crctl
rank 0 mpiexec, then one proxy per host; ``ranks`` MPI processes, one per host), each MPI
process writing the status of its MPI rank."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from cli.client import CoordinatorClient
from cli.mpi_commands import start_mpi_job
from crctl.errors import CrctlError
from crctl.v1 import coordinator_pb2
from testbed.bed import State
from testbed.ringjob import read_status

BASE_PORT = 7300
STEP_PROGRESS = 20  # verified operations every rank must add after each step
STEP_TIMEOUT = 60.0
STEPS = ("leave-running", "restart elsewhere", "second move")
ROOT = Path(__file__).resolve().parent.parent  # the checkout: PYTHONPATH of the programs
RUNUSER = "/usr/sbin/runuser"
MPICH_SEGMENTS = Path("/dev/shm")  # mpich_shm_*: a killed MPI rank leaves its own behind


class Spec(Protocol):
    """What the runner needs of a catalogue entry (tests.workloads.catalogue.Spec has it)."""

    @property
    def name(self) -> str: ...
    @property
    def ranks(self) -> int: ...
    @property
    def extra_args(self) -> tuple[str, ...]: ...
    @property
    def module(self) -> str: ...
    @property
    def user(self) -> str | None: ...
    @property
    def launcher(self) -> Literal["ranks", "mpirun"]: ...
    @property
    def packed(self) -> bool: ...
    @property
    def refused(self) -> str: ...


@dataclass
class Result:
    workload: str
    ranks: int
    steps: dict[str, str] = field(default_factory=dict)  # step -> "ok" or why not
    seconds: float = 0.0
    refusal: str = ""  # the reason its checkpoint was refused with, as its Spec documents

    @property
    def passed(self) -> bool:
        if self.refusal:
            return True
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


def _argv(spec: Spec, job: WorkloadJob, rank: int | str, addresses: list[str]) -> list[str]:
    """Rank ``rank``'s command (an MPI job's: ``rank`` "{rank}", which each process replaces
    with its MPI rank)."""
    return [
        sys.executable,
        "-m",
        spec.module,
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
        str(job.status_dir / f"work-{rank}"),
        *spec.extra_args,
    ]


def _prepare(job: WorkloadJob) -> None:
    """The job's folder, with an empty work dir per rank (none left from an earlier run),
    owned by the workload's user if it has one."""
    job.status_dir.mkdir(parents=True, exist_ok=True)
    for old in job.status_dir.glob("rank-*.json"):
        old.unlink()
    folders = [job.status_dir]
    for rank in range(job.spec.ranks):
        work = job.status_dir / f"work-{rank}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        folders.append(work)
    if job.spec.user is not None:
        entry = pwd.getpwnam(job.spec.user)
        for folder in folders:
            os.chown(folder, entry.pw_uid, entry.pw_gid)


def _launch_as(
    state: State, user: str, job: str, host: str, rank: int, argv: list[str], cwd: Path
) -> None:
    """Launch one rank as ``user``: the CLI run by them (runuser drops every credential), so
    the coordinator sees them call and the job is theirs."""
    entry = pwd.getpwnam(user)
    api = state.api_address
    env = {
        "HOME": entry.pw_dir,
        "USER": user,
        "LOGNAME": user,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(ROOT),
        **(
            {"CRCTL_API_SOCKET": api.removeprefix("unix:")}
            if api.startswith("unix:")
            else {"CRCTL_API_ADDRESS": api}
        ),
    }
    command = [
        RUNUSER, "-u", user, "--", sys.executable, "-m", "cli", "launch", "--job", job,
        "--host", host, "--rank", str(rank), "--cwd", str(cwd), "--", *argv,
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command, env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
        )
    except subprocess.TimeoutExpired:
        raise StepFailed(f"launch of rank {rank} as {user}: no answer in 60s") from None
    if done.returncode != 0:
        raise StepFailed(f"launch of rank {rank} as {user}: {done.stderr.strip()[-500:]}")


def _launch(
    state: State,
    client: CoordinatorClient,
    job: WorkloadJob,
    hosts: list[str],
    addresses: list[str],
) -> None:
    spec = job.spec
    if spec.launcher == "mpirun":
        start_mpi_job(
            client,
            job.job,
            hosts,
            ranks_per_host=1,
            n=spec.ranks,
            command=_argv(spec, job, "{rank}", addresses),
            extra_env={"PYTHONPATH": str(ROOT)},
        )
        return
    for rank, host in enumerate(hosts):
        argv = _argv(spec, job, rank, addresses)
        if spec.user is None:
            client.launch(job.job, host, rank, argv, {})
        else:
            work = job.status_dir / f"work-{rank}"
            _launch_as(state, spec.user, job.job, host, rank, argv, work)


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
    disjoint sets of ``spec.ranks`` hosts (one rank per host), or of one host each for a packed
    workload (its ranks together)."""
    if spec.packed:
        if len(hosts) < 3:
            raise CrctlError(f"workload {spec.name} needs 3 hosts, the testbed has {len(hosts)}")
        return [[host] * spec.ranks for host in hosts[:3]]
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
    _prepare(job)
    addresses = [state.hosts[h].address for h in first]
    segments = set(MPICH_SEGMENTS.glob("mpich_shm_*"))
    with CoordinatorClient(state.api_address, timeout=60) as client:
        try:
            _launch(state, client, job, first, addresses)
            job.wait_for_progress([0] * spec.ranks, 10, STEP_TIMEOUT)
            steps: list[tuple[str, Callable[[], None]]] = [
                ("leave-running", lambda: _checkpoint(client, job.job, leave_running=True)),
                ("restart elsewhere", lambda: _move(client, job.job, first, second)),
                ("second move", lambda: _move(client, job.job, second, third)),
            ]
            if spec.refused:
                _expect_refusal(client, job, result)
                steps = []
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
    if spec.launcher == "mpirun":
        for segment in set(MPICH_SEGMENTS.glob("mpich_shm_*")) - segments:
            segment.unlink(missing_ok=True)
    result.seconds = time.monotonic() - started
    return result


def _expect_refusal(client: CoordinatorClient, job: WorkloadJob, result: Result) -> None:
    """A workload crctl cannot carry: its checkpoint is refused, with the reason its Spec
    says, and it runs on as if nothing had happened."""
    before = job.progress()
    outcome = client.checkpoint_outcome(job.job, leave_running=True)
    reason = outcome.reason if outcome is not None else "no outcome"
    if outcome is None or outcome.committed:
        result.steps["leave-running"] = "committed, but it must be refused"
    elif job.spec.refused not in reason:
        result.steps["leave-running"] = f"refused, but not as documented: {reason}"
    else:
        try:
            job.wait_for_progress(before, STEP_PROGRESS, STEP_TIMEOUT)
        except StepFailed as exc:
            result.steps["leave-running"] = f"refused, then stopped: {exc}"
            return
        result.refusal = reason
        result.steps["leave-running"] = f"refused: {reason}"


def _move(client: CoordinatorClient, job: str, old: list[str], new: list[str]) -> None:
    _checkpoint(client, job, leave_running=False)
    _restart(client, job, dict(zip(old, new, strict=True)))
