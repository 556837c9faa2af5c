"""A rank with a connection to a server outside the job: it reads a byte stream and records in
its status file (fixed size, rewritten in place) how many bytes came and how the stream ended.

    outside_client.py --connect ADDR --port PORT --status FILE
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time

SIZE = 1024


def write(path: str, status: dict[str, object]) -> None:
    record = json.dumps(status).encode().ljust(SIZE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, record, 0)
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connect", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--status", required=True)
    args = parser.parse_args()
    status: dict[str, object] = {"received": 0, "ended": None}
    sock = socket.create_connection((args.connect, args.port), timeout=10)
    sock.settimeout(None)
    while True:
        try:
            data = sock.recv(64)
        except OSError as exc:
            status["ended"] = f"recv error {exc.errno}"
            break
        if not data:
            status["ended"] = "eof"
            break
        status["received"] = int(str(status["received"])) + len(data)
        write(args.status, status)
    try:
        sock.sendall(b"x")
        status["write"] = "ok"
    except OSError as exc:
        status["write"] = f"error {exc.errno}"
    write(args.status, status)
    while True:  # stay alive: the test reads the status
        time.sleep(1)


if __name__ == "__main__":
    main()
