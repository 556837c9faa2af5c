"""Benchmark: crctl checkpoint of a 4-rank TCP ring on 4 emulated hosts against plain parallel
`criu dump` of the same ranks, in the same run.

    .venv/bin/python bench/checkpoint.py [--memory-mib 64,256,1024] [--ranks 4] [--repeat 5]

Prints a table with a row per memory size (medians over --repeat runs; rows too big for this
machine's memory run with fewer ranks, as the table shows). Both sides keep their last three
dumps, as crctl keeps its checkpoints: on this VM a page the guest has not used lately (freed
pages are handed back to the hypervisor within seconds) is slow to fault in, so a dump into
memory just freed (what the plain dump did when it deleted its last images first) runs 2-6x
faster at 1 GiB than one into fresh memory (what crctl's retention makes it do): measured
here, 0.5-1.0 s against 1.2-3.3 s for the same 1 GiB process and plain `criu dump` alone.
Warming the store's memory once beforehand does not last. The two sides take turns, each first
every other turn, and the table gives the range of the turn-by-turn stall ratios besides their
medians: from 256 MiB per rank both sides swing several times over from turn to turn here.
Columns:
  * crctl API wall time: the Checkpoint RPC from request to outcome (leave-running);
  * crctl CLI wall time: `crctl checkpoint --leave-running` as a batch script runs it;
  * frozen: the longest time a host's ranks stood still (from its freeze to its release), as
    the agents measure it;
  * plain criu dump: `criu dump --leave-running --tcp-established` of every rank in parallel,
    each in its host's network namespace, started together, until the last one returns;
  * ring stall: what the application felt, seen from inside: the longest gap between two
    tokens any rank received around the operation (the ring passes a token every 10 ms per
    hop, so about 40 ms is the normal gap on 4 ranks), for crctl and for the plain dump;
  * ratios: ring stall crctl / plain (the goal: <= 1.05), frozen / plain criu dump wall time,
    and crctl API wall time / plain criu dump. The API time includes what plain CRIU does not
    do: the two-phase round trips and the digest (BLAKE3) of every image file for the manifest
    (after the release).
Needs root; brings up its own testbed and removes it afterwards."""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from store import add_option, bench_testbed

from cli.client import CoordinatorClient
from testbed import bed, netns
from testbed.ringjob import launch_ring


def crctl_api(api_address: str, job: str) -> tuple[float, float]:
    with CoordinatorClient(api_address) as client:
        started = time.perf_counter()
        outcome = client.checkpoint_outcome(job, leave_running=True)
        wall = time.perf_counter() - started
    if outcome is None or not outcome.committed:
        raise SystemExit(f"checkpoint failed: {outcome}")
    return wall, outcome.frozen_seconds


def crctl_cli(job: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "cli", "checkpoint", job, "--leave-running"],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("PPid:")[1].split()[0])


def plain_dump(state: bed.State, pids: dict[str, int], scratch: Path) -> float:
    """Every rank dumped by plain CRIU at once; the dumps are kept as crctl keeps its
    checkpoints (the newest RETAIN, older ones removed after the new one is written), so that
    both sides write into memory alike (see the module's docstring)."""
    runs = sorted(scratch.iterdir(), key=lambda p: p.stat().st_mtime)
    folder = scratch / uuid.uuid4().hex[:8]
    folder.mkdir()
    commands = []
    for host, pid in pids.items():
        images = folder / host
        images.mkdir()
        commands.append(
            [
                *netns.nsenter_prefix(state.hosts[host].namespace),
                "criu",
                "dump",
                "-t",
                str(pid),
                "-D",
                str(images),
                "--tcp-established",
                "--leave-running",
                "-o",
                "dump.log",
            ]
        )
    started = time.perf_counter()
    running = [
        subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands
    ]
    failures = [p.communicate()[1] for p in running if p.wait() != 0]
    wall = time.perf_counter() - started
    for old in runs[: max(0, len(runs) + 1 - RETAIN)]:
        shutil.rmtree(old)
    if failures:
        raise SystemExit(f"plain criu dump failed: {failures[0].decode()}")
    return wall


@dataclass
class Row:
    ranks: int
    memory_mib: int
    repeat: int
    api: list[float] = field(default_factory=list)
    cli: list[float] = field(default_factory=list)
    frozen: list[float] = field(default_factory=list)
    plain: list[float] = field(default_factory=list)
    api_stall: list[float] = field(default_factory=list)
    plain_stall: list[float] = field(default_factory=list)


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


RETAIN = 3  # what the testbed's coordinator keeps per job (retain_checkpoints)

# What one row holds in memory at once, in units of its ranks' memory: the ranks themselves,
# crctl's retained checkpoints and the one being written, and as many plain dumps.
FOOTPRINT = 1 + 2 * (RETAIN + 1)


def measure(state: bed.State, scratch: Path, row: Row) -> Row:
    hosts = list(state.hosts)[: row.ranks]
    job = f"bench-{row.ranks}x{row.memory_mib}"
    ring = launch_ring(state, job, hosts, memory_mib=row.memory_mib)
    ring.wait_for_tokens(10, timeout=120)
    with CoordinatorClient(state.api_address) as client:
        # CRIU dumps a rank from its PID-namespace init (tini), the parent of the PID shown
        pids = {r.host: parent_pid(r.pid) for r in client.job(job).ranks}
    crctl_api(state.api_address, job)  # warm-up: first dumps page in CRIU itself
    plain_dump(state, pids, scratch)
    ring.wait_for_progress(tokens=5, timeout=30)

    def crctl() -> None:
        since = time.time()
        wall, held = crctl_api(state.api_address, job)
        ring.wait_for_progress(tokens=5, timeout=30)
        row.api.append(wall)
        row.frozen.append(held)
        row.api_stall.append(ring.longest_stall(since))

    def plain() -> None:
        since = time.time()
        row.plain.append(plain_dump(state, pids, scratch))
        ring.wait_for_progress(tokens=5, timeout=30)
        row.plain_stall.append(ring.longest_stall(since))

    # In turns, each side first every other time: whatever the machine does meanwhile (this
    # VM's cost of faulting memory in varies several times over between runs) falls on both.
    for turn in range(row.repeat):
        for side in (crctl, plain) if turn % 2 == 0 else (plain, crctl):
            side()
    for _ in range(2):  # the CLI, as a batch script runs it (not part of the ratios)
        row.cli.append(crctl_cli(job))
        ring.wait_for_progress(tokens=5, timeout=30)
    if ring.errors():
        raise SystemExit(f"the ring recorded errors: {ring.errors()}")
    with CoordinatorClient(state.api_address) as client:
        client.kill(job)
    for old in scratch.iterdir():
        shutil.rmtree(old)
    return row


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:9.1f}"


def ratio(a: list[float], b: list[float]) -> str:
    return f"{statistics.median(a) / statistics.median(b):6.2f}"


def spread(a: list[float], b: list[float]) -> str:
    """The range of the turn-by-turn ratios a[i] / b[i]."""
    ratios = [x / y for x, y in zip(a, b, strict=True) if y > 0]
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def print_rows(rows: list[Row], on_disk: bool) -> None:
    print(
        f"\ncheckpoint of a TCP ring (leave-running), medians; store on "
        f"{'disk' if on_disk else 'tmpfs'}; both sides keep their last {RETAIN} dumps"
    )
    print(
        f"{'ranks':>5} {'MiB/rank':>8} {'n':>3} | {'API ms':>9} {'CLI ms':>9} {'frozen ms':>9} "
        f"{'plain ms':>9} | {'stall crctl':>11} {'stall plain':>11} | "
        f"{'stall ratio':>11} {'(range)':>11} {'frozen/plain':>12} {'API/plain':>9}"
    )
    for r in rows:
        print(
            f"{r.ranks:>5} {r.memory_mib:>8} {r.repeat:>3} | {ms(r.api)} {ms(r.cli)} "
            f"{ms(r.frozen)} {ms(r.plain)} | {ms(r.api_stall):>11} {ms(r.plain_stall):>11} | "
            f"{ratio(r.api_stall, r.plain_stall):>11} {spread(r.api_stall, r.plain_stall):>11} "
            f"{ratio(r.frozen, r.plain):>12} "
            f"{ratio(r.api, r.plain):>9}"
        )
    print(
        "stall: the ring's longest gap between two tokens around the operation (what the "
        "application felt); goal: stall ratio crctl / plain <= 1.05. frozen: freeze to release "
        "on the slowest host. API: request to outcome, including the two-phase round trips and "
        "the BLAKE3 digests of every image (after the release)."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument(
        "--memory-mib",
        default="64,256,1024",
        help="MiB per rank, a comma-separated sweep (default 64,256,1024)",
    )
    parser.add_argument("--repeat", type=int, default=7, help="turns per row (5 from 512 MiB)")
    add_option(parser)
    args = parser.parse_args()
    sizes = [int(m) for m in args.memory_mib.split(",") if m]
    budget = available_bytes() * 7 // 10
    rows = []
    for size in sizes:
        ranks = args.ranks
        while ranks > 1 and ranks * size * 2**20 * FOOTPRINT > budget:
            ranks -= 1  # fewer ranks for the big rows: this machine's memory
        rows.append(Row(ranks, size, args.repeat if size < 512 else min(args.repeat, 5)))
    with bench_testbed(max(r.ranks for r in rows), on_disk=args.store_on_disk) as (
        state,
        scratch,
    ):
        for row in rows:
            measure(state, scratch, row)
            print(
                f"  {row.ranks} x {row.memory_mib} MiB: stall ratio "
                f"{ratio(row.api_stall, row.plain_stall).strip()}",
                flush=True,
            )
    print_rows(rows, args.store_on_disk)
    return 0


if __name__ == "__main__":
    sys.exit(main())
