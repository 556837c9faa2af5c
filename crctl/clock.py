"""Injected time and ids, so that timeout logic is tested without sleeping."""

from __future__ import annotations

import time
import uuid
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (wall clock, persisted in state)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a monotonic clock (for deadlines)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock for tests: time moves only when ``advance`` is called."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._mono = 0.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += seconds


def new_id(prefix: str) -> str:
    """A short, sortable-enough unique id such as ``ckpt-3f9a1c2e7b``."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
