"""A tiny checkpointable workload: a TCP echo server, a client that checks every reply, and a
ticker with no network at all. Each writes its progress to a JSON status file (rewritten and
renamed, never held open: CRIU refuses to restore a regular file that grew after the dump) and
prints a progress line on stdout now and then.

    echo.py server --status FILE --bind ADDR --port PORT
    echo.py client --status FILE --connect ADDR --port PORT [--interval S]
    echo.py ticker --status FILE [--interval S] [--memory-mib N]

Status: {"role", "pid", "count", "errors": [...], "updated"}; "count" is connections accepted
(server), replies checked (client) or ticks (ticker). A client error (a wrong or missing reply,
a reset connection) is recorded and the client exits 1."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

PRINT_EVERY = 20
STATUS_EVERY = 0.05
SOCKET_TIMEOUT = 30.0


class Status:
    def __init__(self, path: Path, role: str) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "role": role,
            "pid": os.getpid(),
            "count": 0,
            "errors": [],
            "updated": 0.0,
        }
        self._written = 0.0

    def bump(self, force: bool = False) -> None:
        self.data["count"] += 1
        self.write(force)

    def error(self, message: str) -> None:
        self.data["errors"].append(message)
        print(f"ERROR {message}", flush=True)
        self.write(force=True)

    def write(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._written < STATUS_EVERY:
            return
        self.data["updated"] = now
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data))
        os.replace(tmp, self.path)
        self._written = now


def serve(args: argparse.Namespace, status: Status) -> int:
    listener = socket.create_server((args.bind, args.port), reuse_port=False)
    status.write(force=True)
    print(f"listening on {args.bind}:{args.port}", flush=True)
    while True:
        conn, peer = listener.accept()
        status.bump(force=True)
        print(f"accepted {peer[0]}:{peer[1]}", flush=True)
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError as exc:
                status.error(f"server connection: {exc}")


def _connect(args: argparse.Namespace) -> socket.socket:
    deadline = time.monotonic() + 20
    while True:
        try:
            sock = socket.create_connection((args.connect, args.port), timeout=2)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
            continue
        sock.settimeout(SOCKET_TIMEOUT)
        return sock


def client(args: argparse.Namespace, status: Status) -> int:
    try:
        sock = _connect(args)
    except OSError as exc:
        status.error(f"connect: {exc}")
        return 1
    print(f"connected to {args.connect}:{args.port}", flush=True)
    buffer = b""
    seq = 0
    while True:
        seq += 1
        expected = f"{seq} {'x' * 32}\n".encode()
        try:
            sock.sendall(expected)
            while b"\n" not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed by the server")
                buffer += chunk
        except OSError as exc:
            status.error(f"seq {seq}: {exc!r}")
            return 1
        line, buffer = buffer.split(b"\n", 1)
        if line + b"\n" != expected:
            status.error(f"seq {seq}: got {line[:40]!r}")
            return 1
        status.bump()
        if seq % PRINT_EVERY == 0:
            print(f"progress {seq}", flush=True)
        time.sleep(args.interval)


PATTERN_CHUNK = 1 << 20


def _pattern(index: int) -> bytes:
    """The content of memory chunk ``index``: different in every chunk and every page."""
    page = bytes((index * 7 + i) & 0xFF for i in range(256)) * 16
    return page * (PATTERN_CHUNK // len(page))


def ticker(args: argparse.Namespace, status: Status) -> int:
    """Ticks; with --memory-mib also holds that much memory, filled with a known pattern, and
    checks one chunk of it per tick (all of it every --memory-mib ticks): "memory_passes"
    counts the full checks, a chunk that differs is recorded as an error."""
    chunks = args.memory_mib
    memory = bytearray(b"".join(_pattern(i) for i in range(chunks)))
    status.data["memory_passes"] = 0
    tick = 0
    while True:
        tick += 1
        if chunks:
            index = tick % chunks
            start = index * PATTERN_CHUNK
            if memory[start : start + PATTERN_CHUNK] != _pattern(index):
                status.error(f"memory chunk {index} differs from what was written")
                return 1
            if index == chunks - 1:
                status.data["memory_passes"] += 1
        status.bump()
        if tick % PRINT_EVERY == 0:
            print(f"progress {tick}", flush=True)
        time.sleep(args.interval)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["server", "client", "ticker"])
    parser.add_argument("--status", type=Path, required=True)
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--connect", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7000)
    parser.add_argument("--interval", type=float, default=0.005)
    parser.add_argument("--memory-mib", type=int, default=0, help="ticker: memory to check")
    args = parser.parse_args(argv)
    status = Status(args.status, args.role)
    roles = {"server": serve, "client": client, "ticker": ticker}
    return roles[args.role](args, status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
