"""inotify: an inotify watch (through ctypes on libc) on a file in the work dir that another
thread rewrites, one write at a time.

Covers: an inotify instance and its watch (CRIU restores watches by file handle; the watched
file must be there on the new host). Each cycle the writer thread writes a fixed-width
sequence number at offset 0 of the file (one write, then close: exactly IN_MODIFY then
IN_CLOSE_WRITE) and waits; the main thread reads the events, checks they are exactly those two
for the watch, in that order, and that the file holds the sequence number, then lets the
writer go on. An event that does not come within EVENT_TICKS ticks of running is an error
(the cycle goes on). Progress: cycles checked."""

from __future__ import annotations

import ctypes
import os
import select
import struct
import threading
from pathlib import Path

from tests.workloads.catalogue import _common

IN_MODIFY, IN_CLOSE_WRITE = 0x2, 0x8
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)
EVENT_TICKS = 500  # 10 ms each
EXPECTED = [IN_MODIFY, IN_CLOSE_WRITE]


def parse_events(data: bytes) -> list[tuple[int, int]]:
    """(wd, mask) of each event in what one read() of an inotify descriptor returned."""
    events = []
    offset = 0
    while offset < len(data):
        wd, mask, _, name_length = EVENT.unpack_from(data, offset)
        events.append((wd, mask))
        offset += EVENT.size + name_length
    return events


def check_cycle(events: list[tuple[int, int]], wd: int, content: bytes, seq: int) -> list[str]:
    problems = []
    if events != [(wd, mask) for mask in EXPECTED]:
        shown = [(w, hex(m)) for w, m in events]
        problems.append(f"write {seq}: events {shown}, expected MODIFY then CLOSE_WRITE on {wd}")
    if content != record(seq):
        problems.append(f"write {seq}: the file holds {content!r}")
    return problems


def record(seq: int) -> bytes:
    return f"{seq:012d}\n".encode()


def watch(path: Path) -> tuple[int, int]:
    lib = _common.libc()
    fd = _common.check_libc(lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")
    mask = IN_MODIFY | IN_CLOSE_WRITE
    wd = _common.check_libc(lib.inotify_add_watch(fd, bytes(path), ctypes.c_uint32(mask)), "watch")
    return fd, wd


def main() -> None:
    args, status = _common.start("inotify")
    path = args.work_dir / "watched"
    path.write_bytes(record(0))
    fd, wd = watch(path)
    go = threading.Event()

    def write_forever() -> None:
        seq = 0
        while True:
            go.wait()
            go.clear()
            seq += 1
            out = os.open(path, os.O_WRONLY)
            os.pwrite(out, record(seq), 0)
            os.close(out)

    threading.Thread(target=write_forever, name="writer", daemon=True).start()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    seq = 0
    while True:
        seq += 1
        go.set()
        events: list[tuple[int, int]] = []
        for _ in range(EVENT_TICKS):
            if poller.poll(10):
                events += parse_events(os.read(fd, 4096))
                if events and events[-1][1] & IN_CLOSE_WRITE:
                    break
        else:
            status.error(f"write {seq}: no IN_CLOSE_WRITE within {EVENT_TICKS} ticks")
        _common.pause(0.005)
        if poller.poll(0):  # anything after CLOSE_WRITE belongs to this cycle too
            events += parse_events(os.read(fd, 4096))
        problems = check_cycle(events, wd, path.read_bytes(), seq)
        status.check_all(problems)
        _common.pause(0.005)


if __name__ == "__main__":
    main()
