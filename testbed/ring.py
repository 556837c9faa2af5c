"""A test workload: a TCP ring of N ranks passing a token (sequence number + running checksum).

Rank i listens on port ``--port`` + i at its own address (so that ranks can share a host),
connects to rank i+1 and accepts rank i-1.
Rank 0 starts the token. Every rank checks that each token it receives has the next sequence
number it expects and the checksum that sequence implies, and records any loss, duplicate,
corruption or socket error in its status file, with the last long gaps between two tokens it
received (what a checkpoint costs the application, seen from inside). The file is JSON padded
to a fixed size and overwritten in place with one write, so that a checkpoint taken mid-write
still finds the same file at the same size at restore (CRIU checks both).

    python -m testbed.ring --rank 0 --peers 198.18.0.11,198.18.0.12,198.18.0.13 --status FILE
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import time
from pathlib import Path

TOKEN = struct.Struct("!QQ")  # sequence, checksum
MASK = (1 << 64) - 1
STATUS_SIZE = 4096
STALL_SECONDS = 0.1  # a gap between two received tokens this long is recorded as a stall
STALLS_KEPT = 16


def next_checksum(checksum: int, sequence: int) -> int:
    return (checksum * 1_000_003 + sequence) & MASK


def checksum_after(checksum: int, sequence: int, steps: int) -> int:
    """The checksum ``steps`` hops after the token (sequence, checksum)."""
    for k in range(sequence + 1, sequence + steps + 1):
        checksum = next_checksum(checksum, k)
    return checksum


class Ring:
    def __init__(self, args: argparse.Namespace) -> None:
        self.rank: int = args.rank
        self.peers: list[str] = args.peers.split(",")
        self.size = len(self.peers)
        self.port: int = args.port
        self.status_path = Path(args.status)
        self.interval: float = args.interval
        self.print_every: int = args.print_every
        self.ballast = bytearray(args.memory_mib * 2**20)
        for offset in range(0, len(self.ballast), 4096):  # touch every page
            self.ballast[offset] = 1
        self.tokens = 0
        self.last: tuple[int, int] | None = None  # (sequence, checksum) last received
        self.errors: list[str] = []
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.stalls: list[
            tuple[float, float]
        ] = []  # (token received at, seconds since the one before)
        self.listener: socket.socket | None = None
        self.inbound: socket.socket | None = None
        self.outbound: socket.socket | None = None
        self._status_written = 0.0

    # --- status ---

    def _endpoints(self, sock: socket.socket | None) -> list[str] | None:
        if sock is None:
            return None
        try:
            return [f"{a[0]}:{a[1]}" for a in (sock.getsockname(), sock.getpeername())]
        except OSError:
            return None

    def write_status(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._status_written < 0.2:
            return
        self._status_written = now
        status = {
            "rank": self.rank,
            "pid": os.getpid(),
            "tokens": self.tokens,
            "last_sequence": self.last[0] if self.last else None,
            "errors": self.errors,
            "first_token_at": self.first_token_at,
            "last_token_at": self.last_token_at,
            "stalls": self.stalls,
            "updated_at": now,
            "inbound": self._endpoints(self.inbound),
            "outbound": self._endpoints(self.outbound),
        }
        text = json.dumps(status).encode()
        record = text.ljust(STATUS_SIZE) if len(text) <= STATUS_SIZE else text[:STATUS_SIZE]
        fd = os.open(self.status_path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, record, 0)
        finally:
            os.close(fd)

    def fail(self, message: str) -> None:
        self.errors.append(message[:200])
        del self.errors[10:]
        self.write_status(force=True)

    # --- the ring ---

    def connect(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.peers[self.rank], self.port + self.rank))
        listener.listen(1)
        self.listener = listener
        successor = (self.rank + 1) % self.size
        deadline = time.monotonic() + 60
        while True:
            try:
                self.outbound = socket.create_connection(
                    (self.peers[successor], self.port + successor), timeout=2
                )
                self.outbound.settimeout(None)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.inbound, _ = listener.accept()
        for sock in (self.inbound, self.outbound):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.write_status(force=True)

    def _receive(self) -> tuple[int, int]:
        assert self.inbound is not None
        data = b""
        while len(data) < TOKEN.size:
            chunk = self.inbound.recv(TOKEN.size - len(data))
            if not chunk:
                raise ConnectionError("predecessor closed the connection")
            data += chunk
        sequence, checksum = TOKEN.unpack(data)
        return sequence, checksum

    def _check(self, sequence: int, checksum: int) -> None:
        if self.last is None:
            expected = self.rank if self.rank else self.size
            if sequence != expected:
                self.fail(f"first token has sequence {sequence}, expected {expected}")
            return
        last_sequence, last_checksum = self.last
        if sequence <= last_sequence:
            self.fail(f"duplicate: sequence {sequence} after {last_sequence}")
        elif sequence != last_sequence + self.size:
            self.fail(f"loss: sequence {sequence} after {last_sequence}")
        elif checksum != checksum_after(last_checksum, last_sequence, self.size):
            self.fail(f"corrupt: checksum mismatch at sequence {sequence}")

    def _send(self, sequence: int, checksum: int) -> None:
        assert self.outbound is not None
        self.outbound.sendall(TOKEN.pack(sequence, checksum))

    def run(self) -> int:
        try:
            self.connect()
            if self.rank == 0:
                self._send(1, next_checksum(0, 1))
            while True:
                sequence, checksum = self._receive()
                self._check(sequence, checksum)
                self.last = (sequence, checksum)
                self.tokens += 1
                now = time.time()
                if self.last_token_at is not None and now - self.last_token_at >= STALL_SECONDS:
                    self.stalls.append((round(now, 4), round(now - self.last_token_at, 4)))
                    del self.stalls[:-STALLS_KEPT]
                self.first_token_at = self.first_token_at or now
                self.last_token_at = now
                self.write_status()
                if self.errors:
                    return 1
                if self.print_every and self.tokens % self.print_every == 0:
                    print(
                        f"rank {self.rank}: {self.tokens} tokens, sequence {sequence}", flush=True
                    )
                if self.interval:
                    time.sleep(self.interval)
                self._send(sequence + 1, next_checksum(checksum, sequence + 1))
        except OSError as exc:
            self.fail(f"socket error: {exc!r}")
            return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--peers", required=True, help="comma-separated addresses, rank order")
    parser.add_argument("--port", type=int, default=7100)
    parser.add_argument("--status", required=True, help="status file (JSON)")
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between hops")
    parser.add_argument("--memory-mib", type=int, default=0, help="touched memory to hold")
    parser.add_argument(
        "--print-every",
        type=int,
        default=0,
        help="print a progress line on stdout every N tokens (0: never)",
    )
    args = parser.parse_args(argv)
    return Ring(args).run()


if __name__ == "__main__":
    sys.exit(main())
