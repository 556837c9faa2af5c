"""Soak: consecutive checkpoint -> restart-on-other-hosts cycles of a 4-rank TCP ring, with real
CRIU on the emulated-host testbed, alternating the host sets (h1-h4 <-> h5-h8) and the
checkpoint mode (leave-running, then the job is killed; or stop).

    .venv/bin/python bench/soak.py [--cycles 100] [--ranks 4] [--memory-mib 0]

Prints a line every 10 cycles and at the end: cycles done, tokens lost or repeated (the ring
checks every token's sequence and checksum: must be 0), restarts whose gap between two tokens
exceeded 1 s, and the resident memory of the coordinator and of the agents at the start and at
the end (no growth). Needs root; brings up its own testbed (on a tmpfs) and removes it."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from store import add_option, bench_testbed

from cli.client import CoordinatorClient
from crctl.v1 import coordinator_pb2
from testbed import bed
from testbed.ringjob import RingJob, launch_ring

STALL_LIMIT = 1.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def memory(state: bed.State) -> tuple[int, int]:
    """Resident KiB of the coordinator and the largest agent."""
    loaded = bed.status(Path(state.directory))
    assert loaded is not None
    coordinator = rss_kib(loaded.processes[bed.COORDINATOR].pid)
    agents = [rss_kib(ref.pid) for name, ref in loaded.processes.items() if name != bed.COORDINATOR]
    return coordinator, max(agents)


def checkpoint(client: CoordinatorClient, job: str, *, leave_running: bool) -> str:
    outcome = client.checkpoint_outcome(job, leave_running=leave_running)
    if outcome is None or not outcome.committed:
        raise SystemExit(f"checkpoint failed: {outcome}")
    return outcome.checkpoint


def restart(client: CoordinatorClient, job: str, mapping: dict[str, str]) -> float:
    started = time.perf_counter()
    outcome = client.restart_outcome(coordinator_pb2.RestartRequest(job=job, host_map=mapping))
    if outcome is None or not outcome.restarted:
        raise SystemExit(f"restart failed: {outcome}")
    return time.perf_counter() - started


def rewritten(ring: RingJob, *, after: float, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    files = [ring.status_dir / f"{rank}.json" for rank in range(len(ring.hosts))]
    while any(f.stat().st_mtime <= after for f in files):
        if time.monotonic() > deadline:
            raise SystemExit(f"the restored ring did not write its status within {timeout}s")
        time.sleep(0.02)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--memory-mib", type=int, default=0)
    add_option(parser)
    args = parser.parse_args()
    sets = [
        [f"h{i}" for i in range(1, args.ranks + 1)],
        [f"h{i}" for i in range(args.ranks + 1, 2 * args.ranks + 1)],
    ]
    with bench_testbed(2 * args.ranks, on_disk=args.store_on_disk) as (state, _):
        ring: RingJob = launch_ring(state, "soak", sets[0], memory_mib=args.memory_mib)
        ring.wait_for_tokens(20, timeout=30)
        start_memory = memory(state)
        stalls: list[float] = []
        restarts: list[float] = []
        with CoordinatorClient(state.api_address, timeout=120) as client:
            for cycle in range(1, args.cycles + 1):
                leave_running = cycle % 2 == 1
                here, there = sets[(cycle - 1) % 2], sets[cycle % 2]
                checkpoint(client, ring.job, leave_running=leave_running)
                if leave_running:
                    ring.wait_for_progress(tokens=5)
                    client.kill(ring.job)
                since = time.time()
                restarts.append(restart(client, ring.job, dict(zip(here, there, strict=True))))
                if leave_running:
                    # The killed incarnation wrote down the close of its connections as it
                    # died: read the status files once the restored ranks have rewritten them.
                    rewritten(ring, after=since)
                ring.wait_for_progress(tokens=10, timeout=30)
                stalls.append(ring.longest_stall(since))
                if ring.errors():
                    print(f"cycle {cycle}: ring errors {ring.errors()}")
                    break
                if cycle % 10 == 0:
                    coordinator, agent = memory(state)
                    print(
                        f"cycle {cycle:4d}: restart median {statistics.median(restarts):.3f}s, "
                        f"longest gap {max(stalls):.3f}s, coordinator {coordinator} KiB, "
                        f"largest agent {agent} KiB",
                        flush=True,
                    )
            end_memory = memory(state)
            errors = ring.errors()
            client.kill(ring.job)
    done = len(stalls)
    over = sum(s > STALL_LIMIT for s in stalls)
    print()
    print(f"cycles done            {done} of {args.cycles}")
    print(f"tokens lost/repeated   {len(errors)}{'  ' + '; '.join(errors[:3]) if errors else ''}")
    print(f"gaps over {STALL_LIMIT:.0f} s          {over}")
    print(f"restart median         {statistics.median(restarts):.3f} s")
    print(f"coordinator memory     {start_memory[0]} -> {end_memory[0]} KiB")
    print(f"largest agent memory   {start_memory[1]} -> {end_memory[1]} KiB")
    return 0 if done == args.cycles and not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
