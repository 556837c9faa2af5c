"""The gRPC API in one process: the real servicer and server behind the real front door on a
Unix socket in a temporary directory, over a domain the test fakes; a client call runs in a
thread against it (as this process's user), and the server is stopped."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from coordinator.access import AccessPolicy
from coordinator.api import create_server
from coordinator.daemon import private_dir
from coordinator.front_door import FrontDoor

Result = TypeVar("Result")


def call_api(
    service: Any, call: Callable[[str], Result], policy: AccessPolicy | None = None
) -> Result:
    """Serve ``service`` (a fake CoordinatorService); ``call(address)``'s result."""

    async def scenario(folder: Path) -> Result:
        socket_path = folder / "api.sock"
        door = FrontDoor(socket_path, private_dir(socket_path))
        server, _ = await create_server(service, front_door=door, policy=policy or AccessPolicy())
        await server.start()
        await door.open()
        try:
            return await asyncio.to_thread(call, f"unix:{socket_path}")
        finally:
            await door.close()
            await server.stop(None)

    with tempfile.TemporaryDirectory(prefix="crctl-api-") as folder:
        return asyncio.run(scenario(Path(folder)))
