"""Third-party programs a rank runs as its own children (redis-server, memcached, postgres,
nginx, java, psql): found where Debian installs them, started with PR_SET_PDEATHSIG (they die
with the rank), their output appended to a log in the work dir, stopped by the rank's SIGTERM
handler and watched while the rank runs.

A child's log is opened O_APPEND, so CRIU records no size for it and a restore does not
check it (the log may grow between a leave-running checkpoint and a restart)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from tests.workloads.catalogue import _common

STOP_PATIENCE = 3.0


class ProgramMissing(Exception):
    pass


def find_program(name: str, *candidates: str) -> str:
    """The first of `candidates` that is executable, else `name` on PATH."""
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if found is None:
        raise ProgramMissing(f"{name} is not installed (deploy/setup.sh installs it)")
    return found


class Child:
    """A running third-party program; `problem()` says if it has died."""

    def __init__(
        self, name: str, process: subprocess.Popen[bytes], log: Path, stop_signal: int
    ) -> None:
        self.name = name
        self.process = process
        self.log = log
        self.stop_signal = stop_signal

    @property
    def pid(self) -> int:
        return self.process.pid

    def problem(self) -> str | None:
        code = self.process.poll()
        if code is None:
            return None
        return f"{self.name} (pid {self.pid}) exited with {code}: {self.log_tail()}"

    def log_tail(self, size: int = 600) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:].strip()
        except OSError:
            return "(no log)"

    def stop(self, patience: float = STOP_PATIENCE) -> None:
        """Ask it to end (its stop signal), then kill it; reap it. Raw system calls only: this
        runs in a signal handler, maybe while the main thread is inside Popen's own locks."""
        if self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, self.stop_signal)
        deadline = time.monotonic() + patience
        while True:
            try:
                pid, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if pid:
                return
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.pid, 0)
                return
            time.sleep(0.02)


def _dying_with(parent: int) -> Callable[[], None]:
    def die_with_parent() -> None:  # between fork and exec, after the user change
        _common.libc().prctl(_common.PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the rank ended before the line above
            os._exit(1)

    return die_with_parent


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log: Path,
    stop_signal: int = signal.SIGTERM,
    user: str | None = None,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Child:
    """Start `argv` as a child of this rank; it is stopped when SIGTERM ends the rank.
    `user`: run it as that user (only when this rank is root). Its stdout goes to `log`
    unless `stdout` says otherwise; its stderr always does."""
    _common.libc()  # loaded here, not between fork and exec
    with open(log, "ab") as output:
        process = subprocess.Popen(
            list(argv),
            stdin=stdin,
            stdout=output if stdout is None else stdout,
            stderr=output,
            env=None if env is None else dict(env),
            cwd=cwd,
            user=user,
            group=None if user is None else pwd.getpwnam(user).pw_gid,
            extra_groups=None if user is None else [],
            preexec_fn=_dying_with(os.getpid()),  # after a user change, which clears it
            close_fds=True,
        )
    child = Child(name, process, log, stop_signal)
    _common.at_exit(child.stop)
    return child
