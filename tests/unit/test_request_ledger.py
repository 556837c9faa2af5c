"""The request ledger: a retry during the first call joins it; a different request under the
same id is refused, whether the first call ended (its record) or still runs."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.idempotency import RequestLedger
from coordinator.store import Store
from crctl.clock import ManualClock
from crctl.errors import ConfigError
from crctl.v1 import coordinator_pb2

JOB = "ring"


def launch(argv: str) -> coordinator_pb2.LaunchRequest:
    return coordinator_pb2.LaunchRequest(job=JOB, host="h1", argv=[argv], request_id="id-1")


def test_a_retry_joins_the_call_under_way_and_another_request_is_refused_meanwhile() -> None:
    async def scenario() -> None:
        ledger = RequestLedger(Store(":memory:"), ManualClock())
        release = asyncio.Event()
        calls = []

        async def call() -> coordinator_pb2.LaunchResponse:
            calls.append(1)
            await release.wait()
            return coordinator_pb2.LaunchResponse(job=JOB, rank=0, host="h1", pid=42)

        def once(request: coordinator_pb2.LaunchRequest) -> object:
            return ledger.once(
                caller_uid=1000,
                job=JOB,
                request_id=request.request_id,
                method="Launch",
                request=request,
                reply_type=coordinator_pb2.LaunchResponse,
                call=call,
            )

        first = asyncio.ensure_future(once(launch("app")))
        await asyncio.sleep(0)
        retry = asyncio.ensure_future(once(launch("app")))
        await asyncio.sleep(0)
        with pytest.raises(ConfigError, match="already used for another request"):
            # refused at once, not joined to the first call (which waits for release)
            await asyncio.wait_for(once(launch("other")), 2)  # type: ignore[arg-type]
        release.set()
        (reply, replayed), (again, joined) = await asyncio.gather(first, retry)  # type: ignore[misc]
        assert not replayed and joined and reply == again and reply.pid == 42
        assert calls == [1]
        with pytest.raises(ConfigError, match="already used for another request"):
            await once(launch("other"))  # type: ignore[misc]
        (recorded, replayed) = await once(launch("app"))  # type: ignore[misc]
        assert replayed and recorded == reply and calls == [1]

    asyncio.run(scenario())
