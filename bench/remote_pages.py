"""Benchmark: how a restart on a host that shares no storage gets a rank's memory, in the same
run: crctl's way (the target fetches the whole images from the host that holds them, verified,
then restores with its memory copied in behind the running rank, or all of it first), against
raw CRIU both ways (copying the images, then `criu restore`; and CRIU's remote lazy pages: a
`criu page-server --lazy-pages` on the source host serving the page images, the target's
`criu lazy-pages --page-server` daemon fetching each page on fault and the rest behind).

    .venv/bin/python bench/remote_pages.py [--memory-mib 1024] [--repeat 3]

One rank (the catalogue's big_memory: patterned memory it checks) on h1, checkpointed, moved
to h2; the testbed's hosts have storage of their own. Prints a table (medians): until the rank
runs again, and until all its memory is in. Needs root; brings up its own testbed."""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _checkout  # noqa: F401  # this checkout first on sys.path
from store import add_option, bench_testbed

from agent.freezer import V1_ROOT as FREEZER
from cli.client import CoordinatorClient
from crctl.v1 import coordinator_pb2
from testbed import bed, netns
from testbed.ringjob import read_status
from testbed.workloads import BASE_PORT
from tests.workloads.catalogue import WORKLOADS

JOB = "bench-pages"
PAGE_SERVER_PORT = 27027


def progress(status: Path) -> int:
    found = read_status(status)
    return int(found.get("progress", 0)) if found else 0


def lazy_daemons(state: bed.State, host: str) -> bool:
    """Whether a `criu lazy-pages` runs in ``host``'s namespace."""
    for pid in netns.pids_in(state.hosts[host].namespace):
        try:
            if b"lazy-pages" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def crctl_move(
    client: CoordinatorClient, state: bed.State, target: str, status: Path, *, eager: bool
) -> tuple[float, float]:
    """crctl restart onto ``target``: seconds until the restart returned (the rank runs), and
    until its memory is all in (the lazy-pages daemon exited)."""
    old = client.job(JOB).ranks[0].host
    outcome = client.checkpoint_outcome(JOB, leave_running=False)
    if outcome is None or not outcome.committed:
        raise SystemExit(f"checkpoint failed: {outcome}")
    started = time.perf_counter()
    request = coordinator_pb2.RestartRequest(job=JOB, host_map={old: target}, eager_pages=eager)
    restarted = client.restart_outcome(request)
    running = time.perf_counter() - started
    if restarted is None or not restarted.restarted:
        raise SystemExit(f"restart failed: {restarted}")
    while lazy_daemons(state, target):
        time.sleep(0.005)
    filled = time.perf_counter() - started
    before = progress(status)
    deadline = time.monotonic() + 60
    while progress(status) <= before:
        if time.monotonic() > deadline:
            raise SystemExit("the rank made no progress after the restart")
        time.sleep(0.05)
    return running, filled


def raw_copy_and_restore(state: bed.State, source: Path, target: str, scratch: Path) -> float:
    """cp of the images, then `criu restore -d` on the target: seconds until it returned."""
    copy = scratch / "copied"
    shutil.rmtree(copy, ignore_errors=True)
    started = time.perf_counter()
    shutil.copytree(source, copy)
    restore(state, target, copy, lazy=False)
    return time.perf_counter() - started


def restore(state: bed.State, host: str, copy: Path, *, lazy: bool) -> None:
    # as crctl's restore does: an existing cgroup keeps CRIU from restoring the freezer state
    # the checkpoint recorded (FROZEN), which would leave the restored rank stopped
    (FREEZER / "crctl" / JOB / "rank-0").mkdir(parents=True, exist_ok=True)
    command = [*netns.nsenter_prefix(state.hosts[host].namespace), "criu", "restore"]
    command += ["-D", str(copy), "-d", "--pidfile", str(copy / "restored.pid")]
    command += ["-o", "restore.log"]
    if lazy:
        command.append("--lazy-pages")
    try:
        result = subprocess.run(command, capture_output=True, check=False, timeout=120)
    except subprocess.TimeoutExpired:
        raise RawFailed(f"criu restore did not return in 120 s ({copy / 'restore.log'})") from None
    if result.returncode != 0:
        errors = [
            line.split(": ", 2)[-1]
            for line in (copy / "restore.log").read_text(errors="replace").splitlines()
            if "Error" in line
        ]
        raise RawFailed("criu restore failed: " + "; ".join(errors[:2]))


class RawFailed(Exception):
    """A raw CRIU way did not work here; the table says why."""


def kill_restored(copy: Path) -> None:
    pidfile = copy / "restored.pid"
    if pidfile.exists():
        subprocess.run(["kill", "-9", pidfile.read_text().strip()], check=False)


def raw_remote_lazy(
    state: bed.State, source_host: str, source: Path, target: str, scratch: Path
) -> tuple[float, float, float]:
    """CRIU's remote lazy pages: (seconds the source's page server took to be ready, until the
    restore returned, until every page was in), the last two counting the copy of the images
    and from the restore's start."""
    copy = scratch / "remote-lazy"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir()
    # The page images too: a restore reads the pages CRIU does not restore lazily (the stack
    # around its pointer, say) from pages-*.img itself, and those files hold both kinds
    # ("Can't read async pr bytes" without them). So remote lazy pages from stored images
    # moves every page image anyway; only a dump made with --lazy-pages keeps them back.
    copied = time.perf_counter()
    for path in source.iterdir():
        if path.is_file():
            shutil.copy2(path, copy / path.name)
    copy_seconds = time.perf_counter() - copied
    address = state.hosts[source_host].address
    # The source's store as the source host sees it (its own, mounted at the shared path).
    seen = bed.checkpoint_dir(state) / source.relative_to(bed.host_store(state, source_host))
    began = time.perf_counter()
    server = subprocess.Popen(
        [
            *netns.nsenter_prefix(state.hosts[source_host].namespace),
            "criu",
            "page-server",
            "--lazy-pages",
            "-D",
            str(seen),
            "--address",
            address,
            "--port",
            str(PAGE_SERVER_PORT),
            "-o",
            str(copy / "page-server.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_listening(state, source_host, address, PAGE_SERVER_PORT, server)
    ready = time.perf_counter() - began
    daemon = subprocess.Popen(
        [
            *netns.nsenter_prefix(state.hosts[target].namespace),
            "criu",
            "lazy-pages",
            "--page-server",
            "--address",
            address,
            "--port",
            str(PAGE_SERVER_PORT),
            "-D",
            str(copy),
            "-o",
            "lazy-pages.log",
        ],
        cwd=copy,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not (copy / "lazy-pages.socket").exists():
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"criu lazy-pages did not start, see {copy}")
        time.sleep(0.001)
    started = time.perf_counter()
    restore(state, target, copy, lazy=True)
    returned = time.perf_counter() - started + copy_seconds
    try:
        failed = daemon.wait(timeout=120) != 0
    except subprocess.TimeoutExpired:
        daemon.kill()
        failed = True
    if failed:
        server.kill()
        kill_restored(copy)
        raise RawFailed(f"criu lazy-pages failed ({_errors(copy / 'page-server.log')})")
    filled = time.perf_counter() - started + copy_seconds
    server.wait(timeout=30)
    kill_restored(copy)
    return ready, returned, filled


def _errors(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    found = [line.split(": ", 2)[-1] for line in lines if "Error" in line]
    return "; ".join(found[:2]) or "no error logged"


def wait_listening(
    state: bed.State, host: str, address: str, port: int, process: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + 60
    probe = [*netns.nsenter_prefix(state.hosts[host].namespace), "ss", "-Hltn",
             f"sport = :{port}"]  # fmt: skip
    while address not in subprocess.run(probe, capture_output=True, text=True).stdout:
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"criu page-server did not listen on {address}:{port}")
        time.sleep(0.005)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    add_option(parser)
    args = parser.parse_args()
    spec = WORKLOADS["big_memory"]
    results: dict[str, list[float]] = {}
    failures: dict[str, str] = {}

    def note(name: str, seconds: float) -> None:
        results.setdefault(name, []).append(seconds)

    with bench_testbed(2, on_disk=args.store_on_disk, private_storage=True) as (state, scratch):
        status_dir = state.dir / "jobs" / JOB
        (status_dir / "work").mkdir(parents=True)
        status = status_dir / "rank-0.json"
        argv = [sys.executable, "-m", spec.module, "--rank", "0", "--ranks", "1",
                "--addresses", state.hosts["h1"].address, "--port", str(BASE_PORT),
                "--status", str(status), "--work-dir", str(status_dir / "work"),
                "--memory-mib", str(args.memory_mib)]  # fmt: skip
        with CoordinatorClient(state.api_address, timeout=600) as client:
            client.launch(JOB, "h1", 0, argv, {})
            deadline = time.monotonic() + 120
            while progress(status) < 5:
                if time.monotonic() > deadline:
                    raise SystemExit("big_memory made no progress")
                time.sleep(0.1)
            for _ in range(args.repeat):
                for eager in (False, True):
                    target = "h2" if client.job(JOB).ranks[0].host == "h1" else "h1"
                    running, filled = crctl_move(client, state, target, status, eager=eager)
                    kind = "crctl restart --eager-pages" if eager else "crctl restart"
                    note(f"{kind}: fetch, verify, restore; runs", running)
                    note(f"{kind}: all memory in", filled)
                # raw CRIU from the checkpoint just made, on the host the rank is not on
                record = client.checkpoints(JOB)[0]
                holder = record.manifest.ranks[0].host
                other = "h2" if holder == "h1" else "h1"
                source = bed.host_store(state, holder) / JOB / record.checkpoint / "rank-0"
                client.kill(JOB)
                note("raw: cp images + criu restore; runs", raw_copy_and_restore(
                    state, source, other, scratch))  # fmt: skip
                kill_restored(scratch / "copied")
                try:
                    ready, returned, filled = raw_remote_lazy(state, holder, source, other, scratch)
                except RawFailed as exc:
                    failures["raw remote lazy (+ cp of images)"] = str(exc)
                else:
                    note("raw remote lazy: page server ready (source)", ready)
                    note("raw remote lazy (+ cp of images): restore returns", returned)
                    note("raw remote lazy (+ cp of images): all memory in", filled)
                back = client.restart_outcome(coordinator_pb2.RestartRequest(job=JOB))
                if back is None or not back.restarted:
                    raise SystemExit(f"restart where it was failed: {back}")
            client.kill(JOB)
    print(f"\none rank of {args.memory_mib} MiB moved between hosts sharing no storage, "
          f"median of {args.repeat}")  # fmt: skip
    print(f"{'measure':<56} {'seconds':>8}")
    for name, values in results.items():
        print(f"{name:<56} {statistics.median(values):8.3f}")
    for name, why in failures.items():
        print(f"{name:<56}   failed: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
