"""Starting daemons detached and stopping them by the PIDs we recorded, never by name.

A PID is identified by (pid, start time in clock ticks since boot) so that a reused PID is never
signalled by mistake."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessRef:
    pid: int
    start_ticks: int


def start_ticks(pid: int) -> int | None:
    """The process's start time from /proc/PID/stat (field 22), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def is_running(ref: ProcessRef) -> bool:
    if start_ticks(ref.pid) != ref.start_ticks:
        return False
    try:
        state = Path(f"/proc/{ref.pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def spawn(argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> ProcessRef:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env=env,
        )
    ticks = start_ticks(proc.pid)
    # The child is not reaped by us; Popen objects are dropped on purpose (daemon semantics).
    return ProcessRef(pid=proc.pid, start_ticks=ticks or 0)


def signal_process(ref: ProcessRef, sig: int) -> bool:
    """Send ``sig`` if the process is still the one we started; True if it was running."""
    if not is_running(ref):
        return False
    try:
        os.kill(ref.pid, sig)
    except ProcessLookupError:
        return False
    return True


def kill(ref: ProcessRef, sig: int = signal.SIGKILL, wait: float = 5.0) -> bool:
    """Signal the process if it is still the one we started; wait for it to go. True if it was
    running."""
    if not signal_process(ref, sig):
        return False
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and is_running(ref):
        _reap(ref.pid)
        time.sleep(0.02)
    _reap(ref.pid)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
