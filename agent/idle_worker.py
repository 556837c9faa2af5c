"""Work that may use only CPU time nobody else wants for a while, then normal time: a thread that
starts in the ``SCHED_IDLE`` class and can be promoted to ``SCHED_OTHER``.

A checkpoint that leaves its ranks running checksums the images while the host waits for the
coordinator's commit. That wait is part of the time the application stands still, and on a
node whose other ranks (or, on the testbed, whose other emulated hosts) are still dumping, the
checksums must not slow those dumps: they run idle until the ranks are released, then at normal
priority so that they finish even on a node the application keeps busy."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger()

T = TypeVar("T")


def _set_class(tid: int, idle: bool) -> None:
    policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
    try:
        os.sched_setscheduler(tid, policy, os.sched_param(0))
    except ProcessLookupError:
        pass  # the thread has finished
    except OSError as exc:  # not permitted: the work still gets done, only less politely
        log.warning("idle_worker_priority_not_set", idle=idle, error=str(exc))


class IdleWorker(Generic[T]):
    """Runs ``work`` in its own thread, idle-class until :meth:`promote`."""

    def __init__(self, work: Callable[[], T], *, name: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._result: asyncio.Future[T] = self._loop.create_future()
        self._work = work
        self._lock = threading.Lock()
        self._tid: int | None = None
        self._idle = True
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with self._lock:
            self._tid = threading.get_native_id()
            if self._idle:
                _set_class(self._tid, idle=True)
        try:
            value = self._work()
        except BaseException as exc:  # handed to the awaiting side
            self._loop.call_soon_threadsafe(self._fail, exc)
        else:
            self._loop.call_soon_threadsafe(self._succeed, value)

    def _succeed(self, value: T) -> None:
        if not self._result.done():  # else cancelled meanwhile
            self._result.set_result(value)

    def _fail(self, exc: BaseException) -> None:
        if not self._result.done():
            self._result.set_exception(exc)

    def promote(self) -> None:
        """From now on the thread competes for CPU like any other."""
        with self._lock:
            if not self._idle:
                return
            self._idle = False
            if self._tid is not None:
                _set_class(self._tid, idle=False)

    def cancel(self) -> None:
        """Stop waiting for the result (the thread runs to its end, at normal priority)."""
        self.promote()
        self._result.cancel()

    async def result(self) -> T:
        return await asyncio.shield(self._result)
