"""A ``criu swrk <fd>`` child and our end of its ``SOCK_SEQPACKET`` socketpair, and CRIU's
reasons read from its log."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
from collections import deque
from pathlib import Path
from typing import Any

from pycriu import rpc_pb2 as rpc

from crctl import failpoints
from crctl.errors import CriuError

_MAX_MESSAGE = 1 << 20
_ERROR_LINES = 8
_STDERR_LINES = 20
# Error lines CRIU logs on every run here (FINDINGS 4), which say nothing about a failure.
_HARMLESS = ("Can't setup RLIMIT_NOFILE for self",)


def criu_binary(path: str | None) -> str:
    if path is not None:
        return path
    found = shutil.which("criu") or shutil.which("criu", path="/usr/local/sbin:/usr/sbin:/sbin")
    if found is None:
        raise CriuError("criu is not installed (run deploy/install-criu.sh)")
    return found


def harmless(line: str) -> bool:
    return any(h in line for h in _HARMLESS)


def error_lines(log_path: Path, limit: int = _ERROR_LINES) -> list[str]:
    """The last ``limit`` ``Error (...)`` lines of a CRIU log, without their timestamps."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return []
    found = [
        line.split(") ", 1)[-1] if line.startswith("(") else line
        for line in text.splitlines()
        if "Error (" in line and not harmless(line)
    ]
    return found[-limit:]


class Swrk:
    """One ``criu swrk`` process serving one request."""

    def __init__(self, proc: asyncio.subprocess.Process, sock: socket.socket) -> None:
        self.proc = proc
        self.sock = sock
        self.stderr: deque[str] = deque(maxlen=_STDERR_LINES)
        self._stderr_task = asyncio.create_task(self._drain_stderr())

    @classmethod
    async def spawn(cls, criu: str, netns: Path | None, pass_fds: tuple[int, ...]) -> Swrk:
        """Start swrk (in ``netns`` if given); ``pass_fds`` keep their numbers in CRIU."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            ours.setblocking(False)
            prefix = ["nsenter", f"--net={netns}", "--"] if netns is not None else []
            env = None
            fault = failpoints.value("criu.fault")  # CRIU's own fault injection, for tests
            if fault is not None:
                env = {**os.environ, "CRIU_FAULT": fault}
            proc = await asyncio.create_subprocess_exec(
                *prefix,
                criu,
                "swrk",
                str(theirs.fileno()),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(theirs.fileno(), *pass_fds),
                env=env,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return cls(proc, ours)

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.stderr.append(raw.decode(errors="replace").rstrip())

    async def send(self, req: Any) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, req.SerializeToString())

    async def recv(self) -> Any | None:
        """The next ``criu_resp``, or None when CRIU closed its end. (A file descriptor CRIU
        may attach to a NOTIFY is not asked for, so the kernel discards it.)"""
        try:
            data = await asyncio.get_running_loop().sock_recv(self.sock, _MAX_MESSAGE)
        except ConnectionError:
            return None
        if not data:
            return None
        resp = rpc.criu_resp()
        resp.ParseFromString(data)
        return resp

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)

    async def close(self) -> int:
        """Close our end (CRIU, if still waiting for a reply, takes it as "no") and wait for
        CRIU to exit; its exit code."""
        self.sock.close()
        code = await self.proc.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._stderr_task, 5.0)
        return code
