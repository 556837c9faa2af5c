"""Failpoints: named places in the coordinator and the agents where a test can make the process
die, stop or fail at one exact moment of a protocol (the fault matrix, bench/faults.py).

Off unless the process was started with ``CRCTL_FAILPOINTS=<file>``; then each place reads that
file (only when it changed) for lines ``<name>=<action>``:

* ``kill``: SIGKILL this process (a crash at that point);
* ``stop``: SIGSTOP this process (paused until someone sends SIGCONT);
* ``sleep:<seconds>``: wait there (async places only);
* ``error:<message>``: raise a CrctlError there;
* ``<value>``: for value failpoints (:func:`value`), e.g. ``criu.fault=3``, which makes the next
  CRIU this agent starts run with CRIU's own fault injection ``CRIU_FAULT=3``.

An action fires once: its line is removed from the file before it acts (so that a daemon started
again after a ``kill`` does not die at the same place). A disabled failpoint costs one global
lookup."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import structlog

from crctl.errors import CrctlError

ENV = "CRCTL_FAILPOINTS"
log = structlog.get_logger()

_path: Path | None = Path(os.environ[ENV]) if os.environ.get(ENV) else None
_seen: tuple[int, int] | None = None
_armed: dict[str, str] = {}


def _load() -> dict[str, str]:
    global _seen, _armed
    assert _path is not None
    try:
        st = _path.stat()
    except FileNotFoundError:
        _seen, _armed = None, {}
        return _armed
    stamp = (st.st_mtime_ns, st.st_size)
    if stamp != _seen:
        armed = {}
        for line in _path.read_text().splitlines():
            name, sep, action = line.strip().partition("=")
            if sep and name:
                armed[name.strip()] = action.strip()
        _seen, _armed = stamp, armed
    return _armed


def _take(name: str) -> str | None:
    """The action armed at ``name``, disarmed in the file before it is returned."""
    if _path is None:
        return None
    action = _load().pop(name, None)
    if action is None:
        return None
    tmp = _path.with_suffix(".tmp")
    tmp.write_text("".join(f"{k}={v}\n" for k, v in _armed.items()))
    os.replace(tmp, _path)
    log.warning("failpoint_fired", failpoint=name, action=action)
    return action


def _act(name: str, action: str) -> float:
    """Carry out a kill, stop or error; returns the seconds to sleep for a sleep action."""
    kind, _, argument = action.partition(":")
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif kind == "error":
        raise CrctlError(argument or f"failpoint {name}", phase=name)
    elif kind == "sleep":
        return float(argument or 0)
    return 0.0


def hit(name: str) -> None:
    """A failpoint in synchronous code (sleep actions are ignored here)."""
    if _path is None:
        return
    action = _take(name)
    if action is not None:
        _act(name, action)


async def reached(name: str) -> None:
    """A failpoint in asynchronous code."""
    if _path is None:
        return
    action = _take(name)
    if action is not None:
        seconds = _act(name, action)
        if seconds > 0:
            await asyncio.sleep(seconds)


def value(name: str) -> str | None:
    """A value failpoint's value (taken once), or None."""
    return _take(name)
