"""eventfd_timerfd: an eventfd whose counter is left non-zero between reads, and a periodic
timerfd (ctypes on libc).

Covers: eventfd and timerfd descriptors, which CRIU dumps with their state (the eventfd's
counter; the timerfd's clock, interval and remaining time). Each operation adds
(seq % 7) + 1 to the eventfd; every DRAIN_EVERY operations a read must return exactly the sum
added since the last read. The timerfd (10 ms interval) must still have its interval and must
report at least one expiration within TIMER_TICKS polls of 20 ms (counts, not timing).
Progress: operations checked."""

from __future__ import annotations

import ctypes
import os
import select
import struct
import time

from tests.workloads.catalogue import _common

DRAIN_EVERY = 5
TIMER_TICKS = 50
INTERVAL_NS = 10_000_000
TFD_NONBLOCK, TFD_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", Timespec), ("it_value", Timespec)]


def periodic_timerfd(interval_ns: int) -> int:
    lib = _common.libc()
    fd = _common.check_libc(
        lib.timerfd_create(time.CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC), "timerfd_create"
    )
    period = Timespec(0, interval_ns)
    spec = Itimerspec(period, period)
    _common.check_libc(lib.timerfd_settime(fd, 0, ctypes.byref(spec), None), "timerfd_settime")
    return fd


def timer_interval_ns(fd: int) -> int:
    spec = Itimerspec()
    _common.check_libc(_common.libc().timerfd_gettime(fd, ctypes.byref(spec)), "timerfd_gettime")
    return int(spec.it_interval.tv_sec * 1_000_000_000 + spec.it_interval.tv_nsec)


def check_drained(read_value: int | None, added: int) -> str | None:
    if read_value == added:
        return None
    return f"the eventfd read {read_value}, expected the {added} added since the last read"


def main() -> None:
    _, status = _common.start("eventfd_timerfd")
    counter = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    timer = periodic_timerfd(INTERVAL_NS)
    poller = select.poll()
    poller.register(timer, select.POLLIN)
    added = seq = 0
    while True:
        seq += 1
        os.eventfd_write(counter, seq % 7 + 1)
        added += seq % 7 + 1
        problems = []
        if seq % DRAIN_EVERY == 0:
            try:
                value: int | None = os.eventfd_read(counter)
            except BlockingIOError:
                value = None
            problems.append(check_drained(value, added))
            added = 0
        expirations = 0
        for _ in range(TIMER_TICKS):
            if poller.poll(20):
                (expirations,) = struct.unpack("Q", os.read(timer, 8))
                break
        if expirations < 1:
            problems.append(f"no timerfd expiration in {TIMER_TICKS} polls")
        if timer_interval_ns(timer) != INTERVAL_NS:
            problems.append(f"the timerfd interval is {timer_interval_ns(timer)} ns")
        status.check_all(problems)
        _common.pause(0.01)


if __name__ == "__main__":
    main()
