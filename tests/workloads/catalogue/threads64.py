"""threads64: 64 threads, each incrementing its own counter under a shared lock that also
guards a shared total.

Covers: a many-threaded process (CRIU dumps and restores every thread's registers, signal
mask and stack). Checks, about every 20 ms: every counter is at least what it was at the last
check (none went backwards), the counters add up to the total (no lost or doubled update),
every thread is alive, and every counter moved within the last STALL_CHECKS checks (a thread
that did not come back from a restore). Progress: checks passed."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from tests.workloads.catalogue import _common

THREADS = 64
STALL_CHECKS = 500


def check_counters(previous: Sequence[int], current: Sequence[int], total: int) -> list[str]:
    problems = [
        f"thread {i}: counter went back from {before} to {now}"
        for i, (before, now) in enumerate(zip(previous, current, strict=True))
        if now < before
    ]
    if sum(current) != total:
        problems.append(f"counters add up to {sum(current)}, the total is {total}")
    return problems


class Counters:
    def __init__(self, threads: int) -> None:
        self.lock = threading.Lock()
        self.values = [0] * threads
        self.total = 0

    def bump(self, index: int) -> None:
        with self.lock:
            self.values[index] += 1
            self.total += 1

    def read(self) -> tuple[list[int], int]:
        with self.lock:
            return list(self.values), self.total


def main() -> None:
    _, status = _common.start("threads64")
    counters = Counters(THREADS)

    def count(index: int) -> None:
        while True:
            counters.bump(index)
            _common.pause(0.05)

    threads = [
        threading.Thread(target=count, args=(i,), name=f"counter-{i}", daemon=True)
        for i in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    previous, _ = counters.read()
    unchanged_for = [0] * THREADS
    while True:
        _common.pause(0.02)
        current, total = counters.read()
        problems = check_counters(previous, current, total)
        problems += [f"thread {t.name} is gone" for t in threads if not t.is_alive()]
        for i in range(THREADS):
            unchanged_for[i] = unchanged_for[i] + 1 if current[i] == previous[i] else 0
            if unchanged_for[i] == STALL_CHECKS:
                problems.append(f"thread {i} has not counted for {STALL_CHECKS} checks")
        status.check_all(problems)
        previous = current


if __name__ == "__main__":
    main()
