"""CRIU's lazy-pages daemon for one restore: the tasks run while their memory is copied in.

With ``RestoreSpec.lazy_pages`` CRIU creates the tasks without their private anonymous memory;
its restorer hands each task's userfaultfd to a ``criu lazy-pages`` daemon started beforehand in
the same work dir (they meet at ``<work dir>/lazy-pages.socket``). The daemon serves a page
when a task touches it, copies all the others in the background, and exits 0 once every page
is in. Until then the tasks depend on it: were it to die, the kernel would hand out the missing
pages as zeros. :meth:`LazyPages.filled` reports how it ended, so that the caller kills the
tasks when it failed; a dump must wait for it too (CRIU dumps only the pages present)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import structlog

from agent.criu._swrk import error_lines
from agent.reaper import PinnedProcess
from crctl.errors import CriuError

log = structlog.get_logger()

LAZY_PAGES_LOG = "lazy-pages.log"
# Its debug level logs every page copied (thousands of lines per 64 MiB, while the ranks run).
_MAX_LOG_LEVEL = 3
_LISTEN_TIMEOUT = 10.0


class LazyPages:
    """One running ``criu lazy-pages`` daemon."""

    def __init__(self, proc: asyncio.subprocess.Process, images_dir: Path, log_path: Path) -> None:
        self._proc = proc
        self.images_dir = images_dir
        self.log_path = log_path
        self._started = time.monotonic()

    @classmethod
    async def start(
        cls, *, criu: str, images_dir: Path, work_dir: Path, log_level: int, netns: Path | None
    ) -> LazyPages:
        """Start the daemon and return once it listens for the restore. It runs in a session of
        its own, with no pipe to us once it is ready: it must outlive the agent, which the tasks
        depend on less.

        Readiness is CRIU's own ``--status-fd`` byte, written after ``listen()``: the socket
        file appears at ``bind()``, a moment earlier, and a restore connecting in between is
        refused ("connect to lazy-pages.socket failed: Connection refused")."""
        prefix = ["nsenter", f"--net={netns}", "--"] if netns is not None else []
        ready_read, ready_write = os.pipe2(os.O_CLOEXEC)
        try:
            proc = await asyncio.create_subprocess_exec(
                *prefix,
                criu,
                "lazy-pages",
                "--images-dir",
                str(images_dir),
                "--work-dir",
                str(work_dir),
                "--log-file",
                LAZY_PAGES_LOG,
                f"-v{min(log_level, _MAX_LOG_LEVEL)}",
                "--status-fd",
                str(ready_write),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=(ready_write,),
            )
        finally:
            os.close(ready_write)  # the daemon holds the only write end now
        daemon = cls(proc, images_dir, work_dir / LAZY_PAGES_LOG)
        with contextlib.suppress(OSError):  # the OOM killer must not pick what the tasks need
            Path(f"/proc/{proc.pid}/oom_score_adj").write_text("-1000")
        try:
            listening = await asyncio.wait_for(_read_status(ready_read), _LISTEN_TIMEOUT)
        except TimeoutError:
            listening = False
        finally:
            os.close(ready_read)
        if not listening:  # it exited (EOF on the pipe) or hung before listening
            daemon.kill()
            raise daemon._error(await proc.wait())
        return daemon

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def done(self) -> bool:
        return self._proc.returncode is not None

    def _error(self, code: int | None) -> CriuError:
        lines = error_lines(self.log_path)
        reason = "; ".join(lines) if lines else f"exit status {code}"
        return CriuError(
            f"criu lazy-pages for {self.images_dir} failed: {reason} (log {self.log_path})",
            phase="restore",
        )

    async def filled(self) -> None:
        """Return once every page is in; CriuError if the daemon failed (or was killed)."""
        code = await self._proc.wait()
        if code != 0:
            raise self._error(code)
        log.debug(
            "criu_lazy_pages_filled",
            images_dir=str(self.images_dir),
            seconds=round(time.monotonic() - self._started, 4),
        )

    def kill(self) -> None:
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGKILL)


async def _read_status(fd: int) -> bool:
    """Whether CRIU wrote its readiness byte to the status pipe ``fd`` (False: it closed the
    pipe without, i.e. it exited first)."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await readable
    finally:
        loop.remove_reader(fd)
    return os.read(fd, 1) == b"\0"


def command_lines() -> Iterator[tuple[int, list[str]]]:
    """(PID, argv) of every process on this machine, whatever its namespace (to find CRIU's
    processes an earlier agent left)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        yield int(entry.name), argv


def running_daemons(images_under: Path) -> dict[Path, int]:
    """``criu lazy-pages`` daemons still filling memory from images under ``images_under`` (an
    agent's restores, after that agent restarted): images folder -> PID."""
    found: dict[Path, int] = {}
    for pid, argv in command_lines():
        if argv[1:2] != ["lazy-pages"] or "--images-dir" not in argv[:-1]:
            continue
        images_dir = Path(argv[argv.index("--images-dir") + 1])
        if images_dir.is_relative_to(images_under):
            found[images_dir] = pid
    return found


async def outlived(pid: int, images_dir: Path, log_path: Path) -> None:
    """Wait for a daemon started by an earlier agent (not our child: its exit status is not
    ours to collect) to exit; CriuError if its log shows it failed."""
    with contextlib.suppress(ProcessLookupError):  # already gone
        await PinnedProcess(pid).wait()
    lines = error_lines(log_path)
    if lines:
        raise CriuError(
            f"criu lazy-pages for {images_dir} failed: {'; '.join(lines)} (log {log_path})",
            phase="restore",
        )


def kill_outlived(pid: int) -> None:
    """SIGKILL a daemon started by an earlier agent (through a pidfd: never a recycled PID)."""
    with contextlib.suppress(ProcessLookupError):  # already gone
        daemon = PinnedProcess(pid)
        daemon.send_signal(signal.SIGKILL)
        daemon.close()
