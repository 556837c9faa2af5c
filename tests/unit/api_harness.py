"""The gRPC API in one process: the real servicer and server behind the real front door on a
Unix socket in a temporary directory (and, if asked, on 127.0.0.1 with mutual TLS), over a
domain the test fakes; a client call runs in a thread against it, and the server is stopped."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from coordinator.access import AccessPolicy
from coordinator.api import create_server
from coordinator.daemon import private_dir
from coordinator.front_door import FrontDoor
from crctl import tls

Result = TypeVar("Result")


@dataclass(frozen=True)
class Served:
    unix: str  # the public socket, "unix:PATH"
    private: str  # gRPC's own socket behind the door (root only)
    tcp: str  # "127.0.0.1:PORT" with mutual TLS, or "" when not asked for


def serve_api(
    service: Any,
    call: Callable[[Served], Result],
    *,
    policy: AccessPolicy | None = None,
    tls_dir: Path | None = None,
) -> Result:
    """Serve ``service`` (a fake CoordinatorService); ``call(served)``'s result. The folder of
    the public socket is open to every user, as /run/crctl is."""

    async def scenario(folder: Path) -> Result:
        socket_path = folder / "api.sock"
        door = FrontDoor(socket_path, private_dir(socket_path))
        server, port = await create_server(
            service,
            front_door=door,
            policy=policy or AccessPolicy(),
            tcp_address="127.0.0.1:0" if tls_dir is not None else "",
            tls=tls.server_credentials(tls_dir) if tls_dir is not None else None,
        )
        await server.start()
        await door.open()
        served = Served(
            unix=f"unix:{socket_path}",
            private=door.grpc_address,
            tcp=f"127.0.0.1:{port}" if tls_dir is not None else "",
        )
        try:
            return await asyncio.to_thread(call, served)
        finally:
            await door.close()
            await server.stop(None)

    with tempfile.TemporaryDirectory(prefix="crctl-api-") as folder:
        Path(folder).chmod(0o755)
        return asyncio.run(scenario(Path(folder)))


def call_api(
    service: Any, call: Callable[[str], Result], policy: AccessPolicy | None = None
) -> Result:
    """``call(address)`` against ``service`` served on the Unix socket."""
    return serve_api(service, lambda served: call(served.unix), policy=policy)
