"""What every catalogue program shares: its arguments, its status file, SIGTERM, forked
children, TCP set-up with retry, length-prefixed frames and sequence-numbered messages.

The messages are the unit of most checks: `make_message(tag, seq)` is a header (sequence
number, CRC-32 of the body) and a body whose length and bytes follow from (tag, seq), so
`check_message` can tell a lost, repeated or reordered message (wrong sequence number) from a
corrupted one (bad checksum, wrong body)."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

STATUS_EVERY = 0.25
MAX_ERRORS = 20
CONNECT_PATIENCE = 30.0
MAX_FRAME = 16 << 20
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Args:
    rank: int
    ranks: int
    addresses: tuple[str, ...]
    port: int
    status: Path
    work_dir: Path
    extra: argparse.Namespace

    @property
    def own_address(self) -> str:
        return self.addresses[self.rank]

    def listen_port(self, rank: int) -> int:
        """The port rank `rank` listens on."""
        return self.port + rank


def parse_args(
    argv: Sequence[str] | None = None,
    ranks: int = 1,
    add_extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> Args:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--ranks", type=int, required=True)
    parser.add_argument("--addresses", required=True, help="A0,A1,...: rank i runs on A(i)")
    parser.add_argument("--port", type=int, required=True, help="rank i listens on P + i")
    parser.add_argument("--status", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    if add_extra is not None:
        add_extra(parser)
    namespace = parser.parse_args(argv)
    addresses = tuple(a for a in namespace.addresses.split(",") if a)
    if namespace.ranks != ranks:
        parser.error(f"this workload runs as {ranks} rank(s), not {namespace.ranks}")
    if len(addresses) != namespace.ranks or not 0 <= namespace.rank < namespace.ranks:
        parser.error("--addresses must name one address per rank and --rank must be one of them")
    return Args(
        rank=namespace.rank,
        ranks=namespace.ranks,
        addresses=addresses,
        port=namespace.port,
        status=namespace.status,
        work_dir=namespace.work_dir,
        extra=namespace,
    )


class Status:
    """The rank's status file, rewritten (tmp + rename, never held open) every STATUS_EVERY
    seconds by a thread that blocks every signal, so signals always reach the main thread.
    A forked child inherits the object but never writes it."""

    def __init__(self, workload: str, rank: int, path: Path) -> None:
        self.workload = workload
        self.rank = rank
        self.path = path
        self.progress = 0
        self.errors: list[str] = []
        self._owner = os.getpid()
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forget_lock)

    def _forget_lock(self) -> None:
        self._lock = threading.Lock()

    def ok(self, count: int = 1) -> None:
        """`count` more operations were verified correct."""
        with self._lock:
            self.progress += count

    def check(self, problem: str | None) -> None:
        """Count one operation verified correct if `problem` is None, else record it."""
        if problem is None:
            self.ok()
        else:
            self.error(problem)

    def check_all(self, problems: Iterable[str | None]) -> None:
        """Count one operation verified correct if every one of `problems` is None, else
        record those that are not."""
        found = [problem for problem in problems if problem is not None]
        for problem in found:
            self.error(problem)
        if not found:
            self.ok()

    def error(self, message: str) -> None:
        with self._lock:
            if len(self.errors) < MAX_ERRORS:
                self.errors.append(message)
        print(f"{self.workload}[{self.rank}] ERROR {message}", file=sys.stderr, flush=True)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "workload": self.workload,
                "rank": self.rank,
                "pid": os.getpid(),
                "progress": self.progress,
                "errors": list(self.errors),
                "updated_at": time.time(),
            }

    def write(self) -> None:
        if os.getpid() != self._owner:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.snapshot()))
        os.replace(tmp, self.path)

    def start(self) -> None:
        """Write now, then keep writing from a background thread."""
        self.write()
        threading.Thread(target=self._keep_writing, name="status", daemon=True).start()

    def _keep_writing(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        while True:
            time.sleep(STATUS_EVERY)
            try:
                self.write()
            except OSError as exc:
                print(f"status write failed: {exc!r}", file=sys.stderr, flush=True)


def start(
    workload: str,
    ranks: int = 1,
    argv: Sequence[str] | None = None,
    add_extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> tuple[Args, Status]:
    """Parse the arguments, make the status, start writing it and end on SIGTERM."""
    args = parse_args(argv, ranks, add_extra)
    status = Status(workload, args.rank, args.status)
    on_sigterm()
    status.start()
    return args, status


_cleanups: list[Callable[[], None]] = []


def at_exit(cleanup: Callable[[], None]) -> None:
    """Run `cleanup` when SIGTERM ends the program (children killed, IPC objects removed)."""
    _cleanups.append(cleanup)


def on_sigterm() -> None:
    def handler(signum: int, frame: object) -> None:
        for cleanup in reversed(_cleanups):
            try:
                cleanup()
            except Exception:
                traceback.print_exc()
        os._exit(0)

    signal.signal(signal.SIGTERM, handler)


def fork_child(body: Callable[[], int | None]) -> int:
    """Fork a child that runs `body` and exits with what it returns (0 for None, 1 if it
    raised). The child dies with its parent (PR_SET_PDEATHSIG) and on SIGTERM."""
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _cleanups.clear()
        libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
        result = body()
        code = 0 if result is None else result
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def kill_and_reap(pids: Sequence[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


_libc: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def check_libc(result: int, what: str) -> int:
    if result == -1:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


def pause(seconds: float = 0.005) -> None:
    time.sleep(seconds)


# TCP set-up (only at start: after a move the argv addresses are stale).


def listen_tcp(address: str, port: int, backlog: int = 16) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(backlog)
    return listener


def connect_tcp(address: str, port: int, patience: float = CONNECT_PATIENCE) -> socket.socket:
    """Connect, retrying for `patience` seconds while the peer rank is not listening yet."""
    deadline = time.monotonic() + patience
    while True:
        try:
            sock = socket.create_connection((address, port), timeout=5)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
            continue
        sock.settimeout(None)
        return sock


# Length-prefixed frames.

FRAME_HEADER = struct.Struct("!I")


def frame(payload: bytes) -> bytes:
    return FRAME_HEADER.pack(len(payload)) + payload


def read_exact(read: Callable[[int], bytes], size: int) -> bytes:
    """`size` bytes from `read` (a socket's recv, os.read on a pipe), however they arrive."""
    chunks = []
    while size:
        chunk = read(size)
        if not chunk:
            raise ConnectionError("closed by the peer")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_frame(read: Callable[[int], bytes]) -> bytes:
    (size,) = FRAME_HEADER.unpack(read_exact(read, FRAME_HEADER.size))
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes: the stream is corrupted")
    return read_exact(read, size)


def recv_frame(sock: socket.socket) -> bytes:
    return read_frame(sock.recv)


class FrameReader:
    """Frames out of a byte stream that arrives in arbitrary pieces (non-blocking sockets)."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        frames = []
        while len(self.buffer) >= FRAME_HEADER.size:
            (size,) = FRAME_HEADER.unpack_from(self.buffer)
            if size > MAX_FRAME:
                raise ValueError(f"frame of {size} bytes: the stream is corrupted")
            end = FRAME_HEADER.size + size
            if len(self.buffer) < end:
                break
            frames.append(bytes(self.buffer[FRAME_HEADER.size : end]))
            del self.buffer[:end]
        return frames


# Sequence-numbered messages.

MESSAGE_HEADER = struct.Struct("!QI")


def message_body(tag: bytes, seq: int, max_size: int = 4000) -> bytes:
    """The body of message `seq`: its length and bytes follow from (tag, seq)."""
    seed = hashlib.blake2b(tag + seq.to_bytes(8, "big"), digest_size=32).digest()
    length = 16 + (seq * 7919) % max_size
    return (tag + b":" + seed * (length // 32 + 1))[:length]


def make_message(tag: bytes, seq: int, max_size: int = 4000) -> bytes:
    body = message_body(tag, seq, max_size)
    return MESSAGE_HEADER.pack(seq, zlib.crc32(body)) + body


def message_seq(data: bytes) -> int:
    (seq, _) = MESSAGE_HEADER.unpack_from(data)
    return int(seq)


def check_message(data: bytes, tag: bytes, expected_seq: int, max_size: int = 4000) -> str | None:
    """None if `data` is message `expected_seq` of `tag`, else what is wrong with it."""
    if len(data) < MESSAGE_HEADER.size:
        return f"{tag.decode()}: a message of {len(data)} bytes, shorter than its header"
    seq, crc = MESSAGE_HEADER.unpack_from(data)
    body = data[MESSAGE_HEADER.size :]
    if zlib.crc32(body) != crc:
        return f"{tag.decode()}: message {seq} is corrupted (checksum mismatch)"
    if seq != expected_seq:
        kind = "repeated or reordered" if seq < expected_seq else "lost messages before it"
        return f"{tag.decode()}: expected message {expected_seq}, got {seq} ({kind})"
    if body != message_body(tag, seq, max_size):
        return f"{tag.decode()}: message {seq} has the wrong content"
    return None


def idle_forever() -> NoReturn:
    """After a fatal error (a dead connection): keep the status, wait for SIGTERM."""
    while True:
        time.sleep(1)
