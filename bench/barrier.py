"""Benchmark: the checkpoint barrier at scale. One real coordinator process and up to 1,000
simulated agents (real ZeroMQ and CurveZMQ, one key and socket per host, many hosts per
process: bench/simagents.py; CRIU faked) running checkpoint rounds through the gRPC API.

    .venv/bin/python bench/barrier.py [--agents 10,100,1000] [--rounds 10] [--warmup 2]

For each agent count: a fresh coordinator (its own state database, keys, checkpoint store and
free ports on 127.0.0.1, in a temporary folder), the simulated agents in --workers processes,
every one registered (ListAgents) before anything else, one job with one rank per host
(Launch per rank), --warmup unmeasured rounds, then --rounds `--leave-running` checkpoints
back to back (what a periodic checkpoint does), and one checkpoint that stops the ranks (it
ends the job, so it is measured once). Prints a table:
  * round median / p90: the Checkpoint RPC from the request to its outcome, leave-running;
  * coord: the coordinator's own duration in the outcome (median); ready: when the client saw
    the freeze go out (every host ready), from the request (median);
  * coordinator CPU per round (user + system of every thread, the delta over the measured
    rounds / rounds; from /proc/PID/task/*/schedstat, in nanoseconds) and per agent; idle:
    the coordinator's CPU with every agent connected and nothing to do;
  * the CPU per round of the simulated agents and of this process (the gRPC client): all
    share this machine's cores with the coordinator;
  * stop mode: the one checkpoint that stops the ranks, request to outcome.
Then the coordinator's CPU per round by thread, how busy the rest of the machine was during
the rounds (other processes take cores from the coordinator), whether the goal is met (median
< 100 ms at 1,000 agents) and how the coordinator's CPU per agent grows from 100 to 1,000
agents (1.0: linear).

Runs on loopback only and touches no testbed; every process it starts is stopped by its PID
(also on Ctrl-C or failure, and by the kernel if this process is killed) and the temporary
folder is removed. --py-spy FILE records the coordinator's stacks (py-spy's raw collapsed
format, every thread, idle samples included) during the measured rounds of the largest count."""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import _checkout
import grpc
import simagents

from cli.client import CoordinatorClient
from crctl import keys
from crctl.v1 import coordinator_pb2, coordinator_pb2_grpc

JOB = "barrier-bench"
GOAL_AGENTS = 1000
GOAL_MS = 100.0
HEARTBEAT_INTERVAL = 30.0  # agents stay alive without heartbeats weighing on the rounds
AGENT_LOST_AFTER = 600.0
REGISTER_TIMEOUT = 120.0
ROUND_TIMEOUT = 120.0  # a round that takes longer fails the benchmark
IDLE_SECONDS = 2.0
STOP_TIMEOUT = 10.0
# Runs a module as __main__ after asking the kernel to SIGTERM it when this process dies.
_CHILD = (
    "import ctypes, runpy, signal, sys; "
    "ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
    "sys.argv.pop(0); runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)"
)


# --- processes and their CPU --------------------------------------------------------------


class Processes:
    """Every process this benchmark starts, stopped by its PID."""

    def __init__(self) -> None:
        self._started: list[subprocess.Popen[bytes]] = []
        self._names: dict[int, str] = {}

    def name(self, process: subprocess.Popen[bytes]) -> str:
        return self._names.get(process.pid, "a process")

    def start(self, name: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        """Start a process of this checkout's code, its output to ``log``."""
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                cwd=_checkout.ROOT,
                env={**os.environ, "PYTHONPATH": str(_checkout.ROOT)},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches us only; we stop them in order
            )
        self._started.append(process)
        self._names[process.pid] = name
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process in self._started:
            self._started.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self._started)):
            self.stop(process)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of a process's live threads by thread name (threads of one name summed),
    to the nanosecond (/proc/PID/stat counts 10 ms ticks: too coarse for a 10-agent round)."""
    threads: dict[str, float] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as fh:
                name = fh.read().strip()
            with open(f"/proc/{pid}/task/{task}/schedstat") as fh:
                ran = int(fh.read().split()[0]) / 1e9
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
        threads[name] = threads.get(name, 0.0) + ran
    return threads


def cpu_seconds(pid: int) -> float:
    return sum(thread_cpu_seconds(pid).values())


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as fh:
        ticks = [int(v) for v in fh.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    busy = sum(ticks[:8]) - idle  # user .. steal (guest time is already in user)
    return busy / os.sysconf("SC_CLK_TCK")


# --- one agent count ----------------------------------------------------------------------


@dataclass
class Result:
    agents: int
    rounds: list[float]  # seconds, request -> outcome
    coordinator: list[float]  # seconds, the outcome's own duration
    ready: list[float]  # request -> freeze sent (every host ready), as the client saw it
    cpu: float  # coordinator CPU seconds per round
    threads: dict[str, float]  # coordinator CPU seconds per round by thread name
    idle: float  # coordinator CPU seconds per second with nothing to do
    sims_cpu: float  # simulated agents' CPU seconds per round
    client_cpu: float  # this process's CPU seconds per round (the gRPC client)
    others: float  # cores kept busy by other processes during the rounds (on average)
    stop: float | None  # seconds, the one stop-mode checkpoint
    conflicts: int  # requests refused because the previous round had not let go of the job


@dataclass
class _Round:
    wall: float
    coordinator: float
    ready: float


class Bench:
    def __init__(self, args: argparse.Namespace, scratch: Path, processes: Processes) -> None:
        self._args = args
        self._scratch = scratch
        self._processes = processes
        self._keys_dir = scratch / "keys"

    def make_keys(self, count: int) -> None:
        keys.init_keys(self._keys_dir, simagents.host_names(count))

    def _coordinator(self, n: int, api_socket: Path, endpoint: str) -> subprocess.Popen[bytes]:
        folder = self._scratch / f"coordinator-{n}"
        folder.mkdir()
        config = folder / "crctl.toml"
        settings = {
            "api_socket": api_socket,
            "control_endpoint": endpoint,
            "state_db": folder / "state.db",
            "checkpoint_dir": folder / "checkpoints",
            "keys_dir": self._keys_dir,
            "host": "bench-coordinator",
            "heartbeat_interval": HEARTBEAT_INTERVAL,
            "agent_lost_after": AGENT_LOST_AFTER,
            "log_format": "json",
            "log_level": "info",
        }
        config.write_text(
            "".join(
                f"{key} = {value}\n" if isinstance(value, float) else f'{key} = "{value}"\n'
                for key, value in settings.items()
            )
        )
        argv = [sys.executable, "-c", _CHILD, "cli", "coordinator", "--config", str(config)]
        return self._processes.start("the coordinator", argv, folder / "coordinator.log")

    def _workers(self, n: int, endpoint: str) -> list[subprocess.Popen[bytes]]:
        count = min(self._args.workers, n)
        workers = []
        first = 1
        for w in range(count):
            size = n // count + (1 if w < n % count else 0)
            argv = [
                sys.executable,
                str(Path(simagents.__file__)),
                *("--endpoint", endpoint, "--keys-dir", str(self._keys_dir)),
                *("--first", str(first), "--count", str(size)),
                *("--heartbeat-interval", str(HEARTBEAT_INTERVAL)),
            ]
            log = self._scratch / f"sims-{n}-{w}.log"
            workers.append(self._processes.start(f"simulated agents {w}", argv, log))
            first += size
        return workers

    def _wait_registered(
        self, client: CoordinatorClient, n: int, processes: list[subprocess.Popen[bytes]]
    ) -> None:
        wanted = set(simagents.host_names(n))
        deadline = time.monotonic() + REGISTER_TIMEOUT
        alive: set[str] = set()
        while time.monotonic() < deadline:
            for process in processes:
                if process.poll() is not None:
                    raise SystemExit(
                        f"{self._processes.name(process)} (pid {process.pid}) exited with "
                        f"{process.returncode}"
                    )
            try:
                agents = client.list_agents()
            except Exception:  # not serving yet
                time.sleep(0.2)
                continue
            alive = wanted & {
                a.host for a in agents if a.state == coordinator_pb2.AGENT_STATE_ALIVE
            }
            if alive == wanted:
                return
            time.sleep(0.2)
        raise SystemExit(f"only {len(alive)} of {n} agents registered in {REGISTER_TIMEOUT:.0f}s")

    @staticmethod
    def _launch(client: CoordinatorClient, n: int) -> None:
        def one(rank: int) -> None:
            client.launch(JOB, simagents.host_name(rank + 1), rank, ["sim-rank"], {})

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(n)))

    @staticmethod
    def _round(
        stub: coordinator_pb2_grpc.CoordinatorStub, *, leave_running: bool
    ) -> tuple[_Round, int]:
        """One checkpoint, request -> outcome; and how often it was refused first because the
        previous one had not let go of the job yet (its outcome comes before that)."""
        conflicts = 0
        while True:
            request = coordinator_pb2.CheckpointRequest(
                job=JOB, leave_running=leave_running, request_id=uuid.uuid4().hex
            )
            started = time.perf_counter()
            ready = 0.0
            outcome = None
            try:
                for event in stub.Checkpoint(request, timeout=ROUND_TIMEOUT):
                    kind = event.WhichOneof("event")
                    if kind == "phase" and event.phase.phase == "preparing":
                        ready = time.perf_counter() - started
                    elif kind == "outcome":
                        outcome = event.outcome
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.ABORTED:
                    conflicts += 1
                    time.sleep(0.001)
                    continue
                raise SystemExit(f"checkpoint failed: {exc.code().name}: {exc.details()}") from None
            wall = time.perf_counter() - started
            if outcome is None or not outcome.committed:
                raise SystemExit(f"checkpoint did not commit: {outcome}")
            return _Round(wall, outcome.duration_seconds, ready), conflicts

    def measure(self, n: int, *, profile: Path | None) -> Result:
        api_socket = self._scratch / f"api-{n}.sock"
        grpc_address = f"unix:{api_socket}"
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        coordinator = self._coordinator(n, api_socket, endpoint)
        workers = self._workers(n, endpoint)
        pid = coordinator.pid
        with (
            CoordinatorClient(grpc_address, timeout=30.0) as client,
            grpc.insecure_channel(grpc_address) as channel,
        ):
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            self._wait_registered(client, n, [coordinator, *workers])
            self._launch(client, n)
            before = cpu_seconds(pid)
            time.sleep(IDLE_SECONDS)
            idle = (cpu_seconds(pid) - before) / IDLE_SECONDS
            conflicts = 0
            for _ in range(self._args.warmup):
                conflicts += self._round(stub, leave_running=True)[1]
            rounds: list[_Round] = []
            with _py_spy(pid, profile, self._processes, self._scratch):
                mine = [pid, *(w.pid for w in workers)]
                threads_before = thread_cpu_seconds(pid)
                sims_before = sum(cpu_seconds(w.pid) for w in workers)
                client_before = _own_cpu_seconds()
                ours_before = sum(cpu_seconds(p) for p in mine) + client_before
                busy_before = machine_busy_seconds()
                started = time.perf_counter()
                for _ in range(self._args.rounds):
                    measured, refused = self._round(stub, leave_running=True)
                    rounds.append(measured)
                    conflicts += refused
                elapsed = time.perf_counter() - started
                busy = machine_busy_seconds() - busy_before
                client_cpu = _own_cpu_seconds() - client_before
                ours = sum(cpu_seconds(p) for p in mine) + _own_cpu_seconds() - ours_before
                threads = {
                    name: (ran - threads_before.get(name, 0.0)) / len(rounds)
                    for name, ran in thread_cpu_seconds(pid).items()
                }
                sims_cpu = sum(cpu_seconds(w.pid) for w in workers) - sims_before
            stop = None
            if not self._args.no_stop_mode:
                stop = self._round(stub, leave_running=False)[0].wall
        for worker in workers:
            self._processes.stop(worker)
        self._processes.stop(coordinator)
        return Result(
            agents=n,
            rounds=[r.wall for r in rounds],
            coordinator=[r.coordinator for r in rounds],
            ready=[r.ready for r in rounds],
            cpu=sum(threads.values()),
            threads=threads,
            idle=idle,
            sims_cpu=sims_cpu / len(rounds),
            client_cpu=client_cpu / len(rounds),
            others=max(0.0, busy - ours) / elapsed,
            stop=stop,
            conflicts=conflicts,
        )


@contextmanager
def _py_spy(pid: int, output: Path | None, processes: Processes, scratch: Path) -> Iterator[None]:
    """Record the coordinator's stacks with py-spy while the body runs (nothing without a file)."""
    if output is None:
        yield
        return
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    argv = [py_spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw"]
    argv += ["--threads", "--idle", "--output", str(output)]
    recorder = processes.start("py-spy", argv, scratch / "py-spy.log")
    time.sleep(1.0)  # attached
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its file and exits
        try:
            recorder.wait(30)
        finally:
            processes.stop(recorder)


# --- the report ---------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def report(results: list[Result]) -> None:
    header = [
        "agents",
        "round median ms",
        "p90 ms",
        "coord ms",
        "ready ms",
        "coord CPU ms/round",
        "CPU µs/agent",
        "idle ms/s",
        "sims CPU ms/round",
        "client CPU ms/round",
        "stop mode ms",
    ]
    rows = [
        [
            str(r.agents),
            _ms(statistics.median(r.rounds)),
            _ms(p90(r.rounds)),
            _ms(statistics.median(r.coordinator)),
            _ms(statistics.median(r.ready)),
            _ms(r.cpu),
            f"{r.cpu / r.agents * 1e6:.0f}",
            _ms(r.idle),
            _ms(r.sims_cpu),
            _ms(r.client_cpu),
            "-" if r.stop is None else _ms(r.stop),
        ]
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    for line in [header, *rows]:
        print("  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)))
    for r in results:
        busy = sorted(r.threads.items(), key=lambda item: -item[1])
        shares = ", ".join(f"{name} {_ms(ran)}" for name, ran in busy if ran >= 0.0005)
        print(
            f"{r.agents} agents: coordinator CPU ms/round by thread: {shares}; "
            f"other processes kept {r.others:.2f} of {os.cpu_count()} cores busy"
        )
    conflicts = sum(r.conflicts for r in results)
    if conflicts:
        print(f"{conflicts} requests refused first: the previous round still held the job")
    by_agents = {r.agents: r for r in results}
    goal = by_agents.get(GOAL_AGENTS)
    verdict = f"goal (median < {GOAL_MS:.0f} ms at {GOAL_AGENTS} agents): "
    if goal is None:
        verdict += "not measured"
    else:
        median = statistics.median(goal.rounds) * 1000
        verdict += f"{'met' if median < GOAL_MS else 'MISSED'} ({median:.1f} ms)"
    if 100 in by_agents and GOAL_AGENTS in by_agents:
        small, large = by_agents[100], by_agents[GOAL_AGENTS]
        growth = (large.cpu / large.agents) / (small.cpu / small.agents)
        verdict += f"; coordinator CPU per agent 100 -> {GOAL_AGENTS}: x{growth:.2f} (linear: 1.0)"
    print(verdict)


def _print_log_tails(scratch: Path, lines: int = 5) -> None:
    """The last lines of every log, before the temporary folder goes."""
    for log in sorted(scratch.rglob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        print(f"--- {log.relative_to(scratch)}", *tail, sep="\n", file=sys.stderr)


def _interrupt_on_sigterm() -> None:
    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--agents",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[10, 100, 1000],
        help="comma-separated agent counts (default 10,100,1000)",
    )
    parser.add_argument("--rounds", type=int, default=10, help="measured rounds (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured rounds (default 2)")
    parser.add_argument(
        "--workers", type=int, default=4, help="processes simulating the agents (default 4)"
    )
    parser.add_argument(
        "--no-stop-mode", action="store_true", help="skip the checkpoint that stops the ranks"
    )
    parser.add_argument(
        "--tmp-dir",
        type=Path,
        default=None,
        help="where the temporary folder goes (default: the system's, e.g. /tmp)",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="FILE",
        help="record the coordinator's stacks during the largest count's rounds",
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.warmup < 0 or min(args.agents) < 1 or args.workers < 1:
        parser.error("--rounds, --agents and --workers must be at least 1, --warmup 0")
    _interrupt_on_sigterm()
    simagents.raise_open_files_limit()  # inherited by the coordinator and the workers
    scratch = Path(tempfile.mkdtemp(prefix="crctl-bench-barrier-", dir=args.tmp_dir))
    processes = Processes()
    results = []
    try:
        bench = Bench(args, scratch, processes)
        bench.make_keys(max(args.agents))
        for n in args.agents:
            profile = args.py_spy.resolve() if args.py_spy and n == max(args.agents) else None
            results.append(bench.measure(n, profile=profile))
            print(f"{n} agents measured", file=sys.stderr, flush=True)
        report(results)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except BaseException:
        _print_log_tails(scratch)
        raise
    finally:
        processes.stop_all()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
