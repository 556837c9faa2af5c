"""Telling who made a gRPC call: through the Unix socket's front door (the kernel's credentials
of the caller), or over TCP by the verified client certificate, whose common name is a local
user. Anything else is unauthenticated."""

from __future__ import annotations

from typing import Any

import grpc.aio

from coordinator.front_door import FrontDoor
from crctl.errors import CrctlError, UnauthenticatedError
from crctl.identity import Identity, of_user
from crctl.tls import certificate_name

Context = grpc.aio.ServicerContext[Any, Any]


class Callers:
    def __init__(self, front_door: FrontDoor | None) -> None:
        self._door = front_door

    def identify(self, context: Context) -> Identity:
        """The caller of this call, or UnauthenticatedError."""
        peer = context.peer()
        if self._door is not None:
            found = self._door.identity(peer)
            if found is not None:
                return found
        name = certificate_name(context.auth_context())
        if name is not None:
            try:
                return of_user(name)
            except CrctlError:
                raise UnauthenticatedError(
                    f"the client certificate names {name!r}, who is no user on the "
                    "coordinator's host; the admin issues certificates for local users"
                ) from None
        where = self._door.public if self._door is not None else "the coordinator's api_socket"
        raise UnauthenticatedError(
            f"who is calling? call on {where} (the kernel tells the coordinator your user), "
            "or over TCP with a client certificate the admin made (`crctl keys api-client`)"
        )
