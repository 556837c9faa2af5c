"""Copies a rank's stdout/stderr pipe into its log file, from a process of its own.

The rank only holds the pipe's write end, so no growing regular file is ever part of a
checkpoint (FINDINGS 14). The read end belongs to a small holder process (``cat``, in a session
of its own) that appends to the log: it outlives the agent, so an agent that crashes or is
upgraded never breaks a rank's stdout (no EPIPE), and a restarted agent adopts the rank as it
is. Several holders may feed one log in turn (the pipe before a checkpoint, a new one after a
restore): each opens it in append mode. A holder exits by itself once every writer is gone."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
from pathlib import Path

import structlog

log = structlog.get_logger()


class LogPump:
    """The holder of a rank's stdout pipe (or, for a rank adopted after an agent restart, the
    holder an earlier agent started, which goes on by itself)."""

    def __init__(self, read_fd: int | None, log_path: Path) -> None:
        """Start a holder reading ``read_fd`` (which it takes over: it is closed here) into
        ``log_path``; with ``read_fd`` None, stand for a holder started earlier."""
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        if read_fd is None:
            return
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with log_path.open("ab") as out:
                self._proc = subprocess.Popen(
                    ["cat"],
                    stdin=read_fd,
                    stdout=out,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
        finally:
            os.close(read_fd)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def done(self) -> bool:
        return self._proc is None or self._proc.poll() is not None

    async def drained(self) -> None:
        """Wait until every writer has closed the pipe and all data is in the log."""
        if self._proc is not None:
            await asyncio.to_thread(self._proc.wait)

    def close(self) -> None:
        """Stop following the holder; it goes on until the pipe's last writer is gone, and is
        reaped then (it is our child)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            threading.Thread(target=proc.wait, name="log-holder-reaper", daemon=True).start()

    async def abandon(self, timeout: float = 5.0) -> None:
        """The rank never ran (or its restore failed): the pipe's writers are gone, so the
        holder ends at once; wait for it."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drained(), timeout)
        self.close()
