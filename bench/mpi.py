"""Benchmark: checkpoint and restart of a 4-rank MPI job (MPICH, mpi4py; examples/mpi_ring.py
with 64 MiB per rank) run by `crctl mpirun` on 4 emulated hosts, against plain CRIU on the same
processes in the same run: `criu dump --leave-running` of every process tree of the job at
once, and `criu restore` of every tree of the same checkpoint at once, in place. Also what the
job felt: its longest gap between two steps around each operation.

    .venv/bin/python bench/mpi.py [--memory-mib 64] [--repeat 5] [--store-on-disk]

The job's process trees are crctl's ranks: mpiexec, and one MPI proxy per host with its MPI
rank. Plain CRIU dumps the same trees (from their PID-namespace inits) without freezing them
together: what it writes is no consistent checkpoint, only the raw tool's cost. A plain restore
puts the trees back where they were dumped (no other hosts, no verification, no rewiring), so
its row is the floor a restart elsewhere pays on top of."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from restart import checkpoint
from store import add_option, bench_testbed

from agent import images
from agent.freezer import V1_ROOT as FREEZER
from cli.client import CoordinatorClient
from crctl.v1 import coordinator_pb2
from testbed import bed, netns

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mpi_ring.py"
JOB = "bench-mpi"
OLD, NEW = ["h1", "h2", "h3", "h4"], ["h5", "h6", "h7", "h8"]


class Job:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def statuses(self) -> list[dict[str, object]]:
        found = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                found.append(json.loads(path.read_text()))
            except json.JSONDecodeError:
                continue
        return found

    def step(self) -> int:
        steps = [int(str(s["step"])) for s in self.statuses()]
        return min(steps) if len(steps) == 4 else 0

    def wait_for_steps(self, more: int, timeout: float = 60) -> None:
        target = self.step() + more
        deadline = time.monotonic() + timeout
        while self.step() < target:
            if time.monotonic() > deadline:
                raise SystemExit(f"the MPI job made no progress (step {self.step()})")
            time.sleep(0.005)

    def first_progress_after(self, since: float, timeout: float = 60) -> float:
        """Seconds from ``since`` until every rank published a step after it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stamps = [float(str(s["at"])) for s in self.statuses()]
            if len(stamps) == 4 and min(stamps) > since:
                return min(stamps) - since
            time.sleep(0.001)
        raise SystemExit("the MPI job made no progress after the restart")

    def longest_stall(self, since: float) -> float:
        return max(
            (
                gap
                for s in self.statuses()
                for ended, gap in s.get("stalls", [])  # type: ignore[attr-defined]
                if ended >= since
            ),
            default=0.0,
        )


def trees(client: CoordinatorClient) -> dict[int, tuple[str, int]]:
    """crctl rank -> (host, the PID-namespace init CRIU dumps it from)."""
    found = {}
    for rank in client.job(JOB).ranks:
        status = Path(f"/proc/{rank.pid}/status").read_text()
        found[rank.rank] = (rank.host, int(status.split("PPid:")[1].split()[0]))
    return found


def plain_dump(state: bed.State, pids: dict[int, tuple[str, int]], scratch: Path) -> float:
    folder = scratch / uuid.uuid4().hex[:8]
    commands = []
    for rank, (host, pid) in pids.items():
        (folder / str(rank)).mkdir(parents=True)
        commands.append([*netns.nsenter_prefix(state.hosts[host].namespace), "criu", "dump",
                         "-t", str(pid), "-D", str(folder / str(rank)), "--tcp-established",
                         "--leave-running", "-o", "dump.log"])  # fmt: skip
    started = time.perf_counter()
    running = [
        subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands
    ]
    failures = [p.communicate()[1] for p in running if p.wait() != 0]
    wall = time.perf_counter() - started
    shutil.rmtree(folder)
    if failures:
        raise SystemExit(f"plain criu dump failed: {failures[0].decode()[-400:]}")
    return wall


RESTORE_TIMEOUT = 30.0
LOCK = """table inet crctl-bench-lock {
    chain in { type filter hook input priority -300; policy drop; }
    chain out { type filter hook output priority -300; policy drop; }
}"""


def _nft(state: bed.State, host: str, script: str) -> None:
    prefix = netns.nsenter_prefix(state.hosts[host].namespace)
    subprocess.run([*prefix, "nft", "-f", "-"], input=script.encode(), check=True)


def plain_restore(
    state: bed.State, checkpoint_dir: Path, hosts: dict[int, str], scratch: Path, job: Job
) -> tuple[float, float]:
    """criu restore of a copy of every tree's images where it was dumped, all at once: the
    seconds until every restore returned, and until the job stepped on."""
    commands = []
    for rank, host in hosts.items():
        copy = scratch / f"restore-{rank}"
        shutil.rmtree(copy, ignore_errors=True)
        images.make_working_copy(checkpoint_dir / f"rank-{rank}", copy)
        (FREEZER / "crctl" / JOB / f"rank-{rank}").mkdir(parents=True, exist_ok=True)
        commands.append((copy / "pid", [*netns.nsenter_prefix(state.hosts[host].namespace),
                         "criu", "restore", "-D", str(copy), "--tcp-established", "-d",
                         "--pidfile", str(copy / "pid"), "-o", "restore.log"]))  # fmt: skip
    # Trees restored each on its own would talk to trees not restored yet (a reset ends the
    # job): every host drops all traffic until every restore returned, as crctl's lock does.
    for host in set(hosts.values()):
        _nft(state, host, LOCK)
    since = time.time()
    started = time.perf_counter()
    running = [
        subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _, c in commands
    ]
    failures = []
    for process in running:
        try:
            _, err = process.communicate(timeout=RESTORE_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
            err += f"\n(criu restore hung past {RESTORE_TIMEOUT:.0f}s)".encode()
        if process.returncode != 0:
            failures.append(err)
    returned = time.perf_counter() - started
    for host in set(hosts.values()):
        _nft(state, host, "delete table inet crctl-bench-lock")
    try:
        progress = job.first_progress_after(since, timeout=20) if not failures else 0.0
    finally:
        for pidfile, _ in commands:
            if pidfile.exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pidfile.read_text()), signal.SIGKILL)
        time.sleep(0.2)
    for host in set(hosts.values()):  # CRIU's own lock, left when the restored trees die
        subprocess.run([*netns.nsenter_prefix(state.hosts[host].namespace), "nft", "flush",
                        "ruleset"], check=False)  # fmt: skip
    if failures:
        raise SystemExit(f"plain criu restore failed: {failures[0].decode()[-400:]}")
    return returned, progress


def restart(client: CoordinatorClient, mapping: dict[str, str], job: Job) -> tuple[float, float]:
    since = time.time()
    started = time.perf_counter()
    outcome = client.restart_outcome(coordinator_pb2.RestartRequest(job=JOB, host_map=mapping))
    wall = time.perf_counter() - started
    if outcome is None or not outcome.restarted:
        raise SystemExit(f"restart failed: {outcome}")
    return wall, job.first_progress_after(since)


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:9.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory-mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    add_option(parser)
    args = parser.parse_args()
    rows: dict[str, list[float]] = {k: [] for k in (
        "crctl checkpoint --leave-running, API", "plain criu dump, all trees",
        "stall crctl", "stall plain", "crctl restart on 4 other hosts, API",
        "crctl restart, request to every rank stepping", "plain criu restore in place, returned",
        "plain criu restore, request to every rank stepping")}  # fmt: skip
    with bench_testbed(len(OLD + NEW), on_disk=args.store_on_disk) as (state, scratch):
        folder = scratch / "status"
        folder.mkdir()
        subprocess.run([sys.executable, "-m", "cli", "mpirun", "--job", JOB, "--hosts",
                        ",".join(OLD), "--", sys.executable, str(EXAMPLE), "--steps", "100000000",
                        "--interval", "0.002", "--memory-mib", str(args.memory_mib),
                        "--status", str(folder)], check=True, capture_output=True)  # fmt: skip
        job = Job(folder)
        job.wait_for_steps(50, timeout=120)
        with CoordinatorClient(state.api_address, timeout=120) as client:
            pids = trees(client)
            checkpoint(client, JOB, leave_running=True)  # warm-up (CRIU's own pages)
            plain_dump(state, pids, scratch)
            for turn in range(args.repeat):
                for side in ("crctl", "plain") if turn % 2 == 0 else ("plain", "crctl"):
                    since = time.time()
                    if side == "crctl":
                        started = time.perf_counter()
                        checkpoint(client, JOB, leave_running=True)
                        rows["crctl checkpoint --leave-running, API"].append(
                            time.perf_counter() - started
                        )
                    else:
                        rows["plain criu dump, all trees"].append(plain_dump(state, pids, scratch))
                    job.wait_for_steps(20)
                    rows[f"stall {side}"].append(job.longest_stall(since))
            here = OLD
            plain_failure = ""
            for _ in range(args.repeat):
                outcome = checkpoint(client, JOB, leave_running=False)
                stopped = {r.rank: r.host for r in client.job(JOB).ranks}
                store = Path(state.directory) / "checkpoints" / JOB / outcome.checkpoint
                if not plain_failure:
                    try:
                        returned, stepping = plain_restore(state, store, stopped, scratch, job)
                        rows["plain criu restore in place, returned"].append(returned)
                        rows["plain criu restore, request to every rank stepping"].append(stepping)
                    except SystemExit as exc:
                        plain_failure = str(exc)
                there = NEW if here == OLD else OLD
                wall, first = restart(client, dict(zip(here, there, strict=True)), job)
                rows["crctl restart on 4 other hosts, API"].append(wall)
                rows["crctl restart, request to every rank stepping"].append(first)
                here = there
                job.wait_for_steps(20)
            client.kill(JOB)
    print(f"\nMPI job: 4 ranks (MPICH over TCP) on 4 emulated hosts, {args.memory_mib} MiB per "
          f"rank, crctl ranks: mpiexec + 4 proxies; medians of {args.repeat}")  # fmt: skip
    for name, values in rows.items():
        print(f"{name:<52} {ms(values) if values else '   failed'}")
    if plain_failure:
        print(f"plain criu restore of the job's trees, each on its own: {plain_failure}")
    dump = statistics.median(rows["crctl checkpoint --leave-running, API"]) / statistics.median(
        rows["plain criu dump, all trees"]
    )
    stall = statistics.median(rows["stall crctl"]) / max(
        statistics.median(rows["stall plain"]), 1e-9
    )
    plain_first = rows["plain criu restore, request to every rank stepping"]
    crctl_first = rows["crctl restart, request to every rank stepping"]
    first = statistics.median(crctl_first) / statistics.median(plain_first) if plain_first else 0
    print(f"{'ratio checkpoint API / plain dump':<52} {dump:9.2f}")
    print(f"{'ratio stall crctl / plain':<52} {stall:9.2f}")
    if plain_first:
        print(f"{'ratio restart elsewhere / plain restore in place':<52} {first:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
