"""Benchmark: crctl restart of a checkpointed 4-rank TCP ring onto 4 other emulated hosts,
against plain parallel `criu restore` of the same images, in the same run.

    .venv/bin/python bench/restart.py [--memory-mib 64] [--ranks 4] [--repeat 5]

Prints a table (medians over --repeat runs):
  * crctl restart wall time: the Restart RPC, from request to outcome (prepare with checksum
    verification and working copies, lock, restore held, unlock, release);
  * first progress: from the request to the ring's first token after the restore, with
    crctl's default (memory copied in behind the running ranks: CRIU's lazy restore) and with
    --eager-pages (all memory before the ranks run);
  * plain criu restore: `criu restore --tcp-established -d` of every rank's images in its
    original host's namespace, all started together, until the last one returns (then killed);
  * plain lazy criu restore: the same with `--lazy-pages` and a `criu lazy-pages` daemon per
    rank (started beforehand, not timed), until the restores return and until every page is in;
  * the digest of every image file that a restart verifies (BLAKE3, page images with its own
    threads: crctl.digests), one thread per rank, as the agents verify them before a restart
    may create any task (a cost plain CRIU does not have);
  * ratio: first progress / plain criu restore; goal: <= 1.1 x plain + 50 ms.
Needs root; brings up its own testbed (2 x ranks hosts) and removes it afterwards."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from store import add_option, bench_testbed

from agent import images
from agent.freezer import V1_ROOT as FREEZER
from cli.client import CoordinatorClient
from crctl.v1 import coordinator_pb2
from testbed import bed, netns
from testbed.ringjob import RingJob, launch_ring


def checkpoint(
    client: CoordinatorClient, job: str, *, leave_running: bool = False
) -> coordinator_pb2.CheckpointOutcome:
    """A committed checkpoint of ``job`` (the benchmark stops otherwise)."""
    outcome = client.checkpoint_outcome(job, leave_running=leave_running)
    if outcome is None or not outcome.committed:
        raise SystemExit(f"checkpoint failed: {outcome}")
    return outcome


def restart(
    client: CoordinatorClient, ring: RingJob, hosts: list[str], *, eager_pages: bool = False
) -> tuple[float, float]:
    before = max(s.get("last_token_at") or 0 for s in ring.statuses())
    started_wall = time.time()
    started = time.perf_counter()
    request = coordinator_pb2.RestartRequest(job=ring.job, hosts=hosts, eager_pages=eager_pages)
    outcome = client.restart_outcome(request)
    wall = time.perf_counter() - started
    if outcome is None or not outcome.restarted:
        raise SystemExit(f"restart failed: {outcome}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        firsts = [s.get("last_token_at") or 0 for s in ring.statuses()]
        if min(firsts) > max(before, started_wall):
            # the earliest token seen after the restart, on any rank
            progressed = [t for t in firsts if t > started_wall]
            return wall, min(progressed) - started_wall
        time.sleep(0.001)
    raise SystemExit("the ring made no progress after the restart")


def plain_restore(
    state: bed.State, rank_images: dict[str, Path], scratch: Path, *, lazy: bool = False
) -> tuple[float, float]:
    """criu restore of a copy of each rank's images, in its original host, all at once: the
    seconds until every restore returned, and until every page was in (the same when eager)."""
    commands, daemons = [], []
    for host, source in rank_images.items():
        copy = scratch / host
        shutil.rmtree(copy, ignore_errors=True)
        images.make_working_copy(source, copy)
        # as crctl's restore does: an existing cgroup keeps CRIU from restoring the freezer
        # state the checkpoint recorded (FROZEN)
        (FREEZER / "crctl" / "bench" / source.name).mkdir(parents=True, exist_ok=True)
        pidfile = copy / "restored.pid"
        host_prefix = netns.nsenter_prefix(state.hosts[host].namespace)
        command = [*host_prefix, "criu", "restore", "-D", str(copy), "--tcp-established", "-d"]
        command += ["--pidfile", str(pidfile), "-o", "restore.log"]
        if lazy:
            command.append("--lazy-pages")
            daemons.append(
                subprocess.Popen(
                    [*host_prefix, "criu", "lazy-pages", "-D", str(copy), "-o", "lazy-pages.log"],
                    cwd=copy,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_for_path(copy / "lazy-pages.socket", daemons[-1])
        commands.append((pidfile, command))
    started = time.perf_counter()
    running = [
        subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _, c in commands
    ]
    failures = [p.communicate()[1] for p in running if p.wait() != 0]
    returned = time.perf_counter() - started
    for daemon in daemons:
        if failures:
            daemon.kill()
        elif daemon.wait(timeout=60) != 0:
            failures.append(b"criu lazy-pages failed")
    filled = time.perf_counter() - started
    for pidfile, _ in commands:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
    if failures:
        raise SystemExit(f"plain criu restore failed: {failures[0].decode()[-500:]}")
    for host in rank_images:  # CRIU leaves its lock behind when the restored ranks die
        subprocess.run(
            [*netns.nsenter_prefix(state.hosts[host].namespace), "nft", "flush", "ruleset"],
            check=False,
        )
    return returned, filled


def hash_images(rank_images: dict[str, Path]) -> float:
    """The digests a restart verifies, of every image file, one thread per rank (as each target
    agent hashes its own)."""
    started = time.perf_counter()
    with ThreadPoolExecutor(len(rank_images)) as pool:
        list(pool.map(images.digest_files, rank_images.values()))
    return time.perf_counter() - started


def wait_for_path(path: Path, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"criu lazy-pages did not start (see {path.parent})")
        time.sleep(0.001)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--memory-mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    add_option(parser)
    args = parser.parse_args()

    walls, firsts, eager_firsts, plains, lazy_returns, lazy_fills = [], [], [], [], [], []
    hashes = []
    with bench_testbed(2 * args.ranks, on_disk=args.store_on_disk) as (state, scratch):
        names = list(state.hosts)
        homes, aways = names[: args.ranks], names[args.ranks :]
        ring = launch_ring(state, "bench", homes, memory_mib=args.memory_mib)
        ring.wait_for_tokens(10, timeout=60)
        moves = 0

        def checkpoint_and_restart(eager_pages: bool) -> tuple[float, float]:
            nonlocal moves
            target = aways if moves % 2 == 0 else homes
            moves += 1
            measured = restart(client, ring, target, eager_pages=eager_pages)
            ring.wait_for_progress(tokens=10, timeout=30)
            return measured

        with CoordinatorClient(state.api_address) as client:
            for _ in range(args.repeat):
                outcome = checkpoint(client, "bench")
                manifest_dir = Path(client.checkpoints("bench")[0].directory)
                rank_images = {r.host: manifest_dir / f"rank-{r.rank}" for r in outcome.ranks}
                hashes.append(hash_images(rank_images))
                plains.append(plain_restore(state, rank_images, scratch)[0])
                returned, filled = plain_restore(state, rank_images, scratch, lazy=True)
                lazy_returns.append(returned)
                lazy_fills.append(filled)
                wall, first = checkpoint_and_restart(eager_pages=False)
                walls.append(wall)
                firsts.append(first)
                checkpoint(client, "bench")
                eager_firsts.append(checkpoint_and_restart(eager_pages=True)[1])
        if ring.errors():
            raise SystemExit(f"the ring recorded errors: {ring.errors()}")

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:8.1f} ms"

    plain = statistics.median(plains)
    first = statistics.median(firsts)
    print(
        f"\nrestart of a {args.ranks}-rank ring onto {args.ranks} other hosts, "
        f"{args.memory_mib} MiB per rank, median of {args.repeat} (store on "
        f"{'disk' if args.store_on_disk else 'tmpfs'})"
    )
    print(f"{'measure':<52} {'time':>11}")
    print(f"{'crctl restart, API wall time':<52} {ms(walls)}")
    print(f"{'crctl restart, request to first token':<52} {ms(firsts)}")
    print(f"{'crctl restart --eager-pages, request to first token':<52} {ms(eager_firsts)}")
    print(f"{'plain criu restore, all ranks in parallel':<52} {ms(plains)}")
    print(f"{'plain criu restore --lazy-pages, returned':<52} {ms(lazy_returns)}")
    print(f"{'plain criu restore --lazy-pages, every page in':<52} {ms(lazy_fills)}")
    print(f"{'digests a restart verifies, ranks in parallel':<52} {ms(hashes)}")
    print(f"{'ratio first token / plain criu restore':<52} {first / plain:8.2f}")
    print(
        f"{'goal: 1.1 x plain + 50 ms':<52} {(1.1 * plain + 0.05) * 1000:8.1f} ms"
        f"  ({'met' if first <= 1.1 * plain + 0.05 else 'not met'})"
    )
    print(json.dumps({"first_token_s": first, "plain_restore_s": plain}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
