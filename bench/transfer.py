"""Benchmark: a rank's checkpoint images fetched from another host's image server
(agent/transfer: CurveZMQ, chunk requests on credit, BLAKE3 as the bytes arrive, fsync, rename)
over loopback, against plain `cp` of the same files, in the same run.

    .venv/bin/python bench/transfer.py [--mib 1024] [--repeat 5] [--settings 256K:8,1M:8,...]
                                       [--stores /var/tmp,/dev/shm] [--ranks 4]

For each store folder (default: the disk under /var/tmp, and the tmpfs /dev/shm, where an fsync
costs nothing: what is left is the transfer itself), a rank of --mib MiB in a few files (two
page images, three small images) is written once (its manifest hashed as it is written, no file
read whole) and then, --repeat times in turn, copied:
  * cp: `cp -r` of the rank's folder (what an unverified local copy costs);
  * cp + fsync: the same, then `sync` of the copied files (what the fetch's durability costs);
  * fetch CHUNK x PIPELINE: fetch_rank from an image server in another process (as on another
    host), CHUNK bytes per request, PIPELINE requests outstanding, into an empty folder;
  * fetch_ranks: the same bytes as --ranks ranks fetched at once (a thread per rank).
The rows take turns, each first in one repeat. The table gives medians (and the fastest time:
other work on the machine only slows a run): seconds, MB/s, the ratio to cp and to cp + fsync,
the CPU seconds here (the fetching process's, or cp's) and the server's, then both processes'
peak memory (RSS) over the rows and the load average.

Needs nothing but this checkout (no root, no testbed); the server process ends with the
benchmark, the files it wrote are removed."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import _checkout
import zmq.auth

from agent.transfer import ImageServer, ImageSource, RankFetch, fetch_rank, fetch_ranks
from crctl import digests, keys, logs
from crctl.v1 import control_pb2

JOB, CHECKPOINT = "transfer-bench", "ckpt-bench"
BLOCK = 16 << 20  # the pieces the rank's files are written (and hashed) in
SMALL = {"core-1.img": 4 << 10, "mm-1.img": 16 << 10, "files.img": 64 << 10}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    name: str
    seconds: list[float] = field(default_factory=list)
    fetcher_cpu: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def write_file(path: Path, size: int, seed: int) -> control_pb2.FileDigest:
    """A file of ``size`` bytes that no compression shortens, hashed as it is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hasher = digests.new_hasher(piece_size=BLOCK)
    block = bytearray(os.urandom(min(size, BLOCK)))
    with path.open("wb") as out:
        written = 0
        while written < size:
            block[:8] = (seed << 40 | written).to_bytes(8, "little")
            piece = memoryview(block)[: min(BLOCK, size - written)]
            out.write(piece)
            hasher.update(piece)
            written += len(piece)
    rel = path.relative_to(path.parents[1]).as_posix()  # rank-N/name
    return digests.FileDigest(rel, size, hasher.hexdigest()).to_proto()


def write_rank(store: Path, rank: int, total: int) -> list[control_pb2.FileDigest]:
    folder = store / JOB / CHECKPOINT / f"rank-{rank}"
    pages = total - sum(SMALL.values())
    sizes = {**SMALL, "pages-1.img": pages * 3 // 4, "pages-2.img": pages - pages * 3 // 4}
    return [write_file(folder / name, size, rank) for name, size in sizes.items()]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def reset_peak(pid: int) -> None:
    """Start the process's peak memory (VmHWM) over from its memory now."""
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")


def peak_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        line = next(line for line in fh if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def serve(store: Path, key_dir: Path) -> None:
    """The server process: serve ``store`` to the client key until stdin closes."""
    logs.configure(component="bench-server", host="source", fmt="console", level="warning")
    own = keypair(key_dir, "server")
    client = keypair(key_dir, "client")
    with ImageServer(store, "127.0.0.1", 0, own, lambda: {client.public}) as server:
        print(server.endpoint, flush=True)
        sys.stdin.read()


def keypair(key_dir: Path, name: str) -> keys.KeyPair:
    secret_file = key_dir / f"{name}.key_secret"
    if not secret_file.exists():
        zmq.auth.create_certificates(str(key_dir), name)
    public, secret = zmq.auth.load_certificate(str(secret_file))
    return keys.KeyPair(public, secret or b"")


def measure(row: Row, server_pid: int, run: Callable[[], None]) -> None:
    before, server_before = os.times(), cpu_seconds(server_pid)
    started = time.perf_counter()
    run()
    row.seconds.append(time.perf_counter() - started)
    after = os.times()
    spent = sum(after[:4]) - sum(before[:4])  # user, system, and those of cp (a child)
    row.fetcher_cpu.append(max(0.0, spent))
    row.server_cpu.append(cpu_seconds(server_pid) - server_before)


def bench_store(base: Path, args: argparse.Namespace, key_dir: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="crctl-transfer-bench-", dir=base))
    try:
        source_store, target = work / "source", work / "target"
        total = args.mib << 20
        lines = write_rank(source_store, 0, total)
        per_rank = total // args.ranks
        ranks = {r: write_rank(source_store, r, per_rank) for r in range(1, args.ranks + 1)}
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(source_store), str(key_dir)],
            cwd=_checkout.ROOT,
            env={**os.environ, "PYTHONPATH": str(_checkout.ROOT)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            endpoint = server.stdout.readline().strip()
            if not endpoint:
                raise SystemExit("the image server did not start")
            source = ImageSource("source", endpoint, keypair(key_dir, "server").public)
            client = keypair(key_dir, "client")
            rank_folder = source_store / JOB / CHECKPOINT / "rank-0"
            copied = target / "cp"

            def cp(sync: bool) -> Callable[[], None]:
                def run() -> None:
                    subprocess.run(["cp", "-r", str(rank_folder), str(copied)], check=True)
                    if sync:
                        files = [str(p) for p in copied.iterdir()]
                        subprocess.run(["sync", "--", *files, str(copied)], check=True)

                return run

            def fetch(chunk: int, pipeline: int) -> Callable[[], None]:
                def run() -> None:
                    fetch_rank(
                        [source], client, JOB, CHECKPOINT, 0, lines, target,
                        chunk_bytes=chunk, pipeline=pipeline,
                    )  # fmt: skip

                return run

            def fetch_parallel() -> None:
                fetches = [RankFetch(JOB, CHECKPOINT, r, ranks[r], [source]) for r in ranks]
                fetch_ranks(fetches, client, target, parallel=args.ranks)

            plans: list[tuple[Row, Callable[[], None]]] = [
                (Row("cp -r"), cp(False)),
                (Row("cp -r, then sync (fsync) the copies"), cp(True)),
            ]
            for setting in args.settings.split(","):
                chunk_text, pipeline_text = setting.split(":")
                chunk, pipeline = parse_size(chunk_text), int(pipeline_text)
                name = f"fetch, chunk {chunk >> 10} KiB x {pipeline}"
                plans.append((Row(name), fetch(chunk, pipeline)))
            name = f"fetch_ranks, {args.ranks} ranks x {per_rank >> 20} MiB at once"
            plans.append((Row(name), fetch_parallel))
            target.mkdir()
            for pid in (os.getpid(), server.pid):
                reset_peak(pid)  # what writing the files took is not the copies' memory
            for turn in range(args.repeat):
                # The rows take turns: none always runs right after the same other one (what
                # the last one left to the kernel's memory and writeback weighs on the next).
                start = turn % len(plans)
                for row, run in plans[start:] + plans[:start]:
                    measure(row, server.pid, run)
                    shutil.rmtree(target)
                    target.mkdir()
            report(base, total, lines, [row for row, _ in plans], server.pid)
        finally:
            if server.stdin is not None:
                server.stdin.close()
            server.wait(10)
    finally:
        shutil.rmtree(work)


def report(
    base: Path, total: int, lines: list[control_pb2.FileDigest], rows: list[Row], server_pid: int
) -> None:
    mounts = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE", "--target", str(base)], capture_output=True, text=True
    ).stdout.split()
    kind = mounts[0] if mounts else "?"
    print(
        f"\nstore {base} ({kind}): a rank of {total / (1 << 30):.2f} GiB in {len(lines)} "
        f"files ({', '.join(f'{line.size >> 20} MiB' for line in lines if line.size >= 1 << 20)}"
        f" and {sum(1 for line in lines if line.size < 1 << 20)} small), loopback, "
        f"{os.cpu_count()} cores, medians of {len(rows[0].seconds)}"
    )
    cp, cp_sync = (statistics.median(rows[i].seconds) for i in (0, 1))
    print(
        f"{'what':<44} {'seconds':>7} {'fastest':>7} {'MB/s':>6} {'/ cp':>5} {'/ cp+fsync':>10} "
        f"{'CPU s here':>10} {'server CPU s':>12}"
    )
    for row in rows:
        seconds = statistics.median(row.seconds)
        print(
            f"{row.name:<44} {seconds:7.2f} {min(row.seconds):7.2f} {total / 1e6 / seconds:6.0f} "
            f"{seconds / cp:5.2f} {seconds / cp_sync:10.2f} "
            f"{statistics.median(row.fetcher_cpu):10.2f} {statistics.median(row.server_cpu):12.2f}"
        )
    fetcher, server = peak_mib(os.getpid()), peak_mib(server_pid)
    print(f"peak memory (RSS) over the rows: fetcher {fetcher:.0f} MiB, server {server:.0f} MiB")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(Path(sys.argv[2]), Path(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="the rank's size (MiB)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--settings",
        default="256K:8,1M:2,1M:8,1M:16,4M:4",
        help="fetch settings to compare, CHUNK:PIPELINE, comma-separated",
    )
    parser.add_argument("--stores", default="/var/tmp,/dev/shm", help="store folders to use")
    parser.add_argument("--ranks", type=int, default=4, help="ranks of the fetch_ranks row")
    args = parser.parse_args()
    logs.configure(component="bench", host="target", fmt="console", level="warning")
    print(f"load average at the start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="crctl-transfer-keys-") as key_dir:
        for base in args.stores.split(","):
            bench_store(Path(base), args, Path(key_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
