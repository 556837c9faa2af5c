"""The fault matrix on the real testbed: each fault injected at each phase of a checkpoint and of
a restart of a 3-rank TCP ring, then the invariants checked (bench/faults.py prints the whole
matrix; tests/e2e/test_faults.py runs a representative part of it).

A fault is injected at an exact moment through the daemons' failpoints (crctl.failpoints): an
agent or the coordinator dies (``kill``) or stops (``stop``) right there; for a fault that
strikes another process at that moment, the process at the failpoint waits (``sleep``) while
the matrix strikes. Killed daemons are started again, stopped ones continued after the
deadline.

After each cell, once the system has settled:

* the job is not lost: its ranks run on and the ring passes tokens with nothing lost or
  repeated, or it is stopped and its latest committed checkpoint restarts (on other hosts) and
  the ring goes on from it with nothing lost;
* every checkpoint marked committed verifies against its manifest (``crctl verify``);
* nothing is left: no frozen rank, no crctl or CRIU nft table, no CRIU process, no restore
  working copy, no agent still awaiting a decision; the coordinator answers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import criu
from agent.freezer import FreezerHierarchy
from crctl.fs import remove_tree
from testbed import bed, procs
from testbed.ringjob import RingJob, launch_ring

SOURCE = ["h1", "h2", "h3"]
TARGET = ["h4", "h5", "h6"]
MOVE = ",".join(f"{a}={b}" for a, b in zip(SOURCE, TARGET, strict=True))
HOSTS = 6
PREPARE_TIMEOUT = 3.0  # crctl checkpoint --timeout
STEP_TIMEOUT = 4.0  # crctl restart --timeout
COMMIT_TIMEOUT = 2.0
LOST_AFTER = 2.0
HEARTBEAT = 0.3
STRIKE_WAIT = 2.0  # seconds a process waits at a failpoint while another is struck
SETTLE_TIMEOUT = 60.0
RESTORE_HOLD = STEP_TIMEOUT * 4 + 10  # how long an agent holds a restore (restarts.py)

CHECKPOINT_PHASES = ("readying", "freezing", "dumping", "held", "recorded", "releasing")
RESTART_PHASES = ("prepare", "lock", "restore", "unlock", "release")

# Where each phase is, for a process that waits there or dies there.
_AGENT_CHECKPOINT_POINT = {
    "readying": "agent.checkpoint.readying",
    "freezing": "agent.checkpoint.freezing",
    "dumping": "agent.checkpoint.dumping",
    "held": "agent.checkpoint.held",
    "releasing": "agent.checkpoint.releasing",
}
_AGENT_RESTORE_POINT = {
    "prepare": "agent.restore.prepare",
    "lock": "agent.restore.locked",
    "restore": "agent.restore.restore",
    "unlock": "agent.restore.unlock",
    "release": "agent.restore.release",
}
RECORDED = "coordinator.checkpoint.recorded"  # the commit is durable, no agent heard it


@dataclass(frozen=True)
class Cell:
    fault: str  # a row of the matrix
    phase: str  # a column
    operation: str  # "checkpoint" | "restart"


@dataclass
class Result:
    cell: Cell
    outcome: str  # what happened, for the table: "aborted, ran on", "committed, restarted", ...
    lost: bool
    invalid_marked_valid: int
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


# Faults struck at every phase of a checkpoint and of a restart.
STRUCK_FAULTS = (
    "coordinator SIGKILL",
    "agent SIGKILL",
    "agent SIGSTOP past deadline",
)


def cells() -> list[Cell]:
    """Every cell of the matrix on the real testbed, in order."""
    found = [
        Cell(fault, phase, "checkpoint") for fault in STRUCK_FAULTS for phase in CHECKPOINT_PHASES
    ]
    found += [
        Cell("CRIU dies mid-dump (CRIU_FAULT=1)", "dumping", "checkpoint"),
        Cell("CRIU fails the dump (CRIU_FAULT=3)", "dumping", "checkpoint"),
        Cell("checkpoint store full", "dumping", "checkpoint"),
    ]
    found += [Cell(fault, phase, "restart") for fault in STRUCK_FAULTS for phase in RESTART_PHASES]
    found += [
        Cell("CRIU post-restore fails (CRIU_FAULT=6)", "restore", "restart"),
        Cell("image corrupted after commit", "prepare", "restart"),
        Cell("image truncated after commit", "prepare", "restart"),
    ]
    # CRIU_FAULT=2 (the root task of a restore kills itself) has no effect on crctl's ranks:
    # each is the init of its own PID namespace, which ignores a SIGKILL it sends itself.
    return found


# --- the testbed and its daemons ---


class Bed:
    def __init__(self, state: bed.State) -> None:
        self.state = state

    @property
    def directory(self) -> Path:
        return Path(self.state.directory)

    def refresh(self) -> None:
        loaded = bed.status(self.directory)
        assert loaded is not None, "the testbed went down"
        self.state = loaded

    def arm(self, daemon: str, failpoint: str, action: str) -> None:
        path = bed.failpoints_file(self.state, daemon)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(f"{failpoint}={action}\n")

    def disarm(self) -> None:
        folder = self.directory / "failpoints"
        if folder.is_dir():
            for path in folder.iterdir():
                path.unlink()

    def log_size(self, daemon: str) -> int:
        path = self.directory / "logs" / f"{daemon}.log"
        return path.stat().st_size if path.exists() else 0

    def fired(self, daemon: str, failpoint: str, since: int) -> bool:
        path = self.directory / "logs" / f"{daemon}.log"
        if not path.exists():
            return False
        with path.open("rb") as f:
            f.seek(since)
            for line in f:
                if b"failpoint_fired" in line and failpoint.encode() in line:
                    return True
        return False

    def wait_fired(self, daemon: str, failpoint: str, since: int, timeout: float = 30.0) -> None:
        wait_until(lambda: self.fired(daemon, failpoint, since), timeout, f"{failpoint} fired")

    def process(self, daemon: str) -> procs.ProcessRef:
        self.refresh()
        return self.state.processes[daemon]

    def kill(self, daemon: str) -> None:
        procs.kill(self.process(daemon), signal.SIGKILL)

    def stop(self, daemon: str) -> None:
        procs.signal_process(self.process(daemon), signal.SIGSTOP)

    def cont(self, daemon: str) -> None:
        procs.signal_process(self.process(daemon), signal.SIGCONT)

    def running(self, daemon: str) -> bool:
        return procs.is_running(self.process(daemon))

    def start(self, daemon: str) -> None:
        self.refresh()
        bed.start(self.state, daemon)

    def start_all(self) -> None:
        for daemon in [bed.COORDINATOR, *(bed.agent_process(h) for h in self.state.hosts)]:
            if not self.running(daemon):
                self.start(daemon)


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def crctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def restart_when_free(
    job: str, *args: str, timeout: float = 40.0
) -> subprocess.CompletedProcess[str]:
    """``crctl restart JOB ARGS``, retried while the job is busy (exit 5: e.g. a restarted
    coordinator still rolling back the restart it found unfinished)."""
    deadline = time.monotonic() + timeout
    while True:
        result = crctl("restart", job, *args)
        if result.returncode != 5 or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def crctl_json(*args: str) -> Any:
    result = crctl(*args, "--json")
    if result.returncode != 0:
        raise AssertionError(f"crctl {' '.join(args)}: {result.stderr.strip()}")
    return json.loads(result.stdout)


def background(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --- what is left behind ---


def leftovers(testbed: Bed) -> list[str]:
    """Everything a finished checkpoint or restart must not leave behind."""
    found = []
    for job, rank, cgroup in FreezerHierarchy.detect().existing():
        if cgroup.exists() and cgroup.is_frozen():
            found.append(f"frozen rank {job}/{rank}")
    for host in testbed.state.hosts:
        tables = bed.exec_in_host(testbed.state, host, ["nft", "list", "tables"]).stdout
        found += [
            f"nft table on {host}: {t}" for t in tables.split() if "crctl-" in t or "CRIU-" in t
        ]
        work = bed.host_work_dir(testbed.state, host)
        found += [f"working copy on {host}: {p.name}" for p in _entries(work / "restores")]
        found += [f"{host} awaits a decision for {p.stem}" for p in _entries(work / "checkpoints")]
    found += [f"CRIU process {pid}: {' '.join(argv[:3])}" for pid, argv in _criu_processes()]
    return found


def clear(testbed: Bed) -> None:
    """Remove what :func:`leftovers` finds (after it was reported): thaw frozen ranks, delete
    lock tables, kill CRIU processes, remove working copies and decision records."""
    for _, _, cgroup in FreezerHierarchy.detect().existing():
        if cgroup.exists() and cgroup.is_frozen():
            cgroup.thaw()
    for host in testbed.state.hosts:
        tables = bed.exec_in_host(testbed.state, host, ["nft", "list", "tables"]).stdout
        for name in tables.split():
            if "crctl-" in name or "CRIU-" in name:
                bed.exec_in_host(testbed.state, host, ["nft", "delete", "table", "inet", name])
        work = bed.host_work_dir(testbed.state, host)
        for entry in [*_entries(work / "restores"), *_entries(work / "checkpoints")]:
            remove_tree(entry)
    for pid, _ in _criu_processes():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _criu_processes() -> list[tuple[int, list[str]]]:
    return [(pid, argv) for pid, argv in criu.command_lines() if Path(argv[0]).name == "criu"]


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.is_dir() else []


# --- one cell ---


class Run:
    """One cell: a fresh ring, the fault, the recovery, the checks."""

    def __init__(self, testbed: Bed, cell: Cell, index: int) -> None:
        self.bed = testbed
        self.cell = cell
        slug = "".join(c if c.isalnum() else "-" for c in f"{cell.fault}-{cell.phase}".lower())
        self.job = f"f{index:02d}-{slug}"[:60].strip("-")
        self.ring: RingJob | None = None
        self.notes: list[str] = []

    # --- the ring ---

    def launch(self, hosts: list[str]) -> RingJob:
        self.ring = launch_ring(self.bed.state, self.job, hosts)
        self.ring.wait_for_tokens(10, timeout=20)
        return self.ring

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = crctl_json("status", self.job)
        return result

    def checkpoints(self) -> list[dict[str, Any]]:
        return list(crctl_json("checkpoints", self.job))

    def ring_runs_on(self) -> bool:
        assert self.ring is not None
        try:
            self.ring.wait_for_progress(tokens=10, timeout=15)
        except AssertionError as exc:
            self.notes.append(str(exc))
            return False
        if self.ring.errors():
            self.notes.append(f"ring errors: {self.ring.errors()}")
            return False
        return True

    # --- settling ---

    def settle(self) -> list[str]:
        """Every daemon up, every agent alive, and then, within the longest hold (a restore's),
        nothing under way: no rank frozen, no lock, no CRIU, no working copy, no agent awaiting
        a decision. What is still there then is left behind: returned, and cleared so that the
        next cell starts clean."""
        self.bed.start_all()
        wait_until(self._all_alive, SETTLE_TIMEOUT, "the coordinator up and every agent alive")
        try:
            wait_until(lambda: not self._in_flight(), RESTORE_HOLD + 5, "nothing under way")
        except AssertionError:
            left = leftovers(self.bed)
            clear(self.bed)
            return left
        return []

    @staticmethod
    def _all_alive() -> bool:
        try:
            return all(a["state"] == "alive" for a in crctl_json("agents"))
        except AssertionError:  # the coordinator is starting
            return False

    def _in_flight(self) -> list[str]:
        try:
            return leftovers(self.bed)
        except OSError:
            return ["?"]

    # --- the fault ---

    def strike(self, daemon: str, failpoint: str, victim: str, since: int, deadline: float) -> None:
        """``daemon`` reached ``failpoint`` (and waits, died or stopped there): strike."""
        self.bed.wait_fired(daemon, failpoint, since)
        fault = self.cell.fault
        if fault == "coordinator SIGKILL":
            self.bed.kill(bed.COORDINATOR)
            time.sleep(1.0)
            self.bed.start(bed.COORDINATOR)
        elif fault == "agent SIGKILL":
            if daemon != victim:
                self.bed.kill(victim)
            time.sleep(1.0)
            self.bed.start(victim)
        elif fault == "agent SIGSTOP past deadline":
            if daemon != victim:
                self.bed.stop(victim)
            time.sleep(deadline + LOST_AFTER + 1.0)
            self.bed.cont(victim)

    def arm_phase(self, points: dict[str, str], victim: str, waiter: str) -> tuple[str, str]:
        """Arm the failpoint of the cell's phase; returns (daemon, failpoint) to watch. The
        victim agent dies or stops there itself; for a coordinator kill, ``waiter`` waits
        there while the coordinator dies."""
        fault, phase = self.cell.fault, self.cell.phase
        if phase == "recorded":
            action = "kill" if fault == "coordinator SIGKILL" else f"sleep:{STRIKE_WAIT}"
            self.bed.arm(bed.COORDINATOR, RECORDED, action)
            return bed.COORDINATOR, RECORDED
        point = points[phase]
        if fault == "agent SIGKILL":
            self.bed.arm(victim, point, "kill")
            return victim, point
        if fault == "agent SIGSTOP past deadline":
            self.bed.arm(victim, point, "stop")
            return victim, point
        self.bed.arm(waiter, point, f"sleep:{STRIKE_WAIT}")
        return waiter, point

    # --- the cell ---

    def run(self) -> Result:
        started = time.monotonic()
        lost = False
        invalid = 0
        try:
            self.launch(SOURCE)
            outcome = (
                self._checkpoint_cell()
                if self.cell.operation == "checkpoint"
                else self._restart_cell()
            )
        except AssertionError as exc:
            self.notes.append(f"{type(exc).__name__}: {exc}")
            outcome = "error"
        finally:
            self.bed.disarm()
        try:
            left = self.settle()
            if left:
                self.notes.append(f"left behind: {left}")
            outcome, lost = self._judge(outcome)
            invalid = self._invalid_marked_valid()
        except AssertionError as exc:
            self.notes.append(f"not judged: {exc}")
            lost = True
        self._clean_up()
        return Result(
            self.cell,
            outcome,
            lost,
            invalid,
            self.notes,
            time.monotonic() - started,
        )

    def _checkpoint_cell(self) -> str:
        first = crctl("checkpoint", self.job, "--leave-running", "--json")
        if first.returncode != 0:
            raise AssertionError(f"the first checkpoint failed: {first.stderr}")
        store_mount: Path | None = None
        if self.cell.fault == "checkpoint store full":
            store_mount = self.bed.directory / "checkpoints" / self.job
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=1m", "crctl-full", str(store_mount)],
                check=True,
            )
        try:
            self._struck(
                ["checkpoint", self.job, "--json", "--timeout", str(PREPARE_TIMEOUT)],
                _AGENT_CHECKPOINT_POINT,
                victim="agent-h2",
                waiter="agent-h1",
                deadline=PREPARE_TIMEOUT,
            )
        finally:
            if store_mount is not None:
                subprocess.run(["umount", "-l", str(store_mount)], check=False)
        return "checkpoint"

    def _restart_cell(self) -> str:
        first = crctl("checkpoint", self.job, "--leave-running", "--json")
        stopped = crctl("checkpoint", self.job, "--json")
        if first.returncode != 0 or stopped.returncode != 0:
            raise AssertionError(f"the checkpoints before the restart failed: {stopped.stderr}")
        if self.cell.fault.startswith("image"):
            checkpoint = json.loads(stopped.stdout)["checkpoint"]
            self._damage(checkpoint, truncate=self.cell.fault.startswith("image truncated"))
        # h2's rank goes to h5: that agent is struck; h4 waits for a coordinator kill
        self._struck(
            ["restart", self.job, "--map", MOVE, "--timeout", str(STEP_TIMEOUT), "--json"],
            _AGENT_RESTORE_POINT,
            victim="agent-h5",
            waiter="agent-h4",
            deadline=STEP_TIMEOUT,
        )
        return "restart"

    def _struck(
        self,
        command: list[str],
        points: dict[str, str],
        *,
        victim: str,
        waiter: str,
        deadline: float,
    ) -> None:
        """Run ``crctl COMMAND`` with the cell's fault: CRIU's own fault injection on the
        victim's host, or a fault struck at the cell's phase (see :meth:`arm_phase`)."""
        if "CRIU_FAULT=" in self.cell.fault:
            code = self.cell.fault.split("CRIU_FAULT=")[1].rstrip(")")
            self.bed.arm(victim, "criu.fault", code)
        since = {d: self.bed.log_size(d) for d in self._daemons()}
        watch = None
        if self.cell.fault in STRUCK_FAULTS:
            watch = self.arm_phase(points, victim, waiter)
        cli = background(*command)
        try:
            if watch is not None:
                daemon, point = watch
                self.strike(daemon, point, victim, since[daemon], deadline)
            _, err = cli.communicate(timeout=180)
        finally:
            if cli.poll() is None:
                cli.kill()
        self.notes.append(f"crctl {command[0]} exited {cli.returncode}: {err.strip()[:200]}")

    def _damage(self, checkpoint: str, *, truncate: bool) -> None:
        record = next(c for c in self.checkpoints() if c["checkpoint"] == checkpoint)
        folder = Path(record["directory"]) / "rank-1"
        if truncate:
            victim = folder / "files.img"
            victim.write_bytes(victim.read_bytes()[: max(1, victim.stat().st_size // 2)])
        else:
            victim = next(p for p in sorted(folder.glob("pages-*.img")) if p.stat().st_size)
            with victim.open("r+b") as f:
                first = f.read(1)
                f.seek(0)
                f.write(bytes([first[0] ^ 0xFF]))
        self.notes.append(f"damaged {victim.relative_to(folder.parent.parent)}")

    def _daemons(self) -> list[str]:
        return [bed.COORDINATOR, *(bed.agent_process(h) for h in self.bed.state.hosts)]

    # --- judging ---

    def _judge(self, what: str) -> tuple[str, bool]:
        """What became of the job, and whether it was lost."""
        status = self.status()
        states = [r["state"] for r in status["ranks"]]
        hosts = [r["host"] for r in status["ranks"]]
        if all(s == "running" for s in states):
            if not self.ring_runs_on():
                return f"{what}: ranks listed running but the ring is broken", True
            if what == "restart":
                moved = hosts == TARGET
                return ("restarted" if moved else "restart refused, ran on"), False
            latest = status.get("latest_checkpoint")
            newest = self.checkpoints()[0]
            if newest["state"] == "committed" and newest["checkpoint"] == latest:
                return "committed, ran on", False
            return "aborted, ran on", False
        if any(s == "running" for s in states):
            self.notes.append(f"ranks {states} on {hosts}")
            crctl("kill", self.job)
        latest = status.get("latest_checkpoint")
        if not latest:
            return f"{what}: stopped with no checkpoint", True
        newest = self.checkpoints()[0]
        done = "committed" if what == "checkpoint" and newest["checkpoint"] == latest else "failed"
        again = restart_when_free(self.job, "--map", MOVE, "--json")
        if again.returncode != 0:
            return f"{done}: restart from {latest} failed: {again.stderr.strip()[:200]}", True
        if not self.ring_runs_on():
            return f"{done}: restarted, ring broken", True
        return f"{done}, restarted", False

    def _invalid_marked_valid(self) -> int:
        """Checkpoints marked committed whose images do not verify."""
        bad = 0
        for record in self.checkpoints():
            if record["state"] != "committed":
                continue
            result = crctl("verify", self.job, "--checkpoint", record["checkpoint"])
            if result.returncode != 0:
                bad += 1
                self.notes.append(
                    f"committed but not valid: {record['checkpoint']}: {result.stdout}"
                )
        return bad

    def _clean_up(self) -> None:
        try:
            if self.status()["state"] == "running":
                crctl("kill", self.job)
        except AssertionError:
            pass


# --- the matrix ---


def bring_up() -> Bed:
    state = bed.up(
        HOSTS,
        bed.DEFAULT_DIR,
        heartbeat_interval=HEARTBEAT,
        agent_lost_after=LOST_AFTER,
        commit_timeout=COMMIT_TIMEOUT,
    )
    return Bed(state)


def run_cells(testbed: Bed, chosen: list[Cell], report: Callable[[Result], None]) -> list[Result]:
    results = []
    for index, cell in enumerate(chosen, start=1):
        result = Run(testbed, cell, index).run()
        report(result)
        results.append(result)
    return results


def environment_ok() -> str | None:
    """Why the matrix cannot run here, or None."""
    if os.geteuid() != 0:
        return "the fault matrix needs root (namespaces, CRIU, nftables)"
    if bed.status(bed.DEFAULT_DIR) is not None:
        return "a testbed is already up; run `crctl testbed down` first"
    return None
