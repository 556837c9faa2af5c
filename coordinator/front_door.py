"""The API's Unix socket, which tells the gRPC servicer who is calling.

gRPC's Python server does not expose a Unix-socket caller's credentials (``SO_PEERCRED``). So
the public socket (mode 0666: every local user may call) is served here, not by gRPC: each
connection's credentials are read at accept, then its bytes are relayed, unchanged, to the gRPC
server's own socket in a directory only root can enter. The relay connects from a socket bound
to a name of its own, ``<private dir>/peer-<n>``, which the gRPC server sees as the call's peer
(``unix:<private dir>/peer-<n>``): :meth:`FrontDoor.identity` maps that name back to the caller.
Nobody but root can reach the private socket, so no other peer name can occur; the bound name
is unlinked at once (the peer keeps its address) and never reused."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
from pathlib import Path

import structlog

from crctl.errors import UnavailableError
from crctl.identity import Identity, from_peer

log = structlog.get_logger()

_CHUNK = 1 << 16


class FrontDoor:
    def __init__(self, public: Path, private_dir: Path) -> None:
        self.public = public
        self._dir = private_dir
        self._numbers = itertools.count(1)
        self._callers: dict[str, Identity] = {}
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Task[None]] = set()

    @property
    def grpc_address(self) -> str:
        """Where the gRPC server must listen (only root can connect there)."""
        return f"unix:{self._dir / 'grpc.sock'}"

    def identity(self, peer: str) -> Identity | None:
        """The caller behind a gRPC peer string, if it came through this door."""
        return self._callers.get(peer)

    def prepare(self) -> None:
        """Make the private directory (root only) before the gRPC server binds in it."""
        self._dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self._dir, 0o700)
        with contextlib.suppress(FileNotFoundError):
            (self._dir / "grpc.sock").unlink()

    async def open(self) -> None:
        """Serve the public socket (the gRPC server must be listening already)."""
        self.public.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_socket(self.public)
        self._server = await asyncio.start_unix_server(self._accepted, path=str(self.public))
        os.chmod(self.public, 0o666)
        log.info("api_socket_open", socket=str(self.public))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                self.public.unlink()
        for relay in list(self._relays):
            relay.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        try:
            sock: socket.socket = writer.get_extra_info("socket")
            caller = from_peer(sock)
            if caller is None:
                log.warning("api_caller_unknown", reason="its credentials could not be read")
                return
            await self._relay(caller, reader, writer)
        except (ConnectionError, OSError) as exc:
            log.debug("api_connection_ended", error=str(exc))
        except asyncio.CancelledError:
            pass  # the door closes: this connection's task ends here, quietly
        finally:
            self._relays.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _relay(
        self, caller: Identity, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        name = self._dir / f"peer-{next(self._numbers)}"
        inner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        peer = f"unix:{name}"
        try:
            inner.bind(str(name))
            inner.setblocking(False)
            await asyncio.get_running_loop().sock_connect(inner, str(self._dir / "grpc.sock"))
        except BaseException:
            inner.close()
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                name.unlink()
        self._callers[peer] = caller
        try:
            inner_reader, inner_writer = await asyncio.open_unix_connection(sock=inner)
            try:
                await _pump_both(reader, writer, inner_reader, inner_writer)
            finally:
                inner_writer.close()
        finally:
            del self._callers[peer]


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    while data := await source.read(_CHUNK):
        sink.write(data)
        await sink.drain()


async def _pump_both(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    inner_reader: asyncio.StreamReader,
    inner_writer: asyncio.StreamWriter,
) -> None:
    """Relay both ways until either side ends (HTTP/2 has no half-close to carry)."""
    pumps = [
        asyncio.create_task(_pump(reader, inner_writer)),
        asyncio.create_task(_pump(inner_reader, writer)),
    ]
    try:
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


def _remove_stale_socket(path: Path) -> None:
    """A socket file left by a coordinator that died is removed; a live one is refused."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise UnavailableError(
        f"another coordinator already serves {path}; stop it first, or give this one "
        "another api_socket"
    )
