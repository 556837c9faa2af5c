"""Copies a rank's stdout/stderr pipe into its log file.

The agent owns the pipe's read end and the log file; the rank only holds the pipe's write end,
so no growing regular file is ever part of a checkpoint (FINDINGS 14). Several pumps may feed
the same log in turn (the pipe before a checkpoint, a new one after a restore): the file is
opened in append mode by each."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import structlog

log = structlog.get_logger()

_CHUNK = 1 << 16


class LogPump:
    """Reads ``read_fd`` (which it owns and closes) until EOF, appending to ``log_path``."""

    def __init__(self, read_fd: int, log_path: Path) -> None:
        self.log_path = log_path
        self._fd: int | None = read_fd
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._out = log_path.open("ab", buffering=0)
        self.bytes = 0
        os.set_blocking(read_fd, False)
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._loop.add_reader(read_fd, self._on_readable)

    def _on_readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, _CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("log_pump_read_failed", log=str(self.log_path), error=str(exc))
            data = b""
        if data:
            self._out.write(data)
            self.bytes += len(data)
            return
        self.close()

    @property
    def done(self) -> bool:
        return self._done.done()

    async def drained(self) -> None:
        """Wait until every writer has closed the pipe and all data is in the log."""
        await asyncio.shield(self._done)

    def close(self) -> None:
        """Stop pumping now (data still in the pipe is lost)."""
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
            self._out.close()
        if not self._done.done():
            self._done.set_result(None)
