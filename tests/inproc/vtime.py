"""An asyncio event loop on virtual time: when nothing is ready to run, time jumps to the next
timer instead of waiting for it. Deadlines of minutes pass in microseconds, always in the same
order: tests of timeouts are instant and deterministic.

Only for code that does no real I/O the loop must wait for (the in-process tier's transport is
in memory). A loop with nothing scheduled and nothing ready is stuck: it raises
:class:`Stuck` instead of blocking forever."""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Stuck(RuntimeError):
    """Every task waits for something that will never come."""


# Loop iterations in a row with work ready but no time passing: something spins.
SPIN_LIMIT = 1_000_000
CPU_PER_TURN = 1e-7


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None
        self._spins = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        assert self.loop is not None
        ready = super().select(0)
        if ready or timeout == 0:
            # Each turn of the loop takes a tenth of a microsecond, as running code takes time:
            # a task re-arming a timer a rounding error away from now still gets there.
            self.loop.advance(CPU_PER_TURN)
            self._spins += 1
            if self._spins > SPIN_LIMIT:
                raise Stuck(f"tasks spin without time passing: {_spinning(self.loop)}")
            return ready
        self._spins = 0
        if timeout is None:
            raise Stuck("no task can make progress and no timer is armed")
        self.loop.advance(timeout)
        return []


def _spinning(loop: asyncio.AbstractEventLoop) -> list[str]:
    """Where the tasks about to run stand."""
    found = []
    for handle in list(loop._ready)[:10]:  # type: ignore[attr-defined]
        task = getattr(handle._callback, "__self__", None)
        if isinstance(task, asyncio.Task):
            frames = task.get_stack(limit=3)
            where = [f"{f.f_code.co_name}:{f.f_lineno}" for f in frames]
            found.append(f"{task.get_name()} at {' < '.join(where)}")
        else:
            found.append(repr(handle))
    return found


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self._now = 0.0

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += max(seconds, CPU_PER_TURN)


def run(main: Coroutine[Any, Any, T]) -> T:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
