"""The API tier over the real services: the in-process cluster (real coordinator services and
agents, fake CRIU hosts, in-memory wire; tests.inproc.cluster) on real time, behind the real
gRPC server and front door on a Unix socket. Clients are the generated stubs (plain grpcio),
called in a thread as any scheduler would.

``@api_test(hosts=3)`` runs ``async def test(api)``; ``api.call(fn)`` runs ``fn(channel)`` in a
thread; ``api.restart_coordinator()`` stops the gRPC server, kills the coordinator (SIGKILL-like:
its tasks stop where they are) and starts a new one, and a new server, on the same database."""

from __future__ import annotations

import asyncio
import functools
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio

from coordinator.access import AccessPolicy
from coordinator.api import create_server
from coordinator.daemon import private_dir
from coordinator.front_door import FrontDoor
from tests.inproc.cluster import Cluster

T = TypeVar("T")
TEST_LIMIT = 120.0


class ApiCluster:
    def __init__(self, cluster: Cluster, folder: Path) -> None:
        self.cluster = cluster
        self.socket = folder / "api.sock"
        self.address = f"unix:{self.socket}"
        self._server: grpc.aio.Server | None = None
        self._door: FrontDoor | None = None

    async def serve(self) -> None:
        """The gRPC server over the running coordinator's services, started as the
        coordinator (its tasks die with it)."""

        async def start() -> None:
            door = FrontDoor(self.socket, private_dir(self.socket))
            server, _ = await create_server(
                self.cluster.service, front_door=door, policy=AccessPolicy()
            )
            await server.start()
            await door.open()
            self._server, self._door = server, door

        await self.cluster.in_coordinator(start)

    async def stop_serving(self) -> None:
        if self._door is not None:
            await self._door.close()
        if self._server is not None:
            await self._server.stop(None)
        self._server = self._door = None

    async def restart_coordinator(self) -> None:
        # The server goes first (stopping it once its tasks were killed would hang), then the
        # coordinator dies where it stands.
        await self.stop_serving()
        await self.cluster.kill_coordinator()
        await self.cluster.start_coordinator()
        await self.serve()

    async def call(self, fn: Callable[[grpc.Channel], T]) -> T:
        """``fn(channel)`` in a thread, on a fresh channel to the public socket."""

        def run() -> T:
            with grpc.insecure_channel(self.address) as channel:
                return fn(channel)

        return await asyncio.to_thread(run)


def api_test(
    hosts: int = 3,
) -> Callable[[Callable[[ApiCluster], Awaitable[None]]], Callable[[], None]]:
    def decorate(test: Callable[[ApiCluster], Awaitable[None]]) -> Callable[[], None]:
        @functools.wraps(test)
        def run() -> None:
            with tempfile.TemporaryDirectory(prefix="crctl-api-") as tmp:
                folder = Path(tmp)
                folder.chmod(0o755)
                cluster = Cluster(folder, [f"h{i}" for i in range(1, hosts + 1)])
                api = ApiCluster(cluster, folder)

                async def main() -> None:
                    cluster.install(asyncio.get_running_loop())
                    await cluster.up()
                    await api.serve()
                    try:
                        await asyncio.wait_for(test(api), TEST_LIMIT)
                    finally:
                        await api.stop_serving()
                        for owner in list(cluster._tasks):
                            await cluster._kill(owner)
                        if cluster.coordinator is not None:
                            cluster.coordinator.store.close()

                asyncio.run(main())

        del run.__wrapped__  # type: ignore[attr-defined]
        return run

    return decorate


def unpack(message: Any, kind: type[T]) -> T:
    """``message`` (a google.protobuf.Any) as a ``kind``."""
    out = kind()
    assert message.Unpack(out), f"not a {kind.__name__}: {message.type_url}"
    return out
