"""A small synchronous client for the coordinator's gRPC API, raising crctl errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import grpc

from crctl.errors import UnavailableError
from crctl.status import error_for
from crctl.v1 import coordinator_pb2, coordinator_pb2_grpc

Reply = TypeVar("Reply")


class CoordinatorClient:
    def __init__(self, address: str, *, timeout: float = 10.0) -> None:
        self.address = address
        self._timeout = timeout
        self._channel = grpc.insecure_channel(address)
        self._stub = coordinator_pb2_grpc.CoordinatorStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self, method: Callable[..., Reply], request: object, timeout: float | None = None
    ) -> Reply:
        try:
            return method(request, timeout=timeout or self._timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            details = exc.details() or ""
            if code == grpc.StatusCode.UNAVAILABLE:
                raise UnavailableError(
                    f"coordinator unreachable at {self.address} ({details}); "
                    "is `crctl coordinator` running? (set --grpc-address or CRCTL_GRPC_ADDRESS)"
                ) from None
            raise error_for(code, details) from None

    def list_agents(self) -> list[coordinator_pb2.Agent]:
        reply = self._call(self._stub.ListAgents, coordinator_pb2.ListAgentsRequest())
        return list(reply.agents)
