"""An HTTP/1.1 client that keeps one connection: it GETs a path again and again on the same
socket and checks every response, writing its progress to a JSON status file (rewritten and
renamed, never held open).

    http_keepalive.py --connect ADDR --port PORT --path /PATH --expect-bytes N --status FILE

Status: {"pid", "connections", "responses", "local_port", "errors": [...], "updated"}. Any
error (a bad status line, a short body, a reset connection) is recorded and the client exits 1:
it never reconnects, so "connections" stays 1 for as long as the one connection lives."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

INTERVAL = 0.02
STATUS_EVERY = 0.05


def write(path: Path, data: dict[str, Any]) -> None:
    data["updated"] = time.time()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def connect(address: str, port: int) -> socket.socket:
    deadline = time.monotonic() + 30
    while True:
        try:
            return socket.create_connection((address, port), timeout=60)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def read_response(stream: Any) -> tuple[str, int]:
    """The status line and the body's length (Content-Length framing)."""
    status = stream.readline().decode(errors="replace").strip()
    length = -1
    while (line := stream.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode(errors="replace").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    body = stream.read(length) if length >= 0 else b""
    return status, len(body)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connect", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--expect-bytes", type=int, required=True)
    parser.add_argument("--status", type=Path, required=True)
    args = parser.parse_args()
    data: dict[str, Any] = {"pid": os.getpid(), "connections": 0, "responses": 0, "errors": []}
    sock = connect(args.connect, args.port)
    data["connections"] = 1
    data["local_port"] = sock.getsockname()[1]
    stream = sock.makefile("rb")
    request = f"GET {args.path} HTTP/1.1\r\nHost: {args.connect}\r\n\r\n".encode()
    written = 0.0
    while True:
        try:
            sock.sendall(request)
            status, size = read_response(stream)
        except OSError as exc:
            data["errors"].append(f"connection: {exc!r}")
            write(args.status, data)
            return 1
        if not status.startswith("HTTP/1.1 200") or size != args.expect_bytes:
            data["errors"].append(f"bad response {status!r} with {size} bytes")
            write(args.status, data)
            return 1
        data["responses"] += 1
        if time.monotonic() - written > STATUS_EVERY:
            write(args.status, data)
            written = time.monotonic()
        time.sleep(INTERVAL)


if __name__ == "__main__":
    sys.exit(main())
