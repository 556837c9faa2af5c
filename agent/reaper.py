"""Owning the ranks' processes.

The agent is a child subreaper, so every rank's root is its child: a launched rank's init is
adopted when its launcher exits, and a restored one is created as the agent's child by CRIU
(``rst_sibling``; without it, it would be adopted when CRIU exits). The agent thus collects each
rank's exit status.

A process is pinned by a pidfd as soon as its PID is known, so that signals never reach a
recycled PID. Its exit is awaited through the pidfd (readable once it has exited) and the
status collected with ``waitid(P_PIDFD)``: nothing else is ever reaped by that path (no
``waitpid(-1)``), so it coexists with asyncio's child watcher.

A subreaper also inherits orphans it never started: CRIU's helper processes (its cgroup daemon
outlives a failed restore) and whatever a rank's launcher leaves behind. :class:`OrphanReaper`
reaps zombie children that no :class:`PinnedProcess` claims and that nobody else reaped for a
whole scan interval (asyncio and ``subprocess`` reap their own children at once)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import weakref
from collections import Counter
from pathlib import Path

import structlog

from crctl.errors import PrerequisiteError

log = structlog.get_logger()

PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
ORPHAN_SCAN_INTERVAL = 0.5

_libc = ctypes.CDLL(None, use_errno=True)
# PIDs of our children whose exit status someone awaits (with the number of pins on each):
# never reaped as orphans.
_claimed: Counter[int] = Counter()
_reapers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = (
    weakref.WeakKeyDictionary()
)


def become_subreaper() -> None:
    """Make this process the reaper of its orphaned descendants (idempotent)."""
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise PrerequisiteError(
            f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(err)}", errno=err
        )


def is_subreaper() -> bool:
    value = ctypes.c_int(0)
    if _libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0) != 0:
        return False
    return value.value != 0


def ensure_orphan_reaper() -> None:
    """Become a subreaper and make sure an :class:`OrphanReaper` runs on the current event
    loop (one per loop; it ends with the loop)."""
    become_subreaper()
    loop = asyncio.get_running_loop()
    task = _reapers.get(loop)
    if task is None or task.done():
        _reapers[loop] = loop.create_task(OrphanReaper().run(), name="crctl-orphan-reaper")


def returncode(si_code: int, si_status: int) -> int:
    """Like ``subprocess``: the exit code, or minus the signal that killed the process."""
    if si_code in (os.CLD_KILLED, os.CLD_DUMPED):
        return -si_status
    return si_status


def _children() -> list[int] | None:
    """Our children, from each of our threads' ``children`` list (an orphan is handed to any
    thread of its subreaper); None where the kernel keeps no such lists."""
    if not os.path.exists(f"/proc/self/task/{os.getpid()}/children"):
        return None  # CONFIG_PROC_CHILDREN is off
    found: list[int] = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as listing:
                found.extend(int(pid) for pid in listing.read().split())
        except FileNotFoundError:  # a thread that just ended
            continue
    return found


def _zombie_children() -> dict[int, str]:
    """Our children that have exited and not been reaped: pid -> command name. Reads only our
    children's entries where the kernel lists them (a whole /proc scan took milliseconds of
    the agent's event loop twice a second)."""
    me = os.getpid()
    children = _children()
    candidates = (
        children
        if children is not None
        else [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]
    )
    found: dict[int, str] = {}
    for pid in candidates:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        close = stat.rindex(")")
        state, ppid = stat[close + 2 :].split()[:2]
        if state == "Z" and int(ppid) == me:
            found[pid] = stat[stat.index("(") + 1 : close]
    return found


class OrphanReaper:
    """Reaps adopted orphans: zombie children not claimed by a PinnedProcess that were already
    zombies at the previous scan."""

    def __init__(self, interval: float = ORPHAN_SCAN_INTERVAL) -> None:
        self.interval = interval
        self._seen: set[int] = set()

    def scan(self) -> dict[int, str]:
        """One pass; the orphans reaped (pid -> command name)."""
        zombies = {pid: comm for pid, comm in _zombie_children().items() if pid not in _claimed}
        reaped: dict[int, str] = {}
        for pid, comm in zombies.items():
            if pid not in self._seen:
                continue
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
                reaped[pid] = comm
        self._seen = set(zombies) - set(reaped)
        if reaped:
            log.info("orphans_reaped", orphans=[f"{pid}:{comm}" for pid, comm in reaped.items()])
        return reaped

    async def run(self) -> None:
        while True:
            try:
                self.scan()
            except OSError as exc:
                log.warning("orphan_scan_failed", error=str(exc))
            await asyncio.sleep(self.interval)


class PinnedProcess:
    """A process held by a pidfd: signal it safely, await its exit, collect its status. While
    pinned, its PID is claimed: the orphan reaper leaves it alone."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._pidfd: int | None = os.pidfd_open(pid)  # ProcessLookupError if already reaped
        _claimed[pid] += 1
        self._exited: asyncio.Future[int | None] | None = None
        self.returncode: int | None = None
        self.exited = False

    def send_signal(self, signum: int) -> bool:
        """True if the signal was sent (the process had not been reaped)."""
        if self._pidfd is None:
            return False
        try:
            signal.pidfd_send_signal(self._pidfd, signum)
        except ProcessLookupError:
            return False
        return True

    async def wait(self) -> int | None:
        """Wait for the process to exit; its return code, or None if the status is not ours to
        collect (not our child, or reaped by someone else)."""
        if self._exited is None:
            self._exited = asyncio.ensure_future(self._wait())
        return await asyncio.shield(self._exited)

    async def _wait(self) -> int | None:
        if self._pidfd is None:
            return self.returncode
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()

        def _on_readable() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(self._pidfd, _on_readable)
        try:
            await readable
        finally:
            loop.remove_reader(self._pidfd)
        try:
            result = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            result = None
        finally:
            self.exited = True
            self.close()
        if result is not None:
            self.returncode = returncode(result.si_code, result.si_status)
        return self.returncode

    def close(self) -> None:
        """Stop tracking (an unreaped exit is then left to the orphan reaper)."""
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = None
            _claimed[self.pid] -= 1
            if _claimed[self.pid] <= 0:
                del _claimed[self.pid]
