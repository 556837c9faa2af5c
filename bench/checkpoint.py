"""Benchmark: crctl checkpoint of a 4-rank TCP ring on 4 emulated hosts against plain parallel
`criu dump` of the same ranks, in the same run.

    .venv/bin/python bench/checkpoint.py [--memory-mib 64] [--ranks 4] [--repeat 5]

Prints a table (medians over --repeat runs):
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
from pathlib import Path

from store import add_option, bench_testbed

from cli.client import CoordinatorClient
from testbed import bed, netns
from testbed.ringjob import launch_ring


def crctl_api(grpc_address: str, job: str) -> tuple[float, float]:
    with CoordinatorClient(grpc_address) as client:
        started = time.perf_counter()
        outcome = None
        for event in client.checkpoint(
            job, leave_running=True, timeout=0, request_id=uuid.uuid4().hex
        ):
            if event.WhichOneof("event") == "outcome":
                outcome = event.outcome
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


def plain_dump(state: bed.State, pids: dict[str, int], scratch: Path) -> float:
    for old in scratch.iterdir():
        shutil.rmtree(old)
    commands = []
    for host, pid in pids.items():
        images = scratch / host
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
    if failures:
        raise SystemExit(f"plain criu dump failed: {failures[0].decode()}")
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--memory-mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=7)
    add_option(parser)
    args = parser.parse_args()

    with bench_testbed(args.ranks, on_disk=args.store_on_disk) as (state, scratch):
        hosts = list(state.hosts)
        ring = launch_ring(state, "bench", hosts, memory_mib=args.memory_mib)
        ring.wait_for_tokens(10, timeout=60)
        with CoordinatorClient(state.grpc_address) as client:
            pids = {r.host: r.pid for r in client.job("bench").ranks}
        api, cli, frozen, plain, api_stall, plain_stall = [], [], [], [], [], []
        crctl_api(state.grpc_address, "bench")  # warm-up: first dumps page in CRIU itself
        plain_dump(state, pids, scratch)
        ring.wait_for_progress(tokens=5, timeout=30)
        for _ in range(args.repeat):
            since = time.time()
            wall, held = crctl_api(state.grpc_address, "bench")
            ring.wait_for_progress(tokens=5, timeout=30)
            api.append(wall)
            frozen.append(held)
            api_stall.append(ring.longest_stall(since))
            cli.append(crctl_cli("bench"))
            ring.wait_for_progress(tokens=5, timeout=30)
            since = time.time()
            plain.append(plain_dump(state, pids, scratch))
            ring.wait_for_progress(tokens=5, timeout=30)
            plain_stall.append(ring.longest_stall(since))
        if ring.errors():
            raise SystemExit(f"the ring recorded errors: {ring.errors()}")

    def median(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:8.1f} ms"

    ratio = statistics.median(api) / statistics.median(plain)
    frozen_ratio = statistics.median(frozen) / statistics.median(plain)
    stall_ratio = statistics.median(api_stall) / statistics.median(plain_stall)
    print(
        f"\ncheckpoint of a {args.ranks}-rank ring, {args.memory_mib} MiB per rank, "
        f"median of {args.repeat} (leave-running; store on "
        f"{'disk' if args.store_on_disk else 'tmpfs'})"
    )
    print(f"{'measure':<48} {'time':>11}")
    print(f"{'crctl checkpoint, API wall time':<48} {median(api)}")
    print(f"{'crctl checkpoint, CLI wall time':<48} {median(cli)}")
    print(f"{'ranks frozen, freeze to release (slowest host)':<48} {median(frozen)}")
    print(f"{'plain criu dump, all ranks in parallel':<48} {median(plain)}")
    print(f"{'ring stall during crctl checkpoint':<48} {median(api_stall)}")
    print(f"{'ring stall during plain criu dump':<48} {median(plain_stall)}")
    print(f"{'ratio ring stall crctl / plain (goal <= 1.05)':<48} {stall_ratio:8.2f}")
    print(f"{'ratio ranks frozen / plain criu dump':<48} {frozen_ratio:8.2f}")
    print(f"{'ratio crctl API wall time / plain criu dump':<48} {ratio:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
