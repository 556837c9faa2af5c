"""The gRPC API in one process: the real servicer and server on 127.0.0.1, port 0, over a
domain the test fakes; a client call runs in a thread against it, and the server is stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from coordinator.api import create_server

Result = TypeVar("Result")


def call_api(service: Any, call: Callable[[str], Result]) -> Result:
    """Serve ``service`` (a fake CoordinatorService); ``call(address)``'s result."""

    async def scenario() -> Result:
        server, port = await create_server(service, "127.0.0.1:0")
        await server.start()
        try:
            return await asyncio.to_thread(call, f"127.0.0.1:{port}")
        finally:
            await server.stop(None)

    return asyncio.run(scenario())
