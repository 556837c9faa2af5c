"""agent.idle_worker: the result comes back, failures too, and the thread really runs in the idle
class until promoted."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from agent.idle_worker import IdleWorker


def test_result_and_scheduling_class() -> None:
    async def scenario() -> None:
        may_finish = threading.Event()
        seen: dict[str, int] = {}

        def work() -> int:
            seen["tid"] = threading.get_native_id()
            seen["before"] = os.sched_getscheduler(0)
            may_finish.wait(5)
            seen["after"] = os.sched_getscheduler(0)
            return 42

        worker = IdleWorker(work, name="test-idle")
        while "before" not in seen:
            await asyncio.sleep(0.005)
        worker.promote()
        may_finish.set()
        assert await worker.result() == 42
        assert seen["before"] == os.SCHED_IDLE
        assert seen["after"] == os.SCHED_OTHER
        assert seen["tid"] != threading.get_native_id()

    asyncio.run(scenario())


def test_failure_is_raised_to_the_waiter() -> None:
    async def scenario() -> None:
        def work() -> None:
            raise OSError(28, "No space left on device")

        worker = IdleWorker(work, name="test-idle")
        with pytest.raises(OSError, match="No space left"):
            await worker.result()

    asyncio.run(scenario())


def test_cancel_stops_the_wait() -> None:
    async def scenario() -> None:
        release = threading.Event()
        worker = IdleWorker(lambda: release.wait(5), name="test-idle")
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await worker.result()
        release.set()
        await asyncio.sleep(0.05)  # the thread's late answer is dropped quietly

    asyncio.run(scenario())
